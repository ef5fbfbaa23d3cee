"""Production fine-tuning of ResNet-50 v1, on one CPU, N GPUs or several machines.

    python -m flowers_tl.train --data_url flower_photos --train_url runs/flowers \\
        --checkpoint_url resnet_v1_50.ckpt --num_gpus 4 --precision fp16 --loss_scale 1024

Without --data_url it runs on the built-in generated flowers set, fine-tuning from a source
checkpoint trained once on a *different* generated task (flowers_tl.builtin). On a machine
without a GPU that default is CPU-sized (preset cpu-default, printed with the configuration).

The run directory (--train_url) gets: config.json (the resolved configuration, model, classes,
environment), metrics.jsonl (one JSON object a line: every step in the schema of
flowers_tl.results, epochs, the time-to-target event), tensorboard/, checkpoints/ (resumed from
when the same command runs again), result.json (with the last held-out evaluation by class),
heldout_mistakes.csv (its wrong files) and export/<N>/ (a SavedModel for TF Serving).

Stages, as in big_vision's trainer: input, model and optimizer, checkpoint, evaluation, loop.
"""
from __future__ import annotations

import time

PROCESS_START = time.time()  # MLPerf-style clock: time to target counts from here

import sys  # noqa: E402

from flowers_tl import config as config_lib  # noqa: E402  (loads no TensorFlow)

# The command line is checked before TensorFlow's import (seconds): a bad flag costs nothing.
CLI_CONFIG = config_lib.resolve_or_exit(sys.argv[1:]) if __name__ == "__main__" else None

import csv  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402


def import_tensorflow_without_keras() -> None:
    """Imports TensorFlow with Keras hidden: TF's own import eagerly loads all of Keras (and,
    through Keras' scikit-learn wrapper, scikit-learn) when they are installed, and this package
    uses neither. That was ~2.8 s of every run's clock (import 5.4 against 2.6 s, AMD EPYC, 2
    cores). Only for the main program, which owns its process: afterwards `import keras` and
    `tf.keras` work as usual; `from tensorflow.keras import ...` does not (no code here uses it)."""
    hide = "keras" not in sys.modules
    if hide:
        sys.modules["keras"] = None  # importing it fails, and TF skips what needs it
    try:
        import tensorflow  # noqa: F401
    finally:
        if hide and "keras" in sys.modules and sys.modules["keras"] is None:
            del sys.modules["keras"]


if __name__ == "__main__":
    import_tensorflow_without_keras()
import tensorflow as tf  # noqa: E402

from flowers_tl.builtin import SourceNotReady, built_in_data  # noqa: E402
from flowers_tl.checkpoint import excluded_names, restore_pretrained  # noqa: E402
from flowers_tl.data import list_folder, split  # noqa: E402
from flowers_tl.evaluation import (evaluate, heldout_lines, heldout_report,  # noqa: E402, F401
                                   split_warnings)
from flowers_tl.model import ResNet50, get_model_meta  # noqa: E402
from flowers_tl.results import throughput_from_step_rows  # noqa: E402
from flowers_tl.step import (LossScale, MomentumSGD, WeightAverage, distribute_batch,  # noqa: E402
                             make_strategy, make_train_step, trained_variables,
                             worker_index_and_count)


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss with a static loss scale)."""


# ------------------------------------------------------------------------------------- input
def size_phases(config: config_lib.RunConfig, steps_per_epoch: int) -> list[tuple[int, int]]:
    """(first step, training image size) of each phase of the run: one phase at --image_size,
    or with --progressive_min_size one per size of config.image_size_at_epoch's staircase."""
    phases: list[tuple[int, int]] = []
    for epoch in range(max(1, math.ceil(config.train.epochs))):
        size = config_lib.image_size_at_epoch(config.reader, config.train.epochs, epoch)
        if not phases or phases[-1][1] != size:
            phases.append((epoch * steps_per_epoch, size))
    return phases


