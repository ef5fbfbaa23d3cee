"""The benchmark sweep: which configuration trains this dataset fastest on this machine, how much
faster it is than what you would use otherwise, and a tuned.json that production training takes.

    python -m bench.sweep                                   # the `cpu` preset on the built-in data
    python -m bench.sweep --preset gpu --axis num_gpus=1,8 --axis precision=fp32,fp16
    python -m flowers_tl.train --config results/<time>-<host>-cpu/tuned.json

A preset (smoke, cpu, gpu below; each docstring is its runbook) names a base run configuration
(flowers_tl.config.TrainConfig values; `--set key=value` changes it) and a list of matrices of
axes -- data_format, batch_norm_fused, precision (fp32, fp16 = static loss scale 1024 as in the
recipe, fp16_dynamic, bf16, fp16:<scale>), num_gpus, xla, batch_size, input (cxx, tfdata), or any
other TrainConfig key. The cells are the union of each matrix's product over the base;
`--axis name=v1,v2` sets that axis in every matrix, `--cell key=value,key=value` adds one cell.

Phases, each cell in a fresh `python -m flowers_tl.train --config cells/<cell>.json` process with
a time budget (then SIGTERM, which the trainer answers by saving and exiting):

  0. plan:        every cell is checked against the machine first: NCHW on a CPU without XLA,
                  more GPUs than present, or any combination the trainer rejects becomes a
                  `skipped` row with the reason; nothing heavy has run yet;
  1. reader:      `bench.reader` images/sec of the C++ reader and tf.data against thread count;
  2. throughput:  warm-up steps excluded, then >= N timed steps (data wait included, each step
                  synchronised): images/sec total and per device, mean with standard error over
                  the per-step rates, jitter (1.4826 x MAD), step time, data-wait fraction;
  3. anchors:     keras.applications.ResNet50 trained with Keras `fit` (fed by our tf.data
                  pipeline) at the base batch, size and precision; and our loop fed by tf.data;
  4. time to target (when the preset asks): the default configuration (and/or the fastest cell)
                  trained from the pretrained checkpoint until the target metric reaches the
                  target or the budget ends: seconds from process start and from the first step,
                  or "not reached" with the best accuracy. The built-in data and its source
                  checkpoint are prepared first, untimed.

A cell that fails becomes an `error` row with the message and the sweep goes on. The results
folder (results/<time>-<host>-<preset>/) holds results.jsonl (one row per cell: configuration,
figures, environment), results.csv, report.md, PNG plots, reader.jsonl, cells/ (each cell's
config, log and run folder) and tuned.json (see bench.report.choose_tuned).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bench.cell import error_message, prepare, run_cell, run_process
from flowers_tl.env import describe_environment
from bench.matrix import (NAMED_AXES, Cell, Machine, MatrixError, axis_settings, cell_name,
                          detect_machine, parse_assignments, parse_value, plan)
from flowers_tl.results import append_row

SweepError = MatrixError  # a bad preset, axis or setting: one line, before any cell runs


# =============================================================================== presets
@dataclass(frozen=True)
class Preset:
    name: str
    doc: str
    base: dict[str, Any]  # TrainConfig values every cell starts from: the default cell
    matrices: tuple[dict[str, list], ...]  # cells: union of each product over the base
    warmup_steps: int = 3
    timed_steps: int = 12
    cell_budget_sec: float = 180.0
    time_to_target: tuple[str, ...] = ()  # "default" and/or "fastest"
    ttt_budget_sec: float = 900.0
    anchors: tuple[str, ...] = ("keras-fit", "tfdata")
    reader_backends: tuple[str, ...] = ("cxx", "tfdata")
    reader_threads: tuple[int, ...] | None = None  # None: 1, 2, 4, ... up to the core count
    reader_seconds: float = 3.0
    tiny_data: dict[str, int] | None = None  # generate this set into <results>/data and use it


def smoke() -> Preset:
    """`python -m bench.sweep --preset smoke`: every phase in ~1.5 minutes, for the tests.

    A 24-image generated set written into the results folder, 32 px, batch 4, 1 warm-up + 3
    timed steps per cell: NHWC (runs) and NCHW without XLA (skipped on a CPU), the Keras-fit and
    tf.data anchors, a reader pass, and a 2-epoch time-to-target run from scratch against a
    trivial 5% target. Its figures mean nothing; it proves the machinery.
    On this project's 2-core EPYC: 4 cells run, 1 skipped, ~2 CPU-minutes (4.5 min wall while
    two other training jobs shared the machine)."""
    return Preset(
        name="smoke", doc=smoke.__doc__, tiny_data=dict(classes=3, per_class=8, max_side=96),
        base=dict(checkpoint_url="none", image_size=32, batch_size=4, epochs=2,
                  lr_schedule="2:0.01", target_accuracy=0.05, val_fraction=0.2),
        matrices=({"data_format": ["NHWC", "NCHW"]},), warmup_steps=1, timed_steps=3,
        cell_budget_sec=120, time_to_target=("default",), ttt_budget_sec=120,
        reader_backends=("cxx",), reader_threads=(1, 2), reader_seconds=1.0)


def cpu() -> Preset:
    """The default: `python -m bench.sweep` (= `--preset cpu`), on the built-in data.

    Measures the CPU default run (flowers_tl.config.CPU_DEFAULT: 64 px, batch 32) against its
    knobs one at a time -- XLA on/off, NCHW under XLA, unfused batch norm, bf16, tf.data input --
    12 timed steps after 3 warm-up steps each (~30-60 s a cell), the Keras-fit anchor, reader
    threads 1..cores, and the time to 95% train accuracy of the default configuration from the
    built-in source checkpoint (budget 11 minutes). Aims to finish within ~15-17 minutes on
    2 cores; the first run also generates the built-in data and trains its source checkpoint
    (cached, untimed).
    Measured on this project's 2-core AMD EPYC (AVX2, TF 2.21, oneDNN on, quiet machine,
    source checkpoint already cached), 2026-11-27: 12.0 min in all. img/s: default (NHWC, fused
    BN, C++ reader) 42.8 ± 1.2; unfused BN 39.0; tf.data input 37.0; Keras fit 34.5 (default =
    1.24x); XLA 10.5 and NCHW+XLA 10.0 (XLA's CPU convolutions skip oneDNN); bf16 3.6 (no bf16
    units on this CPU). Time to 95% train accuracy: 226 s from process start (219 s from the
    first step, 224 steps). Reader at 64 px: C++ 1519 / 3275 img/s vs tf.data 969 / 1955
    (1 / 2 threads)."""
    return Preset(
        name="cpu", doc=cpu.__doc__, base={},
        matrices=({"data_format": ["NHWC", "NCHW"], "xla": [False, True]},
                  {"batch_norm_fused": [False]}, {"precision": ["bf16"]}),
        warmup_steps=3, timed_steps=12, cell_budget_sec=180, time_to_target=("default",),
        ttt_budget_sec=660)


def gpu() -> Preset:
    """The recipe's full matrix at 224 px, batch 64 per GPU: `python -m bench.sweep --preset gpu`.

    NHWC/NCHW x fp32 / fp16 (static 1024) / fp16 dynamic / bf16 x XLA off/on on every GPU, plus
    unfused batch norm, 1/2/4/8 GPUs (more than present: skipped) and batch 128/256, 20 timed
    steps each, both anchors, and the time to 95% train accuracy of the default configuration
    and of the fastest cell (30 minutes each). Expect 1-2 hours.
    Not yet run: this project's machines have no GPU. Published anchors to compare with: V100
    fp32 / AMP / AMP+XLA ~370 / ~1,100 / ~1,270 img/s; A100 AMP+XLA ~2,375 img/s."""
    return Preset(
        name="gpu", doc=gpu.__doc__, base=dict(image_size=224, batch_size=64),
        matrices=({"data_format": ["NHWC", "NCHW"],
                   "precision": ["fp32", "fp16", "fp16_dynamic", "bf16"], "xla": [False, True]},
                  {"batch_norm_fused": [False], "precision": ["fp32", "fp16"]},
                  {"num_gpus": [1, 2, 4, 8]}, {"batch_size": [128, 256]}),
        warmup_steps=10, timed_steps=20, cell_budget_sec=600,
        time_to_target=("default", "fastest"), ttt_budget_sec=1800,
        reader_threads=None, reader_seconds=5.0)


PRESETS = {preset.__name__: preset for preset in (smoke, cpu, gpu)}


# =============================================================================== rows
def phase_settings(config, preset: Preset, phase: str) -> dict[str, Any]:
    """The production configuration turned into what this phase runs (a --config file)."""
    values = run_values(config)
    if phase == "throughput":
        values.update(max_steps=preset.warmup_steps + preset.timed_steps,
                      warmup_steps=preset.warmup_steps, log_every=1, export=False,
                      val_fraction=0.0, target_metric="train", stop_at_target=False,
                      checkpoint_every_steps=0, checkpoint_every_minutes=1e6)
        if values["data_url"] is None and values["checkpoint_url"] is None:
            values["checkpoint_url"] = "none"  # timing a step needs no source checkpoint
    else:
        values.update(stop_at_target=True, export=False)
    values["note"] = f"bench.sweep {preset.name}: {phase} cell"
    return values


def run_values(config, **changes) -> dict[str, Any]:
    """A TrainConfig as the dict a --config file holds (no train_url: each run gets its own)."""
    values = {**dataclasses.asdict(config), **changes}
    values.pop("train_url")
    return values


def keras_fit_settings(default, preset: Preset, data_url: str) -> dict[str, Any]:
    """The Keras-fit anchor at the default's batch, image size, precision and devices."""
    from flowers_tl.config import parse_lr_schedule
    return dict(batch_size=default.batch_size, image_size=default.image_size,
                precision=default.precision, num_gpus=default.num_gpus, data_url=data_url,
                val_fraction=0.0, seed=default.seed,  # all images, as our throughput cells
                reader_threads=default.reader_threads, momentum=default.momentum,
                learning_rate=parse_lr_schedule(default.lr_schedule)[0][1],
                warmup_steps=preset.warmup_steps,
                max_steps=preset.warmup_steps + preset.timed_steps)


