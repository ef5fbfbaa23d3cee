"""A sweep's results folder from its rows: tuned.json, results.csv, report.md and the plots.

    python -m bench.report results/<time>-<host>-<preset>     # write them again from the rows
    python -m bench.report --readme README.md [--check]       # the README's tables (bench.published)

tuned.json is the configuration with the best time to the target, in the form `python -m
flowers_tl.train --config tuned.json` takes. Its arithmetic is that of the time-to-target run
first to its target (the clock from the process start); the configuration is the fastest cell
of that arithmetic, i.e. of the same configuration except for knobs that change only the
kernels (SPEED_ONLY_KNOBS), which share that run. When no time-to-target phase ran, it is the
fastest cell; when one ran and nothing reached the target, the fastest cell with a note. The
tie rules: the default's run ties with a faster run when both took the same steps to the target
and their cells' 95% images/sec intervals overlap; among the cells of one arithmetic, the
default cell (else the run's own cell) ties with a faster cell whose interval overlaps its own.
A tie keeps the default (the simpler configuration), and report.md says so, naming both cells
and both figures. The Keras-fit anchor's run is a reference, never a candidate: report.md gives
Keras' time to the target over ours (keras_ratio).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

from bench.feeding import FEEDING_IMAGE_SIZE, feeding_table
from flowers_tl import env
from flowers_tl.results import ci95, intervals_overlap, read_jsonl

# Knobs that change the kernels, not the arithmetic (up to rounding; tfdata draws its random
# crops from the same distribution with another generator).
SPEED_ONLY_KNOBS = ("data_format", "batch_norm_fused", "xla", "input", "reader_threads")
NOT_A_SETTING = ("train_url", "note")
FIRST_COLUMNS = ("cell", "role", "phase", "status", "default", "images_per_sec",
                 "images_per_sec_stderr", "images_per_sec_ci95", "images_per_sec_jitter", "images_per_sec_per_device",
                 "step_time_sec", "data_wait_fraction", "speedup_vs_keras_fit",
                 "speedup_vs_slowest", "speedup_vs_default", "reached",
                 "seconds_to_target_from_process_start", "seconds_to_target_from_first_step",
                 "best_accuracy", "reason", "error")


# ------------------------------------------------------------------------------- the choice
def timed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our loop's measured throughput cells (the Keras anchor is not a configuration of ours)."""
    return [row for row in rows if row["phase"] == "throughput" and row["status"] == "ok"
            and row["role"] != "anchor-keras-fit"]


def time_to_target_rows(rows: list[dict[str, Any]], keras: bool = False
                        ) -> list[dict[str, Any]]:
    """Our time-to-target runs that ran (keras=True: the Keras-fit anchor's instead)."""
    return [row for row in rows if row["phase"] == "time_to_target" and row["status"] == "ok"
            and (row["role"] == "anchor-keras-fit") == keras]


