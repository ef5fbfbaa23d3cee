"""Recipe levers, each against an independent formula: the schedule's shapes and label
smoothing in the train step (on a one-layer model, so the loss is checkable by hand);
progressive resizing, the evaluation size, the classifier's learning rate and the weight
average: each knob checked, shown, and changing what it says and nothing else (toy models for
the step, the real readers for the input). Whole runs of them: test_levers_e2e.py."""
import json
import math
import types

import numpy as np
import pytest
import tensorflow as tf

from flowers_tl import config as config_lib
from flowers_tl.config import (ConfigError, ReaderConfig, image_size_at_epoch, parse_lr_schedule,
                               resolve)
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


def _photos(count=16, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_random_grayscale_turns_the_chosen_images_into_pil_luma_and_leaves_the_rest():
    from PIL import Image

    from flowers_tl.step import random_grayscale_images
    images = _photos()
    seed = tf.constant([3, 7], tf.int64)
    assert np.array_equal(random_grayscale_images(tf.constant(images), 0.0, seed).numpy(), images)
    gray = random_grayscale_images(tf.constant(images), 1.0, seed).numpy()
    # PIL's "L" conversion (ITU-R 601 luma), an independent implementation; rounding differs
    # by at most one level.
    reference = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in images])
    assert gray.dtype == np.uint8 and np.abs(gray[..., 0].astype(int) - reference).max() <= 1
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    half = random_grayscale_images(tf.constant(_photos(200)), 0.5, seed).numpy()
    chosen = np.all(half[..., 0] == half[..., 1], axis=(1, 2)) & \
        np.all(half[..., 1] == half[..., 2], axis=(1, 2))
    assert 70 <= chosen.sum() <= 130  # Binomial(200, 0.5): 6 standard deviations
    assert np.array_equal(half[~chosen], _photos(200)[~chosen])  # the others untouched
    again = random_grayscale_images(tf.constant(_photos(200)), 0.5, seed).numpy()
    other = random_grayscale_images(tf.constant(_photos(200)), 0.5, seed + 1).numpy()
    assert np.array_equal(half, again) and not np.array_equal(half, other)


class MeanColour(Linear):
    """logits = (per-channel image mean) W: a model that sees colour."""

    def __call__(self, images, training=False):
        return tf.matmul(tf.reduce_mean(tf.cast(images, tf.float32), [1, 2]), self.kernel)


def test_the_step_with_random_grayscale_1_trains_on_the_grayscale_images():
    from flowers_tl.step import random_grayscale_images
    images = _photos(6)
    labels = tf.constant([0, 1, 2, 0, 1, 2], tf.int32)
    weights = np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32) / 100
    gray = random_grayscale_images(tf.constant(images), 1.0, tf.constant([0, 0], tf.int64))
    with_lever = make_train_step(MeanColour(weights), MomentumSGD(0.0), random_grayscale=1.0)
    plain = make_train_step(MeanColour(weights), MomentumSGD(0.0))
    lever = with_lever(tf.constant(images), labels)
    assert float(lever["cross_entropy"]) == pytest.approx(
        float(plain(gray, labels)["cross_entropy"]), rel=1e-6)
    assert float(lever["cross_entropy"]) != pytest.approx(
        float(plain(tf.constant(images), labels)["cross_entropy"]), rel=1e-6)
    off = make_train_step(MeanColour(weights), MomentumSGD(0.0), random_grayscale=0.0)
    assert float(off(tf.constant(images), labels)["cross_entropy"]) == pytest.approx(
        float(plain(tf.constant(images), labels)["cross_entropy"]), rel=1e-7)


# ====================================================================== the new levers' knobs
# Progressive resizing, evaluation size (FixRes), the classifier's rate, the weight average:
# each parsed and checked with a one-line error naming the flag, off by default, shown in the
# printed configuration.

