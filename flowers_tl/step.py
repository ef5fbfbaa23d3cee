"""Devices, the optimizer, loss scaling and the one compiled train step.

    strategy = make_strategy(num_gpus=0)
    with strategy.scope():
        model = ResNet50(config.model, num_classes=5)
        optimizer = MomentumSGD(learning_rate=0.01, momentum=0.9)
        step = make_train_step(model, optimizer, strategy, global_batch_size=32)
    metrics = step(images, labels)       # {"loss", "cross_entropy", "accuracy", "finite"}
    optimizer.learning_rate.assign(0.001)   # a schedule: no retrace

This is the step flowers_tl.train trains with, and the step bench.step and the pytest-benchmark
rows time: there is no other.

MomentumSGD is TF1's `tf.train.MomentumOptimizer`, the optimizer of the TF-slim / MoXing recipe
this project reproduces: `accum = momentum * accum + grad; var -= lr * accum`. Keras' SGD keeps
`velocity = momentum * velocity - lr * grad` instead, which is the same trajectory only while
the learning rate is constant; after a piecewise drop the two differ, so we keep TF1's form.
Its update rule is written once, in `MomentumSGD.rule`; a per-variable learning-rate multiplier
(the new classifier's, --classifier_lr_multiplier) scales the rate handed to it.
`WeightAverage` (--ema_decay) keeps an exponential moving average of the weights, updated in
the step after every applied update.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Iterable, Sequence

import tensorflow as tf


# ------------------------------------------------------------------------------------ devices
def make_strategy(num_gpus: int, cpu_devices: int = 1) -> tf.distribute.Strategy:
    """Several workers in TF_CONFIG: MultiWorkerMirrored; N GPUs: Mirrored; one: OneDevice;
    cpu_devices > 1: Mirrored over that many logical CPUs (tests)."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if num_gpus > 1:
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(num_gpus)])
    if num_gpus == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_devices)])
    return tf.distribute.OneDeviceStrategy("/cpu:0")


def worker_index_and_count(strategy) -> tuple[int, int]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1
    spec = resolver.cluster_spec().as_dict()
    count = len(spec.get("worker", [])) + len(spec.get("chief", []))
    index = resolver.task_id + (1 if resolver.task_type == "worker" and "chief" in spec else 0)
    return index, count


def distribute_batch(strategy, images, labels, per_device: int):
    """This worker's numpy batch -> per-replica tensors (replica r gets rows r*per_device...)."""
    local_replicas = strategy.num_replicas_in_sync // worker_index_and_count(strategy)[1]

    def replica_slice(context):
        local = context.replica_id_in_sync_group % local_replicas
        lo, hi = local * per_device, (local + 1) * per_device
        return tf.constant(images[lo:hi]), tf.constant(labels[lo:hi])

    return strategy.experimental_distribute_values_from_function(replica_slice)


# ------------------------------------------------------------------------------------ optimizer
def _base_name(variable: tf.Variable) -> str:
    return variable.name.rsplit(":", 1)[0]  # "a/b/weights:0" -> "a/b/weights"


def trained_variables(model, scopes: Sequence[str] = ()) -> list[tf.Variable]:
    """The variables a step trains, in the model's order: all trainable ones, or with `scopes`
    (--trainable_scopes) those whose name a scope matches from its start, as TF-slim's
    get_collection(scope=...) does: "resnet_v1_50/block4" takes "resnet_v1_50/block4/unit_1/...",
    "conv5_" every variable of Keras' conv5 stage. A scope that matches no trainable variable
    is a ValueError naming it and the model's top-level scopes."""
    variables = list(model.trainable_variables)
    if not scopes:
        return variables
    inside = lambda name, scope: re.match(scope, name) is not None
    unmatched = [scope for scope in scopes
                 if not any(inside(_base_name(v), scope) for v in variables)]
    if unmatched:
        tops = sorted({"/".join(_base_name(v).split("/")[:2]) for v in variables})
        raise ValueError(f"--trainable_scopes: {', '.join(unmatched)} names no trainable "
                         f"variable of this model (its scopes: {', '.join(tops)})")
    return [v for v in variables if any(inside(_base_name(v), scope) for scope in scopes)]


