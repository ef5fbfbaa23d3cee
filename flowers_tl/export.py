"""Export a trained model for TF Serving, in auto-incremented integer version folders.

    python -m flowers_tl.export --train_url runs/flowers        # -> runs/flowers/export/<N>/
    version_dir = export_saved_model(model, "serving/flowers", class_names, image_size=224)

The exported graph is always fp32, NHWC, inference-mode fused BN, no XLA, whatever layout and
precision the training run used: a fresh ResNet-50 in that layout takes the training model's
variables by name (they carry the same names in every layout and precision), so an NCHW/fp16 GPU
run exports a model a CPU server can run. Two signatures:

  serving_default  images      float32 [None, S, S, 3], RGB 0-255  -> logits [None, C]
  predict_jpeg     image_bytes string  [None], encoded JPEGs        -> logits, probabilities,
                   (base64 {"b64": ...} in TF Serving's JSON API)      classes (label strings)

assets/labels.txt holds the class names, one a line; assets/export_info.json the configs.

Publishing: the SavedModel is written into a hidden temporary folder inside the export root
(TF Serving loads integer folders only; the assets' sources and the verification's files sit in
a subfolder of it, removed before publishing, so nothing is written anywhere else), verified
there, then renamed onto `<N>`, N one more than the highest integer folder. A rename is atomic,
so a polling server never sees a partial model, and it is also how a version number is claimed:
renaming onto an existing non-empty folder fails, so of two exports racing for N one gets N and
the other retries with N+1. A failed export removes
its temporary folder and never touches an existing version; a killed one cannot, so every export
first removes the temporary folders of exports that are certainly gone (see
_remove_stale_temp_dirs).
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from typing import Sequence

import numpy as np
import tensorflow as tf

from flowers_tl import geometry
from flowers_tl.checkpoint import restore_pretrained
from flowers_tl.model import ModelConfig, ResNet50

# What every export is, whatever the training run used.
SERVING_CONFIG = dict(data_format="NHWC", precision="fp32", batch_norm_fused=True, xla=False)
TEMP_PREFIX = ".tmp-export-"
SCRATCH_DIR = ".export-scratch"  # inside the temporary folder: assets, verification files
# A temporary folder whose export is gone is removed by the next export. "Gone": its process
# (the pid in its name, on this host) no longer exists, or, for a folder another host wrote (a
# shared file system) or a pid since reused, untouched for this long; a live export writes and
# verifies in minutes.
STALE_TEMP_SECONDS = 6 * 3600
# Exported graph vs the fp32 training model (any layout, XLA or not) on the same images: the
# same arithmetic, only summation order differs. Relative to the logit scale, max(1, max |logit|).
# An fp16/bf16 training model computes a different, rounded function (on random or off-
# distribution inputs it differs by 1-100% or overflows), so its reference is the same weights
# in fp32, i.e. the serving copy, and its own difference is only reported.
EXPORT_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An export that could not be written or did not verify; nothing was published."""


# ---------------------------------------------------------------------------- serving graph
def serving_model_from(model: ResNet50) -> ResNet50:
    """A fresh fp32 NHWC inference-layout copy of `model` (same variant, classes and weights)."""
    serving = ResNet50(dataclasses.replace(model.config, **SERVING_CONFIG), model.num_classes,
                       model.seed)
    source, target = model.variables_by_name, serving.variables_by_name
    if set(source) != set(target):
        raise ExportError(f"training and serving models differ in variables: "
                          f"{sorted(set(source) ^ set(target))[:6]}")
    for name, variable in target.items():
        value = source[name].read_value()  # a sync-on-read BN statistic reads its replica mean
        if value.shape != variable.shape:
            raise ExportError(f"{name}: {value.shape} in the training model, {variable.shape} "
                              "in the serving model")
        variable.assign(tf.cast(value, tf.float32))
    return serving


