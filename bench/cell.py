"""One sweep cell in its own process, and the figures read back from what it wrote.

    python -m bench.cell --keras_fit /abs/cells/keras-fit-....json --train_url /abs/cells/keras-...
    python -m bench.cell --prepare /abs/cells/prepare-data.json

bench.sweep runs each of its cells as `python -m flowers_tl.train --config <cell>.json
--train_url <cell>` (TensorFlow keeps global state: the mixed-precision policy, XLA caches,
oneDNN read at import), with a time budget after which the process gets SIGTERM (the trainer
saves and exits between steps) and, a minute later, SIGKILL. Every path handed to a process is
absolute and the process runs in the results folder, so the sweep works from any folder and
from a non-editable install. The figures come from the run folder's per-step rows
(metrics.jsonl, schema in flowers_tl.results), so a cell that was stopped still gives what it
measured. The Keras-fit anchor and the preparation of the built-in data run here, the same way.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

PROCESS_START = time.time()

from flowers_tl.results import read_jsonl, throughput_from_step_rows  # noqa: E402

# Lines of a cell's output worth echoing while it runs (progress of long phases).
PROGRESS = re.compile(r"^(step \d+/\d+|epoch [\d.]+:|\[source\]|\[synth\]|target reached)")


# ----------------------------------------------------------------------------- the process
def run_process(command: list[str], log_path: Path, budget_sec: float, grace_sec: float = 60.0,
                progress: Callable[[str], None] | None = None) -> tuple[int, float, bool]:
    """(return code, seconds, ran over budget); stdout and stderr go to `log_path`; lines
    matching PROGRESS also go to `progress` (at most one every 20 s, plus the last)."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.time()
    over = False
    log_path = log_path.resolve()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=log_path.parent, env=environment,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace")
        copier = threading.Thread(target=_copy_output, args=(process.stdout, log, progress),
                                  daemon=True)
        copier.start()
        try:
            try:
                process.wait(timeout=budget_sec)
            except subprocess.TimeoutExpired:
                over = True
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=grace_sec)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        except BaseException:  # Ctrl-C on the sweep: take the cell down with it
            process.kill()
            process.wait()
            raise
        finally:
            copier.join(timeout=10)
    return process.returncode, time.time() - start, over


def _copy_output(stream, log, progress) -> None:
    last_shown, pending = 0.0, None
    for line in stream:
        log.write(line)
        log.flush()
        if progress is not None and PROGRESS.match(line):
            pending = line.rstrip()
            if time.time() - last_shown >= 20:
                progress(pending)
                last_shown, pending = time.time(), None
    if progress is not None and pending:
        progress(pending)


