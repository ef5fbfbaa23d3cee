"""The optimizer and the compiled train step the training loop builds on.

    optimizer = MomentumSGD(learning_rate=0.01, momentum=0.9)
    step = make_train_step(model, optimizer, jit_compile=model.config.xla)
    metrics = step(uint8_images_nhwc, int32_labels)   # {"loss", "cross_entropy", "accuracy"}
    optimizer.learning_rate.assign(0.001)             # a schedule: no retrace

MomentumSGD is TF1's `tf.train.MomentumOptimizer`, the optimizer of the TF-slim / MoXing recipe
this project reproduces: `accum = momentum * accum + grad; var -= lr * accum`. Keras' SGD keeps
`velocity = momentum * velocity - lr * grad` instead, which is the same trajectory only while
the learning rate is constant; after a piecewise drop the two differ, so we keep TF1's form.

Speed on a CPU: TensorFlow's default kernels for the convolution gradients are ~4x slower than
its forward ones (the backward is ~80% of the step). Setting TF_ENABLE_ONEDNN_OPTS=1 before
TensorFlow is imported (oneDNN is off by default on AVX2-only CPUs such as this project's AMD
EPYC) made this step 1.76x faster: 12.8 vs 7.3 img/s at 128 px, batch 32, fp32
(`python -m bench.step --model ours,keras --onednn false,true`).
"""
from __future__ import annotations

from typing import Callable, Iterable

import tensorflow as tf


def _base_name(variable: tf.Variable) -> str:
    return variable.name.rsplit(":", 1)[0]  # "a/b/weights:0" -> "a/b/weights"


class MomentumSGD(tf.Module):
    """TF1 MomentumOptimizer. State: `learning_rate`, `iterations` and one accumulator per
    variable, `slots["<variable name>"]`, itself named "<variable name>/Momentum" as in TF1
    checkpoints. Slots are keyed by variable name, so the variables must have distinct names."""

    def __init__(self, learning_rate: float, momentum: float = 0.9, name: str = "momentum_sgd"):
        super().__init__(name=name)
        if learning_rate < 0 or not 0.0 <= momentum < 1.0:
            raise ValueError(f"need learning_rate >= 0 and 0 <= momentum < 1, "
                             f"got {learning_rate}, {momentum}")
        self.momentum = float(momentum)  # fixed for a run: a Python float is folded into the graph
        with tf.init_scope():
            # A variable, not a float: a schedule assigns it and the compiled step reads it.
            self.learning_rate = tf.Variable(float(learning_rate), trainable=False,
                                             name="learning_rate")
            self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.slots: dict[str, tf.Variable] = {}

    def build(self, variables: Iterable[tf.Variable]) -> None:
        """Creates the accumulators now (eagerly) rather than on the first apply()."""
        for variable in variables:
            self._slot(variable)

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

    def apply(self, grads_and_vars: Iterable[tuple[tf.Tensor | None, tf.Variable]]) -> None:
        """One update of every variable with a gradient; None gradients are skipped, as in TF1."""
        pairs = [(grad, var) for grad, var in grads_and_vars if grad is not None]
        if not pairs:
            raise ValueError("no gradients to apply: every gradient is None")
        names = [_base_name(var) for _, var in pairs]
        if len(set(names)) != len(names):
            raise ValueError("variables with the same name: MomentumSGD keys its slots by name")
        for grad, var in pairs:
            accumulator = self._slot(var)
            grad = tf.convert_to_tensor(grad, var.dtype)  # densifies IndexedSlices
            accumulator.assign(self.momentum * accumulator + grad)
            var.assign_sub(tf.cast(self.learning_rate, var.dtype) * accumulator)
        self.iterations.assign_add(1)


def make_train_step(model, optimizer: MomentumSGD,
                    jit_compile: bool = False) -> Callable[[tf.Tensor, tf.Tensor], dict]:
    """A tf.function `step(images, labels) -> {"loss", "cross_entropy", "accuracy"}` (fp32
    scalars; accuracy of the batch before the update). loss = mean sparse softmax cross-entropy
    + model.weight_decay_loss(). `jit_compile=True` compiles the whole step with XLA."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "xla", jit_compile) != jit_compile:
        # The model's config records whether its caller compiles it (NCHW on a CPU relies on it).
        raise ValueError(f"model config says xla={config.xla} but jit_compile={jit_compile}")
    variables = list(model.trainable_variables)  # fixed order for the whole run
    optimizer.build(variables)  # no variable creation inside the traced function

    # reduce_retracing: a smaller last batch traces once more with a [None, ...] shape, then
    # every batch size reuses that; under XLA each new shape still compiles once.
    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def step(images, labels):
        labels = tf.cast(labels, tf.int32)
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            cross_entropy = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
            loss = cross_entropy + tf.cast(model.weight_decay_loss(), tf.float32)
        grads = tape.gradient(loss, variables)
        # Master variables are fp32; a mixed-precision model's grads arrive through its casts.
        optimizer.apply([(None if grad is None else tf.cast(grad, tf.float32), var)
                         for grad, var in zip(grads, variables)])
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(predictions, labels), tf.float32))
        return {"loss": loss, "cross_entropy": cross_entropy, "accuracy": accuracy}

    return step
