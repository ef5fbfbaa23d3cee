"""Tests of the tf-slim ResNet-50 v1 reference itself (tests/slim_reference.py).

Expected names and shapes are written out here from shared/reference/resnet_v1_50_checkpoint.md,
not read from slim, so a slim or shim change that renames a tensor fails here first.
Takes ~30 s on 2 CPU cores (four slim graph builds of ~2.5 s, two calibrations).
"""
import os

import numpy as np
import pytest

pytest.importorskip("tf_slim", reason="tf-slim not installed: pip install -e '.[test]'")
pytest.importorskip("tf_keras", reason="tf-keras not installed: pip install -e '.[test]'")

import tensorflow as tf  # noqa: E402

import slim_reference  # noqa: E402
from conftest import smooth_rgb  # noqa: E402

pytestmark = pytest.mark.slow

BLOCKS = ((3, 64), (4, 128), (6, 256), (3, 512))  # (units, bottleneck depth D)
BN_LEAVES = ("beta", "gamma", "moving_mean", "moving_variance")


def expected_model_shapes(num_classes: int = 1000) -> dict:
    """The public checkpoint's 267 model tensors (1000 classes), conv kernels HWIO."""
    shapes = {"resnet_v1_50/conv1/weights": (7, 7, 3, 64)}

    def conv_bn(scope, kernel):
        shapes[f"{scope}/weights"] = kernel
        shapes.update({f"{scope}/BatchNorm/{leaf}": (kernel[-1],) for leaf in BN_LEAVES})

    shapes.update({f"resnet_v1_50/conv1/BatchNorm/{leaf}": (64,) for leaf in BN_LEAVES})
    channels_in = 64
    for block, (units, depth) in enumerate(BLOCKS, start=1):
        for unit in range(1, units + 1):
            scope = f"resnet_v1_50/block{block}/unit_{unit}/bottleneck_v1"
            if unit == 1:
                conv_bn(f"{scope}/shortcut", (1, 1, channels_in, 4 * depth))
            conv_bn(f"{scope}/conv1", (1, 1, channels_in, depth))
            conv_bn(f"{scope}/conv2", (3, 3, depth, depth))
            conv_bn(f"{scope}/conv3", (1, 1, depth, 4 * depth))
            channels_in = 4 * depth
    shapes["resnet_v1_50/logits/weights"] = (1, 1, 2048, num_classes)
    shapes["resnet_v1_50/logits/biases"] = (num_classes,)
    return shapes


def natural_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.stack([smooth_rgb(size, size, seed + i) for i in range(batch)]).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint_224(tmp_path_factory):
    images = natural_images(2, 224)
    made = slim_reference.make_slim_checkpoint(
        str(tmp_path_factory.mktemp("slim_v2") / "model.ckpt"), images)
    return made, images


@pytest.fixture(scope="module")
def checkpoints_97(tmp_path_factory):
    """The same seed and images written in both formats, at an odd size."""
    images = natural_images(1, 97, seed=5)
    root = tmp_path_factory.mktemp("slim_97")
    return {checkpoint_format: slim_reference.make_slim_checkpoint(
                str(root / checkpoint_format / "model.ckpt"), images,
                checkpoint_format=checkpoint_format)
            for checkpoint_format in ("V1", "V2")}, images


def test_import_leaves_tf_keras_routing_alone():
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    module = slim_reference.import_slim_resnet_v1()
    assert callable(module.resnet_v1_50)
    assert slim_reference.import_slim_resnet_v1() is module
    # Setting it would make tf.keras resolve to Keras 2 for every later test in this process.
    assert os.environ.get("TF_USE_LEGACY_KERAS") == before


def test_checkpoint_holds_the_267_public_tensor_names_and_shapes(checkpoint_224):
    made, _ = checkpoint_224
    expected = expected_model_shapes()
    assert len(expected) == 267
    model_tensors = {name: shape for name, shape in made["variables"].items()
                     if name not in ("global_step", "resnet_v1_50/mean_rgb")}
    assert model_tensors == expected
    reader = tf.train.load_checkpoint(made["path"])
    assert reader.get_variable_to_shape_map() == {
        name: list(shape) for name, shape in made["variables"].items()}


