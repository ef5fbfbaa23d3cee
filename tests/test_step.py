"""flowers_tl.step: TF1 momentum against numpy, XLA against no XLA, two replicas against one,
fp16 loss scaling, no retracing. Every step here is built as flowers_tl.train builds it
(make_strategy, the strategy's scope, a global batch, distribute_batch).

ResNet-50 at 64 px, batch 4, 3 classes. Not smaller: at 32 px the last block is 1x1, so
training-mode BN normalises 4 numbers per channel and rounding noise decides the logits. One
plain step is traced once for the whole module (~8 s); the XLA compile of the step is most of
the file's time (~25 s on a quiet 2-core machine, ~45 s on a busy one).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from conftest import smooth_rgb  # noqa: E402
from flowers_tl.model import resnet_v1_50  # noqa: E402
from flowers_tl.step import (LossScale, MomentumSGD, distribute_batch, make_strategy,  # noqa: E402
                             make_train_step)

IMAGE_SIZE, BATCH_SIZE, NUM_CLASSES = 64, 4, 3
LEARNING_RATE = 1e-4  # small: the randomly initialised net is sharp, 1e-2 makes the loss jump
TESTS = os.path.dirname(os.path.abspath(__file__))


def _snapshot(model) -> dict[str, np.ndarray]:
    return {name: variable.numpy() for name, variable in model.variables_by_name.items()}


def _trainer_step(model_options=None, loss_scale=None, jit_compile=None):
    """(model, optimizer, step, strategy) as flowers_tl.train builds them on one CPU device."""
    strategy = make_strategy(0)
    with strategy.scope():
        model = resnet_v1_50(NUM_CLASSES, **(model_options or {}))
        optimizer = MomentumSGD(LEARNING_RATE, momentum=0.9)
        step = make_train_step(model, optimizer, strategy, BATCH_SIZE, loss_scale, jit_compile)
    return model, optimizer, step, strategy


def _run(step, strategy, images, labels) -> dict[str, float]:
    metrics = step(*distribute_batch(strategy, images, labels, len(images)))
    return {key: float(value) for key, value in metrics.items()}


def _count_traces(model) -> list[int]:
    """The model's Python body runs once per trace of the step: count it (each call appends)."""
    calls, features = [], model.features

    def counted(*args, **kwargs):
        calls.append(1)
        return features(*args, **kwargs)

    model.features = counted
    return calls


@pytest.fixture(scope="module")
def batch():
    images = np.stack([smooth_rgb(IMAGE_SIZE, IMAGE_SIZE, seed=seed) for seed in range(BATCH_SIZE)])
    labels = np.arange(BATCH_SIZE, dtype=np.int32) % NUM_CLASSES
    return images, labels


@pytest.fixture(scope="module")
def plain(batch):
    """A model, its optimizer and plain (no XLA) step, and the first step's before/after."""
    model, optimizer, step, strategy = _trainer_step()
    traces = _count_traces(model)
    before = _snapshot(model)
    metrics = _run(step, strategy, *batch)
    return {"model": model, "optimizer": optimizer, "step": step, "strategy": strategy,
            "traces": traces, "before": before, "metrics": metrics, "after": _snapshot(model)}


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


@pytest.mark.slow
def test_loss_decreases_when_overfitting_a_tiny_batch(plain, batch):
    losses = [plain["metrics"]["loss"]]
    losses += [_run(plain["step"], plain["strategy"], *batch)["loss"] for _ in range(5)]
    assert all(np.isfinite(losses))
    # Not monotone (training-mode BN on 4 images is noisy), but clearly downhill.
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses


@pytest.mark.slow
def test_the_step_applies_tf1_momentum_to_the_gradient_of_the_loss(plain, batch):
    """After a learning-rate halving (where TF1's and Keras' forms part): accum = 0.9 * accum +
    g; w -= lr * accum, with g from a tape of our own over the loss written out here."""
    model, optimizer, step = plain["model"], plain["optimizer"], plain["step"]
    variables = model.trainable_variables
    images, labels = tf.constant(batch[0]), tf.constant(batch[1])

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits)) + model.weight_decay_loss()
        return tape.gradient(loss, variables)

    names = [v.name.rsplit(":", 1)[0] for v in variables]
    weights = {name: v.numpy() for name, v in zip(names, variables)}
    accumulators = {name: optimizer.slots[name].numpy() for name in names}
    assert all(np.abs(accumulators[name]).max() > 0 for name in names)  # earlier steps ran
    grads = dict(zip(names, (g.numpy() for g in gradients())))
    optimizer.learning_rate.assign(LEARNING_RATE / 2)
    try:
        _run(step, plain["strategy"], *batch)
    finally:
        optimizer.learning_rate.assign(LEARNING_RATE)
    for name, variable in zip(names, variables):
        accumulator = 0.9 * accumulators[name] + grads[name]
        # Two graphs of the same float32 sums (ours and the step's), not bitwise equal:
        # training-mode BN's gamma/beta gradients are small differences of large sums, moved by
        # the summation order (measured: up to 2.6% in block4's gammas, and 0.12% in the convs
        # they feed). Keras' velocity form would miss by 0.45 * lr * accum, over 40% here.
        tolerance = 0.1 if "BatchNorm" in name else 1e-2
        for got, expected in ((optimizer.slots[name].numpy(), accumulator),
                              ((weights[name] - variable.numpy()) / (LEARNING_RATE / 2),
                               accumulator)):
            error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
            assert error < tolerance, (name, error)