def eval_preprocess(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decoded RGB uint8 [H, W, 3] -> float32 [S, S, 3] holding uint8 values: the C++ reader's
    eval geometry (flowers_tl.geometry): the central box that "shorter side to
    eval_resize_size(S), then the centre S x S" reads, in fractional source pixels, resampled in
    one pass with the antialiased triangle filter (ScaleAndTranslate, what tf.image.resize uses
    for antialias=True), rounded to uint8 as the reader emits them.

    Resizing to whole pixels and then cropping (tf.data's way, and this function's until
    issue 10) shifts the crop by up to half a source pixel: up to 112 grey levels against the
    reader on sharp edges (synthetic flowers at 224, mean 1.8). This way the pixels match the
    reader's within 1 level (float rounding; tests/test_export.py), DCT-scaled decodes of large
    photos included on smooth content (768x1024 at 224, scale 1/2: mean 0.04)."""
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    # As csrc/augment.cc center_crop(): source pixels per output pixel, box clipped to the image.
    scale = float(geometry.eval_resize_size(image_size)) / tf.minimum(height, width)
    side_x = tf.minimum(image_size / scale, width)
    side_y = tf.minimum(image_size / scale, height)
    scale_yx = tf.stack([image_size / side_y, image_size / side_x])
    # Output pixel edge 0 lands on the box's left / top edge.
    translation = -tf.stack([(height - side_y) / 2, (width - side_x) / 2]) * scale_yx
    crop = tf.raw_ops.ScaleAndTranslate(
        images=tf.cast(image, tf.float32)[None], size=[image_size, image_size], scale=scale_yx,
        translation=translation, kernel_type="triangle", antialias=True)[0]
    crop = tf.round(tf.clip_by_value(crop, 0.0, 255.0))
    return tf.ensure_shape(crop, [image_size, image_size, 3])


def decode_and_preprocess(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    # INTEGER_ACCURATE is libjpeg's ISLOW IDCT, the C++ reader's for evaluation (TF's default is IFAST).
    image = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
    return eval_preprocess(image, image_size)


class _ServingModule(tf.Module):
    def __init__(self, model: ResNet50, class_names: Sequence[str], image_size: int,
                 labels_path: str, info_path: str):
        super().__init__(name="flowers_serving")
        self.model = model
        self.labels = tf.saved_model.Asset(labels_path)
        self.export_info = tf.saved_model.Asset(info_path)
        self._class_names = list(class_names)
        self._image_size = image_size
        size = image_size
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
        self.predict_jpeg = tf.function(self._predict_jpeg, input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes")])

    def _serve(self, images):
        return {"logits": self.model(images, training=False)}

    def _predict_jpeg(self, image_bytes):
        size = self._image_size
        images = tf.map_fn(lambda encoded: decode_and_preprocess(encoded, size), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        logits = self.model(images, training=False)
        names = tf.constant(self._class_names, tf.string)  # a Const in the graph, no lookup op
        return {"logits": logits,
                "probabilities": tf.nn.softmax(logits, axis=-1),
                "classes": tf.gather(names, tf.argmax(logits, axis=-1))}


# ---------------------------------------------------------------------------- version folders
def _highest_version(export_root: str) -> int:
    """Highest integer-named folder in export_root, 0 if none; anything else is ignored."""
    versions = [int(entry.name) for entry in os.scandir(export_root)
                if entry.name.isdigit() and entry.is_dir(follow_symlinks=False)]
    return max(versions, default=0)


def _publish(temp_dir: str, export_root: str, max_attempts: int = 1000) -> str:
    """Renames the finished temp_dir onto export_root/<N> for the first free N above the highest
    version; returns that folder."""
    version = _highest_version(export_root) + 1
    for _ in range(max_attempts):
        target = os.path.join(export_root, str(version))
        # Linux rename(2) onto an existing folder fails with ENOTEMPTY when it has entries but
        # silently *replaces* it when it is empty, so look first: an empty "N" someone made is
        # not ours to take. (The look is not atomic; the rename still refuses a non-empty N.)
        if not os.path.lexists(target):
            try:
                os.rename(temp_dir, target)
                return target
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
        version = max(version + 1, _highest_version(export_root) + 1)
    raise ExportError(f"no free version folder in {export_root} after {max_attempts} attempts")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _temp_dir_name() -> str:
    return f"{TEMP_PREFIX}{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temp_dirs(export_root: str, now: float | None = None) -> list[str]:
    """Removes the temporary folders of exports that were killed; returns what it removed.
    A folder is stale when it was written on this host by a process that no longer exists, or
    has not been modified for STALE_TEMP_SECONDS (another host's, or a reused pid). A running
    export's folder is neither, so two concurrent exports never remove each other's."""
    now = time.time() if now is None else now
    removed = []
    for entry in os.scandir(export_root):
        if not entry.name.startswith(TEMP_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        # <prefix><host>-<pid>-<hex>; the host tag has no "-".
        host, _, rest = entry.name[len(TEMP_PREFIX):].partition("-")
        pid_text = rest.partition("-")[0]
        dead = host == _host_tag() and pid_text.isdigit() and not _process_exists(int(pid_text))
        try:
            idle = now - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:  # another export removed it just now
            continue
        if dead or idle > STALE_TEMP_SECONDS:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    if removed:
        print(f"export: removed {len(removed)} temporary folder(s) of killed exports: "
              f"{', '.join(os.path.basename(path) for path in removed)}", file=sys.stderr)
    return removed


def _check_class_names(class_names: Sequence[str], num_classes: int) -> list[str]:
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model with {num_classes} classes")
    bad = [name for name in names if not name.strip() or "\n" in name or "\r" in name]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, non-empty and one line each: {names}")
    return names


# ---------------------------------------------------------------------------- export
def export_saved_model(model: ResNet50, export_root: str, class_names: Sequence[str],
                       image_size: int, verify: bool = True) -> str:
    """Writes `model` as a SavedModel into export_root/<N>/ (N: one more than the highest
    integer folder) and returns that folder. verify=True loads it in a fresh process and checks
    both signatures against this process's logits before it is published."""
    names = _check_class_names(class_names, model.num_classes)
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    export_root = os.fspath(export_root)
    os.makedirs(export_root, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 folder, once renamed, would be unreadable to a server
    # running as another user. os.mkdir honours the umask like every other folder.
    _remove_stale_temp_dirs(export_root)
    temp_dir = os.path.join(export_root, _temp_dir_name())
    os.mkdir(temp_dir)
    try:
        # The assets and the verification's files live inside the temporary folder, so an
        # export killed outright (SIGKILL) leaves nothing behind that the next export's
        # _remove_stale_temp_dirs does not remove; they are gone before it is published.
        scratch = os.path.join(temp_dir, SCRATCH_DIR)
        os.mkdir(scratch)
        labels_path = os.path.join(scratch, "labels.txt")
        with open(labels_path, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{name}\n" for name in names))
        info_path = os.path.join(scratch, "export_info.json")
        serving = serving_model_from(model)
        with open(info_path, "w", encoding="utf-8") as handle:
            json.dump({"training_config": dataclasses.asdict(model.config),
                       "serving_config": dataclasses.asdict(serving.config),
                       "num_classes": model.num_classes,
                       "image_size": image_size, "class_names": names,
                       "eval_resize_ratio": geometry.EVAL_RESIZE_RATIO,
                       "tensorflow": tf.__version__}, handle, indent=1)
        module = _ServingModule(serving, names, image_size, labels_path, info_path)
        try:
            tf.saved_model.save(module, temp_dir, signatures={
                "serving_default": module.serve.get_concrete_function(),
                "predict_jpeg": module.predict_jpeg.get_concrete_function()})
        except tf.errors.OpError as error:  # e.g. a full disk while writing the variables
            reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error))
            raise ExportError(f"writing the SavedModel into {export_root} failed, nothing "
                              f"published: {reason.splitlines()[-1]}") from None
        if verify:
            _verify(temp_dir, model, serving, names, image_size, scratch)
        shutil.rmtree(scratch)
        return _publish(temp_dir, export_root)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------- verification
def _synthetic_images(height: int, width: int, count: int = 2) -> np.ndarray:
    """Deterministic float RGB 0-255 [count, height, width, 3]: gradients plus a few waves,
    detailed enough that a wrong crop or channel order changes the logits."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy, xx = yy / height, xx / width
    images = []
    for index in range(count):
        channels = [127.5 + 90 * np.sin(2 * np.pi * ((2 + index + c) * xx + (3 - c) * yy)
                                        + index + c) + 30 * (xx - yy) * (c - 1)
                    for c in range(3)]
        images.append(np.stack(channels, -1))
    return np.clip(np.stack(images), 0, 255).astype(np.float32)


def _logits(model: ResNet50, images) -> np.ndarray:
    def call(x):
        return model(x, training=False)

    if model.config.xla:  # NCHW on a CPU runs only when compiled
        call = tf.function(call, jit_compile=True)
    return call(tf.constant(images)).numpy()


def _verify(saved_dir: str, model: ResNet50, serving: ResNet50, class_names: list[str],
            image_size: int, scratch: str) -> None:
    """Checks the SavedModel in saved_dir from a fresh process; raises ExportError if not."""
    images = _synthetic_images(image_size, image_size)
    # Larger, non-square photos for predict_jpeg, so the resize and crop do something.
    photos = _synthetic_images(round(image_size * 1.3) + 3, round(image_size * 1.7) + 5)
    jpegs = [tf.io.encode_jpeg(photo.round().astype(np.uint8), quality=95).numpy()
             for photo in photos]
    decoded = tf.stack([decode_and_preprocess(jpeg, image_size) for jpeg in jpegs])
    expected = _logits(model, images)
    if model.config.precision != "fp32":
        fp32_logits = serving(images, training=False).numpy()
        difference = np.abs(expected - fp32_logits).max() / max(1.0, np.abs(fp32_logits).max())
        print(f"export: the {model.config.precision} training model differs from its fp32 export "
              f"by {difference:.2g} of the logit scale on synthetic images (rounding; the export "
              "is checked against the fp32 weights instead)", file=sys.stderr)
        expected = fp32_logits
    expected_path = os.path.join(scratch, "expected.npz")
    np.savez(expected_path, images=images, jpegs=np.array(jpegs, dtype=object), logits=expected,
             jpeg_logits=serving(decoded, training=False).numpy(),
             class_names=np.array(class_names))

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="",  # a CPU server must be able to run it
               PYTHONPATH=os.pathsep.join(filter(None, [package_parent,
                                                       os.environ.get("PYTHONPATH")])))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    script = ("import sys; from flowers_tl.export import _verify_in_this_process as verify; "
              "verify(sys.argv[1], sys.argv[2])")
    processes = {"fresh-process load": subprocess.Popen(
        [sys.executable, "-c", script, saved_dir, expected_path], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)}
    cli = shutil.which("saved_model_cli")
    if cli:  # runs alongside the load check: both spend most of their time importing TF
        processes["saved_model_cli"] = subprocess.Popen(
            [cli, "show", "--all", "--dir", saved_dir], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    else:
        print("export: saved_model_cli not on PATH, signature listing not checked", file=sys.stderr)
    outputs = {name: (process.communicate(), process.returncode)
               for name, process in processes.items()}
    (stdout, stderr), returncode = outputs["fresh-process load"]
    if returncode != 0:
        reason = (stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"export to {os.path.dirname(saved_dir)} failed verification, nothing "
                          f"published: {reason}")
    if cli:
        (stdout, stderr), returncode = outputs["saved_model_cli"]
        missing = [name for name in ("serving_default", "predict_jpeg")
                   if f"signature_def['{name}']" not in stdout]
        if returncode != 0 or missing:
            raise ExportError(f"export to {os.path.dirname(saved_dir)} failed verification, "
                              f"nothing published: saved_model_cli show --all exited {returncode}, "
                              f"signatures missing: {missing}")
    print("export: verified in a fresh process (both signatures)"
          + (", saved_model_cli lists both" if cli else ""), file=sys.stderr)


def _verify_in_this_process(saved_dir: str, expected_path: str) -> None:
    """The fresh-process half of the verification: load, call both signatures, compare."""
    expected = np.load(expected_path, allow_pickle=True)
    class_names = [str(name) for name in expected["class_names"]]
    loaded = tf.saved_model.load(saved_dir)

    def check_close(name, actual, reference, tolerance):
        scale = max(1.0, float(np.abs(reference).max()))
        error = float(np.abs(actual - reference).max())
        if not error <= tolerance * scale:
            raise ExportError(f"{name}: max |diff| {error:.3g} > {tolerance} * {scale:.3g}")

    logits = loaded.signatures["serving_default"](images=tf.constant(expected["images"]))
    logits = logits["logits"].numpy()
    check_close("serving_default logits vs the training model", logits, expected["logits"],
                EXPORT_TOLERANCE)

    outputs = loaded.signatures["predict_jpeg"](
        image_bytes=tf.constant(list(expected["jpegs"]), tf.string))
    jpeg_logits = outputs["logits"].numpy()
    probabilities = outputs["probabilities"].numpy()
    classes = [name.decode() for name in outputs["classes"].numpy()]
    check_close("predict_jpeg logits", jpeg_logits, expected["jpeg_logits"], EXPORT_TOLERANCE)
    if not np.all(np.isfinite(probabilities)) or \
            np.abs(probabilities.sum(-1) - 1).max() > 1e-5:
        raise ExportError(f"predict_jpeg probabilities do not sum to 1: {probabilities.sum(-1)}")
    if classes != [class_names[i] for i in jpeg_logits.argmax(-1)]:
        raise ExportError(f"predict_jpeg classes {classes} are not the argmax labels")
    labels = loaded.labels.asset_path.numpy().decode()
    with open(labels, encoding="utf-8") as handle:
        if handle.read().splitlines() != class_names:
            raise ExportError(f"{labels} does not list the class names")
    print("export verified:", saved_dir)


# ---------------------------------------------------------------------------- train_url, CLI
def export_from_train_url(train_url: str, verify: bool = True) -> str:
    """Restores the latest checkpoint of a training run into the serving layout and exports it
    into <train_url>/export/, as the run's own export does: its weight average if it had one
    (--ema_decay), at its evaluation size (--eval_image_size). Returns the version folder."""
    config_path = os.path.join(train_url, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no config.json in {train_url} (expected {config_path})")
    with open(config_path, encoding="utf-8") as handle:
        try:
            config = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    missing = [key for key in ("model", "image_size", "class_names") if key not in config]
    if missing:
        raise ValueError(f"{config_path}: missing {missing}")
    fields = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(config["model"]) - fields)
    if unknown:
        raise ValueError(f"{config_path}: unknown model settings {unknown}")
    checkpoint_dir = os.path.join(train_url, "checkpoints")
    if not os.path.isdir(checkpoint_dir) or tf.train.latest_checkpoint(checkpoint_dir) is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
    # The weights are the same in every layout and precision, so they go straight into the
    # serving layout: an NCHW (non-XLA) run from a GPU exports on a CPU-only machine.
    num_classes = int(config.get("num_classes", len(config["class_names"])))
    model = ResNet50(dataclasses.replace(ModelConfig(**config["model"]), **SERVING_CONFIG),
                     num_classes)
    # A run with --ema_decay evaluated and exported its weight average: so does this.
    averaged = bool(config.get("config", {}).get("train", {}).get("ema_decay"))
    report = restore_pretrained(model, checkpoint_dir, exclude_patterns=(),
                                moving_average=averaged)
    print(report.summary(), file=sys.stderr)
    # The evaluation size (--eval_image_size; runs before it recorded only image_size).
    size = int(config.get("eval_image_size") or config["image_size"])
    return export_saved_model(model, os.path.join(train_url, "export"), config["class_names"],
                              size, verify=verify)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowers_tl.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_url", required=True,
                        help="training run folder: config.json and checkpoints/")
    parser.add_argument("--no_verify", action="store_true",
                        help="skip loading the export in a fresh process before publishing it")
    args = parser.parse_args(argv)
    try:
        version_dir = export_from_train_url(args.train_url, verify=not args.no_verify)
    except (OSError, ValueError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(version_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
