"""Production fine-tuning of ResNet-50 v1, on one CPU, N GPUs or several machines.

    python -m flowers_tl.train --data_url flower_photos --train_url runs/flowers \\
        --checkpoint_url resnet_v1_50.ckpt --num_gpus 4 --precision fp16 --loss_scale 1024

Without --data_url it runs on the built-in generated flowers set, fine-tuning from a source
checkpoint trained once on a *different* generated task (cached), so the default run is real
transfer learning with the logits excluded. On a machine without a GPU that default is CPU-sized
(see flowers_tl.config.CPU_DEFAULT, printed with the configuration).

The run directory (--train_url) gets: config.json (the resolved configuration, model, classes,
environment), metrics.jsonl (one JSON object a line: steps, epochs, the time-to-target event),
tensorboard/, checkpoints/ (resumed from when the same command runs again), result.json and
export/<N>/ (a SavedModel for TF Serving).
"""
from __future__ import annotations

import time

PROCESS_START = time.time()  # MLPerf-style clock: time to target counts from here

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from flowers_tl import config as config_lib  # noqa: E402
from flowers_tl.checkpoint import restore_pretrained  # noqa: E402
from flowers_tl.data import list_folder, split  # noqa: E402
from flowers_tl.model import ModelConfig, ResNet50, get_model_meta  # noqa: E402
from flowers_tl.step import MomentumSGD  # noqa: E402

