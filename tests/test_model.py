"""The network itself: layouts, batch-norm implementations and modes, precisions, metadata.

Models are calibrated (conftest.calibrate_batch_norm) so activations are O(1) and differences
between implementations are not hidden by saturation or blown up by explosion. Images 64 px.
"""

import numpy as np
import pytest
import tensorflow as tf

from conftest import calibrate_batch_norm, smooth_rgb
from flowers_tl.model import get_model_meta, resnet_v1_50

IMAGES = np.stack([smooth_rgb(64, 64, seed) for seed in range(2)])
LABELS = tf.constant([0, 2])


def calibrated(**options):
    """A random network with BN statistics from IMAGES and small residual branches (conv3 BN
    gamma/beta x 0.2, as trained ResNets have): without them a random ResNet amplifies any
    perturbation ~1.4x per unit, and comparisons would measure the weights, not the code."""
    model = resnet_v1_50(3, seed=1, **options)
    calibrate_batch_norm(model, IMAGES)
    for name, variable in model.variables_by_name.items():
        if "conv3/BatchNorm/gamma" in name or "conv3/BatchNorm/beta" in name:
            variable.assign(variable * 0.2)
    return model


def copy_weights(source, target):
    for name, variable in source.variables_by_name.items():
        target.variables_by_name[name].assign(variable)


def sgd_step(model, learning_rate=0.1, jit_compile=False):
    """One plain SGD step on cross-entropy + weight decay, in training mode."""
    @tf.function(jit_compile=jit_compile)
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            loss += model.weight_decay_loss()
        gradients = tape.gradient(loss, model.trainable_variables)
        for variable, gradient in zip(model.trainable_variables, gradients):
            variable.assign_sub(learning_rate * tf.cast(gradient, tf.float32))
        return loss
    return step(tf.constant(IMAGES), LABELS)


def snapshot(model):
    return {name: v.numpy().copy() for name, v in model.variables_by_name.items()}


def assert_same_update(before, model_a, model_b, relative):
    """Each variable's change (weights and BN moving statistics) agrees within `relative` of
    that change's size: the gradients of a randomly initialised net are large and training-mode
    BN over 2 images amplifies float32 summation-order differences, so absolute bounds would
    say more about the learning rate than about the implementations."""
    for name, value in before.items():
        change_a = model_a.variables_by_name[name].numpy() - value
        change_b = model_b.variables_by_name[name].numpy() - value
        # plus float32 rounding of the variable itself (moving statistics barely move)
        bound = relative * np.abs(change_a).max() + 1e-6 * np.abs(value).max() + 1e-7
        assert np.abs(change_a - change_b).max() <= bound, name


def test_slim_topology_has_the_checkpoints_267_tensors_and_parameter_count():
    model = resnet_v1_50(1000)
    assert len(model.variables_by_name) == 267
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == 25_557_032
    assert model.variables_by_name["resnet_v1_50/block1/unit_1/bottleneck_v1/shortcut/weights"].shape == (1, 1, 64, 256)
    assert all(v.dtype == tf.float32 for v in model.variables_by_name.values())
    assert resnet_v1_50(1000)(IMAGES).shape == (2, 1000)


def test_keras_topology_matches_keras_parameter_count():
    import keras

    ours = resnet_v1_50(1000, variant="keras")
    reference = keras.applications.ResNet50(weights=None)
    assert sum(int(np.prod(v.shape)) for v in ours.trainable_variables) == sum(
        int(np.prod(w.shape)) for w in reference.trainable_weights)
    assert len(ours.variables_by_name) == len(reference.weights)


def test_model_meta():
    meta = get_model_meta("slim")
    assert meta.logits_pattern == "resnet_v1_50/logits" and meta.default_image_size == 224
    assert meta.channel_means == (123.68, 116.78, 103.94) and meta.batch_norm_epsilon == 1e-5
    assert get_model_meta("keras").channel_order == "BGR"
    with pytest.raises(ValueError, match="variant"):
        get_model_meta("caffe")


def test_nchw_without_xla_on_cpu_is_refused_when_built():
    with pytest.raises(ValueError, match="NCHW on a CPU needs --xla true"):
        resnet_v1_50(3, data_format="NCHW")
    with pytest.raises(ValueError, match="precision"):
        resnet_v1_50(3, precision="fp8")


