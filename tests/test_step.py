"""flowers_tl.step: TF1 momentum against numpy, overfitting, XLA against no XLA, no retracing.

ResNet-50 at 64 px, batch 4, 3 classes. Not smaller: at 32 px the last block is 1x1, so
training-mode BN normalises 4 numbers per channel and rounding noise decides the logits. One
plain step is traced once for the whole module (~8 s); the XLA compile of the step is most of
the file's time (~25 s on a quiet 2-core machine, ~45 s on a busy one).
"""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from conftest import smooth_rgb  # noqa: E402
from flowers_tl.model import resnet_v1_50  # noqa: E402
from flowers_tl.step import MomentumSGD, make_train_step  # noqa: E402

IMAGE_SIZE, BATCH_SIZE, NUM_CLASSES = 64, 4, 3
LEARNING_RATE = 1e-4  # small: the randomly initialised net is sharp, 1e-2 makes the loss jump


def _snapshot(model) -> dict[str, np.ndarray]:
    return {name: variable.numpy() for name, variable in model.variables_by_name.items()}


@pytest.fixture(scope="module")
def batch():
    images = np.stack([smooth_rgb(IMAGE_SIZE, IMAGE_SIZE, seed=seed) for seed in range(BATCH_SIZE)])
    labels = np.arange(BATCH_SIZE, dtype=np.int32) % NUM_CLASSES
    return tf.constant(images), tf.constant(labels)


@pytest.fixture(scope="module")
def plain(batch):
    """A model, its optimizer and plain (no XLA) step, and the first step's before/after."""
    model = resnet_v1_50(NUM_CLASSES)
    optimizer = MomentumSGD(LEARNING_RATE, momentum=0.9)
    step = make_train_step(model, optimizer)
    before = _snapshot(model)
    metrics = {key: float(value) for key, value in step(*batch).items()}
    return {"model": model, "optimizer": optimizer, "step": step,
            "before": before, "metrics": metrics, "after": _snapshot(model)}