# The built-in source task: 10 other generated classes (5..14), 100 photos each, trained from
# scratch once per (variant, image size) with what makes short from-scratch runs stable at
# batch 32 (zero-init residual branches, warm-up, BN momentum 0.9, milder crops). On 2 cores at
# 64 px it takes ~7 min and ends near 75% training accuracy: weak next to ImageNet, but its
# features carry over (fine-tuning from it reaches 77% after 10 epochs, 63% from a 5-class,
# 300-photo source).
SOURCE_CLASS_OFFSET = 5
SOURCE_CLASSES = 10
SOURCE_PER_CLASS = 100
SOURCE_SETTINGS = dict(epochs=16, lr_schedule="12:0.04,16:0.004", warmup_epochs=2,
                       zero_init_residual=True, crop_area_min=0.35, batch_norm_momentum=0.9)


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss with a static loss scale)."""


# ------------------------------------------------------------------------------------ devices
def make_strategy(config: config_lib.TrainConfig) -> tf.distribute.Strategy:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.num_gpus > 1:
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(config.num_gpus)])
    if config.num_gpus == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    if config.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * config.cpu_devices)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(config.cpu_devices)])
    return tf.distribute.OneDeviceStrategy("/cpu:0")


def worker_index_and_count(strategy) -> tuple[int, int]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1
    spec = resolver.cluster_spec().as_dict()
    count = len(spec.get("worker", [])) + len(spec.get("chief", []))
    index = resolver.task_id + (1 if resolver.task_type == "worker" and "chief" in spec else 0)
    return index, count


# ----------------------------------------------------------------------------- update step
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


def make_train_step(model, optimizer: MomentumSGD, strategy, global_batch_size: int,
                    loss_scale: LossScale | None, jit_compile: bool):
    """strategy.run over the replicas: forward and backward per replica (XLA-compiled when
    asked), then one cross-replica update: gradients summed with batch_reduce_to, unscaled,
    checked for finiteness, and applied on every device. A step with non-finite gradients
    changes nothing but the loss scale (dynamic) or is reported (static: the loop stops)."""
    variables = list(model.trainable_variables)
    optimizer.build(variables)
    slots = [optimizer.slots[v.name.rsplit(":", 1)[0]] for v in variables]
    num_replicas = strategy.num_replicas_in_sync

    def momentum_update(variable, accumulator, grad, finite, learning_rate):
        # MomentumSGD's rule; a non-finite step leaves variable and accumulator untouched.
        new_accumulator = optimizer.momentum * accumulator + grad
        accumulator.assign(tf.where(finite, new_accumulator, accumulator))
        variable.assign_sub(tf.where(finite, learning_rate * new_accumulator,
                                     tf.zeros_like(variable)))

    @tf.function(jit_compile=jit_compile)
    def compute(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            cross_entropy = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits)) / global_batch_size
            # Every replica adds its share, so the sum over replicas has it once.
            loss = cross_entropy + model.weight_decay_loss() / num_replicas
            scaled = loss * loss_scale.scale if loss_scale is not None else loss
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
            # Mirrored values in args arrive as each device's own component.
            distribution.extended.update(
                variable, momentum_update, args=(slot, grad, finite, optimizer.learning_rate),
                group=False)
        optimizer.iterations.assign_add(tf.cast(finite, tf.int64))
        if loss_scale is not None:
            loss_scale.update(finite)
        return finite

    def replica_step(images, labels):
        grads, loss, cross_entropy, correct = compute(images, labels)
        finite = tf.distribute.get_replica_context().merge_call(apply, args=(grads,))
        return loss, cross_entropy, correct, finite

    @tf.function
    def step(per_replica_images, per_replica_labels):
        loss, cross_entropy, correct, finite = strategy.run(
            replica_step, args=(per_replica_images, per_replica_labels))
        total = lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
        return {"loss": total(loss), "cross_entropy": total(cross_entropy),
                "accuracy": total(correct) / global_batch_size,
                "finite": tf.reduce_all(strategy.experimental_local_results(finite))}

    return step


# ------------------------------------------------------------------------------------- data
def built_in_data(config) -> tuple[str, str | None]:
    """(data folder, source checkpoint) of the built-in default run, both made once and cached."""
    from flowers_tl import synth

    per_class = config.per_class or synth.DEFAULT_PER_CLASS
    data_url = synth.default_dataset(classes=5, per_class=per_class, seed=0)
    checkpoint_url = config.checkpoint_url
    if checkpoint_url is None:
        checkpoint_url = source_checkpoint(config)
    return data_url, checkpoint_url


def source_checkpoint(config) -> str:
    """Trains the same network from scratch on another generated task (SOURCE_*), once per
    (variant, image size), and caches its checkpoint: the built-in run then fine-tunes from it
    with the logits excluded, as a user would from resnet_v1_50.ckpt."""
    from flowers_tl import synth

    folder = os.path.join(synth.default_cache_dir(),
                          f"source-v2-{config.variant}-{config.image_size}px")
    done = os.path.join(folder, "DONE")
    if os.path.exists(done):
        return os.path.join(folder, "checkpoints")
    source_data = synth.default_dataset(classes=SOURCE_CLASSES, per_class=SOURCE_PER_CLASS,
                                        seed=1, class_offset=SOURCE_CLASS_OFFSET)
    print(f"[source] training the built-in source checkpoint once on {source_data} "
          f"-> {folder}", flush=True)
    source = dataclasses.replace(
        config, data_url=source_data, train_url=folder, checkpoint_url=config_lib.FROM_SCRATCH,
        val_fraction=0.0, target_metric="train", stop_at_target=False, export=False,
        max_steps=None, per_class=None, note="built-in source task", **SOURCE_SETTINGS)
    summary = train(source, data_url=source_data, checkpoint_url=config_lib.FROM_SCRATCH)
    if summary["stop_reason"] != "finished":  # interrupted: resumes on the next run
        raise TrainingStopped(f"source checkpoint training {summary['stop_reason']}; rerun to "
                              "resume it")
    with open(done, "w") as handle:
        handle.write("ok\n")
    return os.path.join(folder, "checkpoints")


def make_input(config, files, labels, local_batch, worker, workers, start_batch, classes,
               report: dict | None = None):
    """An endless iterator of (uint8 images [local_batch, S, S, 3], int32 labels). With the C++
    reader, report["reader"] is set to it (for its bad-file summary)."""
    if config.input == "synthetic":  # in-memory random tensors: the step alone
        rng = np.random.default_rng(config.seed)
        images = rng.integers(0, 256, (local_batch, config.image_size, config.image_size, 3),
                              dtype=np.uint8)
        batch_labels = rng.integers(0, classes, local_batch, dtype=np.int32)
        while True:
            yield images, batch_labels
    if config.input == "tfdata":
        from flowers_tl.tfdata import make_dataset
        dataset = make_dataset(files[worker::workers], labels[worker::workers], local_batch,
                               config.image_size, training=True,
                               num_threads=config.reader_threads, seed=config.seed + worker,
                               drop_remainder=True, area_range=(config.crop_area_min, 1.0))
        yield from dataset.as_numpy_iterator()
        return
    from flowers_tl.reader import Reader
    with Reader(files, labels, batch_size=local_batch, image_size=config.image_size,
                training=True, num_threads=config.reader_threads, seed=config.seed,
                shard_index=worker, num_shards=workers, drop_remainder=True,
                start_batch=start_batch, area_range=(config.crop_area_min, 1.0)) as reader:
        if report is not None:
            report["reader"] = reader
        yield from reader


def evaluate(predict, files, labels, config, bad_files: dict | None = None) -> float:
    """Accuracy over files; the reader's skipped files and reasons go into bad_files."""
    from flowers_tl.reader import Reader
    correct = 0
    with Reader(files, labels, batch_size=config.batch_size, image_size=config.image_size,
                training=False, num_threads=config.reader_threads, num_epochs=1) as reader:
        for images, batch_labels in reader:
            predictions = predict(tf.constant(images)).numpy()
            correct += int((predictions == batch_labels).sum())
        if bad_files is not None:
            bad_files.update(reader.summary().first_bad_files)
    return correct / len(files)


