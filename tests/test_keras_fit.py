"""bench.keras_fit: our checkpoints loaded into keras.applications.ResNet50 (checked against our
own network's outputs on the same weights), and our run's recipe applied to the Keras model.

The sweep's smoke test (tests/test_sweep.py) runs the anchor's whole time-to-target process."""
import numpy as np
import pytest
import tensorflow as tf

from bench.keras_fit import recipe_model, restore_into_keras
from conftest import calibrate_batch_norm, smooth_rgb
from flowers_tl import config as config_lib
from flowers_tl.model import resnet_v1_50

keras = pytest.importorskip("keras")
SIZE = 64  # 2x2 before the pooling: the spatial path is exercised, not only 1x1 maps


@pytest.fixture(scope="module")
def our_keras_checkpoint(tmp_path_factory):
    """Our variant-keras network with calibrated BN statistics and random gamma/beta, saved as
    the trainer saves it (tf.train.Checkpoint with the model and a step)."""
    images = np.stack([smooth_rgb(SIZE, SIZE, seed) for seed in (3, 4)]).astype(np.float32)
    ours = resnet_v1_50(3, variant="keras", seed=5)
    calibrate_batch_norm(ours, images)
    root = tmp_path_factory.mktemp("ours")
    tf.train.Checkpoint(model=ours, global_step=tf.Variable(9, dtype=tf.int64)).save(
        str(root / "ckpt"))
    logits = ours(tf.constant(images.astype(np.uint8)), training=False)
    return ours, images, tf.nn.softmax(logits).numpy(), root


def fresh_keras(classes=3):
    return keras.applications.ResNet50(weights=None, classes=classes,
                                       input_shape=(SIZE, SIZE, 3))


def test_our_keras_variant_checkpoint_gives_our_probabilities_in_keras(our_keras_checkpoint):
    _, images, expected, root = our_keras_checkpoint
    model = fresh_keras()
    restored = restore_into_keras(model, str(root), exclude_patterns=())
    assert restored["format"] == "flowers_tl checkpoint"
    assert restored["loaded"] == restored["total"] == len(model.weights)
    assert not restored["excluded"]
    probabilities = np.asarray(model(keras.applications.resnet50.preprocess_input(images.copy()),
                                     training=False))
    # fp32 through 53 layers, two implementations of the same arithmetic: 1e-4 (as the h5 test)
    assert np.abs(probabilities - expected).max() <= 1e-4
    assert expected.max(1).min() < 0.99  # not a saturated softmax that would hide differences


def test_the_logits_are_excluded_by_default_and_keep_their_initial_values(our_keras_checkpoint):
    ours, _, _, root = our_keras_checkpoint
    model = fresh_keras()
    initial = model.get_layer("predictions").kernel.numpy().copy()
    restored = restore_into_keras(model, str(root))
    assert restored["excluded"] == ["predictions/kernel", "predictions/bias"]
    assert restored["loaded"] == restored["total"] - 2
    np.testing.assert_array_equal(model.get_layer("predictions").kernel.numpy(), initial)
    np.testing.assert_array_equal(model.get_layer("conv3_block2_2_bn").moving_variance.numpy(),
                                  ours.variables_by_name["conv3_block2_2_bn/moving_variance"])
    # another number of classes loads the same way: the logits are the only difference
    assert restore_into_keras(fresh_keras(7), str(root))["loaded"] == restored["loaded"]


def test_a_slim_checkpoint_is_refused_with_what_keras_can_load(tmp_path):
    slim = resnet_v1_50(3, seed=1)
    tf.train.Checkpoint(model=slim).save(str(tmp_path / "ckpt"))
    model = fresh_keras()
    before = model.get_layer("conv1_conv").kernel.numpy().copy()
    with pytest.raises(ValueError) as error:
        restore_into_keras(model, str(tmp_path))
    message = str(error.value)
    assert "cannot load" in message and "missing: conv1_conv/kernel" in message
    assert "a flowers_tl checkpoint of variant keras" in message and "\n" not in message
    np.testing.assert_array_equal(model.get_layer("conv1_conv").kernel.numpy(), before)  # none


def test_the_recipe_knobs_reach_the_keras_model(our_keras_checkpoint):
    ours, _, _, root = our_keras_checkpoint
    config = config_lib.with_overrides(config_lib.RunConfig(), {
        "batch_norm_momentum": 0.9, "zero_init_residual": True, "weight_decay": 1e-3})
    model = recipe_model(keras, config, 3, SIZE)
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 53 and all(layer.momentum == 0.9 for layer in norms)
    last = [layer for layer in norms if layer.name.endswith("_3_bn")]
    assert len(last) == 16 and all(not layer.gamma.numpy().any() for layer in last)
    assert all(layer.gamma.numpy().all() for layer in norms if layer not in last)
    # The L2 term Keras adds is ours, on the same weights: wd * sum(w^2) / 2 over the conv and
    # classifier kernels (ours, computed independently by flowers_tl.model; fp32 sums: 1e-5).
    restore_into_keras(model, str(root), exclude_patterns=())
    decayed = resnet_v1_50(3, variant="keras", seed=5, weight_decay=1e-3)
    for name, variable in ours.variables_by_name.items():
        decayed.variables_by_name[name].assign(variable)
    assert float(sum(model.losses)) == pytest.approx(float(decayed.weight_decay_loss()), rel=1e-5)
    frozen = recipe_model(keras, config_lib.with_overrides(config, {"freeze_batch_norm": True}),
                          3, SIZE)
    assert not any(layer.trainable for layer in frozen.layers
                   if isinstance(layer, keras.layers.BatchNormalization))


def test_trainable_scopes_freeze_the_other_keras_layers_and_slim_names_are_refused():
    config = config_lib.with_overrides(config_lib.RunConfig(),
                                       {"trainable_scopes": "conv5_,predictions"})
    model = recipe_model(keras, config, 3, SIZE)
    trained = {layer.name for layer in model.layers if layer.weights and layer.trainable}
    assert "predictions" in trained and all(name.startswith(("conv5_", "predictions"))
                                            for name in trained)
    assert {weight.path.split("/")[0] for weight in model.trainable_weights} == trained
    slim = config_lib.with_overrides(config, {"trainable_scopes": "resnet_v1_50/block4"})
    with pytest.raises(ValueError, match="--trainable_scopes resnet_v1_50/block4: matches no "
                                         "Keras weight"):
        recipe_model(keras, slim, 3, SIZE)
