"""Result rows and the throughput statistics every benchmark reports, in one place.

Rows are flat JSON objects, one a line (timm's benchmark.py style), each carrying its config and
its environment (flowers_tl.env.describe_environment()). Throughput is tf_cnn_benchmarks'
reading without its shape: warm-up excluded, images/sec over the timed steps with its spread
(standard error and 95% interval from the per-step rates) and its jitter (1.4826 x the median
absolute deviation of the per-step rates, a standard deviation that one slow step cannot move).

Per-step rows: the contract between the trainer (writes them to metrics.jsonl) and the sweep
(reads them); nothing is reconstructed from cumulative rates. One JSON object per step:

    {"kind": "step",               always "step" (metrics.jsonl also holds "epoch" rows)
     "step": int,                  1-based global step
     "step_seconds": float,        wall time of this step, data wait included, synchronised
     "images": int,                images this step consumed, all replicas together
     "data_wait_seconds": float,   part of step_seconds spent waiting for the input pipeline
                                   (null where unknown: the Keras-fit anchor)
     "warmup": bool,               true for the steps excluded from throughput (the trainer's
                                   first --warmup_steps, and again after each new image size)
     "image_size": int,            optional (the trainer writes it): the batch's side in px
     "loss": float, "accuracy": float, "learning_rate": float,
     "time": float}                seconds since the process started, when the step ended

throughput_from_step_rows(rows) turns them into the figures below; check_step_row names the
first field a row lacks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# tf_cnn_benchmarks' jitter: the median absolute deviation scaled to a normal's standard deviation.
MAD_TO_STD = 1.4826

STEP_ROW_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kind": str, "step": int, "step_seconds": (int, float), "images": int,
    "data_wait_seconds": (int, float, type(None)), "warmup": bool, "loss": (int, float),
    "accuracy": (int, float), "learning_rate": (int, float), "time": (int, float),
}
OPTIONAL_STEP_ROW_FIELDS: dict[str, type] = {"image_size": int}

# Student's t 0.975 quantiles for 1..30 degrees of freedom; beyond, the Cornish-Fisher series
# below agrees with the exact quantile to 1e-7 (no scipy at run time).
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


# ------------------------------------------------------------------------------------ rows
def append_row(row: dict[str, Any], path: str | os.PathLike[str] | None) -> None:
    """Appends `row` as one JSON line to `path` (folders made as needed), or prints it."""
    line = json.dumps(row, default=str)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
    else:
        print(line, flush=True)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; [] when it does not exist.

    A last line that does not parse is skipped (a process killed mid-write leaves one); a bad
    line before the last is damage, not a kill, and raises ValueError naming file and line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON row ({error})") from None
    return rows


def check_step_row(row: dict[str, Any]) -> None:
    """Raises ValueError naming the first field of the per-step schema `row` lacks or mistypes."""
    for name, kind in STEP_ROW_FIELDS.items():
        value = row.get(name)
        # bool is an int in Python: only "warmup" may be one.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"step row {row.get('step', '?')}: field {name!r} is {value!r}, "
                             f"expected {getattr(kind, '__name__', kind)}")
    for name, kind in OPTIONAL_STEP_ROW_FIELDS.items():
        value = row.get(name)
        if name in row and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"step row {row.get('step', '?')}: field {name!r} is {value!r}, "
                             f"expected {kind.__name__}")


# ------------------------------------------------------------------------------ statistics
def t_quantile_975(degrees_of_freedom: int) -> float:
    """Student's t 0.975 quantile: a 95% two-sided interval is mean +- this x stderr."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees_of_freedom {degrees_of_freedom} must be >= 1")
    if degrees_of_freedom <= len(_T975):
        return _T975[degrees_of_freedom - 1]
    z, d = 1.959963984540054, float(degrees_of_freedom)
    return (z + (z**3 + z) / (4 * d) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * d**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * d**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * d**4))