def input_report(train_reader, val_bad_files: dict) -> dict:
    """What the readers skipped, for result.json: counts, and paths with reasons."""
    report = {"images_decoded": None, "failed_reads": None, "bad_files": len(val_bad_files),
              "first_bad_files": [[path, reason] for path, reason in val_bad_files.items()]}
    if train_reader is not None:
        stats = train_reader.summary()
        report.update(images_decoded=stats.images_decoded, failed_reads=stats.failed_reads,
                      bad_files=stats.bad_files + len(val_bad_files),
                      first_bad_files=[list(pair) for pair in stats.first_bad_files]
                      + report["first_bad_files"])
    return report


def save_checkpoint(manager, step: int) -> None:
    """A failed save (disk full, quota, permissions) stops the run with one line. The manager
    records a checkpoint only once it is completely written, so the earlier ones stay usable."""
    try:
        manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as error:
        reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error)).splitlines()[-1]
        raise TrainingStopped(
            f"cannot save the checkpoint of step {step} in {manager.directory}: {reason}; "
            f"earlier checkpoints are intact (latest: {manager.latest_checkpoint})") from None


# ------------------------------------------------------------------------------------- loop
class Interrupted:
    """Once installed (when the loop starts), SIGTERM / Ctrl-C set a flag; the loop saves a
    checkpoint and exits between steps; a second Ctrl-C raises at once. restore() puts the
    previous handlers back: train() is a library call too, and must not leave behind a Ctrl-C
    that raises nothing."""

    def __init__(self):
        self.signal = None
        self.previous = {}

    def install(self):
        if threading.current_thread() is threading.main_thread():  # signals: main thread only
            for number in (signal.SIGTERM, signal.SIGINT):
                self.previous[number] = signal.signal(number, self._handle)

    def restore(self):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def _handle(self, number, frame):
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signal.Signals(number).name


class MetricsLog:
    def __init__(self, train_url: str, chief: bool):
        self.chief = chief
        self.path = os.path.join(train_url, "metrics.jsonl")
        self.writer = tf.summary.create_file_writer(os.path.join(train_url, "tensorboard")) \
            if chief else None

    def write(self, row: dict, step: int):
        if not self.chief:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        with self.writer.as_default(step=step):
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    tf.summary.scalar(f"{row['kind']}/{key}", value)


def default_train_url() -> str:
    return os.path.join("runs", time.strftime("flowers_tl-%Y%m%d-%H%M%S"))


def train(config: config_lib.TrainConfig, data_url: str | None = None,
          checkpoint_url: str | None = None) -> dict:
    """Runs (or resumes) one training run; returns the summary also written to result.json.
    SIGTERM / Ctrl-C during the run save a checkpoint and return with stop_reason
    'interrupted by ...'."""
    interrupted = Interrupted()
    try:
        return _train(config, data_url, checkpoint_url, interrupted)
    finally:
        interrupted.restore()


