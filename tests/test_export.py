"""Export for TF Serving: version folders, both signatures, layout/precision independence,
concurrent exports, the train_url entry point and its CLI.

Tolerances: exported logits vs the model in this process max |diff| <= 1e-4 * max(1, max |logit|)
(fp32 both sides, same kernels: only summation order differs); against an fp16 training model
1e-2 of the logit scale (fp16 rounds every activation); the eval crop vs the C++ reader's: max 1
grey level (float rounding; flowers_tl.export.eval_preprocess).
Models are tiny inputs (32 px) through the full ResNet-50 with 3 classes; BN statistics are
calibrated so logits are O(1) and softmax is not one-hot. Only one test runs the fresh-process
verification (two TF imports, ~20 s on 2 cores); the rest use verify=False.
"""
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

import flowers_tl
from conftest import calibrate_batch_norm, encode_jpeg, smooth_rgb
from flowers_tl import export
from flowers_tl.export import decode_and_preprocess, export_saved_model, main
from flowers_tl.model import resnet_v1_50
from flowers_tl.reader import augment

IMAGE_SIZE = 32
CLASS_NAMES = ["daisy", "roses", "tulips"]


def float_images(size=IMAGE_SIZE, count=2, seed=0):
    """RGB 0-255 with fractional values: serving_default takes floats, not just uint8 levels."""
    rng = np.random.default_rng(seed)
    images = np.stack([smooth_rgb(size, size, seed + i) for i in range(count)]).astype(np.float32)
    return images + rng.uniform(0, 1, images.shape).astype(np.float32)


def relative_error(actual, expected):
    return np.abs(actual - expected).max() / max(1.0, np.abs(expected).max())


@pytest.fixture(scope="module")
def trained_values():
    """Variable values with calibrated BN (a stand-in for a trained model)."""
    model = resnet_v1_50(len(CLASS_NAMES), seed=3)
    calibrate_batch_norm(model, float_images(count=4, seed=10))
    values = {name: variable.numpy() for name, variable in model.variables_by_name.items()}
    values["resnet_v1_50/logits/weights"] *= 0.05  # logits of a few units, softmax not one-hot
    return values


@pytest.fixture(scope="module")
def fp32_model(trained_values):
    return tiny_model(trained_values)


def tiny_model(values, **options):
    model = resnet_v1_50(len(CLASS_NAMES), seed=3, **options)
    for name, variable in model.variables_by_name.items():
        variable.assign(values[name])
    return model


def graph_nodes(version_dir):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    graph = saved_model.meta_graphs[0].graph_def
    return list(graph.node) + [node for f in graph.library.function for node in f.node_def]


def attribute(node, name, default):
    if name not in node.attr:
        return default
    value = node.attr[name]
    return value.s if value.WhichOneof("value") == "s" else value.b


def photo_jpegs():
    """Non-square photos of assorted sizes and JPEG kinds, all larger than the crop."""
    return [encode_jpeg(smooth_rgb(45, 60, 1)), encode_jpeg(smooth_rgb(80, 50, 2), kind="444"),
            encode_jpeg(smooth_rgb(37, 37, 3), kind="gray"),
            encode_jpeg(smooth_rgb(64, 96, 4), kind="progressive")]


def subprocess_env():
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(flowers_tl.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [package_parent, os.environ.get("PYTHONPATH")])), TF_CPP_MIN_LOG_LEVEL="2")


# ---------------------------------------------------------------------------- version folders
def make_version(root, name, content="model"):
    (root / name).mkdir(parents=True)
    (root / name / "saved_model.pb").write_text(content)


def test_next_version_is_one_above_the_highest_integer_folder(tmp_path):
    for name in ("1", "2"):
        make_version(tmp_path, name, content=name)
    (tmp_path / "tmp-x").mkdir()
    (tmp_path / ".tmp-export-7-abcd").mkdir()
    (tmp_path / "notes").write_text("not a version")
    (tmp_path / "17").write_text("a file, not a folder")
    assert export._highest_version(str(tmp_path)) == 2
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "saved_model.pb").write_text("new")
    assert export._publish(str(tmp_path / "new"), str(tmp_path)) == str(tmp_path / "3")
    assert (tmp_path / "3" / "saved_model.pb").read_text() == "new"
    assert [(tmp_path / v / "saved_model.pb").read_text() for v in "12"] == ["1", "2"]
    assert export._highest_version(str(tmp_path / "tmp-x")) == 0