def make_input(config: config_lib.RunConfig, files, labels, local_batch: int, worker: int,
               workers: int, start_batch: int, classes: int, report: dict | None = None,
               phases: list[tuple[int, int]] | None = None):
    """An endless iterator of (uint8 images [local_batch, S, S, 3], int32 labels): batch b at
    the size of the phase holding b (`phases` from size_phases; default: --image_size
    throughout). A new pipeline per phase starts at that phase's first batch, so the files,
    crops and flips of batch b are those of one uninterrupted stream at any size (batch b of
    the C++ reader and of tf.data depends only on (seed, b)). With the C++ reader,
    report["reader"] is the current reader and report["summaries"] the finished phases'."""
    phases = phases or [(0, config.reader.image_size)]
    if report is not None:
        report.setdefault("summaries", [])
    for index, (first, size) in enumerate(phases):
        end = phases[index + 1][0] if index + 1 < len(phases) else None
        if end is not None and end <= start_batch:
            continue
        begin = max(first, start_batch)
        stream = _phase_input(config, files, labels, local_batch, worker, workers, begin, size,
                              classes, report)
        if end is None:
            yield from stream
            return
        yield from itertools.islice(stream, end - begin)
        stream.close()  # the phase's reader stops here, its summary kept


def _phase_input(config, files, labels, local_batch, worker, workers, start_batch, size,
                 classes, report):
    reader = config.reader
    area_range = (reader.crop_area_min, 1.0)
    if reader.input == "synthetic":  # in-memory random tensors: the step alone
        rng = np.random.default_rng(config.train.seed)
        images = rng.integers(0, 256, (local_batch, size, size, 3), dtype=np.uint8)
        batch_labels = rng.integers(0, classes, local_batch, dtype=np.int32)
        while True:
            yield images, batch_labels
    if reader.input == "tfdata":
        from flowers_tl.tfdata import make_dataset
        dataset = make_dataset(files[worker::workers], labels[worker::workers], local_batch, size,
                               training=True, num_threads=reader.reader_threads,
                               seed=config.train.seed + worker, drop_remainder=True,
                               area_range=area_range, start_batch=start_batch)
        yield from dataset.as_numpy_iterator()
        return
    from flowers_tl.reader import Reader
    cache = reader.reader_cache or ("memory" if reader.input == "cxx-cache" else None)
    with Reader(files, labels, batch_size=local_batch, image_size=size, training=True,
                num_threads=reader.reader_threads, seed=config.train.seed, shard_index=worker,
                num_shards=workers, drop_remainder=True, start_batch=start_batch,
                area_range=area_range, cache=cache,
                cache_short_side=reader.cache_short_side if cache else None) as stream:
        if report is not None:
            report["reader"] = stream
        try:
            for batch in stream:  # not `yield from`: closing this would close the reader first
                yield batch
        finally:
            if report is not None:
                report["summaries"].append(stream.summary())
                report["reader"] = None


def input_report(train_input: dict | None, val_bad_files: dict) -> dict:
    """What the readers skipped, for result.json: counts, and paths with reasons. With several
    phases (progressive resizing) the counts add up; bad files are counted once each, as far
    as the readers' lists of the first ones name them. The decoded-image cache (how it was
    served, its fill time) is the last phase's reader's."""
    report = {"images_decoded": None, "failed_reads": None, "bad_files": len(val_bad_files),
              "first_bad_files": [[path, reason] for path, reason in val_bad_files.items()],
              "cache": None}
    train_input = train_input or {}  # None: no training reader (synthetic input, a test)
    summaries = list(train_input.get("summaries", []))
    if train_input.get("reader") is not None:
        summaries.append(train_input["reader"].summary())
    if summaries:
        last = summaries[-1]
        report.update(cache={"kind": last.cache, "reused": last.cache_reused,
                             "bytes": last.cache_bytes, "fill_seconds": last.cache_fill_seconds,
                             "images_from_cache": sum(stats.images_from_cache
                                                      for stats in summaries)})
        bad = {}
        for stats in summaries:
            bad.update((path, reason) for path, reason in stats.first_bad_files
                       if path not in bad)
        report.update(images_decoded=sum(stats.images_decoded for stats in summaries),
                      failed_reads=sum(stats.failed_reads for stats in summaries),
                      bad_files=max([len(bad)] + [stats.bad_files for stats in summaries])
                      + len(val_bad_files),
                      first_bad_files=[list(pair) for pair in bad.items()]
                      + report["first_bad_files"])
    return report