@pytest.mark.slow
def test_nchw_under_xla_equals_nhwc_forward_and_one_sgd_step():
    nhwc = calibrated()
    nchw = resnet_v1_50(3, seed=1, data_format="NCHW", xla=True)
    copy_weights(nhwc, nchw)
    forward = lambda model: tf.function(lambda x: model(x), jit_compile=True)(tf.constant(IMAGES))
    reference = forward(nhwc).numpy()
    # Same XLA arithmetic in both layouts: 1e-5 of the logit scale.
    assert np.abs(forward(nchw).numpy() - reference).max() <= 1e-5 * np.abs(reference).max()
    before = snapshot(nhwc)
    loss_nhwc = sgd_step(nhwc, jit_compile=True)
    loss_nchw = sgd_step(nchw, jit_compile=True)
    assert abs(float(loss_nhwc) - float(loss_nchw)) <= 1e-5 * abs(float(loss_nhwc))
    assert_same_update(before, nhwc, nchw, relative=1e-3)


@pytest.mark.slow
def test_fused_equals_unfused_batch_norm_in_inference_and_one_sgd_step():
    fused = calibrated()
    unfused = resnet_v1_50(3, seed=1, batch_norm_fused=False)
    copy_weights(fused, unfused)
    a, b = fused(IMAGES).numpy(), unfused(IMAGES).numpy()
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    before = snapshot(fused)
    loss_fused, loss_unfused = sgd_step(fused), sgd_step(unfused)
    # Batch statistics over 2 images are summed in different orders: relative 1e-4 on the loss.
    assert abs(float(loss_fused) - float(loss_unfused)) <= 1e-4 * abs(float(loss_fused))
    assert_same_update(before, fused, unfused, relative=1e-3)