def test_publish_skips_versions_taken_meanwhile_even_empty_ones(tmp_path, monkeypatch):
    # A stale scan (another export published 1 and 2 after we looked) must not overwrite them,
    # and an empty "3" (someone's claim) must not be replaced, which a bare rename(2) would do.
    make_version(tmp_path, "1")
    make_version(tmp_path, "2")
    (tmp_path / "3").mkdir()
    monkeypatch.setattr(export, "_highest_version", lambda root: 0)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "saved_model.pb").write_text("new")
    assert export._publish(str(tmp_path / "new"), str(tmp_path)) == str(tmp_path / "4")
    assert os.listdir(tmp_path / "3") == []
    assert (tmp_path / "1" / "saved_model.pb").read_text() == "model"


def test_failed_export_leaves_no_folder_and_earlier_versions_alone(tmp_path, fp32_model,
                                                                   monkeypatch):
    make_version(tmp_path, "1")

    def save_half_then_fail(module, folder, signatures):
        with open(os.path.join(folder, "saved_model.pb"), "wb") as handle:
            handle.write(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(export.tf.saved_model, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        export_saved_model(fp32_model, str(tmp_path), CLASS_NAMES, IMAGE_SIZE)
    assert sorted(os.listdir(tmp_path)) == ["1"]
    assert (tmp_path / "1" / "saved_model.pb").read_text() == "model"


def test_next_export_removes_only_the_temp_folders_of_killed_exports(tmp_path, fp32_model,
                                                                    monkeypatch):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)  # a process that has exited: its export was killed
    with monkeypatch.context() as patch:
        patch.setattr(export.os, "getpid", lambda: dead_pid)
        killed = export._temp_dir_name()
    running = export._temp_dir_name()  # this process, alive: an export being written now
    other_host = f"{export.TEMP_PREFIX}otherhost-{dead_pid}-0123abcd"  # its pid says nothing here
    other_host_old = f"{export.TEMP_PREFIX}otherhost-{dead_pid}-4567abcd"
    for name in (killed, running, other_host, other_host_old):
        (tmp_path / name / "variables").mkdir(parents=True)
        (tmp_path / name / "saved_model.pb").write_bytes(b"half")
    week_ago = os.stat(tmp_path / other_host_old).st_mtime - export.STALE_TEMP_SECONDS - 1
    os.utime(tmp_path / other_host_old, (week_ago, week_ago))

    version_dir = export_saved_model(fp32_model, str(tmp_path), CLASS_NAMES, IMAGE_SIZE,
                                     verify=False)
    assert version_dir == str(tmp_path / "1")
    assert sorted(os.listdir(tmp_path)) == sorted(["1", running, other_host])
    assert (tmp_path / running / "saved_model.pb").read_bytes() == b"half"


def test_an_export_writes_only_inside_its_temporary_folder(tmp_path, fp32_model, monkeypatch):
    """A SIGKILL runs no cleanup, so every file an export writes before publishing (the
    SavedModel, its assets' sources, the verification's inputs) must lie in the temporary folder
    the next export removes (test above), none in the system's temporary directory."""
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen = {}

    def look_instead_of_verifying(saved_dir, model, serving, names, image_size, scratch):
        seen.update(system_tmp=os.listdir(system_tmp), scratch_parent=os.path.dirname(scratch),
                    saved_dir=saved_dir, scratch=sorted(os.listdir(scratch)))

    monkeypatch.setattr(export, "_verify", look_instead_of_verifying)
    version_dir = export_saved_model(fp32_model, str(tmp_path / "export"), CLASS_NAMES, IMAGE_SIZE)
    assert seen["system_tmp"] == [] and seen["scratch_parent"] == seen["saved_dir"]
    assert os.path.basename(seen["saved_dir"]).startswith(export.TEMP_PREFIX)
    assert seen["scratch"] == ["export_info.json", "labels.txt"]
    assert sorted(os.listdir(tmp_path / "export")) == ["1"]
    assert export.SCRATCH_DIR not in os.listdir(version_dir)  # removed before publishing
    assert sorted(os.listdir(os.path.join(version_dir, "assets"))) == ["export_info.json",
                                                                       "labels.txt"]


# ---------------------------------------------------------------------------- signatures
@pytest.mark.slow
def test_round_trip_through_both_signatures(tmp_path, fp32_model):
    model = fp32_model
    version_dir = export_saved_model(model, str(tmp_path / "export"), CLASS_NAMES, IMAGE_SIZE,
                                     verify=False)
    assert version_dir == str(tmp_path / "export" / "1")
    assert sorted(os.listdir(tmp_path / "export")) == ["1"]  # no temporary folder left
    (tmp_path / "plain").mkdir()  # the version folder has ordinary permissions, not mkdtemp's 0700
    assert os.stat(version_dir).st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777
    loaded = tf.saved_model.load(version_dir)

    serve = loaded.signatures["serving_default"]
    assert serve.structured_input_signature[1] == {
        "images": tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32, name="images")}
    images = float_images()
    logits = serve(images=tf.constant(images))["logits"].numpy()
    expected = model(images, training=False).numpy()
    assert relative_error(logits, expected) <= 1e-4

    predict_jpeg = loaded.signatures["predict_jpeg"]
    assert predict_jpeg.structured_input_signature[1] == {
        "image_bytes": tf.TensorSpec([None], tf.string, name="image_bytes")}
    jpegs = photo_jpegs()
    outputs = predict_jpeg(image_bytes=tf.constant(jpegs))
    probabilities = outputs["probabilities"].numpy()
    classes = [name.decode() for name in outputs["classes"].numpy()]
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    # Calibrated model: real distributions, not one-hot (one photo of four may come close).
    assert np.median(probabilities.max(-1)) < 0.99
    assert classes == [CLASS_NAMES[i] for i in outputs["logits"].numpy().argmax(-1)]
    preprocessed = tf.stack([decode_and_preprocess(jpeg, IMAGE_SIZE) for jpeg in jpegs])
    assert relative_error(outputs["logits"].numpy(),
                          model(preprocessed, training=False).numpy()) <= 1e-4

    assets = os.path.join(version_dir, "assets")
    with open(os.path.join(assets, "labels.txt")) as handle:
        assert handle.read().splitlines() == CLASS_NAMES
    with open(os.path.join(assets, "export_info.json")) as handle:
        info = json.load(handle)
    assert info["image_size"] == IMAGE_SIZE and info["serving_config"]["data_format"] == "NHWC"