def lever_lines(config: config_lib.RunConfig, phases, classifier, weight_average,
                trained: tuple[int, int] | None = None) -> list[str]:
    """What the recipe levers that are on do in this run, for the log. `trained`: (variables
    trained, trainable variables of the model)."""
    lines = []
    if config.train.trainable_scopes is not None and trained is not None:
        lines.append(f"training {trained[0]} of the model's {trained[1]} trainable variables "
                     f"(--trainable_scopes {config.train.trainable_scopes}); the others keep "
                     "their restored weights (their batch norm still learns its statistics)")
    if len(phases) > 1:
        lines.append("progressive resizing: " + ", ".join(
            f"{size} px from step {first}" for first, size in phases))
    if config.reader.eval_size != config.reader.image_size:
        lines.append(f"held-out evaluation and export at {config.reader.eval_size} px "
                     f"(training at {config.reader.image_size} px)")
    if config.train.classifier_lr_multiplier != 1.0:
        lines.append(f"classifier learning rate x{config.train.classifier_lr_multiplier:g}: "
                     + ", ".join(classifier))
    if weight_average is not None:
        lines.append(f"weight average: decay {weight_average.decay:g} (warm-up min(decay, "
                     "(1 + n) / (10 + n)) at update n), batch-norm statistics averaged too; "
                     "evaluation and export use it")
    return lines


# ------------------------------------------------------------------------------- checkpoint
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


def exclude_patterns(config: config_lib.RunConfig) -> str:
    """What a pretrained restore leaves out: --checkpoint_exclude_patterns, else global_step and
    the logits layer. The model variables they match are the new classifier (whose rate
    --classifier_lr_multiplier scales)."""
    return config.run.checkpoint_exclude_patterns or \
        f"global_step,{get_model_meta(config.model.variant).logits_pattern}"


def restore_or_start(config, tracked, manager, model, checkpoint_url, global_step,
                     loss_scale, weight_average=None) -> list[str]:
    """Resume from the run's own latest checkpoint, else load the pretrained weights (logits
    and global_step excluded), else start from scratch. Lines saying which, for the log. The
    weight average (--ema_decay) resumes with the run, or starts from the weights loaded."""
    if manager.latest_checkpoint:
        saved = {name for name, _ in tf.train.list_variables(manager.latest_checkpoint)}
        averaged = any(name.startswith("ema/") for name in saved)
        # `tracked`: what the checkpoint holds; the weight average only if it was saved (the run
        # may have begun without --ema_decay)
        restored = {name: value for name, value in tracked.items()
                    if name != "ema" or averaged}
        tf.train.Checkpoint(**restored).restore(
            manager.latest_checkpoint).assert_existing_objects_matched()
        lines = [f"resumed from {manager.latest_checkpoint} at step {int(global_step.numpy())}"]
        if weight_average is not None and not averaged:
            weight_average.reset(model)
            lines.append("weight average: the checkpoint has none (--ema_decay was off), it "
                         "starts from the resumed weights")
        if loss_scale is not None and not loss_scale.dynamic:
            # A static scale is a setting, not state: the configuration's wins over the saved one.
            saved, wanted = float(loss_scale.scale.numpy()), float(config.train.loss_scale)
            if saved != wanted:
                loss_scale.scale.assign(wanted)
                lines.append(f"loss scale: --loss_scale {config.train.loss_scale} replaces the "
                             f"checkpoint's {saved:g}")
        return lines
    if checkpoint_url != config_lib.FROM_SCRATCH:
        lines = [restore_pretrained(model, checkpoint_url, exclude_patterns(config)).summary()]
    else:
        lines = ["training from scratch (--checkpoint_url none)"]
    if weight_average is not None:
        weight_average.reset(model)  # the average starts at the weights training starts from
    return lines


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
    """metrics.jsonl (every row) and TensorBoard (scalars of the rows asked for), chief only."""

    def __init__(self, train_url: str, chief: bool):
        self.chief = chief
        self.path = os.path.join(train_url, "metrics.jsonl")
        self.writer = tf.summary.create_file_writer(os.path.join(train_url, "tensorboard")) \
            if chief else None

    def write(self, row: dict, step: int, summary: bool = True):
        if not self.chief:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if summary:
            with self.writer.as_default(step=step):
                for key, value in row.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) \
                            and key != "step":
                        tf.summary.scalar(f"{row['kind']}/{key}", value)


def run_warnings(config: config_lib.RunConfig, val_images: int) -> list[str]:
    """What the header warns about (and result.json keeps): a held-out split too small for the
    target, a reduced precision this CPU has no arithmetic units for (flowers_tl.env)."""
    from flowers_tl.env import arithmetic_note, cpu_features
    note = arithmetic_note(config.model.precision, cpu_features(), config.train.num_gpus)
    return split_warnings(config, val_images) + ([f"precision: {note}"] if note else [])