def make_row(cell: Cell, phase: str, sweep: str, figures: dict[str, Any],
             run_config: dict[str, Any] | None) -> dict[str, Any]:
    """One flat results row: the cell, its axes, its figures, the configuration it ran, the
    production configuration it stands for (tuned.json's source) and the environment."""
    row = {"sweep": sweep, "cell": cell.name, "role": cell.role, "phase": phase,
           "default": cell.default}
    values = dataclasses.asdict(cell.config) if cell.config is not None else cell.settings
    for name in NAMED_AXES + ("loss_scale", "image_size"):
        row[name] = values.get(name)
    if cell.role == "anchor-keras-fit":
        row.update(data_format="NHWC", batch_norm_fused=None, input="tfdata",
                   xla=figures.get("jit_compile"))
    row.update(figures)
    row["config"] = run_config
    row["production_config"] = dataclasses.asdict(cell.config) if cell.config is not None \
        and cell.role != "anchor-keras-fit" else None
    row["settings"] = cell.settings
    row["load_average_1min_after"] = os.getloadavg()[0]
    row["environment"] = describe_environment()
    return row


def reader_phase(preset: Preset, default, data_url: str, folder: Path, machine: Machine) -> str:
    """bench.reader's images/sec against threads into reader.jsonl, in one process."""
    threads = preset.reader_threads or tuple(sorted(
        {1, machine.cpus} | {2 ** k for k in range(1, 8) if 2 ** k < machine.cpus}))
    command = [sys.executable, "-m", "bench.reader", "--data_url", data_url,
               "--backend", ",".join(preset.reader_backends),
               "--num_threads", ",".join(map(str, threads)),
               "--image_size", str(default.image_size), "--batch_size", str(default.batch_size),
               "--seconds", str(preset.reader_seconds),
               "--warmup_seconds", str(min(2.0, preset.reader_seconds / 2)),
               "--out", str(folder / "reader.jsonl")]
    budget = 60 + 3 * preset.reader_seconds * len(threads) * len(preset.reader_backends)
    log = folder / "cells" / "reader.log"
    returncode, seconds, _ = run_process(command, log, budget)
    if returncode != 0:
        return f"reader phase failed: {error_message(log)}"
    return f"reader: {', '.join(preset.reader_backends)} at {threads} threads ({seconds:.0f} s)"


