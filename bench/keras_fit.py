"""The Keras-fit anchor: keras.applications.ResNet50 trained with `fit` on tf.data, as its users
train it, in its own process. bench.sweep runs it beside our cells (bench.cell.run_cell):

    python -m bench.keras_fit --phase throughput --settings /abs/cells/keras-fit-....json \\
        --train_url /abs/cells/keras-fit-...
    python -m bench.keras_fit --phase time_to_target --settings ... --train_url ...

throughput: images/sec at the default cell's batch, image size, precision and devices, from a
  callback that times every step (the loss read back waits for it; data wait unknown: null).
time_to_target: the same run as one of our time-to-target cells, from its resolved configuration
  (the settings file holds its flat knobs): the same data folder and seeded train/held-out split
  (flowers_tl.data.split), resolution, batch, epochs and learning rate at every step
  (flowers_tl.train.learning_rate_at_step: the schedule, its warm-up and shape, as a Keras
  LearningRateSchedule over a table), momentum, L2 weight decay on the conv and classifier
  kernels (ours: wd * sum(w^2) / 2), batch-norm momentum, zero-init residual branches, crop
  range, label smoothing, frozen batch norm and trainable scopes (Keras' layer.trainable);
  from the same starting weights where the format allows (a flowers_tl checkpoint of variant
  keras or a Keras HDF5 file, loaded layer by layer by name with the logits excluded; from
  scratch when ours is). What differs is Keras' own: its initialisers, its SGD (velocity =
  m v - lr g, ours TF1's accumulator: the same for a constant rate), tf.data's input and
  Keras' preprocess_input. Held-out accuracy is Keras' validation
  (`validation_data`, every eval_every_epochs epochs and at the end): its time counts in the
  clock and is reported on its own, as ours. SIGTERM stops it after the current step.

Both write metrics.jsonl (step, epoch and target rows in the trainer's schema,
flowers_tl.results) and result.json as flowers_tl.train does, so bench.cell reads them alike.
"""
from __future__ import annotations

import time

PROCESS_START = time.time()  # the clock of the time to target, as flowers_tl.train's

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Sequence  # noqa: E402

RESIDUAL_LAST_BN = re.compile(r"conv\d_block\d+_3_bn")  # zero-init residual: these gammas


# ----------------------------------------------------------------------------- shared parts
def setup(precision: str, seed: int, num_gpus: int):
    """(keras, tf, strategy) with the precision policy and the seed set."""
    import flowers_tl  # noqa: F401  (the same TensorFlow kernel options as our cells)
    import keras
    import tensorflow as tf

    from bench.step import KERAS_POLICIES  # bench.step's Keras cells use the same policies

    if num_gpus == 0:
        tf.config.set_visible_devices([], "GPU")
    keras.mixed_precision.set_global_policy(KERAS_POLICIES[precision])
    keras.utils.set_random_seed(seed)
    strategy = tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(num_gpus)]) \
        if num_gpus > 1 else tf.distribute.get_strategy()
    return keras, tf, strategy


class MetricsFile:
    """metrics.jsonl, a row at a time and flushed: a stopped run keeps what it measured."""

    def __init__(self, train_url: str):
        os.makedirs(train_url, exist_ok=True)
        self.handle = open(os.path.join(train_url, "metrics.jsonl"), "w")
        self.steps: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        if row["kind"] == "step":
            self.steps.append(row)
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()


def step_timer(keras, metrics: MetricsFile, global_batch: int, warmup_steps: int,
               steps_per_epoch: int | None = None):
    """A callback writing one row per step: its seconds from the batch's start (the input's next
    element is fetched inside the step) to the loss read back, which waits for the step, and the
    learning rate the optimizer applies in it (read before the step starts)."""

    class StepTimer(keras.callbacks.Callback):
        start = None
        step = 0
        first_step_time = None
        rate = None

        def on_train_batch_begin(self, batch, logs=None):
            self.rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            loss = float(logs["loss"])
            now = time.perf_counter()
            self.step += 1
            if self.first_step_time is None:
                self.first_step_time = time.time()
            row = {"kind": "step", "step": self.step, "step_seconds": now - self.start,
                   "images": global_batch, "data_wait_seconds": None,
                   "warmup": self.step <= warmup_steps, "loss": loss,
                   "accuracy": float(logs.get("accuracy", math.nan)),
                   "learning_rate": self.rate,
                   "time": round(time.time() - PROCESS_START, 3)}
            if steps_per_epoch:
                row["epoch"] = round(self.step / steps_per_epoch, 3)
            metrics.write(row)

    return StepTimer()