def default_train_url() -> str:
    return os.path.join("runs", time.strftime("flowers_tl-%Y%m%d-%H%M%S"))


def learning_rate_at_step(schedule, step: int, steps_per_epoch: int,
                          warmup_epochs: float = 0, shape: str = "step") -> float:
    """The rate at this step: the piecewise schedule ("step"), or from its first rate down to 0
    at its last epoch along a half cosine or a line (after the warm-up); ramped linearly up
    from 0 over the warm-up epochs."""
    epoch = step / steps_per_epoch
    if shape == "step":
        rate = config_lib.learning_rate_at(schedule, epoch)
    else:
        end = schedule[-1][0]
        progress = min(1.0, max(0.0, (epoch - warmup_epochs) / max(end - warmup_epochs, 1e-9)))
        rate = schedule[0][1] * (0.5 * (1 + math.cos(math.pi * progress)) if shape == "cosine"
                                 else 1 - progress)
    if epoch < warmup_epochs:
        rate *= (step + 1) / (warmup_epochs * steps_per_epoch)
    return rate


def train(config: config_lib.RunConfig) -> dict:
    """Runs (or resumes) one training run; returns the summary also written to result.json.
    SIGTERM / Ctrl-C during the run save a checkpoint and return with stop_reason
    'interrupted by ...'."""
    interrupted = Interrupted()
    try:
        return _train(config, interrupted)
    finally:
        interrupted.restore()