LEVER_ERRORS = [
    ({"image_size": 64, "progressive_min_size": 16},
     "--progressive_min_size 16: must be at least 32 px and below --image_size 64"),
    ({"image_size": 64, "progressive_min_size": 64},
     "--progressive_min_size 64: must be at least 32 px and below --image_size 64"),
    ({"progressive_until": 0.0}, "--progressive_until 0.0: must be in (0, 1]"),
    ({"progressive_until": 1.5}, "--progressive_until 1.5: must be in (0, 1]"),
    ({"eval_image_size": 16}, "--eval_image_size 16: ResNet-50 needs 32 to 1024 px"),
    ({"eval_image_size": 2048}, "--eval_image_size 2048: ResNet-50 needs 32 to 1024 px"),
    ({"classifier_lr_multiplier": 0.0},
     "--classifier_lr_multiplier 0.0: must be a finite number > 0"),
    ({"classifier_lr_multiplier": float("nan")},
     "--classifier_lr_multiplier nan: must be a finite number > 0"),
    ({"classifier_lr_multiplier": float("inf")},
     "--classifier_lr_multiplier inf: must be a finite number > 0"),
    ({"ema_decay": 1.0}, "--ema_decay 1.0: must be in [0, 1) (none or 0: off)"),
    ({"ema_decay": -0.5}, "--ema_decay -0.5: must be in [0, 1) (none or 0: off)"),
    ({"random_grayscale": 1.5}, "--random_grayscale 1.5: must be in [0, 1]"),
    ({"random_grayscale": -0.1}, "--random_grayscale -0.1: must be in [0, 1]"),
]


@pytest.mark.parametrize("given, message", LEVER_ERRORS,
                         ids=[" ".join(f"{k}={v}" for k, v in g.items()) for g, _ in LEVER_ERRORS])
def test_a_bad_lever_value_is_one_line_naming_the_flag(given, message):
    with pytest.raises(ConfigError) as error:
        resolve(given, gpus_available=0)
    assert str(error.value) == message


def test_the_new_levers_are_off_by_default_parsed_from_flags_and_printed():
    defaults = config_lib.RunConfig()
    assert (defaults.reader.progressive_min_size, defaults.reader.eval_image_size,
            defaults.train.classifier_lr_multiplier, defaults.train.ema_decay) == \
        (None, None, 1.0, None)
    assert defaults.reader.eval_size == defaults.reader.image_size
    assert defaults.train.random_grayscale == 0.0
    given, _ = config_lib.parse_args(
        ["--image_size", "96", "--progressive_min_size", "64", "--progressive_until", "0.5",
         "--eval_image_size", "128", "--classifier_lr_multiplier", "10", "--ema_decay", "0.999"])
    config = resolve(given, gpus_available=0)
    assert config.reader.eval_size == 128
    shown = json.loads(config_lib.to_json(config))  # what the run prints and saves
    assert (shown["reader"]["progressive_min_size"], shown["reader"]["progressive_until"],
            shown["reader"]["eval_image_size"]) == (64, 0.5, 128)
    assert (shown["train"]["classifier_lr_multiplier"], shown["train"]["ema_decay"]) == (10.0, 0.999)
    off, _ = config_lib.parse_args(["--ema_decay", "none", "--progressive_min_size", "none",
                                    "--eval_image_size", "none"])
    assert off == {"ema_decay": None, "progressive_min_size": None, "eval_image_size": None}
    help_text = config_lib.build_parser().format_help()
    for flag in ("--progressive_min_size", "--progressive_until", "--eval_image_size",
                 "--classifier_lr_multiplier", "--ema_decay"):
        assert flag in help_text


# ================================================================== progressive resizing
def sizes(epochs, **reader):
    config = ReaderConfig(**reader)
    return [image_size_at_epoch(config, epochs, epoch) for epoch in range(math.ceil(epochs))]