def error_message(log_path: Path) -> str:
    """The trainer's one-line error, else a traceback's last line, else the log's last line."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()
             if line.strip()]
    for pattern in (r"^flowers_tl\.train: error: ", r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b"):
        matches = [line for line in lines if re.match(pattern, line)]
        if matches:
            return matches[-1][:600]
    return lines[-1][:600] if lines else "(no output)"


# ----------------------------------------------------------------------------- the figures
def time_to_target_figures(metrics: list[dict[str, Any]], result: dict[str, Any] | None,
                           config: dict[str, Any]) -> dict[str, Any]:
    epochs = [row for row in metrics if row.get("kind") == "epoch"]
    targets = [row for row in metrics if row.get("kind") == "target"]
    metric = f"{config['target_metric']}_accuracy"
    seen = [row[metric] for row in epochs if row.get(metric) is not None]
    figures = {
        "target_metric": metric, "target_accuracy": config["target_accuracy"],
        "reached": bool(targets), "best_accuracy": max(seen) if seen else None,
        "epochs_run": epochs[-1]["epoch"] if epochs else 0,
        "accuracy_curve": [[row["time"], row["train_accuracy"], row.get("val_accuracy")]
                           for row in epochs],  # [seconds from process start, train, val]
        "stop_reason": (result or {}).get("stop_reason", "killed before writing result.json"),
        # what the figure is of: the split it was measured on, its size and the seed
        "val_images": (result or {}).get("val_images"), "seed": config.get("seed"),
        "warnings": (result or {}).get("warnings"),
    }
    if targets:
        target = targets[0]
        figures.update(seconds_to_target_from_process_start=target["seconds_from_process_start"],
                       seconds_to_target_from_first_step=target["seconds_from_first_step"],
                       steps_to_target=target["step"], accuracy_at_target=target["value"],
                       eval_seconds_to_target=target.get("eval_seconds"))
    if result and result.get("images_per_sec"):
        figures["whole_run_images_per_sec"] = result["images_per_sec"]
        figures["whole_run_data_wait_fraction"] = result.get("data_wait_fraction")
    return figures


def run_cell(kind: str, phase: str, run_config: dict[str, Any], folder: Path, stem: str,
             budget_sec: float, keep_checkpoints: bool = False,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs one cell (kind "train": our trainer, "keras-fit": the anchor) in its own process.
    Returns its figures (and its timed step rows under "step_rows") with status "ok", or status
    "error" and the message: never raises."""
    cells = folder / "cells"
    cells.mkdir(exist_ok=True)
    config_path, train_url, log_path = cells / f"{stem}.json", cells / stem, cells / f"{stem}.log"
    config_path.write_text(json.dumps(run_config, indent=2, sort_keys=True))
    command = [sys.executable, "-m", "flowers_tl.train", "--config", str(config_path),
               "--train_url", str(train_url)] if kind == "train" else \
        [sys.executable, "-m", "bench.cell", "--keras_fit", str(config_path),
         "--train_url", str(train_url)]
    returncode, seconds, over = run_process(command, log_path, budget_sec, progress=progress)
    row: dict[str, Any] = dict(cell_seconds=round(seconds, 2), budget_sec=budget_sec,
                               over_budget=over, returncode=returncode,
                               log=str(log_path.relative_to(folder)))
    if not keep_checkpoints:
        shutil.rmtree(train_url / "checkpoints", ignore_errors=True)  # ~100 MB a cell
    metrics = read_jsonl(train_url / "metrics.jsonl")
    result_path = train_url / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    replicas = (result or {}).get("replicas") or max(run_config.get("num_gpus") or 0, 1)
    steps = [r for r in metrics if r.get("kind") == "step"]
    try:
        bad = [r["step"] for r in steps if not math.isfinite(r.get("loss", 0.0))]
        if bad:
            raise ValueError(f"non-finite loss at step {bad[0]}")
        if phase == "throughput":
            timed = [r for r in steps if not r.get("warmup")]
            if returncode != 0 and not (over and len(timed) >= 2):
                raise RuntimeError(f"ran over its {budget_sec:.0f} s budget after {len(timed)} "
                                   "timed step(s)" if over else error_message(log_path))
            if not timed:
                raise RuntimeError(f"no timed steps: {error_message(log_path)}")
            row.update(throughput_from_step_rows(timed, replicas), step_rows=timed,
                       warmup_steps=len(steps) - len(timed),
                       seconds_to_first_step_done=steps[0].get("time") if steps else None)
        else:
            if returncode != 0 and not over:
                raise RuntimeError(error_message(log_path))
            row.update(time_to_target_figures(metrics, result, run_config))
    except (RuntimeError, ValueError, KeyError, ZeroDivisionError) as error:
        return dict(row, status="error", error=str(error))
    row.update(status="ok", replicas=replicas,
               global_batch=(result or {}).get("global_batch") or run_config["batch_size"] * replicas)
    if over:
        row["note"] = f"stopped at its {budget_sec:.0f} s budget"
    for key in ("jit_compile", "keras_version", "onednn_enabled"):
        if result and key in result:
            row[key] = result[key]
    return row