def _train(config: config_lib.RunConfig, interrupted: Interrupted) -> dict:
    data_url, checkpoint_url = config.data.data_url, config.run.checkpoint_url
    if data_url is None:
        data_url, checkpoint_url = built_in_data(config)
    train_url = config.run.train_url or default_train_url()
    try:  # an unwritable run folder stops here, not after the model is built
        os.makedirs(train_url, exist_ok=True)
        with tempfile.TemporaryFile(dir=train_url):
            pass
    except OSError as error:
        raise TrainingStopped(f"--train_url {train_url}: cannot write there: "
                              f"{error.strerror or error}") from None
    train_cfg, run_cfg = config.train, config.run

    # ---- data
    dataset = list_folder(data_url)
    train_set, val_set = split(dataset, config.data.val_fraction, train_cfg.seed)
    classes = len(dataset.class_names)

    # ---- devices, model, optimizer
    strategy = make_strategy(train_cfg.num_gpus, train_cfg.cpu_devices)
    worker, workers = worker_index_and_count(strategy)
    chief = worker == 0
    replicas = strategy.num_replicas_in_sync
    global_batch = train_cfg.batch_size * replicas
    local_batch = global_batch // workers
    steps_per_epoch = (len(train_set) // workers) // local_batch
    if steps_per_epoch == 0:
        raise config_lib.ConfigError(
            f"{len(train_set)} training images are less than one global batch of {global_batch}")
    total_steps = int(round(train_cfg.epochs * steps_per_epoch))
    if train_cfg.max_steps is not None:
        total_steps = min(total_steps, train_cfg.max_steps)
    schedule = config_lib.parse_lr_schedule(train_cfg.lr_schedule)
    phases = size_phases(config, steps_per_epoch)
    with strategy.scope():
        model = ResNet50(config.model, num_classes=classes, seed=train_cfg.seed)
        scopes = config_lib.parse_scopes(train_cfg.trainable_scopes)
        try:
            trained = {v.name.rsplit(":", 1)[0] for v in trained_variables(model, scopes)}
        except ValueError as error:
            raise config_lib.ConfigError(str(error)) from None
        # The new classifier's rate is multiplied only where it is trained.
        classifier = [name for name in excluded_names(model, exclude_patterns(config))
                      if name in trained]
        multiplier = train_cfg.classifier_lr_multiplier
        optimizer = MomentumSGD(
            learning_rate_at_step(schedule, 0, steps_per_epoch, train_cfg.warmup_epochs,
                                  train_cfg.lr_schedule_shape),
            momentum=train_cfg.momentum,
            learning_rate_multipliers={name: multiplier for name in classifier}
            if multiplier != 1.0 else None)
        loss_scale = LossScale(train_cfg.loss_scale) if train_cfg.loss_scale else None
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        weight_average = WeightAverage(model, train_cfg.ema_decay) if train_cfg.ema_decay \
            else None

        def build_step():  # one per training image size: each traces at its own fixed shape
            return make_train_step(model, optimizer, strategy, global_batch, loss_scale,
                                   label_smoothing=train_cfg.label_smoothing,
                                   weight_average=weight_average,
                                   random_grayscale=train_cfg.random_grayscale,
                                   seed=train_cfg.seed, trainable_scopes=scopes)
        step_fns = {size: build_step() for _, size in phases}

    # ---- evaluation model: the trained one, or a copy that takes the weight average
    eval_model = model if weight_average is None else \
        ResNet50(config.model, num_classes=classes, seed=train_cfg.seed)
    predict = tf.function(lambda images: tf.argmax(eval_model(images, training=False), -1,
                                                   output_type=tf.int32),
                          jit_compile=config.model.xla, autograph=False)  # as the step's

    # ---- checkpoint: resume, or start from the pretrained weights
    tracked = dict(model=model, optimizer=optimizer, global_step=global_step)
    if loss_scale is not None:
        tracked["loss_scale"] = loss_scale
    if weight_average is not None:
        tracked["ema"] = weight_average
    checkpoint = tf.train.Checkpoint(**tracked)
    checkpoint_dir = os.path.join(train_url, "checkpoints") if chief else \
        os.path.join(train_url, f".worker-{worker}-checkpoints")  # non-chiefs must save too
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=3)
    restore_lines = restore_or_start(config, tracked, manager, model, checkpoint_url,
                                     global_step, loss_scale, weight_average)
    restore_lines += lever_lines(config, phases, classifier, weight_average,
                                 (len(trained), len(model.trainable_variables)))

    # ---- announce
    resolved = config_lib.with_overrides(config, {"train_url": train_url})
    if chief:
        from flowers_tl.env import describe_environment
        with open(os.path.join(train_url, "config.json"), "w") as handle:
            json.dump({"config": config_lib.to_dict(resolved),
                       "model": config_lib.to_dict(resolved)["model"], "num_classes": classes,
                       "image_size": config.reader.image_size,
                       "eval_image_size": config.reader.eval_size,
                       "class_names": list(dataset.class_names),
                       "data_url": os.path.abspath(data_url), "checkpoint_url": checkpoint_url,
                       "environment": describe_environment()}, handle, indent=2)
        print("configuration:\n" + config_lib.to_json(resolved), flush=True)
        print(f"data: {data_url}: {len(train_set)} train / {len(val_set)} val images, "
              f"classes {train_set.class_counts()}", flush=True)
        print(f"devices: {replicas} replica(s) on {workers} worker(s); batch "
              f"{train_cfg.batch_size} per device, global batch {global_batch}; learning rates "
              f"as given (not scaled with the global batch); {steps_per_epoch} steps per epoch, "
              f"{total_steps} steps", flush=True)
        print("\n".join(restore_lines), flush=True)
        for line in run_warnings(config, len(val_set)):
            print(line, flush=True)

    # ---- the loop
    log = MetricsLog(train_url, chief)
    interrupted.install()
    start_step = int(global_step.numpy())
    input_readers, val_bad_files = {}, {}
    heldout = None  # the last evaluation's (predictions, step), reported by class at the end
    batches = make_input(config, list(train_set.files), list(train_set.labels), local_batch,
                         worker, workers, start_step, classes, report=input_readers,
                         phases=phases)
    size, size_start = None, start_step  # a new image size traces anew: warm-up again
    first_step_time = None
    last_save = time.time()
    # The checkpoint of this step already on disk (resumed from it, or saved by the loop): the
    # final save skips it, as TensorFlow rewrites a checkpoint's index in place, so saving it
    # again would leave the one checkpoint the state file names half-written while it is written.
    saved_step = start_step if manager.latest_checkpoint else None
    step_rows = []
    eval_seconds = 0.0  # evaluation counts in the clock; reported on its own too
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
            learning_rate_at_step(schedule, step, steps_per_epoch, train_cfg.warmup_epochs,
                                  train_cfg.lr_schedule_shape))
        wait_start = time.perf_counter()
        images, labels = next(batches)
        if images.shape[1] != size:
            size_start = step if size is not None else start_step
            size = int(images.shape[1])
        compute_start = time.perf_counter()
        metrics = step_fns[size](*distribute_batch(strategy, images, labels,
                                                   train_cfg.batch_size))
        finite = bool(metrics["finite"].numpy())
        loss = float(metrics["loss"].numpy())  # also waits for the step to finish
        end = time.perf_counter()
        if first_step_time is None:
            first_step_time = time.time()
        if not finite and (loss_scale is None or not loss_scale.dynamic):
            raise TrainingStopped(
                f"step {step}: non-finite gradients (loss {loss}) with "
                f"{'loss scale ' + train_cfg.loss_scale if loss_scale else config.model.precision}"
                ": nothing was applied; " + ("rerun with --loss_scale dynamic (or a smaller "
                                             "scale)" if loss_scale is not None else
                                             "the run diverged: lower the learning rate"))
        step += 1
        global_step.assign(step)
        accuracy = float(metrics["accuracy"].numpy())
        epoch_correct += accuracy * global_batch
        epoch_seen += global_batch
        row = {"kind": "step", "step": step, "step_seconds": end - wait_start,
               "images": global_batch, "data_wait_seconds": compute_start - wait_start,
               "warmup": step - size_start <= run_cfg.warmup_steps, "image_size": size,
               "loss": loss,
               "accuracy": accuracy, "learning_rate": float(optimizer.learning_rate.numpy()),
               "epoch": round(step / steps_per_epoch, 3),
               "time": round(time.time() - PROCESS_START, 3)}
        if loss_scale is not None:
            row.update(loss_scale=float(loss_scale.scale.numpy()),
                       skipped_steps=int(loss_scale.skipped_steps.numpy()))
        step_rows.append(row)
        shown = step % run_cfg.log_every == 0 or step == total_steps
        log.write(row, step, summary=shown)
        if chief and shown:
            timed = [r for r in step_rows if not r["warmup"]]
            seconds = sum(r["step_seconds"] for r in timed)
            speed = (f"{sum(r['images'] for r in timed) / seconds:.1f} img/s, about "
                     f"{seconds / len(timed) * (total_steps - step) / 60:.1f} min of steps left"
                     ) if timed else "warm-up"
            print(f"step {step}/{total_steps} epoch {row['epoch']:.2f} loss {loss:.4f} "
                  f"acc {accuracy:.3f} lr {row['learning_rate']:g} {speed}", flush=True)
        if step % steps_per_epoch == 0 or step == total_steps:
            values = {"train": epoch_correct / max(epoch_seen, 1)}
            if len(val_set) and ((epoch + 1) % train_cfg.eval_every_epochs == 0 or
                                 step == total_steps):
                eval_start = time.time()
                if weight_average is not None:
                    weight_average.copy_to(eval_model)
                predictions = {}
                values["val"] = evaluate(predict, list(val_set.files), list(val_set.labels),
                                         config, val_bad_files, predictions)
                heldout = predictions, step
                eval_seconds += time.time() - eval_start
            epoch_row = {"kind": "epoch", "epoch": epoch + 1 if step % steps_per_epoch == 0
                         else round(step / steps_per_epoch, 3), "step": step,
                         "train_accuracy": values["train"], "val_accuracy": values.get("val"),
                         "eval_seconds": round(eval_seconds, 3),
                         "time": round(time.time() - PROCESS_START, 2)}
            log.write(epoch_row, step)
            for key, value in values.items():
                if value is not None:
                    best[key] = max(best[key], value)
            if chief:
                print(f"epoch {epoch_row['epoch']}: train accuracy {values['train']:.4f}"
                      + (f", val accuracy {values['val']:.4f}" if values.get("val") is not None
                         else ""), flush=True)
            epoch_correct, epoch_seen = 0.0, 0
            metric = values.get(train_cfg.target_metric)
            if target_event is None and metric is not None and \
                    metric >= train_cfg.target_accuracy:
                target_event = target_reached(log, train_cfg, metric, step, first_step_time,
                                              start_step, len(val_set), eval_seconds, chief)
                if train_cfg.stop_at_target:
                    stop_reason = "target reached"
                    break
        if (run_cfg.checkpoint_every_steps and step % run_cfg.checkpoint_every_steps == 0) or \
                (time.time() - last_save) / 60 >= run_cfg.checkpoint_every_minutes:
            save_checkpoint(manager, step)
            last_save, saved_step = time.time(), step
    if saved_step != step:
        save_checkpoint(manager, step)
    if weight_average is not None:
        weight_average.copy_to(eval_model)  # what the export takes
    return finish(config, resolved, train_url, eval_model, dataset, step_rows, stop_reason, step,
                  total_steps, replicas, global_batch, best, len(val_set), target_event,
                  input_report(input_readers, val_bad_files), eval_seconds, chief,
                  heldout_report(val_set, *heldout) if heldout else None)


