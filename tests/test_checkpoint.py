"""Loading pretrained weights: TF-slim checkpoints (V1, V2) against tf-slim's own network,
Keras weights against keras.applications.ResNet50, our own checkpoints, and the checks.

Tolerances: slim parity max |diff| <= 1e-4 * max |logit| in fp32 (same ops, same order; only
summation order inside kernels may differ); Keras parity 1e-4 on softmax probabilities.
"""
import numpy as np
import pytest
import tensorflow as tf

from conftest import calibrate_batch_norm, smooth_rgb
from flowers_tl.checkpoint import parse_exclude_patterns, restore_pretrained
from flowers_tl.model import resnet_v1_50

slim_reference = pytest.importorskip("slim_reference")


def images_of(size, count=2, seed=0):
    return np.stack([smooth_rgb(size, size, seed + i) for i in range(count)]).astype(np.float32)


@pytest.fixture(scope="module")
def slim_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("slim")
    made = {}
    for size, checkpoint_format in ((224, "V2"), (97, "V1")):
        images = images_of(size, seed=size)
        made[size] = (images, slim_reference.make_slim_checkpoint(
            str(root / f"{size}" / "resnet_v1_50.ckpt"), images, num_classes=1000, seed=1,
            checkpoint_format=checkpoint_format))
    return made


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 97])
def test_slim_checkpoint_gives_slims_logits(slim_checkpoints, size):
    images, made = slim_checkpoints[size]
    model = resnet_v1_50(1000)
    report = restore_pretrained(model, made["path"], exclude_patterns="global_step")
    assert len(report.loaded) == 267 and report.excluded == ()
    assert report.unused == ("global_step", "resnet_v1_50/mean_rgb") or \
        set(report.unused) == {"resnet_v1_50/mean_rgb"}
    ours = model(tf.constant(images.astype(np.uint8)), training=False).numpy()
    expected = made["logits"]
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()
    np.testing.assert_array_equal(ours.argmax(1), expected.argmax(1))


@pytest.mark.slow
def test_default_excludes_leave_the_new_logits_at_their_initial_values(slim_checkpoints):
    images, made = slim_checkpoints[224]
    model = resnet_v1_50(5, seed=3)
    initial = {name: v.numpy().copy() for name, v in model.variables_by_name.items()
               if "logits" in name}
    report = restore_pretrained(model, made["path"])  # global_step + resnet_v1_50/logits
    assert set(report.excluded) == {"resnet_v1_50/logits/weights", "resnet_v1_50/logits/biases"}
    assert set(report.unused) == {"resnet_v1_50/mean_rgb"}
    for name, value in initial.items():
        np.testing.assert_array_equal(model.variables_by_name[name].numpy(), value)
    conv1 = tf.train.load_checkpoint(made["path"]).get_tensor("resnet_v1_50/conv1/weights")
    np.testing.assert_array_equal(model.variables_by_name["resnet_v1_50/conv1/weights"], conv1)
    assert "restored 265 of 267" in report.summary() and "mean_rgb" in report.summary()


@pytest.mark.slow
def test_wrong_shape_and_missing_names_are_listed_together(slim_checkpoints):
    _, made = slim_checkpoints[224]
    model = resnet_v1_50(5)
    before = model.variables_by_name["resnet_v1_50/conv1/weights"].numpy().copy()
    with pytest.raises(ValueError) as error:
        # logits not excluded: 1000 classes in the file, 5 in the model
        restore_pretrained(model, made["path"], exclude_patterns=["global_step", "block4"])
    message = str(error.value)
    assert "shape mismatch: resnet_v1_50/logits/weights is [1, 1, 2048, 1000]" in message
    assert "resnet_v1_50/logits/biases" in message
    np.testing.assert_array_equal(model.variables_by_name["resnet_v1_50/conv1/weights"], before)
    keras_model = resnet_v1_50(5, variant="keras")
    with pytest.raises(ValueError, match=r"missing: conv1_conv/kernel .*\n.*missing"):
        restore_pretrained(keras_model, made["path"])


def test_exclude_patterns_parse_from_a_comma_separated_flag():
    assert parse_exclude_patterns("global_step, resnet_v1_50/logits,") == (
        "global_step", "resnet_v1_50/logits")
    with pytest.raises(ValueError, match="not a regular expression"):
        parse_exclude_patterns("block[1")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here.ckpt"):
        restore_pretrained(resnet_v1_50(5), str(tmp_path / "nothing_here.ckpt"))
    with pytest.raises(FileNotFoundError, match="weights.h5"):
        restore_pretrained(resnet_v1_50(5, variant="keras"), str(tmp_path / "weights.h5"))


def test_own_checkpoint_restores_into_a_new_model(tmp_path):
    images = images_of(64)
    model = resnet_v1_50(3, seed=1)
    calibrate_batch_norm(model, images)
    path = tf.train.Checkpoint(model=model, step=tf.Variable(7)).save(str(tmp_path / "ckpt"))
    fresh = resnet_v1_50(3, seed=2)
    report = restore_pretrained(fresh, str(tmp_path), exclude_patterns=())  # the folder
    assert report.path == path
    assert report.source_format == "flowers_tl checkpoint" and len(report.loaded) == 267
    np.testing.assert_array_equal(fresh(images, training=False), model(images, training=False))


@pytest.fixture(scope="module")
def keras_reference(tmp_path_factory):
    """keras.applications.ResNet50 with calibrated BN statistics, saved in both h5 layouts."""
    import keras

    images = images_of(64, seed=5)
    ours = resnet_v1_50(10, variant="keras", seed=4)
    calibrate_batch_norm(ours, images)
    reference = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    for layer in reference.layers:  # copy our calibrated values in, by Keras's own names
        for weight in layer.weights:
            name = f"{layer.name}/{weight.path.split('/')[-1]}"
            weight.assign(ours.variables_by_name[name].numpy())
    root = tmp_path_factory.mktemp("keras")
    reference.save_weights(str(root / "resnet50.weights.h5"))
    keras.saving.save_model(reference, str(root / "resnet50_legacy.h5"))
    # Keras's own preprocessing for this network: RGB -> BGR, minus the caffe means.
    probabilities = reference(keras.applications.resnet50.preprocess_input(images.copy()),
                              training=False)
    return images, np.asarray(probabilities), root


def test_keras_weights_give_keras_probabilities(keras_reference):
    images, expected, root = keras_reference
    model = resnet_v1_50(10, variant="keras", seed=9)
    report = restore_pretrained(model, str(root / "resnet50_legacy.h5"), exclude_patterns=())
    assert len(report.loaded) == len(model.variables_by_name)
    probabilities = tf.nn.softmax(model(tf.constant(images.astype(np.uint8)))).numpy()
    assert np.abs(probabilities - expected).max() <= 1e-4
    assert expected.max(1).min() < 0.99  # not a saturated softmax that would hide differences


def test_keras3_weights_file_is_refused_with_the_fix(keras_reference):
    _, _, root = keras_reference
    with pytest.raises(ValueError, match="named by position.*save_model"):
        restore_pretrained(resnet_v1_50(10, variant="keras"), str(root / "resnet50.weights.h5"))