@pytest.mark.slow
def test_xla_step_matches_plain_step(plain, batch):
    model, optimizer, step, strategy = _trainer_step({"xla": True}, jit_compile=True)
    np.testing.assert_array_equal(_snapshot(model)["resnet_v1_50/conv1/weights"],
                                  plain["before"]["resnet_v1_50/conv1/weights"])  # same seed
    metrics = _run(step, strategy, *batch)
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


@pytest.mark.slow
def test_learning_rate_assignment_takes_effect_without_retracing(plain, batch):
    model, optimizer, step = plain["model"], plain["optimizer"], plain["step"]
    traces = len(plain["traces"])
    iterations = int(optimizer.iterations)
    trainable = {v.name: v.numpy() for v in model.trainable_variables}
    moving_mean = model.variables_by_name["resnet_v1_50/conv1/BatchNorm/moving_mean"]
    moving_mean_before = moving_mean.numpy()

    optimizer.learning_rate.assign(0.0)
    try:
        _run(step, plain["strategy"], *batch)
    finally:
        optimizer.learning_rate.assign(LEARNING_RATE)
    for variable in model.trainable_variables:  # var -= 0 * accum leaves every weight as it was
        np.testing.assert_array_equal(variable.numpy(), trainable[variable.name])
    assert not np.array_equal(moving_mean.numpy(), moving_mean_before)  # the step did run
    _run(step, plain["strategy"], *batch)
    assert not np.array_equal(model.trainable_variables[0].numpy(),
                              trainable[model.trainable_variables[0].name])
    assert int(optimizer.iterations) == iterations + 2
    assert len(plain["traces"]) == traces


@pytest.mark.slow
def test_a_smaller_last_batch_retraces_once_not_per_size(plain, batch):
    images, labels = batch
    traces = len(plain["traces"])
    for size in (3, 2):
        metrics = _run(plain["step"], plain["strategy"], images[:size], labels[:size])
        assert np.isfinite(metrics["loss"])
    # reduce_retracing: the second shape traces a [None, ...] function, which the third reuses.
    assert len(plain["traces"]) <= traces + 1


def test_jit_compile_must_match_the_model_config():
    with pytest.raises(ValueError, match="xla=True but jit_compile=False"):
        make_train_step(resnet_v1_50(NUM_CLASSES, xla=True), MomentumSGD(0.1), jit_compile=False)



@pytest.mark.slow
def test_fp16_dynamic_loss_scale_halves_and_skips_an_overflowing_step(plain, batch):
    loss_scale = LossScale("dynamic", growth_interval=2)
    model, optimizer, step, strategy = _trainer_step({"precision": "fp16"}, loss_scale)
    assert float(loss_scale.scale) == 2.0 ** 15  # the documented start
    initial = {v.name: v.numpy() for v in model.trainable_variables}

    # 2^100 is finite in float32 (the scale, the scaled loss) but no float16 gradient survives
    # it (float16's largest is 65504): the step must overflow, skip and halve.
    loss_scale.scale.assign(2.0 ** 100)
    metrics = _run(step, strategy, *batch)
    assert not metrics["finite"] and np.isfinite(metrics["loss"])  # the loss is reported unscaled
    assert float(loss_scale.scale) == 2.0 ** 99
    assert int(loss_scale.skipped_steps) == 1 and int(loss_scale.good_steps) == 0
    assert int(optimizer.iterations) == 0
    for variable in model.trainable_variables:
        np.testing.assert_array_equal(variable.numpy(), initial[variable.name])
        assert not np.any(optimizer.slots[variable.name.rsplit(":", 1)[0]].numpy())

    # A scale that fits: the step applies, and after growth_interval (2) good steps it doubles.
    loss_scale.scale.assign(8.0)
    metrics = _run(step, strategy, *batch)
    assert metrics["finite"] and float(loss_scale.scale) == 8.0
    assert int(loss_scale.good_steps) == 1 and int(optimizer.iterations) == 1
    # The applied update is the unscaled gradient: the classifier (fp32, fed fp16 features) moves
    # as the fp32 step's first update did, within what fp16 rounding through 16 units of
    # training-mode BN does to the features (measured: 6.6% in norm); an update still scaled
    # by 8 would be off by 700%, one unscaled twice by 88%.
    for name in ("resnet_v1_50/logits/weights", "resnet_v1_50/logits/biases"):
        update = initial[f"{name}:0"] - model.variables_by_name[name].numpy()
        expected = plain["before"][name] - plain["after"][name]
        assert np.linalg.norm(update - expected) / np.linalg.norm(expected) < 0.25, name
    _run(step, strategy, *batch)
    assert float(loss_scale.scale) == 16.0 and int(loss_scale.good_steps) == 0
    assert int(loss_scale.skipped_steps) == 1