def test_progressive_sizes_rise_by_epoch_in_16_px_steps_to_the_full_size():
    # Written out by hand from the documented rule: full size from epoch F = ceil(until x
    # epochs), before it min + 16 floor((S - min) e / F / 16). 128 -> 224 over 20 epochs, F 15:
    # 128 + 16 floor(0.4 e).
    assert sizes(20, image_size=224, progressive_min_size=128) == \
        [128] * 3 + [144] * 2 + [160] * 3 + [176] * 2 + [192] * 3 + [208] * 2 + [224] * 5
    # The digits run: 48 px from 32 over 8 epochs: 32 until epoch 6, then 48.
    assert sizes(8, image_size=48, progressive_min_size=32) == [32] * 6 + [48] * 2
    # until 1: full size still in the last epoch; a 1-epoch run is all full size
    assert sizes(8, image_size=48, progressive_min_size=32, progressive_until=1.0) == \
        [32] * 7 + [48]
    assert sizes(1, image_size=48, progressive_min_size=32) == [48]
    # a range the step does not divide: 40 -> 64 px, F 4: 40 + 16 floor(0.375 e), then 64
    assert sizes(5, image_size=64, progressive_min_size=40, progressive_until=0.8) == \
        [40, 40, 40, 56, 64]
    assert sizes(20, image_size=224) == [224] * 20  # off


def test_size_phases_start_where_the_size_changes():
    from flowers_tl.train import size_phases

    config = config_lib.with_overrides(config_lib.RunConfig(), {
        "image_size": 48, "progressive_min_size": 32, "epochs": 8})
    assert size_phases(config, 5) == [(0, 32), (30, 48)]
    assert size_phases(config_lib.RunConfig(), 5) == [(0, 224)]


@pytest.mark.parametrize("pipeline", ["cxx", "tfdata"])
def test_progressive_batches_come_at_the_phase_sizes_and_are_the_plain_streams_spliced(
        small_dataset, pipeline):
    """Batches 0-9 at 32 px, 10-19 at 48 px (steps_per_epoch 5, 4 epochs, until 0.5), each
    pixel for pixel the batch an unchanged run at that size reads at that position (the same
    files, crops and flips), and a resume mid-phase continues the same stream."""
    from flowers_tl.train import make_input, size_phases

    files, labels = small_dataset
    base = config_lib.with_overrides(config_lib.RunConfig(), {
        "input": pipeline, "reader_threads": 2, "batch_size": 8, "epochs": 4})
    progressive = config_lib.with_overrides(base, {
        "image_size": 48, "progressive_min_size": 32, "progressive_until": 0.5})
    phases = size_phases(progressive, 5)
    assert phases == [(0, 32), (10, 48)]

    def take(config, count, start=0, phases=None, report=None):
        stream = make_input(config, files, labels, 8, 0, 1, start, 2, report=report,
                            phases=phases)
        batches = [next(stream) for _ in range(count)]
        return batches, stream

    report = {}
    got, stream = take(progressive, 20, phases=phases, report=report)
    assert [images.shape for images, _ in got] == \
        [(8, 32, 32, 3)] * 10 + [(8, 48, 48, 3)] * 10
    small, _ = take(config_lib.with_overrides(base, {"image_size": 32}), 10)
    large, _ = take(config_lib.with_overrides(base, {"image_size": 48}), 20)
    for index, (images, batch_labels) in enumerate(got):
        images_ref, labels_ref = (small + [None] * 10)[index] if index < 10 else large[index]
        np.testing.assert_array_equal(batch_labels, labels_ref, err_msg=str(index))
        np.testing.assert_array_equal(images, images_ref, err_msg=str(index))
    if pipeline == "cxx":  # the first phase's reader was closed, its summary kept
        assert len(report["summaries"]) == 1 and report["reader"] is not None
    resumed, _ = take(progressive, 6, start=7, phases=phases)
    for index, (images, batch_labels) in enumerate(resumed, start=7):
        np.testing.assert_array_equal(images, got[index][0], err_msg=str(index))
        np.testing.assert_array_equal(batch_labels, got[index][1], err_msg=str(index))


