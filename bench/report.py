"""A sweep's results folder from its rows: tuned.json, results.csv, report.md and the plots.

    python -m bench.report results/<time>-<host>-<preset>     # write them again from the rows
    python -m bench.report --readme README.md [--check]       # the README's tables (bench.published)

tuned.json is the fastest cell that reached the target, in the form `python -m flowers_tl.train
--config tuned.json` takes (TrainConfig keys only). A cell counts as having reached it when its
own time-to-target run did, or when a time-to-target run of the same configuration except for
knobs that change only the kernels (SPEED_ONLY_KNOBS) did. When no time-to-target phase ran, it
is the fastest cell; when one ran and nothing reached the target, the fastest cell with a note.
The tie rule: where the default cell is among those candidates and its 95% interval overlaps the
fastest one's, the two tie, tuned.json keeps the default (the simpler configuration) and
report.md says so, naming both cells and both intervals.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

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


def same_arithmetic(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ignored = SPEED_ONLY_KNOBS + NOT_A_SETTING
    return {k: v for k, v in a.items() if k not in ignored} == \
        {k: v for k, v in b.items() if k not in ignored}


def choose_tuned(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """(the winning row, why it won), after the tie rule (tie_rule)."""
    timed = timed_rows(rows)
    ttt = [row for row in rows if row["phase"] == "time_to_target" and row["status"] == "ok"]
    # a configuration that only ran to the target competes with its whole-run images/sec
    timed += [dict(row, images_per_sec=row["whole_run_images_per_sec"]) for row in ttt
              if row.get("whole_run_images_per_sec") and row["cell"] not in
              {t["cell"] for t in timed}]
    if not timed:
        return None, "no cell was measured"
    if not ttt:
        return tie_rule(timed, "the fastest cell", lambda row: "no time-to-target phase ran")
    reached = [row for row in ttt if row.get("reached")]
    runs = {row["cell"]: run for row in timed for run in reached
            if same_arithmetic(row["production_config"], run["production_config"])}
    if not runs:
        return tie_rule(timed, "the fastest cell", lambda row: "no time-to-target run reached "
                        "its target within its budget")

    def how(row: dict[str, Any]) -> str:
        run = runs[row["cell"]]
        by = "its own time-to-target run" if run["cell"] == row["cell"] else \
            f"the time-to-target run of {run['cell']} (same arithmetic, other kernels)"
        return (f"{run['target_metric']} {run['target_accuracy']} in "
                f"{run['seconds_to_target_from_process_start']:.0f} s by {by}")

    return tie_rule([row for row in timed if row["cell"] in runs],
                    "the fastest cell that reached the target", how)


def tie_rule(candidates: list[dict[str, Any]], label: str,
             detail: Callable[[dict[str, Any]], str]) -> tuple[dict[str, Any], str]:
    """The fastest candidate, unless the default cell is a candidate whose 95% interval overlaps
    the fastest one's: then the two tie and the default (the simpler configuration) is kept.

    Noise, not the knobs, separates cells whose intervals overlap; switching the configuration
    for such a difference would be a choice the next run reverses."""
    fastest = max(candidates, key=lambda row: row["images_per_sec"])
    default = next((row for row in candidates if row.get("default")), None)
    if default is None or default["cell"] == fastest["cell"] or \
            not intervals_overlap(fastest, default):
        return fastest, f"{label} ({_rate(fastest)}; {detail(fastest)})"
    return default, (f"the default cell, which ties with {label}, {fastest['cell']} "
                     f"({_rate(fastest)}) against the default's {_rate(default)}: the 95% "
                     f"intervals overlap, so the simpler default configuration is kept "
                     f"({detail(default)})")


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
    lines = ["| cell | role | img/s | ± | 95% interval | jitter | per device | step ms | "
             "data wait | vs Keras fit | vs slowest | vs default | time to target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in timed:
        role = r["role"] + (", default" if r["default"] else "")
        run = ttt.get(r["cell"])
        target = "-" if run is None else (
            f"{run['seconds_to_target_from_process_start']:.0f} s" if run["reached"]
            else f"not reached ({format_number(run['best_accuracy'], 3)})")
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
    return lines


def reader_table(rows: list[dict[str, Any]]) -> list[str]:
    """bench.reader rows as markdown: backends against threads, with ratios against tf.data (and
    DALI where it ran) at the same thread count."""
    rates = {(r["backend"], r["num_threads"]): r["samples_per_sec"] for r in rows
             if "error" not in r}
    references = ["tfdata"] + (["dali"] if any(key[0] == "dali" for key in rates) else [])
    names = {"tfdata": "tf.data", "dali": "DALI"}
    lines = ["| backend | threads | img/s | ± | 95% interval | jitter | "
             + " | ".join(f"vs {names[name]}" for name in references) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(references)]
    for r in rows:
        if "error" in r:
            error = r["error"][:200].replace("|", "\\|")
            lines.append(f"| {r['backend']} | {r['num_threads']} | error: {error} |"
                         + " |" * (3 + len(references)))
            continue
        interval = ci95(r, "samples_per_sec")
        ratios = [rates.get((name, r["num_threads"])) for name in references]
        lines.append(
            f"| {r['backend']} | {r['num_threads']} | {r['samples_per_sec']:.1f} | "
            f"{format_number(r.get('samples_per_sec_stderr'))} | "
            f"{'-' if interval is None else f'{interval[0]:.1f}-{interval[1]:.1f}'} | "
            f"{format_number(r.get('samples_per_sec_jitter'))} | "
            + " | ".join(format_number(r["samples_per_sec"] / base if base else None, 2, "x")
                         for base in ratios) + " |")
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
             f"Machine: {environment.get('cpu_model')}, {environment.get('cpu_count_affinity')} "
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
    ttt = {r["cell"]: r for r in rows if r["phase"] == "time_to_target" and r["status"] == "ok"}
    lines += ["## Images/sec, fastest first", ""] + throughput_table(rows)
    if ttt:
        start = {None: "the built-in source checkpoint", "none": "scratch"}
        checkpoints = sorted({str(start.get(r["config"]["checkpoint_url"],
                                            r["config"]["checkpoint_url"])) for r in ttt.values()})
        lines += ["", "## Time to target", "",
                  f"From {', '.join(checkpoints)}; the clock starts with the process (MLPerf "
                  "style: start-up, evaluation and checkpointing count) and, second figure, at "
                  "the first training step.", "",
                  "| cell | metric | target | reached | from process start | from first step | "
                  "steps | best accuracy | stopped |", "|---|---|---|---|---|---|---|---|---|"]
        for r in ttt.values():
            lines.append(
                f"| {r['cell']} | {r['target_metric']} | {r['target_accuracy']} | "
                f"{'yes' if r['reached'] else 'not reached'} | "
                f"{format_number(r.get('seconds_to_target_from_process_start'), 0, ' s')} | "
                f"{format_number(r.get('seconds_to_target_from_first_step'), 0, ' s')} | "
                f"{r.get('steps_to_target', '-')} | {format_number(r['best_accuracy'], 3)} | "
                f"{r['stop_reason']} |")
    if reader:
        lines += ["", "## Reader images/sec against threads", "",
                  f"bench.reader, {reader[0]['image_size']} px train augmentation, batch "
                  f"{reader[0]['batch_size']}, on the sweep's data.", ""] + reader_table(reader)
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

    figure, axes = plt.subplots(figsize=(6, 4))
    ok = [r for r in reader if "error" not in r]
    for backend in dict.fromkeys(r["backend"] for r in ok):
        points = sorted((r["num_threads"], r["samples_per_sec"], r["samples_per_sec_stderr"])
                        for r in ok if r["backend"] == backend)
        axes.errorbar([p[0] for p in points], [p[1] for p in points],
                      yerr=[p[2] for p in points], marker="o", capsize=3, label=backend)
    if ok:
        axes.legend()
        axes.set_xticks(sorted({r["num_threads"] for r in ok}))
    else:
        axes.text(0.5, 0.5, "no reader phase in this sweep", ha="center", transform=axes.transAxes)
    axes.set_xlabel("threads")
    axes.set_ylabel("images/sec")
    figure.tight_layout()
    figure.savefig(folder / "reader_threads.png", dpi=110)
    plt.close(figure)


def write_all(folder: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """tuned.json, results.csv, report.md, the plots and sweep.json (the sweep's own facts)."""
    folder = Path(folder)
    reader = read_jsonl(folder / "reader.jsonl")
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