TWO_DEVICES = textwrap.dedent("""
    import sys
    import numpy as np
    from flowers_tl.step import MomentumSGD, distribute_batch, make_strategy, make_train_step
    two = make_strategy(0, cpu_devices=2)  # first: logical devices exist only before TF starts
    one = make_strategy(0)
    from conftest import calibrate_batch_norm, smooth_rgb
    from flowers_tl.model import resnet_v1_50

    images = np.stack([smooth_rgb(32, 32, seed) for seed in range(8)])
    labels = np.arange(8, dtype=np.int32) % 3
    pretrained = resnet_v1_50(3, seed=1)
    calibrate_batch_norm(pretrained, images)
    for name, variable in pretrained.variables_by_name.items():
        if "conv3/BatchNorm/gamma" in name:
            variable.assign(variable * 0.2)  # small residual branches: a stable network
    initial = {name: v.numpy() for name, v in pretrained.variables_by_name.items()}
    saved = {"initial/" + name: value for name, value in initial.items()}
    for label, strategy in (("one", one), ("two", two)):
        per_device = 8 // strategy.num_replicas_in_sync
        with strategy.scope():
            model = resnet_v1_50(3, seed=1, freeze_batch_norm=True, weight_decay=1e-2)
            for name, variable in model.variables_by_name.items():
                variable.assign(initial[name])
            optimizer = MomentumSGD(0.01, momentum=0.9)
            step = make_train_step(model, optimizer, strategy, global_batch_size=8)
        for learning_rate in (0.01, 0.005):
            optimizer.learning_rate.assign(learning_rate)
            metrics = step(*distribute_batch(strategy, images, labels, per_device))
        saved[label + "/replicas"] = strategy.num_replicas_in_sync
        saved.update({f"{label}/metric/{key}": float(value) for key, value in metrics.items()})
        saved.update({f"{label}/{name}": v.numpy() for name, v in model.variables_by_name.items()})
        saved.update({f"{label}/slot/{name}": s.numpy() for name, s in optimizer.slots.items()})
    np.savez(sys.argv[1], **saved)
""")


@pytest.mark.slow
def test_two_mirrored_cpu_devices_match_one_device_at_the_same_global_batch(tmp_path):
    """Two logical CPUs with 4 images each against one with all 8, two steps. Frozen BN: per-
    replica batch statistics over 4 images are not those over 8 (no data-parallel BN syncs
    them); in inference mode each image's loss is independent of the others, so the summed
    gradients must agree. weight_decay 1e-2 makes the weight-decay share (added once per global
    batch, split over replicas) a visible part of every update."""
    out = tmp_path / "two_devices.npz"
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
        [TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(out)], env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = np.load(out)
    assert (int(saved["one/replicas"]), int(saved["two/replicas"])) == (1, 2)
    for key in ("loss", "cross_entropy"):  # the same sums in another order: float32 rounding
        assert saved[f"two/metric/{key}"] == pytest.approx(saved[f"one/metric/{key}"], rel=1e-5)
    assert saved["two/metric/accuracy"] == saved["one/metric/accuracy"]
    names = [key[len("initial/"):] for key in saved.files if key.startswith("initial/")]
    moved = 0
    for name in names:
        initial = saved[f"initial/{name}"]
        update_one, update_two = saved[f"one/{name}"] - initial, saved[f"two/{name}"] - initial
        # Two summation orders of the same float32 gradients: the updates agree within 1e-3 of
        # their size (plus float32 rounding of the weights themselves). A loss divided by the
        # per-device batch would double them, weight decay counted per replica would add 1e-2 *
        # lr * w per step.
        bound = 1e-3 * np.abs(update_one).max() + 1e-6 * np.abs(initial).max()
        assert np.abs(update_one - update_two).max() <= bound, name
        if f"one/slot/{name}" in saved.files:
            slot_one, slot_two = saved[f"one/slot/{name}"], saved[f"two/slot/{name}"]
            assert np.abs(slot_one - slot_two).max() <= 1e-3 * np.abs(slot_one).max() + 1e-7, name
        moved += bool(np.abs(update_one).max() > 0)
    assert moved > 100  # the weights really were updated