def test_checkpoint_has_the_unused_extras_like_the_public_file(checkpoint_224):
    made, _ = checkpoint_224
    reader = tf.train.load_checkpoint(made["path"])
    assert made["variables"]["global_step"] == ()
    assert reader.get_variable_to_dtype_map()["global_step"] == tf.int64
    np.testing.assert_allclose(reader.get_tensor("resnet_v1_50/mean_rgb"),
                               [123.68, 116.78, 103.94], rtol=1e-6)


def test_trainable_parameter_count_matches_resnet_v1_50(checkpoint_224):
    made, _ = checkpoint_224
    trainable = [shape for name, shape in made["variables"].items()
                 if name.rsplit("/", 1)[-1] in ("weights", "biases", "gamma", "beta")]
    assert sum(int(np.prod(shape)) for shape in trainable) == 25_557_032


def test_logits_are_finite_and_spread(checkpoint_224):
    made, _ = checkpoint_224
    logits = made["logits"]
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    assert np.abs(logits).max() < 50  # calibrated BN: O(1) activations, not the 1e3+ of raw init
    assert np.all(logits.std(axis=1) > 0.3)  # classes are told apart
    assert np.abs(logits[0] - logits[1]).mean() > 1e-2  # and so are the two images


def test_batch_norm_statistics_are_calibrated_not_defaults(checkpoint_224):
    made, _ = checkpoint_224
    reader = tf.train.load_checkpoint(made["path"])
    for scope in ("resnet_v1_50/conv1", "resnet_v1_50/block4/unit_3/bottleneck_v1/conv3"):
        mean = reader.get_tensor(f"{scope}/BatchNorm/moving_mean")
        variance = reader.get_tensor(f"{scope}/BatchNorm/moving_variance")
        assert np.all(np.isfinite(mean)) and np.all(variance > 0)
        assert np.abs(mean).max() > 1e-3 and np.abs(variance - 1).max() > 1e-2, scope


def test_slim_logits_restores_the_same_network(checkpoint_224):
    made, images = checkpoint_224
    # Same graph, same kernels, same inputs: only summation order could differ, and it doesn't.
    np.testing.assert_allclose(slim_reference.slim_logits(made["path"], images), made["logits"],
                               rtol=1e-5, atol=1e-5)


def test_v1_single_file_and_v2_formats_both_load(checkpoints_97):
    made, _ = checkpoints_97
    v1_files = os.listdir(os.path.dirname(made["V1"]["path"]))
    assert v1_files == ["model.ckpt"]  # the old single-file format: no .index / .data
    assert sorted(os.listdir(os.path.dirname(made["V2"]["path"]))) == [
        "model.ckpt.data-00000-of-00001", "model.ckpt.index"]
    for checkpoint in made.values():
        shapes = tf.train.load_checkpoint(checkpoint["path"]).get_variable_to_shape_map()
        assert len(shapes) == 269


def test_same_seed_same_images_give_same_logits_at_97_px(checkpoints_97):
    made, _ = checkpoints_97
    assert made["V1"]["logits"].shape == (1, 1000)
    assert np.all(np.isfinite(made["V1"]["logits"]))
    np.testing.assert_allclose(made["V1"]["logits"], made["V2"]["logits"], rtol=1e-5, atol=1e-5)


def test_seed_fixes_weights_whatever_the_images(checkpoint_224, checkpoints_97):
    at_224 = tf.train.load_checkpoint(checkpoint_224[0]["path"])
    at_97 = tf.train.load_checkpoint(checkpoints_97[0]["V1"]["path"])
    for name in ("resnet_v1_50/conv1/weights", "resnet_v1_50/logits/biases",
                 "resnet_v1_50/block2/unit_1/bottleneck_v1/conv2/BatchNorm/gamma"):
        np.testing.assert_array_equal(at_224.get_tensor(name), at_97.get_tensor(name))


def test_slim_logits_restores_a_v1_checkpoint_at_97_px(checkpoints_97):
    made, images = checkpoints_97
    np.testing.assert_allclose(slim_reference.slim_logits(made["V1"]["path"], images),
                               made["V1"]["logits"], rtol=1e-5, atol=1e-5)