# ======================================================================== evaluation size
def test_evaluation_batches_come_at_the_eval_size_and_training_batches_do_not_change(
        small_dataset):
    from flowers_tl.evaluation import evaluate
    from flowers_tl.train import make_input

    files, labels = small_dataset
    seen = []

    def predict(images):
        seen.append(tuple(images.shape))
        return tf.zeros([images.shape[0]], tf.int32)

    plain = config_lib.with_overrides(config_lib.RunConfig(), {
        "image_size": 32, "batch_size": 8, "reader_threads": 2})
    fixres = config_lib.with_overrides(plain, {"eval_image_size": 48})
    accuracy = evaluate(predict, files, labels, fixres)
    assert accuracy == pytest.approx(labels.count(0) / len(labels))
    assert seen == [(8, 48, 48, 3)] * 5
    seen.clear()
    evaluate(predict, files, labels, plain)
    assert seen == [(8, 32, 32, 3)] * 5
    for config in (plain, fixres):
        images, _ = next(make_input(config, files, labels, 8, 0, 1, 0, 2))
        assert images.shape == (8, 32, 32, 3)
    one = next(make_input(plain, files, labels, 8, 0, 1, 0, 2))
    other = next(make_input(fixres, files, labels, 8, 0, 1, 0, 2))
    np.testing.assert_array_equal(one[0], other[0])


# ============================================================= the classifier's learning rate
class TwoLayer(tf.Module):
    """logits = tanh(x B) L, plus a per-replica statistic the forward pass updates (as batch
    norm's moving mean): a body, a classifier and a moving average, checkable by hand."""

    def __init__(self, seed=0):
        super().__init__(name="two_layer")
        rng = np.random.default_rng(seed)
        self.config = types.SimpleNamespace(xla=False)
        self.variables_by_name = {
            "body/kernel": tf.Variable(rng.normal(size=(4, 5)).astype(np.float32),
                                       name="body/kernel"),
            "logits/weights": tf.Variable(rng.normal(size=(5, 3)).astype(np.float32),
                                          name="logits/weights"),
            "body/moving_mean": tf.Variable(
                tf.zeros([4]), trainable=False, name="body/moving_mean",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.MEAN)}

    def __call__(self, images, training=False):
        v = self.variables_by_name
        images = tf.cast(images, tf.float32)
        if training:
            v["body/moving_mean"].assign(0.5 * v["body/moving_mean"]
                                         + 0.5 * tf.reduce_mean(images, 0))
        return tf.matmul(tf.tanh(tf.matmul(images - v["body/moving_mean"], v["body/kernel"])),
                         v["logits/weights"])

    def weight_decay_loss(self):
        return tf.constant(0.0)


def toy_batch(seed=1):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(6, 4)).astype(np.float32)),
            tf.constant(np.array([0, 1, 2, 0, 1, 2], np.int32)))