def test_moving_statistics_follow_momentum_0997():
    model = calibrated()
    name = "resnet_v1_50/conv1/BatchNorm/moving_mean"
    before = model.variables_by_name[name].numpy().copy()
    # conv1's batch statistics do not depend on any BN: compute them independently.
    conv = tf.nn.conv2d(tf.cast(IMAGES, tf.float32) - [123.68, 116.78, 103.94],
                        model.variables_by_name["resnet_v1_50/conv1/weights"], 2,
                        [[0, 0], [3, 3], [3, 3], [0, 0]])
    batch_mean = tf.reduce_mean(conv, [0, 1, 2]).numpy()
    model(IMAGES, training=True)
    expected = 0.997 * before + 0.003 * batch_mean
    np.testing.assert_allclose(model.variables_by_name[name].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_frozen_batch_norm_trains_in_inference_mode():
    model = calibrated(freeze_batch_norm=True)
    stats = {n: v.numpy().copy() for n, v in model.variables_by_name.items() if "moving" in n}
    np.testing.assert_allclose(model(IMAGES, training=True), model(IMAGES, training=False), rtol=1e-6)
    sgd_step(model)
    for name, value in stats.items():
        np.testing.assert_array_equal(model.variables_by_name[name].numpy(), value)


@pytest.mark.slow
@pytest.mark.parametrize("precision, tolerance", [("fp16", 1e-2), ("bf16", 5e-2)])
def test_mixed_precision_stays_close_to_fp32(precision, tolerance):
    # On the stable calibrated network fp16 (11-bit significand) and bf16 (8-bit) stay within
    # 1e-2 and 5e-2 of the logit scale.
    reference_model = calibrated()
    mixed = resnet_v1_50(3, seed=1, precision=precision)
    copy_weights(reference_model, mixed)
    reference = reference_model(IMAGES).numpy()
    logits = mixed(IMAGES)
    assert logits.dtype == tf.float32
    assert all(v.dtype == tf.float32 for v in mixed.trainable_variables)  # fp32 master weights
    assert np.abs(logits.numpy() - reference).max() <= tolerance * np.abs(reference).max()
    loss = sgd_step(mixed, learning_rate=0.01)
    assert np.isfinite(float(loss))


def test_weight_decay_is_l2_on_conv_kernels_only():
    model = resnet_v1_50(3, weight_decay=1e-3)
    expected = sum(float(np.sum(v.numpy() ** 2)) / 2 for name, v in model.variables_by_name.items()
                   if name.endswith("/weights"))
    assert abs(float(model.weight_decay_loss()) - 1e-3 * expected) <= 1e-6 * expected
    assert len(model.conv_kernel_names) == 54  # 53 convs + the logits
    keras_model = resnet_v1_50(3, variant="keras", weight_decay=0.0)
    assert float(keras_model.weight_decay_loss()) == 0.0


def test_uint8_and_float_inputs_agree():
    model = calibrated()
    np.testing.assert_allclose(model(IMAGES), model(IMAGES.astype(np.float32)), rtol=1e-6)


@pytest.mark.parametrize("variant, suffix", [("slim", "conv3/BatchNorm/gamma"), ("keras", "_3_bn/gamma")])
def test_zero_init_residual_starts_every_unit_as_its_shortcut(variant, suffix):
    model = resnet_v1_50(3, seed=1, variant=variant, zero_init_residual=True)
    zeros = [n for n, v in model.variables_by_name.items() if n.endswith("gamma") and not v.numpy().any()]
    assert len(zeros) == 16 and all(n.endswith(suffix) for n in zeros)  # one per unit
    # gamma = 0 alone makes a branch a constant (its beta); beta = 0 too makes it nothing.
    assert not any(model.variables_by_name[n[:-len("gamma")] + "beta"].numpy().any() for n in zeros)
    before = model(IMAGES).numpy()
    # The residual branches contribute nothing yet: changing their first convs changes nothing.
    for name, variable in model.variables_by_name.items():
        if name.endswith(("conv1/weights", "_1_conv/kernel")) and "block" in name:
            variable.assign(variable * 3.0)
    np.testing.assert_array_equal(model(IMAGES).numpy(), before)
    # ...while the shortcut path does carry the signal (the output is not constant anyway).
    shortcut = {"slim": "resnet_v1_50/block1/unit_1/bottleneck_v1/shortcut/weights",
                "keras": "conv2_block1_0_conv/kernel"}[variant]
    model.variables_by_name[shortcut].assign(model.variables_by_name[shortcut] * 3.0)
    assert np.abs(model(IMAGES).numpy() - before).max() > 1e-3 * np.abs(before).max()


def test_bf16_small_convs_take_their_weight_gradient_in_fp32():
    # flowers_tl.model.BF16_FP32_WEIGHT_GRAD_BELOW: on a CPU, a bf16 conv whose output has
    # fewer than 64 positions per image computes its kernel gradient in fp32. Forward values
    # are the same ops (bitwise equal); gradients agree with the all-bf16 path within bf16's
    # rounding, and the small layers' kernel gradients are at least as close to fp32's.
    assert resnet_v1_50(3, seed=1).fp32_small_weight_grads is False  # fp32: nothing to do
    reference = calibrated()
    models = {}
    for fp32_grads in (True, False):
        model = resnet_v1_50(3, seed=1, precision="bf16")
        copy_weights(reference, model)
        model.fp32_small_weight_grads = fp32_grads
        models[fp32_grads] = model
    picked = []
    original = models[True]._conv_fp32_weight_grad
    models[True]._conv_fp32_weight_grad = lambda x, v, *a: picked.append(v.name) or original(x, v, *a)

    def gradients(model):
        with tf.GradientTape() as tape:
            logits = model(tf.constant(IMAGES), training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(LABELS, logits))
        names = [v.name for v in model.trainable_variables]
        return logits.numpy(), dict(zip(names, tape.gradient(loss, model.trainable_variables)))

    (logits_a, grads_a), (logits_b, grads_b) = gradients(models[True]), gradients(models[False])
    _, grads_fp32 = gradients(reference)
    np.testing.assert_array_equal(logits_a, logits_b)
    # 64 px: block 2's strided last unit from its conv2 on (8x8 -> 4x4), blocks 3 (4x4) and
    # 4 (2x2) with their projection shortcuts (the logits are a matmul)
    expected = {f"resnet_v1_50/block2/unit_4/bottleneck_v1/conv{i}/weights:0" for i in (2, 3)}
    expected |= {v.name for v in reference.trainable_variables if v.name.endswith("weights:0")
                 and any(f"/{b}/" in v.name for b in ("block3", "block4"))}
    assert set(picked) == expected and len(expected) == 2 + 19 + 10
    for name, grad in grads_a.items():
        grad, other, exact = (g.numpy().astype(np.float64) for g in
                              (grad, grads_b[name], grads_fp32[name]))
        scale = np.abs(exact).max() + 1e-12
        assert np.abs(grad - other).max() <= 5e-2 * scale, name
        if name in picked:
            assert np.abs(grad - exact).max() <= np.abs(other - exact).max() * 1.01 + 1e-6 * scale, name
