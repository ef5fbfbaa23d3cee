"""Recipe levers, each against an independent formula: the schedule's shapes and label
smoothing in the train step (on a one-layer model, so the loss is checkable by hand)."""
import math
import types

import numpy as np
import pytest
import tensorflow as tf

from flowers_tl.config import parse_lr_schedule
from flowers_tl.step import MomentumSGD, make_train_step
from flowers_tl.train import learning_rate_at_step


@pytest.mark.parametrize("shape", ["cosine", "linear"])
def test_cosine_and_linear_go_from_the_first_rate_to_zero_after_the_warm_up(shape):
    schedule = parse_lr_schedule("4:0.1,8:0.01")  # shape: the first rate, down to 0 at epoch 8
    rates = [learning_rate_at_step(schedule, step, 10, warmup_epochs=2, shape=shape)
             for step in range(80)]
    # the warm-up ramp: the shaped rate (still the first rate before the warm-up ends) x ramp
    assert rates[:20] == pytest.approx([0.1 * (step + 1) / 20 for step in range(20)])
    for step in range(20, 80):
        progress = (step / 10 - 2) / 6
        expected = 0.1 * (0.5 * (1 + math.cos(math.pi * progress)) if shape == "cosine"
                          else 1 - progress)
        assert rates[step] == pytest.approx(expected), step
    assert learning_rate_at_step(schedule, 200, 10, 2, shape) == pytest.approx(0.0)


def test_step_shape_is_the_piecewise_schedule():
    schedule = parse_lr_schedule("4:0.1,8:0.01")
    assert [learning_rate_at_step(schedule, s, 10, 0, "step") for s in (0, 39, 40, 79, 99)] == \
        [0.1, 0.1, 0.01, 0.01, 0.01]


class Linear(tf.Module):
    """logits = x W: the smallest model the step accepts."""

    def __init__(self, weights):
        super().__init__(name="linear")
        self.config = types.SimpleNamespace(xla=False)
        self.kernel = tf.Variable(weights, name="kernel")

    def __call__(self, images, training=False):
        return tf.matmul(tf.cast(images, tf.float32), self.kernel)

    def weight_decay_loss(self):
        return tf.constant(0.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_changes_the_loss_as_its_formula_says_and_nothing_else(smoothing):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
    weights = rng.normal(size=(4, 3)).astype(np.float32)
    model = Linear(weights)
    step = make_train_step(model, MomentumSGD(0.0), label_smoothing=smoothing)  # lr 0: no update
    metrics = step(tf.constant(images), tf.constant(labels))
    logits = images @ weights
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    targets = np.eye(3)[labels] * (1 - smoothing) + smoothing / 3
    expected = -(targets * log_probs).sum(1).mean()
    assert float(metrics["cross_entropy"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx((logits.argmax(1) == labels).mean())
    np.testing.assert_array_equal(model.kernel.numpy(), weights)  # learning rate 0