# ----------------------------------------------------------------------------- the anchor
def keras_fit(settings_path: str, train_url: str) -> int:
    """keras.applications.ResNet50 (weights=None) compiled and trained with `fit` the way its
    users do (Keras' defaults: jit_compile="auto", i.e. XLA on GPUs only; its own dynamic fp16
    loss scaling), fed by our tf.data pipeline plus Keras' preprocess_input. Writes the
    per-step rows the trainer would (data wait unknown: null), each step timed by a callback."""
    import flowers_tl  # noqa: F401  (the same TensorFlow kernel options as our cells)
    import keras
    import tensorflow as tf

    from bench.step import KERAS_POLICIES, onednn_enabled
    from flowers_tl.data import list_folder, split
    from flowers_tl.tfdata import make_dataset

    settings = json.loads(Path(settings_path).read_text())
    os.makedirs(train_url, exist_ok=True)
    if settings["num_gpus"] == 0:
        tf.config.set_visible_devices([], "GPU")
    keras.mixed_precision.set_global_policy(KERAS_POLICIES[settings["precision"]])
    keras.utils.set_random_seed(settings["seed"])
    listing = list_folder(settings["data_url"])
    train_set, _ = split(listing, settings["val_fraction"], settings["seed"])
    strategy = tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(settings["num_gpus"])]) \
        if settings["num_gpus"] > 1 else tf.distribute.get_strategy()
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
    rows: list[dict[str, Any]] = []

    class StepTimer(keras.callbacks.Callback):
        last = None

        def on_train_batch_begin(self, batch, logs=None):
            if self.last is None:
                self.last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            loss = float(logs["loss"])  # reading the loss back waits for the step
            now = time.perf_counter()
            rows.append({"kind": "step", "step": batch + 1, "step_seconds": now - self.last,
                         "images": global_batch, "data_wait_seconds": None,
                         "warmup": batch + 1 <= settings["warmup_steps"], "loss": loss,
                         "accuracy": float(logs.get("accuracy", math.nan)),
                         "learning_rate": settings["learning_rate"],
                         "time": round(time.time() - PROCESS_START, 3)})
            self.last = now

    model.fit(dataset, epochs=1, steps_per_epoch=settings["max_steps"], verbose=0,
              callbacks=[StepTimer()])
    with open(os.path.join(train_url, "metrics.jsonl"), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    timed = [row for row in rows if not row["warmup"]]
    result = {"stop_reason": "finished", "steps": len(rows), "global_batch": global_batch,
              "replicas": strategy.num_replicas_in_sync,
              "images_per_sec": throughput_from_step_rows(timed)["images_per_sec"]
              if timed else None,
              "jit_compile": bool(model.jit_compile), "keras_version": keras.__version__,
              "onednn_enabled": onednn_enabled()}
    Path(train_url, "result.json").write_text(json.dumps(result, indent=2))
    return 0


# ----------------------------------------------------------------------------- preparation
def prepare_main(config_path: str) -> int:
    """The built-in data (and, unless checkpoint_url is 'none', its source checkpoint) made and
    cached exactly as `flowers_tl.train` makes them; prints their paths as the last line."""
    from flowers_tl import config as config_lib
    from flowers_tl.builtin import built_in_data

    config = config_lib.resolve({}, config_path)
    data_url, checkpoint_url = (config.data.data_url, config.run.checkpoint_url) \
        if config.data.data_url else built_in_data(config)
    print(json.dumps({"data_url": data_url, "checkpoint_url": checkpoint_url}))
    return 0


def prepare(values: dict[str, Any], folder: Path, stem: str,
            progress: Callable[[str], None] | None = None) -> tuple[str, float]:
    """(the data folder, seconds) for this run configuration; raises RuntimeError on failure."""
    path = folder / "cells" / f"{stem}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(values, indent=2, sort_keys=True))
    log = path.with_suffix(".log")
    returncode, seconds, _ = run_process(
        [sys.executable, "-m", "bench.cell", "--prepare", str(path)], log, budget_sec=7200,
        progress=progress)
    if returncode != 0:
        raise RuntimeError(f"preparing the data failed: {error_message(log)} (see {log})")
    for line in reversed(log.read_text().splitlines()):
        if line.startswith('{"data_url"'):
            return json.loads(line)["data_url"], seconds
    raise RuntimeError(f"preparing the data printed no paths (see {log})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cell",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--keras_fit", help="run the Keras-fit anchor with these settings")
    parser.add_argument("--train_url", help="its run folder")
    parser.add_argument("--prepare", help="make the built-in data for this run configuration")
    args = parser.parse_args(argv)
    if args.keras_fit:
        return keras_fit(args.keras_fit, args.train_url)
    if args.prepare:
        return prepare_main(args.prepare)
    parser.error("--keras_fit or --prepare")
    return 2


if __name__ == "__main__":
    sys.exit(main())
