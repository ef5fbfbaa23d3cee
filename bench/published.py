"""The README's figure tables, written from the results kept in the repository.

    python -m bench.report --readme README.md           # rewrite every table from the results
    python -m bench.report --readme README.md --check   # exit 1 if a table is out of date
    python -m bench.report --describe FOLDER --command "python -m bench.reader ..."  # its environment.json

Each measurement behind a published figure is a folder results/published/<cpu>-<date>-<what>/
(cpu: flowers_tl.env.cpu_slug()) holding
  results.jsonl     the rows as the benchmark wrote them (bench.reader, bench.step, bench.sweep),
                    a sweep's reader phase in reader.jsonl beside it;
  environment.json  {"commands": [...], "note": ..., "cpu_slug": ..., "matmul_gflops": {...},
                    "environment": flowers_tl.env.describe_environment()}, the exact commands in
                    order (data generation included) and the machine, written by --describe.

In README.md a table sits between markers naming its folder and its kind:

    <!-- table:intel-xeon-processor-2c-2026-12-02-reader/reader -->
    (caption line and table, written by the command above; edits here are overwritten)
    <!-- /table:intel-xeon-processor-2c-2026-12-02-reader/reader -->

Kinds: `reader` (bench.reader backends against threads, ratios against tf.data and DALI, CPU
cores busy and img/s per core), `feeding` (bench.feeding: cores to feed common GPUs),
`sweep` (bench.sweep's throughput cells, as in its report.md), `ttt` (bench.sweep's
time-to-target runs, ours and Keras fit's, with Keras' time over ours), `step` (bench.step
cells). The
caption names the CPU model, the usable cores, the date, the load and the exact commands.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from bench.feeding import feeding_table
from bench.report import format_number, reader_table, throughput_table, time_to_target_table
from flowers_tl import env
from flowers_tl.results import ci95, read_jsonl

MARKER = re.compile(r"<!-- table:(?P<name>\S+) -->\n.*?<!-- /table:(?P=name) -->", re.DOTALL)
OPENING = re.compile(r"<!-- table:(\S+) -->")


class PublishedError(ValueError):
    """A marker, folder or file the tables cannot be written from (one line)."""


def step_table(rows: list[dict[str, Any]]) -> list[str]:
    """bench.step cells as markdown, with the speed-up against the Keras fp32 cell."""
    anchor = next((r for r in rows if r.get("model") == "keras" and r.get("precision") == "fp32"
                   and "images_per_sec" in r), None)
    lines = ["| cell | img/s | ± | 95% interval | jitter | step s | vs Keras fp32 | of peak | "
             "peak GFLOP/s | load after |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "images_per_sec" not in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r.get('error')}"
            lines.append(f"| {r['cell']} | {why[:200].replace('|', '/')} |" + " |" * 8)
            continue
        interval = ci95(r)
        lines.append(
            f"| {r['cell']} | {r['images_per_sec']:.2f} | "
            f"{format_number(r.get('images_per_sec_stderr'), 2)} | "
            f"{'-' if interval is None else f'{interval[0]:.2f}-{interval[1]:.2f}'} | "
            f"{format_number(r.get('images_per_sec_jitter'), 2)} | {format_number(r['step_time_sec'], 2)} | "
            f"{format_number(r['images_per_sec'] / anchor['images_per_sec'] if anchor else None, 2, 'x')}"
            f" | {format_number((r.get('fraction_of_peak') or float('nan')) * 100, 1, '%')} | "
            f"{format_number(r.get('peak_gflops'), 0)} | {format_number(r.get('load_average_1min_after'))} |")
    return lines


def _reader_rows(folder: Path) -> list[dict[str, Any]]:
    from bench.reader import pool_rounds

    beside = read_jsonl(folder / "reader.jsonl")  # a sweep's reader phase
    return pool_rounds(beside or [r for r in read_jsonl(folder / "results.jsonl") if "backend" in r])


KINDS: dict[str, tuple[Callable[[Path], list[dict[str, Any]]],
                       Callable[[list[dict[str, Any]]], list[str]]]] = {
    "reader": (_reader_rows, reader_table),
    "feeding": (_reader_rows, feeding_table),
    "sweep": (lambda folder: [r for r in read_jsonl(folder / "results.jsonl") if "phase" in r],
              throughput_table),
    "ttt": (lambda folder: [r for r in read_jsonl(folder / "results.jsonl")
                            if r.get("phase") == "time_to_target"], time_to_target_table),
    "step": (lambda folder: [r for r in read_jsonl(folder / "results.jsonl") if "model" in r],
             step_table),
}


def render_table(published: Path, name: str) -> str:
    """Caption line, blank line, table: what goes between the markers of `name` (folder/kind)."""
    folder_name, _, kind = name.rpartition("/")
    if kind not in KINDS or not folder_name:
        raise PublishedError(f"table:{name}: expected <folder>/<kind>, kind one of "
                             f"{', '.join(KINDS)}")
    folder = published / folder_name
    info_path = folder / "environment.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as error:
        raise PublishedError(f"table:{name}: {info_path}: cannot read ({error})") from None
    load_rows, table = KINDS[kind]
    rows = load_rows(folder)
    if not rows:
        raise PublishedError(f"table:{name}: {folder}: no {kind} rows in its results")
    if not info.get("commands"):
        raise PublishedError(f"table:{name}: {info_path}: no \"commands\" (how the rows were made)")
    environment = info.get("environment") or {}
    loads = [r["environment"]["load_average_1min"] for r in rows
             if (r.get("environment") or {}).get("load_average_1min") is not None]
    load = (f"{min(loads):.1f}" if min(loads) == max(loads)
            else f"{min(loads):.1f}-{max(loads):.1f}") if loads else "unknown"
    note = f" {info['note']}" if info.get("note") else ""
    caption = (f"Measured on {env.cpu_label(environment)} "
               f"({environment.get('cpu_count_affinity') or '?'} usable cores), "
               f"{(environment.get('time_utc') or '????-??-??')[:10]}, 1-min load average "
               f"{load}, with `{' && '.join(info['commands'])}` "
               f"(rows: [results/published/{folder_name}](results/published/{folder_name}/)).{note}")
    return "\n".join([caption, ""] + table(rows))


def render_readme(text: str, published: Path) -> str:
    """`text` with every marked table written again from `published` (the folders' parent)."""
    opened = OPENING.findall(text)
    closed = [match.group("name") for match in MARKER.finditer(text)]
    for name in opened:
        if name not in closed:
            raise PublishedError(f"table:{name}: no closing <!-- /table:{name} --> after it")
    return MARKER.sub(lambda match: f"<!-- table:{match.group('name')} -->\n"
                      f"{render_table(published, match.group('name'))}\n"
                      f"<!-- /table:{match.group('name')} -->", text)


def update_readme(readme: Path, published: Path | None = None, check: bool = False) -> bool:
    """Rewrites `readme`'s tables (or, with check, only compares); True when it was up to date."""
    published = published or readme.resolve().parent / "results" / "published"
    text = readme.read_text(encoding="utf-8")
    rendered = render_readme(text, published)
    if rendered != text and not check:
        readme.write_text(rendered, encoding="utf-8")
    return rendered == text


def describe(folder: Path, commands: list[str], note: str | None = None) -> Path:
    """Writes folder/environment.json: the commands, the machine and its measured GEMM rates."""
    if not commands:
        raise PublishedError("--describe needs at least one --command (how the rows were made)")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "environment.json"
    path.write_text(json.dumps({
        "commands": commands, "note": note, "cpu_slug": env.cpu_slug(),
        # The ceiling next to the figures, measured on this machine (flowers_tl.env).
        "matmul_gflops": {dtype: _gemm_gflops(dtype) for dtype in ("float32", "bfloat16")},
        "environment": env.describe_environment(),
    }, indent=2) + "\n")
    return path


def _gemm_gflops(dtype: str) -> float | None:
    from flowers_tl.env import measure_peak_gflops

    try:
        return measure_peak_gflops(dtype)
    except Exception:  # noqa: BLE001 - no TensorFlow kernel for the dtype here: no figure
        return None