# =============================================================================== the sweep
def results_folder(root: str, preset: str) -> Path:
    """results/<YYYYmmdd-HHMMSS>-<host>-<preset>: named by time and host."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname().split(".")[0]) or "host"
    folder = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{host}-{preset}"
    for suffix in itertools.count(1):
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:  # two sweeps in the same second
            folder = folder.with_name(f"{folder.name.split('+')[0]}+{suffix}")
    raise AssertionError("unreachable")


def describe_cell(row: dict[str, Any]) -> str:
    if row["status"] == "skipped":
        return f"skipped: {row['reason']}"
    if row["status"] == "error":
        return f"error: {row['error']}"
    if row["phase"] == "time_to_target":
        if row["reached"]:
            return (f"{row['target_metric']} {row['accuracy_at_target']:.3f} >= "
                    f"{row['target_accuracy']} in "
                    f"{row['seconds_to_target_from_process_start']:.0f} s "
                    f"({row['seconds_to_target_from_first_step']:.0f} s from the first step)")
        return f"target not reached; best {row['target_metric']} {row['best_accuracy']}"
    spread = row["images_per_sec_stderr"]
    return (f"{row['images_per_sec']:.2f}" + (f" ± {spread:.2f}" if spread is not None else "")
            + f" img/s, data wait {row['data_wait_fraction'] or 0:.1%}")


def run_sweep(preset: Preset, folder: Path, machine: Machine, settings: dict[str, Any],
              overrides: dict[str, list] | None = None, extra_cells: Sequence[dict] = (),
              reader: bool = True, keep_checkpoints: bool = False, command: str = ""
              ) -> list[dict[str, Any]]:
    started = time.time()
    (folder / "cells").mkdir(parents=True, exist_ok=True)
    base = {**preset.base, **settings}
    if preset.tiny_data and "data_url" not in settings:
        from flowers_tl import synth
        base["data_url"] = synth.generate(folder / "data", seed=0, **preset.tiny_data)
    default, cells = plan(base, preset.matrices, machine, overrides, extra_cells,
                          "tfdata" in preset.anchors)
    runnable = [cell for cell in cells if cell.skipped is None]
    say = lambda text: print(f"[sweep {time.time() - started:6.0f} s] {text}", file=sys.stderr,
                             flush=True)
    say(f"{preset.name}: {len(cells)} cells ({len(cells) - len(runnable)} skipped), anchors "
        f"{list(preset.anchors)}, time to target {list(preset.time_to_target) or 'no'}; "
        f"{machine.cpus} cores, {machine.gpus} GPU(s) -> {folder}")
    rows: list[dict[str, Any]] = []
    meta = {"preset": preset.name, "preset_doc": preset.doc, "command": command,
            "folder": str(folder), "started_utc": describe_environment()["time_utc"],
            "machine": dataclasses.asdict(machine), "default_config": dataclasses.asdict(default),
            "warmup_steps": preset.warmup_steps, "timed_steps": preset.timed_steps,
            "cell_budget_sec": preset.cell_budget_sec, "ttt_budget_sec": preset.ttt_budget_sec,
            "prepare_seconds": 0.0}

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        append_row(row, str(folder / "results.jsonl"))
        say(f"{row['phase']:<14} {row['cell']}: {describe_cell(row)}")

    def run(cell: Cell, phase: str, run_config: dict[str, Any], budget: float) -> None:
        stem = ("ttt-" if phase == "time_to_target" else "") + cell.name
        figures = run_cell("keras-fit" if cell.role == "anchor-keras-fit" else "train", phase,
                           run_config, folder, stem, budget, preset.warmup_steps,
                           keep_checkpoints)
        record(make_row(cell, phase, preset.name, figures, run_config))

    try:
        data_url = default.data_url
        if data_url is None:
            data_url, seconds = prepare(run_values(default, checkpoint_url="none"), folder,
                                        "prepare-data")
            meta["prepare_seconds"] += seconds
        meta["data_url"] = data_url
        if reader and preset.reader_backends:
            say(reader_phase(preset, default, data_url, folder, machine))
        for cell in cells:
            if cell.skipped is not None:
                record(make_row(cell, "throughput", preset.name,
                                {"status": "skipped", "reason": cell.skipped}, None))
            else:
                run(cell, "throughput", phase_settings(cell.config, preset, "throughput"),
                    preset.cell_budget_sec)
        if "keras-fit" in preset.anchors:
            keras = keras_fit_settings(default, preset, data_url)
            name = (f"keras-fit-{keras['precision']}-b{keras['batch_size']}-"
                    f"{keras['image_size']}px-" + (f"{keras['num_gpus']}gpu" if keras['num_gpus']
                                                   else "cpu"))
            run(Cell(name=name, role="anchor-keras-fit", settings=keras), "throughput", keras,
                preset.cell_budget_sec)
        for cell in time_to_target_cells(preset, default, cells, rows):
            if default.data_url is None and cell.config.checkpoint_url is None:
                _, seconds = prepare(run_values(cell.config), folder, f"prepare-{cell.name}")
                meta["prepare_seconds"] += seconds
            run(cell, "time_to_target", phase_settings(cell.config, preset, "time_to_target"),
                preset.ttt_budget_sec)
    except RuntimeError as error:  # the preparation failed: nothing can be measured
        meta["error"] = str(error)
        say(f"error: {error}")
    except KeyboardInterrupt:
        meta["interrupted"] = True
        say("interrupted: writing the report of the cells so far")
    meta["wall_seconds"] = time.time() - started
    from bench import report
    report.write_all(folder, rows, meta)
    say(f"report: {folder / 'report.md'}")
    return rows


def time_to_target_cells(preset: Preset, default, cells: list[Cell],
                         rows: list[dict[str, Any]]) -> list[Cell]:
    chosen: list[Cell] = []
    if "default" in preset.time_to_target:
        cell = next((c for c in cells if c.default), None) or Cell(
            name=cell_name(dataclasses.asdict(default)), role="cell", settings=dict(preset.base),
            config=default, default=True)
        chosen.append(cell)
    if "fastest" in preset.time_to_target:
        timed = [row for row in rows if row["status"] == "ok" and row["phase"] == "throughput"
                 and row["role"] != "anchor-keras-fit"]
        if timed:
            fastest = max(timed, key=lambda row: row["images_per_sec"])["cell"]
            chosen += [c for c in cells if c.name == fastest and c not in chosen]
    return chosen


# =============================================================================== command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="presets:\n" + "\n".join(
                                         f"  {name}: {p.__doc__.splitlines()[0]}"
                                         for name, p in PRESETS.items()))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="default: cpu (the presets' docstrings are their runbooks)")
    parser.add_argument("--axis", action="append", default=[], metavar="NAME=V1,V2",
                        help="set this axis in every matrix of the preset (repeatable)")
    parser.add_argument("--cell", action="append", default=[], metavar="KEY=V,KEY=V",
                        help="add one cell: the base configuration with these values")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the base configuration (every cell, the anchors and the "
                             "default), e.g. --set data_url=flower_photos")
    parser.add_argument("--results_dir", default="results",
                        help="parent of the results folder <time>-<host>-<preset>")
    parser.add_argument("--out", default=None, help="the results folder itself (must not exist)")
    parser.add_argument("--warmup_steps", type=int, default=None)
    parser.add_argument("--timed_steps", type=int, default=None)
    parser.add_argument("--cell_budget", type=float, default=None, help="seconds per cell")
    parser.add_argument("--ttt_budget", type=float, default=None,
                        help="seconds per time-to-target cell")
    parser.add_argument("--time_to_target", default=None,
                        help="default,fastest or none (default: the preset's)")
    parser.add_argument("--anchors", default=None, help="keras-fit,tfdata or none")
    parser.add_argument("--no_reader", action="store_true", help="skip the reader phase")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs present (default: nvidia-smi)")
    parser.add_argument("--keep_checkpoints", action="store_true",
                        help="keep each cell's checkpoints (~100 MB each)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the checked plan, run nothing")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> tuple[Preset, dict, dict, list]:
    """(preset with the flags applied, --set settings, --axis overrides, --cell cells)."""
    preset = PRESETS[args.preset]()
    changes: dict[str, Any] = {}
    for flag, name in (("warmup_steps", "warmup_steps"), ("timed_steps", "timed_steps"),
                       ("cell_budget", "cell_budget_sec"), ("ttt_budget", "ttt_budget_sec")):
        if getattr(args, flag) is not None:
            changes[name] = getattr(args, flag)
    for flag, choices in (("time_to_target", ("default", "fastest")),
                          ("anchors", ("keras-fit", "tfdata"))):
        value = getattr(args, flag)
        if value is not None:
            names = tuple(v for v in value.split(",") if v and v != "none")
            if set(names) - set(choices):
                raise SweepError(f"--{flag} {value!r}: one or more of {', '.join(choices)}, "
                                 "or none")
            changes[flag] = names
    preset = dataclasses.replace(preset, **changes)
    if preset.timed_steps < 2 or preset.warmup_steps < 1:
        raise SweepError("--timed_steps must be >= 2 (a spread) and --warmup_steps >= 1 (the "
                         "first step traces and compiles)")
    settings: dict[str, Any] = {}
    for text in args.set:
        name, sep, value = text.partition("=")
        if not sep:
            raise SweepError(f"--set {text!r}: expected key=value")
        settings.update(axis_settings(name.strip(), parse_value(name.strip(), value)))
    overrides: dict[str, list] = {}
    for text in args.axis:
        overrides.update(parse_assignments(text, "--axis"))
    return preset, settings, overrides, [parse_assignments(t, "--cell") for t in args.cell]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        preset, settings, overrides, extra = configure(args)
        machine = detect_machine() if args.gpus is None else Machine(
            gpus=args.gpus, cpus=len(os.sched_getaffinity(0)))
        if args.dry_run:
            default, cells = plan({**preset.base, **settings}, preset.matrices, machine,
                                  overrides, extra, "tfdata" in preset.anchors)
            for cell in cells:
                print(f"{cell.name:<48} {cell.role:<14} "
                      + (f"skipped: {cell.skipped}" if cell.skipped else "runs")
                      + (" (default)" if cell.default else ""))
            return 0
        if args.out:
            folder = Path(args.out)
            if folder.exists() and any(folder.iterdir()):
                raise SweepError(f"--out {folder}: exists and is not empty")
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = results_folder(args.results_dir, preset.name)
        run_sweep(preset, folder, machine, settings, overrides, extra, reader=not args.no_reader,
                  keep_checkpoints=args.keep_checkpoints,
                  command=" ".join(["python -m bench.sweep"] + argv))
    except SweepError as error:
        print(f"bench.sweep: error: {error}", file=sys.stderr)
        return 2
    if (folder / "tuned.json").exists():
        print(f"python -m flowers_tl.train --config {folder / 'tuned.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