def throughput_stats(step_seconds: Sequence[float], images: int | Sequence[int],
                     data_wait_seconds: Sequence[float | None] | None = None,
                     replicas: int = 1) -> dict[str, Any]:
    """Images/sec of timed steps (warm-up already left out), with spread, jitter and data wait.

    images_per_sec is all images over all seconds (a slow step weighs what it cost); the standard
    error, the 95% interval around images_per_sec (Student's t, n - 1 degrees of freedom) and the
    jitter come from the per-step rates images / seconds. `images` is one count for every step
    or one per step. With one step there is no spread: stderr and ci95 are None. data_wait_fraction
    is None unless every step's wait is known (a None or NaN wait makes it unknown)."""
    seconds = np.asarray(step_seconds, dtype=float)
    if seconds.ndim != 1 or len(seconds) == 0:
        raise ValueError("throughput_stats needs at least one timed step")
    if not np.all(np.isfinite(seconds) & (seconds > 0)):
        raise ValueError(f"step_seconds must be finite and > 0, got {seconds.tolist()}")
    counts = np.broadcast_to(np.asarray(images, dtype=float), seconds.shape) \
        if np.ndim(images) == 0 else np.asarray(images, dtype=float)
    if counts.shape != seconds.shape:
        raise ValueError(f"{len(counts)} image counts for {len(seconds)} steps")
    if replicas < 1:
        raise ValueError(f"replicas {replicas} must be >= 1")
    rates = counts / seconds
    total = float(counts.sum() / seconds.sum())
    stderr = float(rates.std(ddof=1) / math.sqrt(len(rates))) if len(rates) > 1 else None
    half_width = None if stderr is None else t_quantile_975(len(rates) - 1) * stderr
    return {
        "images_per_sec": total,
        "images_per_sec_per_device": total / replicas,
        "images_per_sec_stderr": stderr,
        "images_per_sec_ci95": None if half_width is None else [total - half_width,
                                                                total + half_width],
        "images_per_sec_jitter": float(MAD_TO_STD * np.median(np.abs(rates - np.median(rates)))),
        "step_time_sec": float(seconds.mean()),
        "step_time_sec_min": float(seconds.min()),
        "step_time_sec_max": float(seconds.max()),
        "data_wait_fraction": _wait_fraction(data_wait_seconds, seconds),
        "timed_steps": len(seconds),
    }


def throughput_from_step_rows(rows: Sequence[dict[str, Any]], replicas: int = 1
                              ) -> dict[str, Any]:
    """throughput_stats of the per-step rows (schema above) that are not warm-up."""
    timed = [row for row in rows if row.get("kind") == "step" and not row.get("warmup")]
    for row in timed:
        check_step_row(row)
    if not timed:
        raise ValueError("no timed step rows (all are warm-up, or none were written)")
    return throughput_stats([row["step_seconds"] for row in timed],
                            [row["images"] for row in timed],
                            [row["data_wait_seconds"] for row in timed], replicas)


def ci95(row: dict[str, Any], prefix: str = "images_per_sec") -> tuple[float, float] | None:
    """A row's 95% interval: its `<prefix>_ci95`, else rebuilt from its stderr and the count that
    came from (timed steps or windows; rows written before intervals were recorded), else None."""
    interval = row.get(f"{prefix}_ci95")
    if interval is not None:
        return float(interval[0]), float(interval[1])
    rate, stderr = row.get(prefix), row.get(f"{prefix}_stderr")
    steps = row.get("timed_steps") or row.get("timed_windows") or row.get("num_steps")
    if rate is None or stderr is None or not steps or steps < 2:
        return None
    half_width = t_quantile_975(int(steps) - 1) * stderr
    return rate - half_width, rate + half_width


def intervals_overlap(row_a: dict[str, Any], row_b: dict[str, Any],
                      prefix: str = "images_per_sec") -> bool:
    """Whether the two rows' 95% intervals overlap (False when either has none)."""
    a, b = ci95(row_a, prefix), ci95(row_b, prefix)
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def _wait_fraction(waits: Sequence[float | None] | None, seconds: np.ndarray) -> float | None:
    if waits is None:
        return None
    if len(waits) != len(seconds):
        raise ValueError(f"{len(waits)} data waits for {len(seconds)} steps")
    if any(wait is None for wait in waits):
        return None
    waits_array = np.asarray(waits, dtype=float)
    return float(waits_array.sum() / seconds.sum()) if np.isfinite(waits_array).all() else None


# ------------------------------------------------------------------------- command lines
def parse_list(item_type: Callable[[str], Any], choices: Sequence[Any] | None = None
               ) -> Callable[[str], list[Any]]:
    """argparse type for a benchmark axis, 'a,b' (and, with action='append', repeated flags)."""

    def parse(text: str) -> list[Any]:
        values = []
        for part in (part.strip() for part in text.split(",")):
            if not part:
                continue
            try:
                value = item_type(part)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{part!r} is not a valid {getattr(item_type, '__name__', 'value')}"
                ) from None
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(
                    f"invalid choice: {part!r} (choose from {', '.join(map(str, choices))})")
            values.append(value)
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values

    return parse
