"""The benchmark sweep: which configuration trains this dataset fastest on this machine, how much
faster it is than what you would use otherwise, and a tuned.json that production training takes.

    python -m bench.sweep                                   # the `cpu` preset on the built-in data
    python -m bench.sweep --preset gpu --axis num_gpus=1,8 --axis precision=fp32,fp16
    python -m flowers_tl.train --config results/<time>-<host>-cpu/tuned.json

A sweep preset (flowers_tl.presets: smoke, cpu, gpu; each docstring is its runbook) names a base
run configuration (`--set key=value` changes it; keys are the trainer's knobs, flat or dotted)
and a plan: matrices of axes -- any knob, e.g. data_format, batch_norm_fused, precision,
loss_scale, num_gpus, xla, batch_size, input -- whose products over the base are the cells;
`--axis name=v1,v2` sets that axis in every matrix, `--cell key=value,key=value` adds one cell.

Phases, each cell in a fresh `python -m flowers_tl.train --config <cell>.json` process with a
time budget (then SIGTERM, which the trainer answers by saving and exiting); every path given to
a process is absolute, so the sweep runs from any folder and from a non-editable install:

  0. plan:        every cell is checked first (flowers_tl.config.check): NCHW on a CPU without
                  XLA, more GPUs than present, any combination the trainer rejects becomes a
                  `skipped` row with the reason; nothing heavy has run yet;
  1. prepare:     the built-in data and its source checkpoint are made once and cached
                  (progress lines with the time left); not part of any figure;
  2. reader:      `bench.reader` images/sec of the C++ reader and tf.data against thread count;
  3. throughput:  every cell and the Keras-fit anchor, `rounds` times in interleaved order
                  (round 2 runs the list backwards, so drift in the machine's speed hits every
                  cell alike); per round warm-up steps excluded, then the timed steps (data wait
                  included, each step synchronised), read from the trainer's per-step rows.
                  A cell's figures pool the timed steps of all its rounds: images/sec with its
                  standard error and 95% interval, jitter, step time, data wait;
  4. time to target (when the plan asks): the default configuration (and/or the fastest cell,
                  when it is another) trained from the pretrained checkpoint until the target
                  or the budget; then, with the keras-fit anchor, keras.applications.ResNet50
                  trained with fit to the default's target with the default's resolved recipe
                  (bench.keras_fit), from the starting weights Keras can load: the built-in
                  source trained for variant keras where ours starts from the built-in source.

tuned.json is chosen by bench.report.choose_tuned: the arithmetic of the run first to its target,
then the fastest cell of that arithmetic, ties keeping the default (the report says so). The
report gives Keras' time to the target over ours. A cell that fails becomes an `error` row and
the sweep goes on. The results folder (results/<time>-<host>-<preset>/) holds results.jsonl
(every round and every cell: its configuration, figures, environment), results.csv, report.md,
PNG plots, reader.jsonl, cells/ (each cell's config, log and run folder) and tuned.json.
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
from pathlib import Path
from typing import Any, Sequence

from bench.cell import error_message, prepare, run_cell, run_process
from bench.matrix import (NAMED_AXES, Cell, Machine, MatrixError, cell_name, detect_machine,
                          parse_assignments, parse_setting, plan)
from flowers_tl import config as config_lib
from flowers_tl.env import describe_environment
from flowers_tl.presets import PRESETS, SWEEP_PRESETS, Preset
from flowers_tl.results import append_row, throughput_stats

SweepError = MatrixError  # a bad preset, axis or setting: one line, before any cell runs


# =============================================================================== configurations
def phase_settings(config: config_lib.RunConfig, preset: Preset, phase: str) -> dict[str, Any]:
    """The production configuration turned into what this phase runs: the flat knobs of a
    --config file."""
    sweep = preset.sweep
    values = {**config_lib.flat_dict(config), "train_url": None,
              "note": f"bench.sweep {preset.name}: {phase} cell"}
    if phase == "throughput":
        values.update(max_steps=sweep.warmup_steps + sweep.timed_steps,
                      warmup_steps=sweep.warmup_steps, log_every=1, export=False,
                      val_fraction=0.0, target_metric="train", stop_at_target=False,
                      checkpoint_every_steps=0, checkpoint_every_minutes=1e6)
        if values["data_url"] is None and values["checkpoint_url"] is None:
            values["checkpoint_url"] = "none"  # timing a step needs no source checkpoint
    else:
        values.update(stop_at_target=True, export=False)
    return values


def keras_fit_settings(default: config_lib.RunConfig, preset: Preset, data_url: str
                       ) -> dict[str, Any]:
    """The Keras-fit anchor's throughput run at the default's batch, image size, precision and
    devices."""
    sweep = preset.sweep
    return dict(batch_size=default.train.batch_size, image_size=default.reader.image_size,
                precision=default.model.precision, num_gpus=default.train.num_gpus,
                data_url=data_url, val_fraction=0.0, seed=default.train.seed,
                reader_threads=default.reader.reader_threads, momentum=default.train.momentum,
                learning_rate=config_lib.parse_lr_schedule(default.train.lr_schedule)[0][1],
                warmup_steps=sweep.warmup_steps, max_steps=sweep.warmup_steps + sweep.timed_steps)


def keras_time_to_target_settings(default: config_lib.RunConfig, preset: Preset, data_url: str,
                                  checkpoint_url: str, origin: str) -> dict[str, Any]:
    """The Keras-fit anchor's time-to-target run: the default's own time-to-target configuration
    as resolved (schedule, warm-up, batch-norm momentum, ... exactly what our run gets), on the
    same data folder, from `checkpoint_url` (a path Keras can load, or none). bench.keras_fit
    applies each knob the Keras way."""
    values = phase_settings(default, preset, "time_to_target")
    values.update(data_url=data_url, checkpoint_url=checkpoint_url, variant="keras",
                  checkpoint_origin=origin,
                  note=f"bench.sweep {preset.name}: the Keras-fit anchor's time-to-target run")
    return values


def keras_cell(settings: dict[str, Any]) -> Cell:
    """The Keras-fit anchor as a cell, named by its precision, batch, size and devices."""
    name = (f"keras-fit-{settings['precision']}-b{settings['batch_size']}-"
            f"{settings['image_size']}px-" + (f"{settings['num_gpus']}gpu" if settings['num_gpus']
                                              else "cpu"))
    return Cell(name=name, role="anchor-keras-fit", settings=settings)


def our_start_weights(config: config_lib.RunConfig, checkpoint_path: str | None) -> str:
    """What one of our time-to-target runs started from, in words (report.md, the row)."""
    checkpoint = config.run.checkpoint_url
    if checkpoint == config_lib.FROM_SCRATCH:
        return "scratch" + (" (residual branches' last BN gamma 0)"
                            if config.model.zero_init_residual else "")
    origin = "the built-in source checkpoint" if checkpoint is None else "the given checkpoint"
    excluded = config.run.checkpoint_exclude_patterns or "global_step and the logits"
    return (f"{origin} (variant {config.model.variant}, {checkpoint_path or checkpoint}), "
            f"{excluded} excluded")


def make_row(cell: Cell, phase: str, sweep: str, figures: dict[str, Any],
             run_config: dict[str, Any] | None) -> dict[str, Any]:
    """One flat results row: the cell, its axes, its figures, the configuration it ran, the
    production configuration it stands for (tuned.json's source) and the environment."""
    row = {"sweep": sweep, "cell": cell.name, "role": cell.role, "phase": phase,
           "default": cell.default}
    values = cell.values
    for name in NAMED_AXES:
        row[name] = values.get(name)
    if cell.role == "anchor-keras-fit":
        row.update(data_format="NHWC", batch_norm_fused=None, input="tfdata",
                   xla=figures.get("jit_compile"))
    row.update({k: v for k, v in figures.items() if k != "step_rows"})
    row["config"] = run_config
    row["production_config"] = values if cell.config is not None \
        and cell.role != "anchor-keras-fit" else None
    row["settings"] = cell.settings
    row["load_average_1min_after"] = os.getloadavg()[0]
    row["environment"] = describe_environment()
    return row


def pooled(rounds: list[dict[str, Any]], replicas: int) -> dict[str, Any]:
    """A cell's figures over all its rounds: the timed steps pooled, each round's rate kept."""
    good = [figures for figures in rounds if figures["status"] == "ok"]
    if not good:
        return rounds[-1]
    steps = [row for figures in good for row in figures["step_rows"]]
    figures = dict(good[-1])
    figures.update(throughput_stats([r["step_seconds"] for r in steps],
                                    [r["images"] for r in steps],
                                    [r["data_wait_seconds"] for r in steps], replicas))
    figures.update(rounds=len(rounds), rounds_ok=len(good),
                   round_images_per_sec=[f["images_per_sec"] for f in good],
                   step_seconds=[round(r["step_seconds"], 5) for r in steps],
                   cell_seconds=round(sum(f["cell_seconds"] for f in rounds), 2))
    return figures


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
    interval = row.get("images_per_sec_ci95")
    return (f"{row['images_per_sec']:.2f} img/s"
            + (f" (95% {interval[0]:.2f}-{interval[1]:.2f})" if interval else "")
            + (f", data wait {row['data_wait_fraction']:.1%}"
               if row.get("data_wait_fraction") is not None else ""))


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


# =============================================================================== phases
def reader_phase(preset: Preset, default, data_url: str, folder: Path, machine: Machine) -> str:
    """bench.reader's images/sec against threads into reader.jsonl, in one process."""
    sweep = preset.sweep
    threads = sweep.reader_threads or tuple(sorted(
        {1, machine.cpus} | {2 ** k for k in range(1, 8) if 2 ** k < machine.cpus}))
    command = [sys.executable, "-m", "bench.reader", "--data_url", data_url,
               "--backend", ",".join(sweep.reader_backends),
               "--num_threads", ",".join(map(str, threads)),
               "--image_size", str(default.reader.image_size),
               "--batch_size", str(default.train.batch_size),
               "--seconds", str(sweep.reader_seconds),
               "--warmup_seconds", str(min(2.0, sweep.reader_seconds / 2)),
               "--out", str(folder / "reader.jsonl")]
    budget = 60 + 3 * sweep.reader_seconds * len(threads) * len(sweep.reader_backends)
    log = folder / "cells" / "reader.log"
    returncode, seconds, _ = run_process(command, log, budget)
    if returncode != 0:
        return f"reader phase failed: {error_message(log)}"
    return f"reader: {', '.join(sweep.reader_backends)} at {threads} threads ({seconds:.0f} s)"


def results_folder(root: str, preset: str) -> Path:
    """<root>/<YYYYmmdd-HHMMSS>-<host>-<preset>, absolute: named by time and host."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname().split(".")[0]) or "host"
    folder = Path(root).resolve() / f"{time.strftime('%Y%m%d-%H%M%S')}-{host}-{preset}"
    for suffix in itertools.count(1):
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:  # two sweeps in the same second
            folder = folder.with_name(f"{folder.name.split('+')[0]}+{suffix}")
    raise AssertionError("unreachable")


def run_sweep(preset: Preset, folder: Path, machine: Machine, settings: dict[str, Any],
              overrides: dict[str, list] | None = None, extra_cells: Sequence[dict] = (),
              reader: bool = True, keep_checkpoints: bool = False, command: str = ""
              ) -> list[dict[str, Any]]:
    started = time.time()
    sweep = preset.sweep
    folder = Path(folder).resolve()
    (folder / "cells").mkdir(parents=True, exist_ok=True)
    base = {**preset.overrides, **settings}
    if sweep.tiny_data and "data_url" not in settings:
        from flowers_tl import synth
        base["data_url"] = str(synth.generate(folder / "data", seed=0, **sweep.tiny_data))
    default, cells = plan(base, sweep.matrices, machine, overrides, extra_cells,
                          "tfdata" in sweep.anchors)
    runnable = [cell for cell in cells if cell.skipped is None]
    say = lambda text: print(f"[sweep {time.time() - started:6.0f} s] {text}", file=sys.stderr,
                             flush=True)
    say(f"{preset.name}: {len(cells)} cells ({len(cells) - len(runnable)} skipped) x "
        f"{sweep.rounds} round(s), anchors {list(sweep.anchors)}, time to target "
        f"{list(sweep.time_to_target) or 'no'}; {machine.cpus} cores, {machine.gpus} GPU(s) "
        f"-> {folder}")
    rows: list[dict[str, Any]] = []
    meta = {"preset": preset.name, "preset_doc": preset.doc, "command": command,
            "folder": str(folder), "started_utc": describe_environment()["time_utc"],
            "machine": dataclasses.asdict(machine),
            "default_config": config_lib.flat_dict(default), "plan": dataclasses.asdict(sweep),
            "warmup_steps": sweep.warmup_steps, "timed_steps": sweep.timed_steps,
            "rounds": sweep.rounds, "cell_budget_sec": sweep.cell_budget_sec,
            "ttt_budget_sec": sweep.ttt_budget_sec, "prepare_seconds": 0.0}

    def record(row: dict[str, Any], quiet: bool = False) -> None:
        rows.append(row)
        append_row(row, str(folder / "results.jsonl"))
        if not quiet:
            say(f"{row['phase']:<14} {row['cell']}: {describe_cell(row)}")

    def echo(line: str) -> None:
        say(f"  {line}")

    try:
        data_url = default.data.data_url
        if data_url is None:
            say("preparing the built-in data (cached after the first run)")
            data_url, _, seconds = prepare(phase_settings(default, preset, "throughput"),
                                           folder, "prepare-data", progress=echo)
            meta["prepare_seconds"] += seconds
        meta["data_url"] = data_url
        if reader and sweep.reader_backends:
            say(reader_phase(preset, default, data_url, folder, machine))
        for cell in cells:
            if cell.skipped is not None:
                record(make_row(cell, "throughput", preset.name,
                                {"status": "skipped", "reason": cell.skipped}, None))
        measured = [(cell, "train", phase_settings(cell.config, preset, "throughput"))
                    for cell in runnable]
        if "keras-fit" in sweep.anchors:
            keras = keras_fit_settings(default, preset, data_url)
            measured.append((keras_cell(keras), "keras-fit", keras))
        by_cell: dict[str, list[dict[str, Any]]] = {cell.name: [] for cell, _, _ in measured}
        total_runs, done, run_seconds = len(measured) * sweep.rounds, 0, 0.0
        try:
            for round_index in range(sweep.rounds):
                order = measured if round_index % 2 == 0 else measured[::-1]
                for cell, kind, run_config in order:
                    stem = f"{cell.name}-r{round_index + 1}"
                    figures = run_cell(kind, "throughput", run_config, folder, stem,
                                       sweep.cell_budget_sec, keep_checkpoints)
                    done += 1
                    run_seconds += figures["cell_seconds"]
                    by_cell[cell.name].append(figures)
                    row = make_row(cell, "throughput_round", preset.name,
                                   dict(figures, round=round_index + 1), run_config)
                    record(row, quiet=True)
                    left = run_seconds / done * (total_runs - done)
                    ttt = (f" + time to target (up to {minutes(sweep.ttt_budget_sec)} each)"
                           if sweep.time_to_target else "")
                    say(f"round {round_index + 1}/{sweep.rounds}, run {done}/{total_runs} "
                        f"{cell.name}: {describe_cell(row)}; about {minutes(left)} of "
                        f"throughput runs left{ttt}")
        finally:  # also after Ctrl-C: what was measured becomes rows
            for cell, _, run_config in measured:
                if by_cell[cell.name]:
                    replicas = by_cell[cell.name][-1].get("replicas") or 1
                    record(make_row(cell, "throughput", preset.name,
                                    pooled(by_cell[cell.name], replicas), run_config))
        ttt_cells = time_to_target_cells(preset, default, cells, rows)
        for cell in ttt_cells:
            if default.data.data_url is None and cell.config.run.checkpoint_url is None:
                say(f"preparing the source checkpoint for {cell.name} (cached after the first run)")
                _, _, seconds = prepare(phase_settings(cell.config, preset, "time_to_target"),
                                        folder, f"prepare-{cell.name}", progress=echo)
                meta["prepare_seconds"] += seconds
            say(f"time to target: {cell.name} (budget {minutes(sweep.ttt_budget_sec)})")
            run_config = phase_settings(cell.config, preset, "time_to_target")
            figures = run_cell("train", "time_to_target", run_config, folder,
                               f"ttt-{cell.name}", sweep.ttt_budget_sec, keep_checkpoints,
                               progress=echo)
            if figures["status"] == "ok":
                figures["start_weights"] = our_start_weights(cell.config,
                                                             figures.get("checkpoint_path"))
            record(make_row(cell, "time_to_target", preset.name, figures, run_config))
        if ttt_cells and "keras-fit" in sweep.anchors:
            record(keras_time_to_target(preset, default, data_url, folder, meta, say, echo,
                                        keep_checkpoints))
    except RuntimeError as error:  # the preparation failed: nothing can be measured
        meta["error"] = str(error)
        say(f"error: {error}")
    except KeyboardInterrupt:
        meta["interrupted"] = True
        say("interrupted: writing the report of the cells so far")
    meta["wall_seconds"] = time.time() - started
    from bench import report
    report.write_all(folder, rows, meta)
    say(f"report: {folder / 'report.md'} ({minutes(meta['wall_seconds'])} in all)")
    return rows


def keras_time_to_target(preset: Preset, default, data_url: str, folder: Path,
                         meta: dict[str, Any], say, echo, keep_checkpoints: bool
                         ) -> dict[str, Any]:
    """The Keras-fit anchor trained to the default's target (its row). Its starting weights:
    from scratch when ours starts from scratch; where ours fine-tunes from the built-in source,
    that source trained for variant keras (flowers_tl.builtin, cached like ours), which
    keras.applications.ResNet50 loads by name; otherwise the given checkpoint, which must be
    one Keras can load (a Keras HDF5 file, a flowers_tl checkpoint of variant keras), or the
    row is an error saying so."""
    checkpoint = default.run.checkpoint_url
    if checkpoint == config_lib.FROM_SCRATCH:
        checkpoint_url, origin = config_lib.FROM_SCRATCH, "scratch"
    elif checkpoint is None:
        say("preparing the built-in source checkpoint for variant keras, the Keras anchor's "
            "starting weights (cached after the first run)")
        keras_default = config_lib.with_overrides(default, {"variant": "keras"})
        origin = "the built-in source checkpoint trained for variant keras"
        try:
            _, checkpoint_url, seconds = prepare(
                phase_settings(keras_default, preset, "time_to_target"), folder,
                "prepare-keras-source", progress=echo)
        except RuntimeError as error:  # its row says so; our rows stand
            settings = keras_time_to_target_settings(default, preset, data_url, None, origin)
            return make_row(keras_cell(settings), "time_to_target", preset.name,
                            {"status": "error", "error": str(error)}, settings)
        meta["prepare_seconds"] += seconds
    else:
        checkpoint_url, origin = checkpoint, "the given checkpoint"
    settings = keras_time_to_target_settings(default, preset, data_url, checkpoint_url, origin)
    cell = keras_cell(settings)
    budget = preset.sweep.ttt_budget_sec
    say(f"time to target: {cell.name}, keras.applications.ResNet50 with fit, from {origin} "
        f"(budget {minutes(budget)})")
    figures = run_cell("keras-fit", "time_to_target", settings, folder, f"ttt-{cell.name}",
                       budget, keep_checkpoints, progress=echo)
    return make_row(cell, "time_to_target", preset.name, figures, settings)


def time_to_target_cells(preset: Preset, default, cells: list[Cell],
                         rows: list[dict[str, Any]]) -> list[Cell]:
    chosen: list[Cell] = []
    if "default" in preset.sweep.time_to_target:
        cell = next((c for c in cells if c.default), None) or Cell(
            name=cell_name(config_lib.flat_dict(default)), role="cell",
            settings=dict(preset.overrides), config=default, default=True)
        chosen.append(cell)
    if "fastest" in preset.sweep.time_to_target:
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
                                     epilog="presets (flowers_tl.presets):\n" + "\n".join(
                                         f"  {name}: {PRESETS[name].doc.splitlines()[0]}"
                                         for name in SWEEP_PRESETS))
    parser.add_argument("--preset", choices=SWEEP_PRESETS, default="cpu",
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
    parser.add_argument("--timed_steps", type=int, default=None, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=None,
                        help="times every cell is measured, interleaved")
    parser.add_argument("--cell_budget", type=float, default=None, help="seconds per cell run")
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
    preset = PRESETS[args.preset]
    changes: dict[str, Any] = {}
    for flag, name in (("warmup_steps", "warmup_steps"), ("timed_steps", "timed_steps"),
                       ("rounds", "rounds"), ("cell_budget", "cell_budget_sec"),
                       ("ttt_budget", "ttt_budget_sec")):
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
    sweep = dataclasses.replace(preset.sweep, **changes)
    if sweep.timed_steps < 2 or sweep.warmup_steps < 1 or sweep.rounds < 1:
        raise SweepError("--timed_steps must be >= 2 (a spread), --warmup_steps >= 1 (the "
                         "first step traces and compiles) and --rounds >= 1")
    settings: dict[str, Any] = {}
    for text in args.set:
        name, sep, value = text.partition("=")
        if not sep:
            raise SweepError(f"--set {text!r}: expected key=value")
        key, parsed = parse_setting(name, value)
        if key in ("data_url", "checkpoint_url", "train_url") and parsed not in (None, "none"):
            parsed = os.path.abspath(parsed)  # the cells run in the results folder
        settings[key] = parsed
    overrides: dict[str, list] = {}
    for text in args.axis:
        overrides.update(parse_assignments(text, "--axis"))
    return (dataclasses.replace(preset, sweep=sweep), settings, overrides,
            [parse_assignments(t, "--cell") for t in args.cell])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        preset, settings, overrides, extra = configure(args)
        machine = detect_machine() if args.gpus is None else Machine(
            gpus=args.gpus, cpus=len(os.sched_getaffinity(0)))
        if args.dry_run:
            default, cells = plan({**preset.overrides, **settings}, preset.sweep.matrices,
                                  machine, overrides, extra, "tfdata" in preset.sweep.anchors)
            for cell in cells:
                print(f"{cell.name:<48} {cell.role:<14} "
                      + (f"skipped: {cell.skipped}" if cell.skipped else "runs")
                      + (" (default)" if cell.default else ""))
            return 0
        if args.out:
            folder = Path(args.out).resolve()
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