def result_figures(keras, tf, model, metrics: MetricsFile, strategy, global_batch: int
                   ) -> dict[str, Any]:
    from bench.step import onednn_enabled
    from flowers_tl.results import throughput_from_step_rows

    timed = [row for row in metrics.steps if not row["warmup"]]
    return {"steps": len(metrics.steps), "global_batch": global_batch,
            "replicas": strategy.num_replicas_in_sync,
            "images_per_sec": throughput_from_step_rows(timed)["images_per_sec"] if timed
            else None, "jit_compile": bool(model.jit_compile), "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__, "onednn_enabled": onednn_enabled()}


def restore_into_keras(model, path: str, exclude_patterns: str | Sequence[str] | None = None
                       ) -> dict[str, Any]:
    """Sets keras.applications.ResNet50's weights from a file flowers_tl.checkpoint reads (a
    flowers_tl checkpoint of variant keras, a Keras HDF5 weight file), layer by layer by name
    (`<layer>/<weight>`, e.g. conv2_block1_1_bn/moving_mean); names matching exclude_patterns
    (default: global_step and the logits, `predictions`) keep their initial values. Every other
    weight must be in the file with its shape, or one ValueError lists what is not: all or
    nothing. Returns what was loaded and excluded."""
    from flowers_tl.checkpoint import read_weights
    from flowers_tl.config import parse_exclude_patterns
    from flowers_tl.model import get_model_meta

    patterns = parse_exclude_patterns(exclude_patterns if exclude_patterns is not None else
                                      ("global_step", get_model_meta("keras").logits_pattern))
    resolved, tensors, source_format = read_weights(path)
    problems, assignments, excluded = [], [], []
    for layer in model.layers:
        for weight in layer.weights:
            name = f"{layer.name}/{weight.name}"
            if any(re.search(pattern, name) for pattern in patterns):
                excluded.append(name)
            elif name not in tensors:
                problems.append(f"missing: {name}")
            elif tuple(tensors[name].shape) != tuple(weight.shape):
                problems.append(f"shape mismatch: {name} is {list(tensors[name].shape)} in the "
                                f"file, {list(weight.shape)} in the model")
            else:
                assignments.append((weight, tensors[name]))
    if problems:
        raise ValueError(
            f"cannot load {path} ({source_format}) into keras.applications.ResNet50: "
            f"{len(problems)} problem(s), first {problems[0]} (Keras starts only from a Keras "
            "HDF5 file or a flowers_tl checkpoint of variant keras)")
    for weight, value in assignments:
        weight.assign(value.astype(weight.dtype))
    return {"path": resolved, "format": source_format, "loaded": len(assignments),
            "total": len(assignments) + len(excluded), "excluded": excluded,
            "exclude_patterns": list(patterns)}


# ----------------------------------------------------------------------------- throughput
def throughput(settings_path: str, train_url: str) -> int:
    """keras.applications.ResNet50 (weights=None) compiled and trained with `fit` the way its
    users do (Keras' defaults: jit_compile="auto", i.e. XLA on GPUs only; its own dynamic fp16
    loss scaling), fed by our tf.data pipeline plus Keras' preprocess_input, for max_steps."""
    settings = json.loads(Path(settings_path).read_text())
    keras, tf, strategy = setup(settings["precision"], settings["seed"], settings["num_gpus"])
    from flowers_tl.data import list_folder, split
    from flowers_tl.tfdata import make_dataset

    listing = list_folder(settings["data_url"])
    train_set, _ = split(listing, settings["val_fraction"], settings["seed"])
    global_batch = settings["batch_size"] * strategy.num_replicas_in_sync
    preprocess = keras.applications.resnet50.preprocess_input
    dataset = make_dataset(list(train_set.files), list(train_set.labels), global_batch,
                           settings["image_size"], training=True,
                           num_threads=settings["reader_threads"], seed=settings["seed"],
                           drop_remainder=True)
    dataset = dataset.map(lambda images, labels: (preprocess(tf.cast(images, tf.float32)), labels),
                          num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    size = settings["image_size"]
    with strategy.scope():
        model = keras.applications.ResNet50(weights=None, classes=len(listing.class_names),
                                            input_shape=(size, size, 3))
        model.compile(optimizer=keras.optimizers.SGD(settings["learning_rate"],
                                                     momentum=settings["momentum"]),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    metrics = MetricsFile(train_url)
    model.fit(dataset, epochs=1, steps_per_epoch=settings["max_steps"], verbose=0,
              callbacks=[step_timer(keras, metrics, global_batch, settings["warmup_steps"])])
    result = {"stop_reason": "finished",
              **result_figures(keras, tf, model, metrics, strategy, global_batch)}
    Path(train_url, "result.json").write_text(json.dumps(result, indent=2))
    return 0


# ----------------------------------------------------------------------------- time to target
def recipe_model(keras, config, classes: int, size: int):
    """keras.applications.ResNet50 with our run's model knobs applied the Keras way."""
    model_cfg = config.model
    model = keras.applications.ResNet50(weights=None, classes=classes, input_shape=(size, size, 3))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = model_cfg.batch_norm_momentum  # read when the step is traced
            if model_cfg.zero_init_residual and RESIDUAL_LAST_BN.fullmatch(layer.name):
                layer.gamma.assign(keras.ops.zeros_like(layer.gamma))
            if model_cfg.freeze_batch_norm:
                layer.trainable = False  # Keras' fine-tuning idiom: inference-mode BN
        elif model_cfg.weight_decay and isinstance(layer, (keras.layers.Conv2D,
                                                           keras.layers.Dense)):
            # ours adds wd * sum(w^2) / 2 over the conv and classifier kernels to the loss
            layer.kernel.regularizer = keras.regularizers.L2(model_cfg.weight_decay / 2)
    from flowers_tl.config import parse_scopes

    scopes = parse_scopes(config.train.trainable_scopes)
    if scopes:
        # Keras' idiom: a layer none of whose weights a scope matches is frozen (a frozen
        # BatchNormalization then runs in inference mode; ours keeps learning its statistics).
        trained = [layer for layer in model.layers if any(
            re.match(scope, weight.path) for weight in layer.weights for scope in scopes)]
        if not trained:
            raise ValueError(f"--trainable_scopes {config.train.trainable_scopes}: matches no "
                             "Keras weight (Keras names them as conv5_block1_1_conv/kernel, "
                             "predictions/kernel)")
        for layer in model.layers:
            if layer.weights and layer not in trained:
                layer.trainable = False
    return model


def time_to_target(settings_path: str, train_url: str) -> int:
    from flowers_tl import config as config_lib

    settings = json.loads(Path(settings_path).read_text())
    config = config_lib.with_overrides(config_lib.RunConfig(), {
        key: value for key, value in settings.items() if key in config_lib.KNOBS})
    train_cfg, size = config.train, config.reader.image_size
    keras, tf, strategy = setup(config.model.precision, train_cfg.seed, train_cfg.num_gpus)
    from flowers_tl.data import list_folder, split
    from flowers_tl.evaluation import split_warnings
    from flowers_tl.step import random_grayscale_images
    from flowers_tl.tfdata import make_dataset
    from flowers_tl.train import learning_rate_at_step

    listing = list_folder(config.data.data_url)
    train_set, val_set = split(listing, config.data.val_fraction, train_cfg.seed)
    classes = len(listing.class_names)
    global_batch = train_cfg.batch_size * strategy.num_replicas_in_sync
    steps_per_epoch = len(train_set) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training images are less than one global batch of "
                         f"{global_batch}")
    total_steps = int(round(train_cfg.epochs * steps_per_epoch))
    if train_cfg.max_steps is not None:
        total_steps = min(total_steps, train_cfg.max_steps)
    schedule = config_lib.parse_lr_schedule(train_cfg.lr_schedule)
    rates = [learning_rate_at_step(schedule, step, steps_per_epoch, train_cfg.warmup_epochs,
                                   train_cfg.lr_schedule_shape) for step in range(total_steps)]

    class StepRates(keras.optimizers.schedules.LearningRateSchedule):
        """Our trainer's rate at every step (Keras asks with the number of updates done)."""

        def __init__(self):
            self.table = tf.constant(rates, tf.float32)

        def __call__(self, step):
            return tf.gather(self.table, tf.minimum(tf.cast(step, tf.int32), len(rates) - 1))

        def get_config(self):
            return {"rates": rates}

    preprocess = keras.applications.resnet50.preprocess_input
    smoothing = train_cfg.label_smoothing

    def prepare(images, labels):  # one-hot targets only where label smoothing needs them
        return preprocess(tf.cast(images, tf.float32)), \
            (tf.one_hot(labels, classes) if smoothing else labels)

    grayscale = train_cfg.random_grayscale

    def prepare_train(index, batch):  # our step's grayscale lever, drawn per batch here
        images, labels = batch
        if grayscale:
            images = random_grayscale_images(images, grayscale, tf.stack(
                [tf.constant(train_cfg.seed, tf.int64), index]))
        return prepare(images, labels)

    train_data = make_dataset(
        list(train_set.files), list(train_set.labels), global_batch, size, training=True,
        num_threads=config.reader.reader_threads, seed=train_cfg.seed, drop_remainder=True,
        area_range=(config.reader.crop_area_min, 1.0)).enumerate().map(prepare_train,
                                                                        tf.data.AUTOTUNE)
    val_data = make_dataset(
        list(val_set.files), list(val_set.labels), train_cfg.batch_size, size, training=False,
        num_threads=config.reader.reader_threads, repeat=False).map(
        prepare, tf.data.AUTOTUNE) if len(val_set) else None
    checkpoint_url = config.run.checkpoint_url
    with strategy.scope():
        model = recipe_model(keras, config, classes, size)
        if checkpoint_url in (None, config_lib.FROM_SCRATCH):
            restored = None
            start = "scratch (Keras' own initialisers" + \
                (", residual branches' last BN gamma 0)" if config.model.zero_init_residual
                 else ")")
        else:
            restored = restore_into_keras(model, checkpoint_url,
                                          config.run.checkpoint_exclude_patterns)
            start = (f"{settings.get('checkpoint_origin') or 'checkpoint'} ({restored['path']}, "
                     f"{restored['format']}): {restored['loaded']} of {restored['total']} "
                     f"weights loaded by name, {len(restored['excluded'])} excluded by "
                     f"{restored['exclude_patterns']}")
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing) if smoothing \
            else keras.losses.SparseCategoricalCrossentropy()
        model.compile(optimizer=keras.optimizers.SGD(StepRates(), momentum=train_cfg.momentum),
                      loss=loss, metrics=["accuracy"])
    print(f"keras fit: {len(train_set)} train / {len(val_set)} val images, {steps_per_epoch} "
          f"steps per epoch, {total_steps} steps; from {start}", flush=True)

    metrics = MetricsFile(train_url)
    timer = step_timer(keras, metrics, global_batch, config.run.warmup_steps, steps_per_epoch)
    state = {"stop_reason": "finished", "signal": None, "eval_seconds": 0.0, "target": None,
             "best": {"train": 0.0, "val": 0.0}}

    class ToTarget(keras.callbacks.Callback):
        """Epoch rows, the held-out clock and the target event, as flowers_tl.train writes them."""

        def on_test_begin(self, logs=None):
            self.eval_start = time.time()

        def on_test_end(self, logs=None):
            state["eval_seconds"] += time.time() - self.eval_start

        def on_train_batch_end(self, batch, logs=None):
            if state["signal"] or timer.step >= total_steps:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            step = timer.step
            if state["signal"] and step % steps_per_epoch and step != total_steps:
                return  # a partial epoch cut by SIGTERM: no figure of it
            values = {"train": float(logs["accuracy"]), "val": None if logs.get(
                "val_accuracy") is None else float(logs["val_accuracy"])}
            row = {"kind": "epoch", "epoch": epoch + 1 if step % steps_per_epoch == 0
                   else round(step / steps_per_epoch, 3), "step": step,
                   "train_accuracy": values["train"], "val_accuracy": values["val"],
                   "eval_seconds": round(state["eval_seconds"], 3),
                   "time": round(time.time() - PROCESS_START, 2)}
            metrics.write(row)
            for key, value in values.items():
                if value is not None:
                    state["best"][key] = max(state["best"][key], value)
            print(f"epoch {row['epoch']}: train accuracy {values['train']:.4f}" + (
                "" if values["val"] is None else f", val accuracy {values['val']:.4f}"),
                flush=True)
            value = values[train_cfg.target_metric]
            if state["target"] is None and value is not None and \
                    value >= train_cfg.target_accuracy:
                now = time.time()
                state["target"] = {
                    "kind": "target", "metric": f"{train_cfg.target_metric}_accuracy",
                    "split": train_cfg.target_metric, "target": train_cfg.target_accuracy,
                    "value": value, "step": step, "seed": train_cfg.seed,
                    "val_images": len(val_set), "eval_seconds": state["eval_seconds"],
                    "seconds_from_process_start": now - PROCESS_START,
                    "seconds_from_first_step": now - timer.first_step_time,
                    "resumed_from_step": None}
                metrics.write(state["target"])
                print(f"target reached: {state['target']['metric']} {value:.4f} >= "
                      f"{train_cfg.target_accuracy} after "
                      f"{state['target']['seconds_from_process_start']:.1f} s", flush=True)
                if train_cfg.stop_at_target:
                    state["stop_reason"] = "target reached"
                    self.model.stop_training = True

    def on_signal(number, frame):
        state["signal"] = signal.Signals(number).name  # the callback stops after this step

    signal.signal(signal.SIGTERM, on_signal)
    epochs = math.ceil(total_steps / steps_per_epoch)
    every = train_cfg.eval_every_epochs
    model.fit(train_data, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0,
              validation_data=val_data, callbacks=[timer, ToTarget()],
              validation_freq=[e for e in range(1, epochs + 1) if e % every == 0 or e == epochs])
    if state["signal"]:
        state["stop_reason"] = f"interrupted by {state['signal']}"
    result = {
        "stop_reason": state["stop_reason"], "total_steps": total_steps,
        **result_figures(keras, tf, model, metrics, strategy, global_batch),
        "best_train_accuracy": state["best"]["train"],
        "best_val_accuracy": state["best"]["val"] if len(val_set) else None,
        "time_to_target": state["target"], "seconds": time.time() - PROCESS_START,
        "eval_seconds": state["eval_seconds"], "val_images": len(val_set),
        "warnings": split_warnings(config, len(val_set)), "start_weights": start,
        "restored": restored, "config": config_lib.to_dict(config)}
    Path(train_url, "result.json").write_text(json.dumps(result, indent=2))
    print(f"{state['stop_reason']} at step {timer.step}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.keras_fit",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=("throughput", "time_to_target"), required=True)
    parser.add_argument("--settings", required=True, help="the anchor's settings (JSON)")
    parser.add_argument("--train_url", required=True, help="its run folder")
    args = parser.parse_args(argv)
    try:
        return (throughput if args.phase == "throughput" else time_to_target)(
            args.settings, args.train_url)
    except (ValueError, OSError) as error:  # a bad checkpoint, data folder or batch: one line
        print(f"bench.keras_fit: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