def _train(config: config_lib.TrainConfig, data_url: str | None, checkpoint_url: str | None,
           interrupted: Interrupted) -> dict:
    data_url = data_url or config.data_url
    checkpoint_url = checkpoint_url or config.checkpoint_url
    if data_url is None:
        data_url, checkpoint_url = built_in_data(config)
    train_url = config.train_url or default_train_url()
    try:  # an unwritable run folder stops here, not after the model is built
        os.makedirs(train_url, exist_ok=True)
        with tempfile.TemporaryFile(dir=train_url):
            pass
    except OSError as error:
        raise TrainingStopped(f"--train_url {train_url}: cannot write there: "
                              f"{error.strerror or error}") from None

    # ---- data
    dataset = list_folder(data_url)
    train_set, val_set = split(dataset, config.val_fraction, config.seed)
    classes = len(dataset.class_names)

    # ---- devices, model, optimizer
    strategy = make_strategy(config)
    worker, workers = worker_index_and_count(strategy)
    chief = worker == 0
    replicas = strategy.num_replicas_in_sync
    local_replicas = replicas // workers
    global_batch = config.batch_size * replicas
    local_batch = config.batch_size * local_replicas
    steps_per_epoch = (len(train_set) // workers) // local_batch
    if steps_per_epoch == 0:
        raise config_lib.ConfigError(
            f"{len(train_set)} training images are less than one global batch of {global_batch}")
    total_steps = int(round(config.epochs * steps_per_epoch))
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    schedule = config_lib.parse_lr_schedule(config.lr_schedule)
    model_config = ModelConfig(
        num_classes=classes, data_format=config.data_format,
        fused_batch_norm=config.batch_norm_fused, precision=config.precision,
        variant=config.variant, xla=config.xla, freeze_batch_norm=config.freeze_batch_norm,
        weight_decay=config.weight_decay, batch_norm_momentum=config.batch_norm_momentum,
        zero_init_residual=config.zero_init_residual, seed=config.seed)
    with strategy.scope():
        model = ResNet50(model_config)
        optimizer = MomentumSGD(
            learning_rate_at_step(schedule, 0, steps_per_epoch, config.warmup_epochs),
            momentum=config.momentum)
        loss_scale = LossScale(config.loss_scale) if config.loss_scale else None
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        step_fn = make_train_step(model, optimizer, strategy, global_batch, loss_scale,
                                  jit_compile=config.xla)
    predict = tf.function(lambda images: tf.argmax(model(images, training=False), -1,
                                                   output_type=tf.int32),
                          jit_compile=config.xla)

    # ---- checkpoint: resume, or start from the pretrained weights
    tracked = dict(model=model, optimizer=optimizer, global_step=global_step)
    if loss_scale is not None:
        tracked["loss_scale"] = loss_scale
    checkpoint = tf.train.Checkpoint(**tracked)
    checkpoint_dir = os.path.join(train_url, "checkpoints") if chief else \
        os.path.join(train_url, f".worker-{worker}-checkpoints")  # non-chiefs must save too
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=3)
    restore_lines = []
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        restore_lines.append(f"resumed from {manager.latest_checkpoint} at step "
                             f"{int(global_step.numpy())}")
    elif checkpoint_url != config_lib.FROM_SCRATCH:
        patterns = config.checkpoint_exclude_patterns or \
            f"global_step,{get_model_meta(config.variant).logits_pattern}"
        report = restore_pretrained(model, checkpoint_url, patterns)
        restore_lines.append(report.summary())
    else:
        restore_lines.append("training from scratch (--checkpoint_url none)")

    # ---- announce
    resolved = dataclasses.replace(config, train_url=train_url)
    if chief:
        from flowers_tl.env import describe_environment
        with open(os.path.join(train_url, "config.json"), "w") as handle:
            json.dump({"config": dataclasses.asdict(resolved),
                       "model": dataclasses.asdict(model_config),
                       "image_size": config.image_size, "class_names": list(dataset.class_names),
                       "data_url": os.path.abspath(data_url),
                       "checkpoint_url": checkpoint_url,
                       "environment": describe_environment()}, handle, indent=2)
        print("configuration:\n" + config_lib.to_json(resolved), flush=True)
        print(f"data: {data_url}: {len(train_set)} train / {len(val_set)} val images, "
              f"classes {train_set.class_counts()}", flush=True)
        print(f"devices: {replicas} replica(s) on {workers} worker(s); batch {config.batch_size} "
              f"per device, global batch {global_batch}; learning rates as given (not scaled "
              f"with the global batch); {steps_per_epoch} steps per epoch, {total_steps} steps",
              flush=True)
        print("\n".join(restore_lines), flush=True)

    # ---- the loop
    log = MetricsLog(train_url, chief)
    interrupted.install()
    start_step = int(global_step.numpy())
    input_readers, val_bad_files = {}, {}
    batches = make_input(config, list(train_set.files), list(train_set.labels), local_batch,
                         worker, workers, start_step, classes, report=input_readers)
    first_step_time = None
    last_save = time.time()
    window = dict(images=0, seconds=0.0, wait=0.0, compute=0.0)
    epoch_correct, epoch_seen = 0.0, 0
    target_event = None
    best = {"train": 0.0, "val": 0.0}
    stop_reason = "finished"
    step = start_step
    while step < total_steps:
        if interrupted.signal:
            stop_reason = f"interrupted by {interrupted.signal}"
            break
        epoch = step // steps_per_epoch
        optimizer.learning_rate.assign(
            learning_rate_at_step(schedule, step, steps_per_epoch, config.warmup_epochs))
        wait_start = time.time()
        images, labels = next(batches)
        compute_start = time.time()
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda context: _replica_slice(images, labels, context, config.batch_size,
                                           local_replicas))
        metrics = step_fn(*per_replica)
        finite = bool(metrics["finite"].numpy())
        loss = float(metrics["loss"].numpy())  # also waits for the step to finish
        end = time.time()
        if first_step_time is None:
            first_step_time = compute_start
        if not finite and (loss_scale is None or not loss_scale.dynamic):
            raise TrainingStopped(
                f"step {step}: non-finite gradients (loss {loss}) with "
                f"{'loss scale ' + config.loss_scale if loss_scale else config.precision}: "
                "nothing was applied; " + ("rerun with --loss_scale dynamic (or a smaller scale)"
                                           if loss_scale is not None else
                                           "the run diverged: lower the learning rate"))
        step += 1
        global_step.assign(step)
        accuracy = float(metrics["accuracy"].numpy())
        epoch_correct += accuracy * global_batch
        epoch_seen += global_batch
        if step - start_step > config.warmup_steps:
            window["images"] += global_batch
            window["seconds"] += end - wait_start
            window["wait"] += compute_start - wait_start
            window["compute"] += end - compute_start
        if step % config.log_every == 0 or step == total_steps:
            row = {"kind": "step", "step": step, "epoch": round(step / steps_per_epoch, 3),
                   "loss": loss, "accuracy": accuracy,
                   "learning_rate": float(optimizer.learning_rate.numpy()),
                   "time": round(time.time() - PROCESS_START, 2)}
            if window["seconds"] > 0:
                row.update(images_per_sec=window["images"] / window["seconds"],
                           images_per_sec_per_device=window["images"] / window["seconds"] / replicas,
                           data_wait_fraction=window["wait"] / window["seconds"])
            if loss_scale is not None:
                row.update(loss_scale=float(loss_scale.scale.numpy()),
                           skipped_steps=int(loss_scale.skipped_steps.numpy()))
            log.write(row, step)
            if chief:
                speed = f"{row['images_per_sec']:.1f} img/s" if "images_per_sec" in row else "warm-up"
                print(f"step {step}/{total_steps} epoch {row['epoch']:.2f} loss {loss:.4f} "
                      f"acc {accuracy:.3f} lr {row['learning_rate']:g} {speed}", flush=True)
        epoch_done = step % steps_per_epoch == 0 or step == total_steps
        if epoch_done:
            values = {"train": epoch_correct / max(epoch_seen, 1)}
            if len(val_set):
                values["val"] = evaluate(predict, list(val_set.files), list(val_set.labels),
                                         config, val_bad_files)
            row = {"kind": "epoch", "epoch": epoch + 1 if step % steps_per_epoch == 0 else
                   round(step / steps_per_epoch, 3), "step": step,
                   "train_accuracy": values["train"], "val_accuracy": values.get("val"),
                   "time": round(time.time() - PROCESS_START, 2)}
            log.write(row, step)
            for key, value in values.items():
                best[key] = max(best[key], value)
            if chief:
                print(f"epoch {row['epoch']}: train accuracy {values['train']:.4f}"
                      + (f", val accuracy {values['val']:.4f}" if "val" in values else ""),
                      flush=True)
            epoch_correct, epoch_seen = 0.0, 0
            metric = values.get(config.target_metric)
            if target_event is None and metric is not None and metric >= config.target_accuracy:
                now = time.time()
                target_event = {
                    "kind": "target", "metric": f"{config.target_metric}_accuracy",
                    "split": config.target_metric, "target": config.target_accuracy,
                    "value": metric, "step": step, "seed": config.seed,
                    "seconds_from_process_start": now - PROCESS_START,
                    "seconds_from_first_step": now - first_step_time,
                    "resumed_from_step": start_step or None}
                log.write(target_event, step)
                if chief:
                    print(f"target reached: {target_event['metric']} {metric:.4f} >= "
                          f"{config.target_accuracy} after "
                          f"{target_event['seconds_from_process_start']:.1f} s "
                          f"({target_event['seconds_from_first_step']:.1f} s from the first "
                          "step)", flush=True)
                if config.stop_at_target:
                    stop_reason = "target reached"
                    break
        minutes = (time.time() - last_save) / 60
        if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0) or \
                minutes >= config.checkpoint_every_minutes:
            save_checkpoint(manager, step)
            last_save = time.time()
    save_checkpoint(manager, step)

    summary = {"stop_reason": stop_reason, "steps": step, "total_steps": total_steps,
               "images_per_sec": window["images"] / window["seconds"] if window["seconds"] else None,
               "data_wait_fraction": window["wait"] / window["seconds"] if window["seconds"] else None,
               "replicas": replicas, "global_batch": global_batch,
               "best_train_accuracy": best["train"], "best_val_accuracy": best["val"] if len(val_set) else None,
               "time_to_target": target_event, "seconds": time.time() - PROCESS_START,
               "config": dataclasses.asdict(resolved),
               "input": input_report(input_readers.get("reader"), val_bad_files)}
    if chief:
        if summary["input"]["bad_files"]:
            print(f"input: skipped {summary['input']['bad_files']} bad file(s):\n" + "\n".join(
                f"  {path}: {reason}" for path, reason in summary["input"]["first_bad_files"]),
                flush=True)
        if config.export and stop_reason != f"interrupted by {interrupted.signal}":
            from flowers_tl.export import ExportError, export_saved_model
            try:
                summary["export"] = export_saved_model(model, os.path.join(train_url, "export"),
                                                       dataset.class_names, config.image_size)
            except (OSError, ExportError) as error:
                raise TrainingStopped(
                    f"{error}; the checkpoint of step {step} is saved, export it with "
                    f"python -m flowers_tl.export --train_url {train_url}") from None
            print(f"exported {summary['export']}", flush=True)
        with open(os.path.join(train_url, "result.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        print(f"{stop_reason} at step {step}; "
              + ("checkpoint saved, rerun the same command to resume" if
                 stop_reason.startswith("interrupted") else f"results in {train_url}"),
              flush=True)
    return summary


def learning_rate_at_step(schedule, step: int, steps_per_epoch: int,
                          warmup_epochs: float = 0) -> float:
    """The piecewise rate at this step, ramped linearly up from 0 over the warm-up epochs."""
    epoch = step / steps_per_epoch
    rate = config_lib.learning_rate_at(schedule, epoch)
    if epoch < warmup_epochs:
        rate *= (step + 1) / (warmup_epochs * steps_per_epoch)
    return rate


def _replica_slice(images, labels, context, per_device: int, local_replicas: int):
    local = context.replica_id_in_sync_group % local_replicas
    lo, hi = local * per_device, (local + 1) * per_device
    return tf.constant(images[lo:hi]), tf.constant(labels[lo:hi])


def main(argv: list[str] | None = None) -> int:
    config = config_lib.resolve_or_exit(argv)
    try:
        summary = train(config)
    except (TrainingStopped, config_lib.ConfigError) as error:
        print(f"flowers_tl.train: error: {error}", file=sys.stderr)
        return 1
    return 0 if summary["stop_reason"] in ("finished", "target reached") or \
        summary["stop_reason"].startswith("interrupted") else 1


if __name__ == "__main__":
    sys.exit(main())
