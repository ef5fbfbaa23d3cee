"""One sweep cell in its own process, and the figures read back from what it wrote.

    python -m bench.cell --prepare /abs/cells/prepare-data.json

bench.sweep runs each of its cells as `python -m flowers_tl.train --config <cell>.json
--train_url <cell>` (TensorFlow keeps global state: the mixed-precision policy, XLA caches,
oneDNN read at import), with a time budget after which the process gets SIGTERM (the trainer
saves and exits between steps) and, a minute later, SIGKILL. Every path handed to a process is
absolute and the process runs in the results folder, so the sweep works from any folder and
from a non-editable install. The figures come from the run folder's per-step rows
(metrics.jsonl, schema in flowers_tl.results), so a cell that was stopped still gives what it
measured. The Keras-fit anchor (bench.keras_fit) and the preparation of the built-in data run
the same way.
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

from flowers_tl.results import read_jsonl, throughput_from_step_rows

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
    for pattern in (r"^(flowers_tl\.train|bench\.keras_fit): error: ",
                    r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b"):
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
    seen = [row for row in epochs if row.get(metric) is not None]
    best = max(seen, key=lambda row: row[metric], default=None)  # the first of equals
    figures = {
        "target_metric": metric, "target_accuracy": config["target_accuracy"],
        "reached": bool(targets), "best_accuracy": best[metric] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "epochs_run": epochs[-1]["epoch"] if epochs else 0,
        "accuracy_curve": [[row["time"], row["train_accuracy"], row.get("val_accuracy")]
                           for row in epochs],  # [seconds from process start, train, val]
        "stop_reason": (result or {}).get("stop_reason", "killed before writing result.json"),
        # what the figure is of: the split it was measured on, its size and the seed
        "val_images": (result or {}).get("val_images"), "seed": config.get("seed"),
        "warnings": (result or {}).get("warnings"),
        # held-out evaluation time of the whole run (it counts in the clock), and the run's length
        "eval_seconds": (result or {}).get("eval_seconds"),
        "run_seconds": (result or {}).get("seconds"),
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
        [sys.executable, "-m", "bench.keras_fit", "--phase", phase, "--settings",
         str(config_path), "--train_url", str(train_url)]
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
    for key in ("jit_compile", "keras_version", "onednn_enabled", "start_weights", "restored"):
        if result and key in result:
            row[key] = result[key]
    run_config_path = train_url / "config.json"  # the trainer's: the checkpoint it started from
    if kind == "train" and phase != "throughput" and run_config_path.exists():
        row["checkpoint_path"] = json.loads(run_config_path.read_text()).get("checkpoint_url")
    return row


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
            progress: Callable[[str], None] | None = None) -> tuple[str, str | None, float]:
    """(the data folder, the checkpoint it starts from, seconds) for this run configuration;
    raises RuntimeError on failure."""
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
            paths = json.loads(line)
            return paths["data_url"], paths["checkpoint_url"], seconds
    raise RuntimeError(f"preparing the data printed no paths (see {log})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cell",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", help="make the built-in data for this run configuration")
    args = parser.parse_args(argv)
    if args.prepare:
        return prepare_main(args.prepare)
    parser.error("--prepare")
    return 2


if __name__ == "__main__":
    sys.exit(main())