def test_eval_crop_is_the_readers_within_one_level():
    # Same IDCT, same fractional centre box, same triangle filter: only float rounding differs
    # (a value near x.5 may round the other way), so max 1 level. The 768x1024 photo is decoded
    # at DCT scale 1/2 by the reader (mean 0.04 on smooth content); the 230x240 one is barely
    # larger than the crop, where resizing to whole pixels first put the crop half a pixel off.
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (37, 47, 3), dtype=np.uint8)
    sharp = np.repeat(np.repeat(blocks, 7, 0), 7, 1)[:254, :326]  # edges every 7 px
    cases = [(smooth_rgb(333, 500, 333), "420"), (smooth_rgb(768, 1024, 768), "420"),
             (smooth_rgb(500, 375, 500), "progressive"), (smooth_rgb(230, 240, 230), "444"),
             (sharp, "444")]
    for image, kind in cases:
        jpeg = encode_jpeg(image, quality=95, kind=kind)
        ours = decode_and_preprocess(jpeg, 224).numpy()
        reader = augment(jpeg, 224, training=False).astype(np.float32)
        difference = np.abs(ours - reader)
        assert difference.mean() < 0.1 and difference.max() <= 1, (image.shape, kind)


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(data_format="NCHW", xla=True), dict(precision="fp16")],
                         ids=["nchw-xla", "fp16"])