class MomentumSGD(tf.Module):
    """TF1 MomentumOptimizer. State: `learning_rate`, `iterations` and one accumulator per
    variable, `slots["<variable name>"]`, itself named "<variable name>/Momentum" as in TF1
    checkpoints. Slots are keyed by variable name, so the variables must have distinct names."""

    def __init__(self, learning_rate: float, momentum: float = 0.9, name: str = "momentum_sgd",
                 learning_rate_multipliers: dict[str, float] | None = None):
        super().__init__(name=name)
        if learning_rate < 0 or not 0.0 <= momentum < 1.0:
            raise ValueError(f"need learning_rate >= 0 and 0 <= momentum < 1, "
                             f"got {learning_rate}, {momentum}")
        self.momentum = float(momentum)  # fixed for a run: a Python float is folded into the graph
        # {variable name: factor} on the learning rate (--classifier_lr_multiplier); fixed for
        # a run like the momentum, so not checkpointed state.
        self.learning_rate_multipliers = {name: float(factor) for name, factor in
                                          (learning_rate_multipliers or {}).items()}
        if any(not 0 < factor < float("inf") for factor in self.learning_rate_multipliers.values()):
            raise ValueError(f"learning rate multipliers must be finite and > 0, got "
                             f"{self.learning_rate_multipliers}")
        with tf.init_scope():
            # A variable, not a float: a schedule assigns it and the compiled step reads it.
            self.learning_rate = tf.Variable(float(learning_rate), trainable=False,
                                             name="learning_rate")
            self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.slots: dict[str, tf.Variable] = {}

    def build(self, variables: Iterable[tf.Variable]) -> list[tf.Variable]:
        """Creates the accumulators now (eagerly); returns them in the variables' order."""
        return [self._slot(variable) for variable in variables]

    def _slot(self, variable: tf.Variable) -> tf.Variable:
        name = _base_name(variable)
        slot = self.slots.get(name)
        if slot is None:
            # init_scope: created eagerly even when the first apply() is being traced.
            with tf.init_scope():
                slot = tf.Variable(tf.zeros(variable.shape, variable.dtype), trainable=False,
                                   name=f"{name}/Momentum")
            self.slots[name] = slot
        elif slot.shape != variable.shape or slot.dtype != variable.dtype:
            raise ValueError(f"two variables are named {name!r} ({slot.shape} and "
                             f"{variable.shape}): MomentumSGD keys its slots by variable name")
        return slot

    # Plain Python (no tensor-dependent control flow): not for AutoGraph to convert.
    @tf.autograph.experimental.do_not_convert
    def learning_rate_for(self, variable: tf.Variable):
        """This variable's learning rate: the optimizer's, times its multiplier if it has one
        (the variable itself otherwise, so a run without multipliers has the same graph)."""
        factor = self.learning_rate_multipliers.get(_base_name(variable), 1.0)
        return self.learning_rate if factor == 1.0 else self.learning_rate * factor

    def rule(self, variable, accumulator, grad, learning_rate, apply=True) -> None:
        """The update, the only place it is written: accum = m * accum + grad; var -= lr *
        accum, by TF's fused ApplyMomentum kernel (the one tf.compat.v1.train.MomentumOptimizer
        runs): one pass over the variable and its accumulator, where the same formula in
        separate ops made eight, each a full pass over ResNet-50's 25.6M weights (measured on
        an AMD EPYC, 2 cores, 48 px, batch 64: 338-370 against 419-507 ms per step, and the
        first call 6.1-6.8 against 8.4-9.6 s). Where `apply` is False (a non-finite step) it
        runs with gradient 0, momentum 1 and rate 0, so both stay as they are. The gradient is
        switched by a tf.cond, whose taken branch passes it through, rather than an elementwise
        tf.where, which was one more pass over every gradient on every step (~2.5% of a bf16 step's
        op time; 48 px, batch 64, AMD EPYC, two interleaved A/Bs: 227 / 231 img/s with tf.where,
        230 / 243 with tf.cond, within the host's noise). Called on each device's own copies
        under a distribution strategy."""
        dtype = variable.dtype
        apply = tf.convert_to_tensor(apply)
        zero = tf.zeros([], dtype)
        grad = tf.convert_to_tensor(grad, dtype)
        tf.raw_ops.ResourceApplyMomentum(
            var=variable.handle, accum=accumulator.handle,
            lr=tf.where(apply, tf.cast(learning_rate, dtype), zero),
            grad=tf.cond(apply, lambda: grad, lambda: tf.zeros_like(grad)),
            momentum=tf.where(apply, tf.constant(self.momentum, dtype), tf.ones([], dtype)))

    def apply(self, grads_and_vars: Iterable[tuple[tf.Tensor | None, tf.Variable]]) -> None:
        """One update of every variable with a gradient, outside a strategy; None gradients are
        skipped, as in TF1."""
        pairs = [(grad, var) for grad, var in grads_and_vars if grad is not None]
        if not pairs:
            raise ValueError("no gradients to apply: every gradient is None")
        names = [_base_name(var) for _, var in pairs]
        if len(set(names)) != len(names):
            raise ValueError("variables with the same name: MomentumSGD keys its slots by name")
        for grad, var in pairs:
            self.rule(var, self._slot(var), tf.convert_to_tensor(grad, var.dtype),
                      self.learning_rate_for(var))
        self.iterations.assign_add(1)