def target_reached(log, train_cfg, metric, step, first_step_time, start_step, val_images,
                   eval_seconds, chief) -> dict:
    now = time.time()
    event = {"kind": "target", "metric": f"{train_cfg.target_metric}_accuracy",
             "split": train_cfg.target_metric, "target": train_cfg.target_accuracy,
             "value": metric, "step": step, "seed": train_cfg.seed,
             "val_images": val_images, "eval_seconds": eval_seconds,
             "seconds_from_process_start": now - PROCESS_START,
             "seconds_from_first_step": now - first_step_time,
             "resumed_from_step": start_step or None}
    log.write(event, step)
    if chief:
        print(f"target reached: {event['metric']} {metric:.4f} >= {train_cfg.target_accuracy} "
              f"after {event['seconds_from_process_start']:.1f} s "
              f"({event['seconds_from_first_step']:.1f} s from the first step)", flush=True)
    return event


def finish(config, resolved, train_url, model, dataset, step_rows, stop_reason, step,
           total_steps, replicas, global_batch, best, val_images, target_event, input_summary,
           eval_seconds, chief, heldout=None) -> dict:
    """result.json, the bad-file report, the last evaluation by class (result.json's
    "heldout", its wrong files in heldout_mistakes.csv) and the export (chief only); returns
    the summary."""
    timed = [row for row in step_rows if not row["warmup"]]
    throughput = throughput_from_step_rows(timed, replicas) if timed else {}
    summary = {"stop_reason": stop_reason, "steps": step, "total_steps": total_steps,
               "images_per_sec": throughput.get("images_per_sec"),
               "data_wait_fraction": throughput.get("data_wait_fraction"),
               "throughput": throughput or None, "replicas": replicas,
               "global_batch": global_batch, "best_train_accuracy": best["train"],
               "best_val_accuracy": best["val"] if val_images else None,
               "time_to_target": target_event, "seconds": time.time() - PROCESS_START,
               "eval_seconds": eval_seconds, "val_images": val_images,
               "warnings": run_warnings(config, val_images),
               "config": config_lib.to_dict(resolved), "input": input_summary}
    if heldout is not None:
        summary["heldout"] = {key: value for key, value in heldout.items() if key != "mistakes"}
        summary["heldout"]["mistakes_file"] = "heldout_mistakes.csv"
    if not chief:
        return summary
    if heldout is not None:
        with open(os.path.join(train_url, "heldout_mistakes.csv"), "w", newline="") as handle:
            writer = csv.DictWriter(handle, ["file", "label", "predicted"])
            writer.writeheader()
            writer.writerows(heldout["mistakes"])
        for line in heldout_lines(heldout):
            print(line, flush=True)
    if input_summary["bad_files"]:
        print(f"input: skipped {input_summary['bad_files']} bad file(s):\n" + "\n".join(
            f"  {path}: {reason}" for path, reason in input_summary["first_bad_files"]),
            flush=True)
    if config.run.export and not stop_reason.startswith("interrupted"):
        from flowers_tl.export import ExportError, export_saved_model
        try:
            summary["export"] = export_saved_model(model, os.path.join(train_url, "export"),
                                                   dataset.class_names, config.reader.eval_size)
        except (OSError, ExportError) as error:
            raise TrainingStopped(
                f"{error}; the checkpoint of step {step} is saved, export it with "
                f"python -m flowers_tl.export --train_url {train_url}") from None
        print(f"exported {summary['export']}", flush=True)
    with open(os.path.join(train_url, "result.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(f"{stop_reason} at step {step}; "
          + ("checkpoint saved, rerun the same command to resume" if
             stop_reason.startswith("interrupted") else f"results in {train_url}"), flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    config = CLI_CONFIG if argv is None and CLI_CONFIG is not None else \
        config_lib.resolve_or_exit(argv)
    try:
        summary = train(config)
    except (TrainingStopped, SourceNotReady, config_lib.ConfigError) as error:
        print(f"flowers_tl.train: error: {error}", file=sys.stderr)
        return 1
    return 0 if summary["stop_reason"] in ("finished", "target reached") or \
        summary["stop_reason"].startswith("interrupted") else 1


if __name__ == "__main__":
    sys.exit(main())