def test_the_classifier_moves_multiplier_times_as_far_and_the_body_exactly_as_before():
    images, labels = toy_batch()
    moved = {}
    for multiplier in (1.0, 4.0):
        model = TwoLayer()
        before = {name: v.numpy() for name, v in model.variables_by_name.items()}
        optimizer = MomentumSGD(0.1, momentum=0.9, learning_rate_multipliers=None
                                if multiplier == 1.0 else {"logits/weights": multiplier})
        step = make_train_step(model, optimizer)
        optimizer.learning_rate.assign(0.05)  # after the step is built: the schedule's rate
        step(images, labels)  # the first step: accumulator = gradient, momentum plays no part
        moved[multiplier] = {name: before[name] - v.numpy()
                             for name, v in model.variables_by_name.items()}
    # Independent: dL/dW = h^T (softmax - onehot) / N, h the hidden layer after the forward
    # pass's moving-mean update (0.5 x the batch mean).
    x = images.numpy() - 0.5 * images.numpy().mean(0)
    hidden = np.tanh(x @ before["body/kernel"])
    logits = hidden @ before["logits/weights"]
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    gradient = hidden.T @ (softmax - np.eye(3)[labels.numpy()]) / 6
    # float32 rounding of w - lr x g read back as a difference: ~1e-7 of |w| ~ 1, on ~5e-3
    np.testing.assert_allclose(moved[1.0]["logits/weights"], 0.05 * gradient, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(moved[4.0]["logits/weights"], 4 * moved[1.0]["logits/weights"],
                               rtol=1e-4, atol=1e-6)
    for name in ("body/kernel", "body/moving_mean"):
        np.testing.assert_array_equal(moved[4.0][name], moved[1.0][name])
    assert np.abs(moved[1.0]["body/kernel"]).max() > 0


def test_a_multiplier_for_a_variable_the_model_does_not_train_is_refused():
    optimizer = MomentumSGD(0.1, learning_rate_multipliers={"logit/weights": 10.0})
    with pytest.raises(ValueError, match="does not train: \\['logit/weights'\\]"):
        make_train_step(TwoLayer(), optimizer)


def test_trainable_scopes_train_only_their_variables_and_those_exactly_as_before():
    images, labels = toy_batch()
    moved = {}
    for scopes in ((), ("logits",)):
        model = TwoLayer()
        before = {name: v.numpy() for name, v in model.variables_by_name.items()}
        step = make_train_step(model, MomentumSGD(0.05, momentum=0.9), trainable_scopes=scopes)
        step(images, labels)
        moved[scopes] = {name: before[name] - v.numpy()
                         for name, v in model.variables_by_name.items()}
    frozen = moved[("logits",)]
    np.testing.assert_array_equal(frozen["body/kernel"], 0)
    assert np.abs(moved[()]["body/kernel"]).max() > 0
    # The classifier's gradient does not depend on whether the body is trained (first step).
    np.testing.assert_array_equal(frozen["logits/weights"], moved[()]["logits/weights"])
    # Batch-norm-like statistics still follow the data, as in TF-slim.
    np.testing.assert_array_equal(frozen["body/moving_mean"], moved[()]["body/moving_mean"])
    assert np.abs(frozen["body/moving_mean"]).max() > 0


def test_trainable_scopes_match_from_the_name_start_and_name_what_they_miss():
    from flowers_tl.model import resnet_v1_50
    from flowers_tl.step import trained_variables

    model = resnet_v1_50(5)
    chosen = trained_variables(model, ("resnet_v1_50/block4", "resnet_v1_50/logits"))
    names = [v.name for v in chosen]
    assert names and all(n.startswith(("resnet_v1_50/block4/", "resnet_v1_50/logits/"))
                         for n in names)
    assert len(names) == sum(1 for v in model.trainable_variables
                             if "/block4/" in v.name or "/logits/" in v.name)
    assert trained_variables(model, ()) == list(model.trainable_variables)
    with pytest.raises(ValueError, match="--trainable_scopes: resnet_v1_50/block9 names no "
                                         "trainable variable of this model .*resnet_v1_50/block4"):
        trained_variables(model, ("resnet_v1_50/logits", "resnet_v1_50/block9"))
    keras = resnet_v1_50(5, variant="keras")
    assert {v.name.split("_")[0] for v in trained_variables(keras, ("conv5_", "predictions"))} \
        == {"conv5", "predictions/kernel:0", "predictions/bias:0"}


@pytest.mark.parametrize("given, message", [
    ("  , ", "--trainable_scopes ',': names no scope (none: train all)"),
    ("block4,(", "--trainable_scopes '(': not a regular expression: missing ), unterminated "
                 "subpattern at position 0")])
def test_bad_trainable_scopes_are_one_line_naming_the_flag(given, message):
    with pytest.raises(ConfigError) as error:
        resolve({"trainable_scopes": given}, gpus_available=0)
    assert str(error.value) == message


@pytest.mark.parametrize("variant, expected", [
    ("slim", ["resnet_v1_50/logits/weights", "resnet_v1_50/logits/biases"]),
    ("keras", ["predictions/kernel", "predictions/bias"])])
def test_the_new_classifier_is_what_the_restore_excludes(variant, expected):
    from flowers_tl.checkpoint import excluded_names
    from flowers_tl.model import resnet_v1_50
    from flowers_tl.train import exclude_patterns

    config = config_lib.with_overrides(config_lib.RunConfig(), {"variant": variant})
    model = resnet_v1_50(3, variant=variant)
    assert sorted(excluded_names(model, exclude_patterns(config))) == sorted(expected)
    given = config_lib.with_overrides(config, {"checkpoint_exclude_patterns": "block4,logits"})
    if variant == "slim":
        assert len(excluded_names(model, exclude_patterns(given))) > 2


# ======================================================================== the weight average
@pytest.mark.parametrize("decay", [0.2, 0.99])
def test_the_weight_average_follows_tf_num_updates_formula_and_changes_no_training(decay):
    """decay 0.2: the warm-up min(decay, (1 + n) / (10 + n)) gives 0.1, 0.18, then 0.2;
    0.99: warm-up throughout these steps."""
    from flowers_tl.step import WeightAverage

    images, labels = toy_batch()
    plain, averaged = TwoLayer(), TwoLayer()
    plain_step = make_train_step(plain, MomentumSGD(0.1, momentum=0.9))
    average = WeightAverage(averaged, decay)
    averaged_step = make_train_step(averaged, MomentumSGD(0.1, momentum=0.9),
                                    weight_average=average)
    shadow = {name: v.numpy().astype(np.float64)
              for name, v in averaged.variables_by_name.items()}
    for n in range(6):
        plain_step(images, labels)
        averaged_step(images, labels)
        rate = min(decay, (1 + n) / (10 + n))
        for name, variable in averaged.variables_by_name.items():
            shadow[name] -= (1 - rate) * (shadow[name] - variable.numpy())
    assert int(average.updates) == 6
    for name, variable in averaged.variables_by_name.items():
        # float32 shadows against a float64 reference: a few ulps of values ~1
        np.testing.assert_allclose(average.shadows[name].numpy(), shadow[name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)
        assert average.shadows[name].name == f"{name}/ExponentialMovingAverage:0"
        # training itself is untouched: the same weights as without the average
        np.testing.assert_array_equal(variable.numpy(), plain.variables_by_name[name].numpy())
        assert not np.allclose(average.shadows[name].numpy(), variable.numpy())
    copy = TwoLayer(seed=5)
    average.copy_to(copy)
    for name, variable in copy.variables_by_name.items():
        np.testing.assert_array_equal(variable.numpy(), average.shadows[name].numpy())
    average.reset(averaged)
    assert int(average.updates) == 0
    np.testing.assert_array_equal(average.shadows["body/kernel"].numpy(),
                                  averaged.variables_by_name["body/kernel"].numpy())


def test_the_log_says_how_much_of_the_model_trainable_scopes_train():
    from flowers_tl.train import lever_lines

    config = resolve({"trainable_scopes": "resnet_v1_50/block4,resnet_v1_50/logits"},
                     gpus_available=0)
    assert lever_lines(config, [(0, 224)], [], None, (30, 161)) == [
        "training 30 of the model's 161 trainable variables (--trainable_scopes "
        "resnet_v1_50/block4,resnet_v1_50/logits); the others keep their restored weights "
        "(their batch norm still learns its statistics)"]
    assert lever_lines(resolve({}, gpus_available=0), [(0, 224)], [], None, (161, 161)) == []