# ------------------------------------------------------------------------------------ loss scale
class LossScale(tf.Module):
    """fp16 loss scaling: a fixed scale, or dynamic (start at 2^15, halve and skip the step on
    non-finite gradients, double after `growth_interval` finite steps)."""

    def __init__(self, setting: str, growth_interval: int = 2000):
        super().__init__(name="loss_scale")
        self.dynamic = setting == "dynamic"
        self.growth_interval = growth_interval
        self.scale = tf.Variable(2.0 ** 15 if self.dynamic else float(setting), trainable=False,
                                 name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")
        self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped")

    def update(self, finite):
        if not self.dynamic:
            return
        grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_interval)
        self.scale.assign(tf.where(grow, self.scale * 2.0,
                                   tf.where(finite, self.scale, tf.maximum(self.scale / 2.0, 1.0))))
        self.good_steps.assign(tf.where(tf.logical_and(finite, tf.logical_not(grow)),
                                        self.good_steps + 1, tf.zeros_like(self.good_steps)))
        self.skipped_steps.assign_add(tf.cast(tf.logical_not(finite), tf.int64))


# ------------------------------------------------------------------------------ weight average
class WeightAverage(tf.Module):
    """An exponential moving average of every model variable (--ema_decay), for evaluation and
    export: TF's tf.train.ExponentialMovingAverage with num_updates, written out. At the n-th
    update (n = 0, 1, ...; counted in `updates`, checkpointed with the shadows):

        decay_n = min(decay, (1 + n) / (10 + n));  shadow -= (1 - decay_n) * (shadow - variable)

    The warm-up (decay_n small at first) lets the average forget its start within ~10 / (1 -
    decay) steps instead of carrying it through a short run. The batch-norm moving statistics
    are averaged too (as timm's ModelEmaV2 and TF's EfficientNet do): the averaged weights are
    evaluated with statistics that age like them. Shadows are named "<variable>/
    ExponentialMovingAverage", TF's convention, and created in the strategy's scope (mirrored);
    `update` runs in cross-replica context, where a per-replica batch-norm statistic reads as
    its mean over the replicas, so every device keeps the same shadows."""

    def __init__(self, model, decay: float, name: str = "ema"):
        super().__init__(name=name)
        if not 0 < decay < 1:
            raise ValueError(f"need 0 < decay < 1, got {decay}")
        self.decay = float(decay)
        with tf.init_scope():
            self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")
            self.shadows = {
                name: tf.Variable(variable.read_value(), trainable=False,
                                  name=f"{name}/ExponentialMovingAverage")
                for name, variable in model.variables_by_name.items()}

    def reset(self, model) -> None:
        """Shadows = the model's values, no updates yet (after loading pretrained weights)."""
        for name, shadow in self.shadows.items():
            shadow.assign(model.variables_by_name[name].read_value())
        self.updates.assign(0)

    @tf.autograph.experimental.do_not_convert  # no tensor-dependent control flow
    def update(self, model, apply=True) -> None:
        """One update from the model's current values; none where `apply` is False (a skipped,
        non-finite step). Cross-replica context (or no strategy)."""
        count = tf.cast(self.updates, tf.float64)
        decay = tf.cast(tf.minimum(tf.constant(self.decay, tf.float64),
                                   (1.0 + count) / (10.0 + count)), tf.float32)
        for name, shadow in self.shadows.items():
            value = tf.convert_to_tensor(model.variables_by_name[name])  # replicas' mean
            shadow.assign(tf.where(apply, shadow - (1.0 - decay) * (shadow - value), shadow))
        self.updates.assign_add(tf.cast(apply, tf.int64))

    def copy_to(self, model) -> None:
        """The model's variables = the shadows (a separate evaluation copy of the network)."""
        for name, variable in model.variables_by_name.items():
            variable.assign(self.shadows[name].read_value())