def same_arithmetic(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ignored = SPEED_ONLY_KNOBS + NOT_A_SETTING
    return {k: v for k, v in a.items() if k not in ignored} == \
        {k: v for k, v in b.items() if k not in ignored}


def choose_tuned(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """(the winning row, why it won). With time-to-target runs that reached their target, in two
    steps: the arithmetic is that of the run first to the target (first_to_target: the default's
    on a tie), and the configuration the fastest cell of that arithmetic (cells differing only
    in SPEED_ONLY_KNOBS share a run; tie_rule: the default, else the run's own cell, on a tie),
    leaving out cells whose own time-to-target run was slower to the target.
    When no run reached its target, the run that came closest (best accuracy) stands in for
    the first one: cells whose own run ended further from the target are left out, so a faster
    cell that trains a worse model is not tuned for its images/sec. Without time-to-target
    runs: the fastest cell, after the tie rule."""
    timed = timed_rows(rows)
    ttt = time_to_target_rows(rows)
    # a configuration that only ran to the target competes with its whole-run images/sec
    timed += [dict(row, images_per_sec=row["whole_run_images_per_sec"]) for row in ttt
              if row.get("whole_run_images_per_sec") and row["cell"] not in
              {t["cell"] for t in timed}]
    if not timed:
        return None, "no cell was measured"
    if not ttt:
        return tie_rule(timed, "the fastest cell", lambda row: "no time-to-target phase ran")
    reached = [row for row in ttt if row.get("reached")]
    if not reached:
        return closest_to_target(ttt, timed)
    run, first = first_to_target(reached, timed)
    # A cell with its own time-to-target run that was not the first there lost on the clock
    # itself: its images/sec does not bring it back.
    lost = {row["cell"] for row in ttt if row["cell"] != run["cell"]}
    candidates, own = arithmetic_candidates(run, lost, timed)

    def how(row: dict[str, Any]) -> str:
        by = "its own time-to-target run" if run["cell"] == row["cell"] else \
            f"the time-to-target run of {run['cell']} (same arithmetic, other kernels)"
        return (f"{run['target_metric']} {run['target_accuracy']} in "
                f"{run['seconds_to_target_from_process_start']:.0f} s by {by}"
                + (f"; {first}" if first else ""))

    return tie_rule(candidates, "the fastest cell that reached the target", how, keep=own)


def arithmetic_candidates(run: dict[str, Any], lost: set[str], timed: list[dict[str, Any]]
                          ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(the measured cells of `run`'s arithmetic, less the `lost` ones; run's own cell or None)."""
    candidates = [row for row in timed if row["cell"] not in lost
                  and same_arithmetic(row["production_config"], run["production_config"])]
    return candidates, next((row for row in candidates if row["cell"] == run["cell"]), None)


def closest_to_target(ttt: list[dict[str, Any]], timed: list[dict[str, Any]]
                      ) -> tuple[dict[str, Any], str]:
    """choose_tuned when no run reached its target: the fastest cell of the closest run's
    arithmetic, leaving out cells whose own run ended with a lower best accuracy (the sweep of
    2026-12-04 tuned its tf.data twin for 98.2 img/s against the default's 93.9 when that
    twin's run had ended at 74.1% held-out and the default's at 82.0%)."""
    why = "no time-to-target run reached its target within its budget"
    scored = [row for row in ttt if row.get("best_accuracy") is not None]
    if not scored:
        return tie_rule(timed, "the fastest cell", lambda row: why)
    closest = max(scored, key=lambda row: row["best_accuracy"])
    lost = {row["cell"] for row in scored if row["best_accuracy"] < closest["best_accuracy"]}
    candidates, own = arithmetic_candidates(closest, lost, timed)
    if not candidates:
        return tie_rule(timed, "the fastest cell", lambda row: why)
    others = ", ".join(f"{row['cell']} {row['best_accuracy']:.3f}" for row in scored
                       if row is not closest)
    return tie_rule(candidates, "the fastest cell", lambda row: (
        f"{why}; {closest['cell']} came closest, best {closest['target_metric']} "
        f"{closest['best_accuracy']:.3f}" + (f" (others: {others})" if others else "")
        + ", so cells whose own run ended lower are left out"), keep=own)


def first_to_target(reached: list[dict[str, Any]], timed: list[dict[str, Any]]
                    ) -> tuple[dict[str, Any], str]:
    """(the run first to the target, why; "" when it was the only one to reach it). The default's
    run ties with a faster one when both took the same steps to the target and their cells'
    images/sec intervals overlap: then the difference is the machine's noise, and the default
    (the simpler configuration) is kept."""
    clock = "seconds_to_target_from_process_start"
    best = min(reached, key=lambda row: row[clock])
    if len(reached) == 1:
        return best, ""
    others = ", ".join(f"{row['cell']} {row[clock]:.0f} s" for row in reached if row is not best)
    default = next((row for row in reached if row.get("default")), None)
    rate = {row["cell"]: row for row in timed}
    if default is not None and default is not best and \
            default.get("steps_to_target") == best.get("steps_to_target") and \
            default["cell"] in rate and best["cell"] in rate and \
            intervals_overlap(rate[default["cell"]], rate[best["cell"]]):
        return default, (f"it ties on time to the target with {best['cell']} "
                         f"({best[clock]:.0f} s against the default's {default[clock]:.0f} s): "
                         f"the same {best['steps_to_target']} steps and overlapping images/sec "
                         f"intervals, so the default's arithmetic is kept")
    return best, f"the best time to the target of the runs that reached it (others: {others})"


def tie_rule(candidates: list[dict[str, Any]], label: str,
             detail: Callable[[dict[str, Any]], str], keep: dict[str, Any] | None = None
             ) -> tuple[dict[str, Any], str]:
    """The fastest candidate, unless the default cell (else `keep`) is a candidate whose 95%
    interval overlaps the fastest one's: then the two tie and that one is kept.

    Noise, not the knobs, separates cells whose intervals overlap; switching the configuration
    for such a difference would be a choice the next run reverses."""
    fastest = max(candidates, key=lambda row: row["images_per_sec"])
    kept = next((row for row in candidates if row.get("default")), None) or keep
    if kept is None or kept["cell"] == fastest["cell"] or not intervals_overlap(fastest, kept):
        return fastest, f"{label} ({_rate(fastest)}; {detail(fastest)})"
    which = ("the default cell", "the default's", "the simpler default configuration") \
        if kept.get("default") else (kept["cell"], "its", "the configuration measured to the "
                                     "target")
    return kept, (f"{which[0]}, which ties with {label}, {fastest['cell']} "
                  f"({_rate(fastest)}) against {which[1]} {_rate(kept)}: the 95% intervals "
                  f"overlap, so {which[2]} is kept ({detail(kept)})")


def _rate(row: dict[str, Any]) -> str:
    interval = ci95(row)
    return f"{row['images_per_sec']:.1f} img/s" + (
        "" if interval is None else f", 95% interval {interval[0]:.1f}-{interval[1]:.1f}")


def tuned_config(row: dict[str, Any], why: str, folder: Path) -> dict[str, Any]:
    config = {k: v for k, v in row["production_config"].items() if k != "train_url"}
    config["note"] = f"bench.sweep {row['sweep']} ({folder.name}): {row['cell']}, {why}"
    return config


# ------------------------------------------------------------------------------- the files
def add_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keras = next((r for r in rows if r["role"] == "anchor-keras-fit" and r["status"] == "ok"
                  and r["phase"] == "throughput"), None)
    timed = timed_rows(rows)
    slowest = min(timed, key=lambda r: r["images_per_sec"], default=None)
    default = next((r for r in timed if r["default"]), None)
    out = []
    for row in rows:
        row = dict(row)
        if row["phase"] == "throughput" and row["status"] == "ok":
            for name, reference in (("keras_fit", keras), ("slowest", slowest),
                                    ("default", default)):
                row[f"speedup_vs_{name}"] = row["images_per_sec"] / reference["images_per_sec"] \
                    if reference else None
        out.append(row)
    return out


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            flat[prefix + key] = json.dumps(value)
        else:
            flat[prefix + key] = value
    return flat


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    flat = [flatten(row) for row in rows]
    keys = list(dict.fromkeys(k for row in flat for k in row))
    columns = [k for k in FIRST_COLUMNS if k in keys] + [k for k in keys if k not in FIRST_COLUMNS]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)


def format_number(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def throughput_table(rows: list[dict[str, Any]]) -> list[str]:
    """The sweep's throughput cells, fastest first, as markdown (report.md and the README)."""
    rows = add_speedups(rows)
    timed = sorted((r for r in rows if r["phase"] == "throughput" and r["status"] == "ok"),
                   key=lambda r: -r["images_per_sec"])
    ttt = {r["cell"]: r for r in rows if r["phase"] == "time_to_target" and r["status"] == "ok"}
    notes = []
    lines = ["| cell | role | img/s | ± | 95% interval | jitter | per device | step ms | "
             "data wait | vs Keras fit | vs slowest | vs default | time to target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in timed:
        role = r["role"] + (", default" if r["default"] else "")
        run = ttt.get(r["cell"])
        target = "-" if run is None else time_to_target_text(run)
        note = arithmetic_note_of(r)
        if note:
            notes.append(f"{r['cell']} ({format_number(r['speedup_vs_default'], 2, 'x')} the "
                         f"default): {note}.")
        interval = ci95(r)
        lines.append(
            f"| {r['cell']} | {role} | {r['images_per_sec']:.2f} | "
            f"{format_number(r.get('images_per_sec_stderr'), 2)} | "
            f"{'-' if interval is None else f'{interval[0]:.2f}-{interval[1]:.2f}'} | "
            f"{format_number(r.get('images_per_sec_jitter'), 2)}"
            f" | {r['images_per_sec_per_device']:.2f} | {r['step_time_sec'] * 1e3:.0f} | "
            f"{format_number((r.get('data_wait_fraction') or math.nan) * 100, 1, '%')} | "
            f"{format_number(r['speedup_vs_keras_fit'], 2, 'x')} | "
            f"{format_number(r['speedup_vs_slowest'], 2, 'x')} | "
            f"{format_number(r['speedup_vs_default'], 2, 'x')} | {target} |")
    return lines + ([""] + notes if notes else [])


def arithmetic_note_of(row: dict[str, Any]) -> str | None:
    """Why the row's reduced precision is slow on the CPU it ran on (flowers_tl.env), from the
    CPU flags its environment recorded; None where it has the units, or runs on GPUs."""
    from flowers_tl.env import arithmetic_note

    features = (row.get("environment") or {}).get("cpu_features")
    return arithmetic_note(row.get("precision") or "fp32", features, row.get("num_gpus") or 0)


# ------------------------------------------------------------------------------- time to target
CLOCK = "seconds_to_target_from_process_start"  # MLPerf's: start-up and evaluation count


def time_to_target_text(row: dict[str, Any]) -> str:
    """"131 s", or where the run did not reach its target, how long it tried and the best it
    got: "not reached in 660 s (best val_accuracy 0.870 at epoch 7)"."""
    if row["reached"]:
        return f"{row[CLOCK]:.0f} s"
    length = row.get("run_seconds") or row.get("cell_seconds")
    cut = row.get("over_budget") or str(row.get("stop_reason", "")).startswith(
        ("interrupted", "killed"))
    tried = f"in {format_number(length, 0, ' s')}" if cut else \
        f"in its {row['epochs_run']:g} epochs ({format_number(length, 0, ' s')})"
    best = "no accuracy measured" if row.get("best_accuracy") is None else (
        f"best {row['target_metric']} {row['best_accuracy']:.3f}"
        + (f" at epoch {row['best_epoch']:g}" if row.get("best_epoch") is not None else ""))
    return f"not reached {tried} ({best})"


def keras_ratio(ours: dict[str, Any] | None, keras: dict[str, Any] | None
                ) -> tuple[float | None, str]:
    """(Keras' time to the target over ours, in words): above 1, ours got there first. Where
    Keras was stopped before reaching it, its run's length over ours is a lower bound; where it
    finished its epochs without reaching it, or ours did not reach it, there is no ratio."""
    if ours is None or keras is None:
        return None, "-"
    if not ours["reached"]:
        return None, "- (ours did not reach the target)"
    if keras["reached"]:
        ratio = keras[CLOCK] / ours[CLOCK]
        return ratio, f"{ratio:.2f}x"
    length = keras.get("run_seconds") or keras.get("cell_seconds")
    if length and (keras.get("over_budget") or str(keras.get("stop_reason", "")).startswith(
            ("interrupted", "killed"))):
        return None, (f"> {length / ours[CLOCK]:.2f}x (Keras fit not reached in {length:.0f} s; "
                      "a lower bound)")
    return None, "- (Keras fit did not reach the target in its epochs)"


def metric_words(row: dict[str, Any]) -> str:
    """What a time-to-target figure is of: the metric, the split's size and the seed."""
    if row["target_metric"] == "val_accuracy":
        return (f"held-out accuracy (val_accuracy, {row.get('val_images')} held-out images, "
                f"seed {row.get('seed')})")
    return (f"training accuracy (train_accuracy over each epoch's batches; seed "
            f"{row.get('seed')}; the {row.get('val_images') or 0} held-out images do not decide "
            f"the clock)")


def machine_words(row: dict[str, Any]) -> str:
    environment = row.get("environment") or {}
    gpus = environment.get("gpus") or []
    return (f"{env.cpu_label(environment)} "
            f"({environment.get('cpu_count_affinity') or '?'} usable cores"
            + (f", {len(gpus)} GPU(s): {gpus[0]}" if gpus and row.get("num_gpus") else "")
            + ")")


def keras_headline(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per comparison: our default's (else each of our runs') time to the target
    against Keras fit's, their ratio, and what the figures are of."""
    ours = time_to_target_rows(rows)
    keras = next(iter(time_to_target_rows(rows, keras=True)), None)
    failed = next((r for r in rows if r["phase"] == "time_to_target"
                   and r["role"] == "anchor-keras-fit" and r["status"] != "ok"), None)
    if keras is None:
        return ["Keras fit did not run to the target in this sweep."] if failed is None else [
            f"Keras fit to the target: {failed['status']}: "
            f"{failed.get('error') or failed.get('reason')}."]
    lines = []
    for run in [r for r in ours if r.get("default")] or ours:
        ratio, text = keras_ratio(run, keras)
        lines.append(
            f"Time to {run['target_accuracy']:.0%} {metric_words(run)} on {machine_words(run)}: "
            f"ours ({run['cell']}) {time_to_target_text(run)}, Keras fit "
            f"({keras['cell']}) {time_to_target_text(keras)}; Keras' time over ours: {text}"
            + ("" if ratio is None else f" ({'at least' if ratio >= 2 else 'under'} the 2x "
                                        "goal)") + ".")
    return lines


def time_to_target_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every time-to-target run, ours and Keras fit's, as markdown (report.md and the README):
    the metric, the held-out split, the seed, the clock from the process start and from the
    first step, the evaluation time inside it, and Keras' time over each of ours; then the
    starting weights of each run."""
    runs = time_to_target_rows(rows) + time_to_target_rows(rows, keras=True)
    keras = next(iter(time_to_target_rows(rows, keras=True)), None)
    lines = ["| run | role | metric | target | held-out images | seed | time to target | "
             "from first step | of it evaluating | steps | best accuracy | stopped | "
             "Keras fit / this |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        role = r["role"] + (", default" if r.get("default") else "")
        ratio = "-" if r["role"] == "anchor-keras-fit" else keras_ratio(r, keras)[1]
        lines.append(
            f"| {r['cell']} | {role} | {r['target_metric']} | {r['target_accuracy']} | "
            f"{r.get('val_images', '-')} | {r.get('seed', '-')} | {time_to_target_text(r)} | "
            f"{format_number(r.get('seconds_to_target_from_first_step'), 0, ' s')} | "
            f"{format_number(r.get('eval_seconds_to_target'), 1, ' s')} | "
            f"{r.get('steps_to_target', '-')} | {format_number(r['best_accuracy'], 3)} | "
            f"{r['stop_reason']} | {ratio} |")
    lines += [""] + [f"- {r['cell']} started from {start_weights_of(r)}." for r in runs]
    return lines


def start_weights_of(row: dict[str, Any]) -> str:
    """The run's starting weights as it recorded them (rows before that: from its config)."""
    if row.get("start_weights"):
        return row["start_weights"]
    checkpoint = (row.get("config") or {}).get("checkpoint_url")
    return {None: "the built-in source checkpoint", "none": "scratch"}.get(checkpoint, checkpoint)


def reader_table(rows: list[dict[str, Any]]) -> list[str]:
    """bench.reader rows as markdown: backends against threads, with ratios against tf.data (and
    DALI where it ran) at the same thread count."""
    rates = {(r["backend"], r["num_threads"]): r["samples_per_sec"] for r in rows
             if "error" not in r}
    references = ["tfdata"] + (["dali"] if any(key[0] == "dali" for key in rates) else [])
    names = {"tfdata": "tf.data", "dali": "DALI"}
    lines = ["| backend | threads | img/s | ± | 95% interval | jitter | "
             + " | ".join(f"vs {names[name]}" for name in references) + " | cores busy | "
             "img/s per core |",
             "|---|---|---|---|---|---|" + "---|" * len(references) + "---|---|"]
    for r in rows:
        if "error" in r:
            error = r["error"][:200].replace("|", "\\|")
            lines.append(f"| {r['backend']} | {r['num_threads']} | error: {error} |"
                         + " |" * (5 + len(references)))
            continue
        interval = ci95(r, "samples_per_sec")
        ratios = [rates.get((name, r["num_threads"])) for name in references]
        lines.append(
            f"| {r['backend']} | {r['num_threads']} | {r['samples_per_sec']:.1f} | "
            f"{format_number(r.get('samples_per_sec_stderr'))} | "
            f"{'-' if interval is None else f'{interval[0]:.1f}-{interval[1]:.1f}'} | "
            f"{format_number(r.get('samples_per_sec_jitter'))} | "
            + " | ".join(format_number(r["samples_per_sec"] / base if base else None, 2, "x")
                         for base in ratios)
            + f" | {format_number(r.get('cpu_cores_busy'), 2)} | "
            f"{format_number(r.get('samples_per_cpu_second'), 0)} |")
    return lines


def write_markdown(path: Path, rows: list[dict[str, Any]], reader: list[dict[str, Any]],
                   meta: dict[str, Any], tuned: dict[str, Any] | None, why: str,
                   tuned_path: Path) -> None:
    environment = next((r["environment"] for r in rows), None) or {}
    default = meta.get("default_config", {})
    lines = [f"# Sweep `{meta['preset']}` on {environment.get('hostname', '?')}, "
             f"{meta.get('started_utc', '')}", "",
             f"`{meta.get('command') or 'python -m bench.sweep'}` took "
             f"{meta.get('wall_seconds', 0) / 60:.1f} min, of which "
             f"{meta.get('prepare_seconds', 0) / 60:.1f} min untimed preparation of the data."
             + (" **Interrupted.**" if meta.get("interrupted") else "")
             + (f" **{meta['error']}**" if meta.get("error") else ""), "",
             f"Machine: {env.cpu_label(environment)}, {environment.get('cpu_count_affinity')} "
             f"usable cores, GPUs: {', '.join(environment.get('gpus') or []) or 'none'}; "
             f"TensorFlow {environment.get('tensorflow_version')}, "
             f"{environment.get('compiler')}, libjpeg-turbo "
             f"{environment.get('libjpeg_turbo_version')}, commit "
             f"{(environment.get('git_commit') or '?')[:10]}"
             f"{' (uncommitted changes)' if environment.get('git_dirty') else ''}.", "",
             f"Default configuration (what you would run without the sweep): "
             f"{default.get('image_size')} px, batch {default.get('batch_size')} per device, "
             f"{default.get('precision')}, {default.get('data_format')}, "
             f"{'fused' if default.get('batch_norm_fused') else 'plain'} batch norm, XLA "
             f"{'on' if default.get('xla') else 'off'}, input {default.get('input')}, "
             f"{default.get('num_gpus')} GPU(s); data {meta.get('data_url')}. Throughput: "
             f"{meta.get('warmup_steps')} warm-up + {meta.get('timed_steps')} timed steps per "
             f"cell, each synchronised, data wait included; ± is the standard error over the "
             f"per-step rates, the 95% interval Student's t around images/sec, jitter 1.4826 x "
             f"the rates' MAD. Where the default's interval overlaps the fastest cell's, the "
             f"two tie and tuned.json keeps the default.", ""]
    rows = add_speedups(rows)
    lines += ["## Images/sec, fastest first", ""] + throughput_table(rows)
    if any(r["phase"] == "time_to_target" for r in rows):
        lines += ["", "## Time to target", ""] + keras_headline(rows) + [
                  "", "The clock starts with the process (MLPerf style: start-up, evaluation "
                  "and checkpointing count; the evaluation's share is its own column) and, "
                  "second figure, at the first training step. Keras fit trains "
                  "keras.applications.ResNet50 on tf.data with the default's resolved "
                  "recipe: the same data folder and split, resolution, batch, epochs and "
                  "learning rate at every step (bench.keras_fit).", ""] + \
            time_to_target_table(rows)
    if reader:
        lines += ["", "## Reader images/sec against threads", "",
                  f"bench.reader, {reader[0]['image_size']} px train augmentation, batch "
                  f"{reader[0]['batch_size']}, on the sweep's data; cores busy is the process CPU "
                  f"time over the timed wall time, img/s per core the images per CPU-second.",
                  ""] + reader_table(reader)
        lines += ["", "## Cores to feed a GPU", ""]
        if any(r.get("image_size") == FEEDING_IMAGE_SIZE for r in reader):
            lines += feeding_table(reader)
        else:
            lines += [f"The GPU rates are at {FEEDING_IMAGE_SIZE} px and this sweep's reader ran "
                      f"at {reader[0]['image_size']} px: `python -m bench.reader --image_size "
                      f"{FEEDING_IMAGE_SIZE} ...` prints the table."]
    failed = [r for r in rows if r["status"] in ("skipped", "error")]
    if failed:
        lines += ["", "## Skipped and failed cells", "", "| cell | phase | status | reason |",
                  "|---|---|---|---|"]
        for r in failed:
            reason = (r.get("reason") or r.get("error") or "").replace("|", "\\|")
            lines.append(f"| {r['cell']} | {r['phase']} | {r['status']} | {reason} |")
    lines += ["", "## Plots", "", "![images/sec per cell](images_per_sec.png)",
              "![accuracy against wall time](accuracy_vs_time.png)",
              "![reader images/sec against threads](reader_threads.png)", "",
              "## Tuned configuration", ""]
    if tuned is None:
        lines += [f"None: {why}."]
    else:
        lines += [f"`tuned.json` is {tuned['cell']}: {why}. Train with it:", "",
                  f"    python -m flowers_tl.train --config {tuned_path}"]
    path.write_text("\n".join(lines) + "\n")


def write_plots(folder: Path, rows: list[dict[str, Any]], reader: list[dict[str, Any]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = sorted((r for r in rows if r["phase"] == "throughput" and r["status"] == "ok"),
                   key=lambda r: r["images_per_sec"])
    figure, axes = plt.subplots(figsize=(9, 1.2 + 0.4 * max(len(timed), 1)))
    colours = {"cell": "tab:blue", "anchor-tfdata": "tab:orange", "anchor-keras-fit": "tab:grey"}
    axes.barh([r["cell"] for r in timed], [r["images_per_sec"] for r in timed],
              xerr=[r["images_per_sec_stderr"] or 0 for r in timed], capsize=3,
              color=["tab:green" if r["default"] else colours[r["role"]] for r in timed])
    axes.set_xlabel("images/sec (± standard error); green: default, orange: tf.data anchor, "
                    "grey: Keras fit")
    axes.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    figure.savefig(folder / "images_per_sec.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 4.5))
    curves = [r for r in rows if r.get("accuracy_curve")]
    for r in curves:
        times = [point[0] for point in r["accuracy_curve"]]
        line, = axes.plot(times, [point[1] for point in r["accuracy_curve"]], marker="o",
                          label=f"{r['cell']} train")
        if any(point[2] is not None for point in r["accuracy_curve"]):
            axes.plot(times, [point[2] for point in r["accuracy_curve"]], linestyle="--",
                      marker="x", color=line.get_color(), label=f"{r['cell']} val")
        axes.axhline(r["target_accuracy"], color="grey", linewidth=0.8)
        if r.get("reached"):
            axes.axvline(r["seconds_to_target_from_process_start"], color=line.get_color(),
                         linewidth=0.8, linestyle=":")
    axes.set_xlim(left=0)
    axes.set_ylim(0, 1.02)
    if not curves:
        axes.text(0.5, 0.5, "no time-to-target phase in this sweep", ha="center",
                  transform=axes.transAxes)
    else:
        axes.legend(fontsize=7)
    axes.set_xlabel("seconds from process start (dotted: target reached)")
    axes.set_ylabel("accuracy per epoch (grey: the target)")
    figure.tight_layout()
    figure.savefig(folder / "accuracy_vs_time.png", dpi=110)
    plt.close(figure)

    plot_reader_threads(reader, folder / "reader_threads.png",
                        empty="no reader phase in this sweep")


def plot_reader_threads(rows: list[dict[str, Any]], path: Path,
                        empty: str = "no reader rows") -> None:
    """Thread scaling of bench.reader rows (one per backend and threads, rounds pooled): img/s
    against threads per backend, each with the dashed line of perfect scaling from its fewest
    threads, and beside it img/s per busy core (flat: linear scaling; falling: the threads wait
    or contend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rates, per_core) = plt.subplots(1, 2, figsize=(11, 4))
    ok = [r for r in rows if "error" not in r]
    for backend in dict.fromkeys(r["backend"] for r in ok):
        points = sorted((r["num_threads"], r["samples_per_sec"], r["samples_per_sec_stderr"],
                         r.get("samples_per_cpu_second")) for r in ok if r["backend"] == backend)
        threads = [p[0] for p in points]
        line = rates.errorbar(threads, [p[1] for p in points], yerr=[p[2] for p in points],
                              marker="o", capsize=3, label=backend)[0]
        if len(points) > 1:
            rates.plot(threads, [points[0][1] * t / points[0][0] for t in threads],
                       linestyle="--", linewidth=0.8, color=line.get_color())
        if all(p[3] for p in points):
            per_core.plot(threads, [p[3] for p in points], marker="o", label=backend,
                          color=line.get_color())
    if ok:
        ticks = sorted({r["num_threads"] for r in ok})
        for axes in (rates, per_core):
            axes.set_xticks(ticks)
            axes.set_xlabel("threads")
            axes.set_ylim(bottom=0)
        rates.legend(fontsize=8)
    else:
        rates.text(0.5, 0.5, empty, ha="center", transform=rates.transAxes)
    rates.set_ylabel("images/sec (dashed: linear from the fewest threads)")
    per_core.set_ylabel("images/sec per busy core")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_all(folder: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """tuned.json, results.csv, report.md, the plots and sweep.json (the sweep's own facts)."""
    folder = Path(folder)
    from bench.reader import pool_rounds

    reader = pool_rounds(read_jsonl(folder / "reader.jsonl"))
    tuned, why = choose_tuned(rows)
    tuned_path = folder / "tuned.json"
    if tuned is not None:
        tuned_path.write_text(json.dumps(tuned_config(tuned, why, folder), indent=2,
                                         sort_keys=True) + "\n")
    (folder / "sweep.json").write_text(json.dumps(
        dict(meta, tuned_cell=tuned["cell"] if tuned else None, tuned_reason=why), indent=2,
        default=str) + "\n")
    write_csv(folder / "results.csv", add_speedups(rows))
    write_markdown(folder / "report.md", rows, reader, meta, tuned, why, tuned_path)
    write_plots(folder, rows, reader)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path,
                        help="a sweep's results folder: write its report files again")
    parser.add_argument("--readme", type=Path,
                        help="rewrite this README's marked tables from results/published/")
    parser.add_argument("--check", action="store_true",
                        help="with --readme: change nothing, exit 1 if a table is out of date")
    parser.add_argument("--published", type=Path, default=None,
                        help="with --readme: the folders' parent (default: results/published "
                             "beside the README)")
    parser.add_argument("--describe", type=Path, metavar="FOLDER",
                        help="write FOLDER/environment.json: --command(s), machine, GEMM rates")
    parser.add_argument("--command", action="append", default=[],
                        help="with --describe: an exact command that made the rows (repeat, "
                             "in order)")
    parser.add_argument("--note", default=None, help="with --describe: one sentence for captions")
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.folder, args.readme, args.describe)) != 1:
        parser.error("give one of FOLDER, --readme README.md, --describe FOLDER")
    if args.check and args.readme is None:
        parser.error("--check goes with --readme")
    return args


def main(argv: list[str] | None = None) -> int:
    from bench import published

    args = parse_args(argv)
    try:
        if args.describe is not None:
            print(published.describe(args.describe, args.command, args.note))
            return 0
        if args.readme is not None:
            fresh = published.update_readme(args.readme, args.published, check=args.check)
            if args.check and not fresh:
                print(f"{args.readme}: tables out of date; run python -m bench.report --readme "
                      f"{args.readme}", file=sys.stderr)
                return 1
            print(f"{args.readme}: {'up to date' if fresh else 'tables rewritten'}")
            return 0
    except (published.PublishedError, OSError) as error:
        print(f"bench.report: error: {error}", file=sys.stderr)
        return 2
    folder = args.folder
    meta = json.loads((folder / "sweep.json").read_text())
    write_all(folder, read_jsonl(folder / "results.jsonl"), meta)
    print(folder / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