def test_gpu_style_training_models_export_an_fp32_nhwc_graph(tmp_path, trained_values,
                                                             fp32_model, options):
    model = tiny_model(trained_values, **options)
    version_dir = export_saved_model(model, str(tmp_path), CLASS_NAMES, IMAGE_SIZE, verify=False)
    nodes = graph_nodes(version_dir)
    layout_ops = [node for node in nodes if node.op in ("Conv2D", "FusedBatchNormV3", "MaxPool")]
    assert len(layout_ops) >= 2 * 53 + 1  # 53 convs + 53 BNs + 1 pool, in each signature
    # Attributes at their default value are stripped on save: data_format NHWC and, for
    # FusedBatchNormV3, is_training *True*, so a missing is_training would mean training mode.
    assert {attribute(node, "data_format", b"NHWC") for node in layout_ops} == {b"NHWC"}
    assert not any(attribute(node, "is_training", True) for node in nodes
                   if node.op == "FusedBatchNormV3")
    low_precision = (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16)
    assert not [node.name for node in nodes for value in node.attr.values()
                if value.type in low_precision or set(value.list.type) & set(low_precision)]
    assert not any(node.attr["_XlaMustCompile"].b for node in nodes)

    loaded = tf.saved_model.load(version_dir)  # and it runs here, on a CPU, without XLA
    images = float_images()
    logits = loaded.signatures["serving_default"](images=tf.constant(images))["logits"].numpy()
    assert relative_error(logits, fp32_model(images).numpy()) <= 1e-4
    if model.config.precision == "fp32":  # fp16 computes a rounded function: no 1e-4 parity
        assert relative_error(logits, export._logits(model, images)) <= 1e-4  # NCHW via XLA


# ---------------------------------------------------------------------------- train_url, CLI
@pytest.fixture(scope="module")
def train_url(tmp_path_factory, trained_values):
    """A run folder as a GPU run leaves it (NCHW, fp16, no XLA: not runnable on this CPU), with
    two checkpoints; the latest holds trained_values."""
    root = tmp_path_factory.mktemp("run")
    model = resnet_v1_50(len(CLASS_NAMES), seed=99)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                         str(root / "checkpoints"), max_to_keep=2)
    manager.save()
    for name, variable in model.variables_by_name.items():
        variable.assign(trained_values[name])
    manager.save()
    gpu_config = dataclasses.replace(model.config, data_format="NCHW", precision="fp16")
    (root / "config.json").write_text(json.dumps({
        "model": dataclasses.asdict(gpu_config), "num_classes": len(CLASS_NAMES),
        "image_size": IMAGE_SIZE,
        "class_names": CLASS_NAMES, "data_url": "/data/flower_photos", "num_gpus": 4}))
    return root


@pytest.mark.e2e
def test_two_cli_exports_started_together_get_different_versions(train_url, fp32_model):
    # One of them runs the fresh-process verification and the saved_model_cli check (the only
    # test that does: ~20 s), so the two do not reach the rename at the same moment; the race
    # itself is test_publish_skips_versions_taken_meanwhile_even_empty_ones.
    command = [sys.executable, "-m", "flowers_tl.export", "--train_url", str(train_url)]
    processes = [subprocess.Popen(command + extra, env=subprocess_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for extra in ([], ["--no_verify"])]
    results = [(process.communicate(timeout=300), process.returncode) for process in processes]
    for (stdout, stderr), returncode in results:
        assert returncode == 0, stderr
    (_, verified_log), _ = results[0]
    assert "verified" in verified_log and "restored 267 of 267 variables" in verified_log
    folders = {stdout.strip().splitlines()[-1] for (stdout, _), _ in results}
    export_root = train_url / "export"
    assert sorted(os.listdir(export_root)) == ["1", "2"]  # no temporary folders left
    assert folders == {str(export_root / "1"), str(export_root / "2")}
    images = float_images()
    expected = fp32_model(images).numpy()  # the latest checkpoint's weights
    for folder in folders:
        served = tf.saved_model.load(folder).signatures["serving_default"]
        assert relative_error(served(images=tf.constant(images))["logits"].numpy(),
                              expected) <= 1e-4


def test_cli_gives_one_line_errors_naming_the_path(tmp_path, capsys):
    assert main(["--train_url", str(tmp_path)]) != 0
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "config.json" in error and str(tmp_path) in error
    (tmp_path / "config.json").write_text(json.dumps(
        {"model": {"variant": "slim"}, "num_classes": 3, "image_size": IMAGE_SIZE,
         "class_names": CLASS_NAMES}))
    assert main(["--train_url", str(tmp_path)]) != 0
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("error: no checkpoint in")
    assert str(tmp_path / "checkpoints") in error
    assert not (tmp_path / "export").exists()