# ------------------------------------------------------------------------------------ the step
# ITU-R BT.601 luma, what a grayscale JPEG's single channel holds (libjpeg's RGB -> Y).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def random_grayscale_images(images, probability: float, seed):
    """uint8 RGB [B, H, W, 3] with each image, independently with `probability` (draws from
    the stateless `seed`, shape [2]), replaced by round(luma) in all three channels: what the
    model sees of a grayscale photo (the reader expands a one-channel JPEG the same way)."""
    pixels = tf.cast(images, tf.float32)
    luma = tf.round(tf.tensordot(pixels, tf.constant(LUMA_WEIGHTS, tf.float32), [[3], [0]]))
    gray = tf.repeat(luma[..., None], 3, axis=-1)
    chosen = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < probability
    return tf.cast(tf.where(chosen[:, None, None, None], gray, pixels), images.dtype)


def make_train_step(model, optimizer: MomentumSGD, strategy: tf.distribute.Strategy | None = None,
                    global_batch_size: int | None = None, loss_scale: LossScale | None = None,
                    jit_compile: bool | None = None, label_smoothing: float = 0.0,
                    weight_average: WeightAverage | None = None, random_grayscale: float = 0.0,
                    seed: int = 0, trainable_scopes: Sequence[str] = ()) -> Callable[..., dict]:
    """`step(images, labels) -> {"loss", "cross_entropy", "accuracy", "finite"}` (fp32 scalars
    summed over replicas; accuracy of the batch before the update).

    strategy.run over the replicas: forward and backward per replica (XLA-compiled when
    `jit_compile`, default the model's `config.xla`), then one cross-replica update: gradients
    summed with batch_reduce_to, unscaled, checked for finiteness, and applied on every device
    by MomentumSGD.rule. A step with non-finite gradients changes nothing but the loss scale
    (dynamic) and says so in "finite". loss = mean cross-entropy + the model's weight decay;
    with `label_smoothing` s the target puts 1 - s on the label and s / classes everywhere.
    With `random_grayscale` p each image is first replaced by its grayscale version with
    probability p (random_grayscale_images; the draw depends on `seed`, the replica and the
    optimizer's update count, so a resumed run draws what an uninterrupted one would).
    Each variable's learning rate is MomentumSGD.learning_rate_for's (the classifier's
    multiplier); with `weight_average` its shadows are updated after every applied update.
    With `trainable_scopes` only trained_variables' choice is updated: the gradient tape asks
    for no other, so the backward pass stops below the lowest trained layer.
    images/labels: per-replica values (distribute_batch), or plain tensors on one device.
    Without a strategy: the default one (one device); global_batch_size defaults to the
    batch's size times the replicas."""
    strategy = strategy or tf.distribute.get_strategy()
    if jit_compile is None:
        jit_compile = model.config.xla
    elif model.config.xla != jit_compile:
        # The model's config records whether its caller compiles it (NCHW on a CPU relies on it).
        raise ValueError(f"model config says xla={model.config.xla} but jit_compile={jit_compile}")
    variables = trained_variables(model, trainable_scopes)  # fixed order for the whole run
    slots = optimizer.build(variables)  # no variable creation inside the traced function
    unknown = set(optimizer.learning_rate_multipliers) - {_base_name(v) for v in variables}
    if unknown:
        raise ValueError(f"learning rate multipliers for variables the model does not train: "
                         f"{sorted(unknown)}")
    num_replicas = strategy.num_replicas_in_sync

    # autograph=False here and below: the step has no tensor-dependent Python control flow
    # (every `if` reads a Python value fixed for the run), and converting the model's code for
    # nothing cost ~2.8 s of the first step's trace (48 px, batch 64, bf16, AMD EPYC, two runs
    # each: first step 7.3 / 7.9 s converted, 4.6 / 5.1 s not), inside the time to target.
    @tf.function(jit_compile=jit_compile, reduce_retracing=True, autograph=False)
    def compute(images, labels, global_batch):
        labels = tf.cast(labels, tf.int32)
        if random_grayscale:
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            images = random_grayscale_images(images, random_grayscale, tf.stack([
                tf.cast(seed, tf.int64) * 1024 + tf.cast(replica, tf.int64),
                tf.cast(optimizer.iterations, tf.int64)]))
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            if label_smoothing:
                classes = logits.shape[-1]
                targets = tf.one_hot(labels, classes) * (1 - label_smoothing) + \
                    label_smoothing / classes
                per_image = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
            else:
                per_image = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                           logits=logits)
            cross_entropy = tf.reduce_sum(per_image) / global_batch
            # Every replica adds its share, so the sum over replicas has it once.
            loss = cross_entropy + tf.cast(model.weight_decay_loss(), tf.float32) / num_replicas
            scaled = loss * loss_scale.scale if loss_scale is not None else loss
        # Master variables are fp32; a mixed-precision model's grads arrive through its casts.
        grads = [tf.cast(g, tf.float32) for g in tape.gradient(scaled, variables)]
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                                 labels), tf.float32))
        return grads, loss, cross_entropy, correct

    def apply(distribution, grads):  # cross-replica context
        summed = distribution.extended.batch_reduce_to(
            tf.distribute.ReduceOp.SUM, list(zip(grads, variables)))
        if loss_scale is not None:
            summed = [g / loss_scale.scale for g in summed]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in summed])
        for grad, variable, slot in zip(summed, variables, slots):
            # Mirrored values in args arrive as each device's own component; a multiplied rate
            # is read here, in the step, so the schedule's assignments reach it.
            distribution.extended.update(
                variable, optimizer.rule,
                args=(slot, grad, optimizer.learning_rate_for(variable), finite), group=False)
        optimizer.iterations.assign_add(tf.cast(finite, tf.int64))
        if weight_average is not None:
            weight_average.update(model, finite)
        if loss_scale is not None:
            loss_scale.update(finite)
        return finite

    def replica_step(images, labels, global_batch):
        grads, loss, cross_entropy, correct = compute(images, labels, global_batch)
        finite = tf.distribute.get_replica_context().merge_call(apply, args=(grads,))
        return loss, cross_entropy, correct, finite

    @tf.function(reduce_retracing=True, autograph=False)
    def distributed_step(images, labels, global_batch):
        loss, cross_entropy, correct, finite = strategy.run(
            replica_step, args=(images, labels, global_batch))
        total = lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
        return {"loss": total(loss), "cross_entropy": total(cross_entropy),
                "accuracy": total(correct) / global_batch,
                "finite": tf.reduce_all(strategy.experimental_local_results(finite))}

    def step(images, labels):
        # A tensor argument: a smaller last batch (one device) changes no trace.
        size = global_batch_size or \
            strategy.experimental_local_results(images)[0].shape[0] * num_replicas
        return distributed_step(images, labels, tf.constant(float(size)))

    return step