def test_momentum_matches_tf1_formula_in_numpy():
    class Toy(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable([1.0, -2.0, 3.0], name="toy/weights")

    toy, scale = Toy(), np.array([0.5, 1.0, 2.0], np.float32)
    optimizer = MomentumSGD(0.1, momentum=0.9)

    @tf.function  # slots are created lazily, inside the first call's trace
    def apply():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(scale * toy.weights ** 2) / 2
        optimizer.apply([(tape.gradient(loss, toy.weights), toy.weights)])

    weights, accumulator = np.array([1.0, -2.0, 3.0], np.float32), np.zeros(3, np.float32)
    # The lr change before step 3 is where TF1's form differs from Keras' velocity form.
    traces = []
    for learning_rate in (0.1, 0.1, 0.05):
        optimizer.learning_rate.assign(learning_rate)
        apply()
        traces.append(apply.experimental_get_tracing_count())
        accumulator = 0.9 * accumulator + scale * weights
        weights = weights - learning_rate * accumulator
    np.testing.assert_allclose(toy.weights.numpy(), weights, rtol=1e-6)  # float32 rounding only
    np.testing.assert_allclose(optimizer.slots["toy/weights"].numpy(), accumulator, rtol=1e-6)
    assert optimizer.slots["toy/weights"].name == "toy/weights/Momentum:0"
    assert int(optimizer.iterations) == 3
    # The first call traces twice (once to create the slots, once without creating); the new
    # learning rates are read from the variable, not baked into a new trace.
    assert traces[1] == traces[2] == traces[0]


def test_loss_decreases_when_overfitting_a_tiny_batch(plain, batch):
    losses = [plain["metrics"]["loss"]]
    losses += [float(plain["step"](*batch)["loss"]) for _ in range(5)]
    assert all(np.isfinite(losses))
    # Not monotone (training-mode BN on 4 images is noisy), but clearly downhill.
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses


def test_xla_step_matches_plain_step(plain, batch):
    model = resnet_v1_50(NUM_CLASSES, xla=True)  # same seed: same initial values
    np.testing.assert_array_equal(_snapshot(model)["resnet_v1_50/conv1/weights"],
                                  plain["before"]["resnet_v1_50/conv1/weights"])
    step = make_train_step(model, MomentumSGD(LEARNING_RATE, momentum=0.9), jit_compile=True)
    metrics = {key: float(value) for key, value in step(*batch).items()}
    after = _snapshot(model)

    # The forward pass is well conditioned: loss and BN statistics agree to float32 rounding
    # (measured: 1e-6 relative with TensorFlow's default kernels, 2e-5 with oneDNN's, which
    # the plain step uses and XLA does not).
    for key in ("loss", "cross_entropy", "accuracy"):
        assert metrics[key] == pytest.approx(plain["metrics"][key], rel=1e-4), key
    for name in after:
        if "moving_" in name:
            np.testing.assert_allclose(after[name], plain["after"][name], rtol=1e-4, atol=1e-5,
                                       err_msg=name)

    # The first TF1 momentum update is exactly -lr * gradient.
    def gradient(snapshot, name):
        return (plain["before"][name] - snapshot[name]) / LEARNING_RATE

    # The classifier's gradient (features x softmax error) is well conditioned too: measured
    # max 1.3e-4 absolute on entries up to ~1 (7e-5 in norm); reading it back from float32
    # weights (w - 1e-4 * g, w ~ 0.03) alone costs ~2e-5.
    for name in ("resnet_v1_50/logits/weights", "resnet_v1_50/logits/biases"):
        np.testing.assert_allclose(gradient(after, name), gradient(plain["after"], name),
                                   rtol=1e-3, atol=1e-3, err_msg=name)
    # Below, training-mode BN makes each gradient a small difference of large sums, so the
    # summation order (oneDNN vs XLA; even graph vs eager without XLA) moves it by a few
    # percent (measured: at most 3%, in BN betas). A wrong gradient would be off by ~100%.
    for variable in model.trainable_variables:
        name = variable.name.rsplit(":", 1)[0]
        expected = gradient(plain["after"], name)
        error = np.linalg.norm(gradient(after, name) - expected) / np.linalg.norm(expected)
        assert error < 0.1, (name, error)


def test_learning_rate_assignment_takes_effect_without_retracing(plain, batch):
    model, optimizer, step = plain["model"], plain["optimizer"], plain["step"]
    traces = step.experimental_get_tracing_count()
    iterations = int(optimizer.iterations)
    trainable = {v.name: v.numpy() for v in model.trainable_variables}
    moving_mean = model.variables_by_name["resnet_v1_50/conv1/BatchNorm/moving_mean"]
    moving_mean_before = moving_mean.numpy()

    optimizer.learning_rate.assign(0.0)
    try:
        step(*batch)
    finally:
        optimizer.learning_rate.assign(LEARNING_RATE)
    for variable in model.trainable_variables:  # var -= 0 * accum leaves every weight as it was
        np.testing.assert_array_equal(variable.numpy(), trainable[variable.name])
    assert not np.array_equal(moving_mean.numpy(), moving_mean_before)  # the step did run
    step(*batch)
    assert not np.array_equal(model.trainable_variables[0].numpy(),
                              trainable[model.trainable_variables[0].name])
    assert int(optimizer.iterations) == iterations + 2
    assert step.experimental_get_tracing_count() == traces


def test_a_smaller_last_batch_retraces_once_not_per_size(plain, batch):
    images, labels = batch
    step = plain["step"]
    traces = step.experimental_get_tracing_count()
    for size in (3, 2):
        metrics = step(images[:size], labels[:size])
        assert np.isfinite(float(metrics["loss"]))
    # reduce_retracing: the second shape traces a [None, ...] function, which the third reuses.
    assert step.experimental_get_tracing_count() <= traces + 1


def test_jit_compile_must_match_the_model_config():
    with pytest.raises(ValueError, match="xla=True but jit_compile=False"):
        make_train_step(resnet_v1_50(NUM_CLASSES, xla=True), MomentumSGD(0.1))
