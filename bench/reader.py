"""Input-pipeline throughput, side by side in one run: C++ reader vs tf.data vs OpenCV vs DALI,
streaming and from a decoded-image cache (cxx-cache vs tf.data's own .cache(), tfdata-cache).

    python -m bench.reader --data_url /data/flower_photos --backend cxx,tfdata,dali \\
        --num_threads 1,2 --image_size 224 --seconds 10 --out results/reader.jsonl

Every backend (bench.reader_backends) produces the same thing: uint8 [B, S, S, 3] batches of
random-resized-crop + random flip with flowers_tl.geometry's crop ranges, and int32 labels
(--eval: shorter side to geometry.eval_resize_size(S) + central crop instead). Each
(backend, num_threads) pair is checked, then timed:

  1. check:   pull one batch; shape, dtype, label range and "not a blank image" are verified;
  2. warm-up: --warmup_seconds of batches, not counted (thread start, file cache, autotuning);
  3. timed:   batches for --seconds (and at least --num_windows batches).

With --rounds N every pair is measured N times, interleaved (even rounds forward, odd ones
backward), one row per measurement, and the tables pool them (pool_rounds: stderr and interval
across rounds). samples_per_sec is the images of the timed batches over the timed wall time; its spread (stderr
and 95% interval, flowers_tl.results.throughput_stats) comes from splitting the timed batches
into --num_windows consecutive windows, because a prefetching pipeline hands out queued batches
in bursts and single batches are not independent; its jitter is tf_cnn_benchmarks' (1.4826 x the
median absolute deviation of the per-batch rates). A backend that fails gives a row with `error`
and the run goes on. Each row also carries the process CPU time over the timed window
(cpu_cores_busy, cpu_ms_per_image, samples_per_cpu_second = img/s per busy core) and its
context switches per image (voluntary: blocking wake-ups; involuntary: preemptions), from which
the run ends with bench.feeding's table of cores needed to feed common GPUs. The cache backends fill their cache before their first batch, so their
timed rate is the cached one; the fill's time is in the row (cache_fill_seconds).

Rows are flat JSON objects (timm benchmark.py style) appended to --out, one per line, each with
its config and environment (flowers_tl.env). Without --data_url the built-in generated dataset
(flowers_tl.synth.default_dataset()) is used. Measured figures live with their rows under
results/published/ (python -m bench.report --readme README.md writes the README's tables).

Without --out the rows go to stdout; the human-readable lines and the final table go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from bench.feeding import feeding_table
from bench.reader_backends import BACKEND_FUNCTIONS
from flowers_tl.env import cpu_label, describe_environment
from flowers_tl.geometry import TRAIN_AREA_RANGE, TRAIN_ASPECT_RANGE
from flowers_tl.results import append_row, parse_list, throughput_stats

BACKENDS = ("cxx", "cxx-cache", "tfdata", "tfdata-cache", "opencv", "dali")
Batch = tuple[np.ndarray, np.ndarray]
Files = Sequence[str]
Labels = Sequence[int]


@dataclasses.dataclass(frozen=True)
class ReaderBenchConfig:
    """One (backend, num_threads) measurement; saved whole in its result row."""

    backend: str
    num_threads: int
    data_url: str | None = None  # None: the built-in generated dataset
    batch_size: int = 64
    image_size: int = 224
    training: bool = True
    seconds: float = 10.0
    warmup_seconds: float = 2.0
    num_windows: int = 5
    seed: int = 0
    area_range: tuple[float, float] = TRAIN_AREA_RANGE
    aspect_range: tuple[float, float] = TRAIN_ASPECT_RANGE

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.num_threads < 1 or self.batch_size < 1 or self.image_size < 1:
            raise ValueError("num_threads, batch_size and image_size must be >= 1")
        if self.seconds <= 0 or self.warmup_seconds < 0:
            raise ValueError("seconds must be > 0 and warmup_seconds >= 0")
        if self.num_windows < 2:
            raise ValueError("num_windows must be >= 2 to give a spread")
        if not 0 < self.area_range[0] <= self.area_range[1] <= 1:
            raise ValueError(f"area_range {self.area_range} must satisfy 0 < low <= high <= 1")
        if not 0 < self.aspect_range[0] <= self.aspect_range[1]:
            raise ValueError(f"aspect_range {self.aspect_range} must satisfy 0 < low <= high")


# ---------------------------------------------------------------------------------------------
# Check, then time
# ---------------------------------------------------------------------------------------------


def check_batch(
    images: np.ndarray, labels: np.ndarray, config: ReaderBenchConfig, num_classes: int
) -> None:
    """Raises ValueError unless the batch is what every backend promises."""
    expected = (config.batch_size, config.image_size, config.image_size, 3)
    if images.shape != expected or images.dtype != np.uint8:
        raise ValueError(
            f"images are {images.dtype}{list(images.shape)}, expected uint8{list(expected)}"
        )
    if labels.shape != (config.batch_size,) or labels.dtype != np.int32:
        raise ValueError(
            f"labels are {labels.dtype}{list(labels.shape)}, expected int32[{config.batch_size}]"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}")
    # A blank or constant image means a decode silently failed (or nothing was written).
    flat = images.reshape(config.batch_size, -1)
    blank = np.flatnonzero(flat.max(axis=1) == flat.min(axis=1))
    if blank.size:
        raise ValueError(
            f"{blank.size} of {config.batch_size} images are constant (first: #{blank[0]})"
        )


def cpu_figures(cpu_seconds: float, timed_seconds: float, num_images: int) -> dict[str, Any]:
    """What process CPU time over a timed window says per image (bench.feeding reads these)."""
    return {
        "cpu_seconds": cpu_seconds,
        "cpu_cores_busy": cpu_seconds / timed_seconds,
        "cpu_ms_per_image": 1e3 * cpu_seconds / num_images,
        "samples_per_cpu_second": num_images / cpu_seconds if cpu_seconds > 0 else None,
    }


def context_switches() -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw, usage.ru_nivcsw


def time_batches(
    batches: Iterator[Batch], config: ReaderBenchConfig, num_classes: int
) -> dict[str, Any]:
    start = time.perf_counter()
    images, labels = next(batches)
    first_batch_seconds = time.perf_counter() - start
    check_batch(images, labels, config, num_classes)

    warmup_end = time.perf_counter() + config.warmup_seconds
    while time.perf_counter() < warmup_end:
        next(batches)

    batch_end_times = []
    batch_sizes = []
    # Process CPU time (every thread: workers, hand-over, consumer) over the same window gives
    # the cost per image that decides how many cores feed an accelerator (bench.feeding).
    cpu_start = time.process_time()
    switches_start = context_switches()
    timed_start = time.perf_counter()
    deadline = timed_start + config.seconds
    while True:
        images, _ = next(batches)
        now = time.perf_counter()
        batch_end_times.append(now)
        batch_sizes.append(len(images))
        if now >= deadline and len(batch_end_times) >= config.num_windows:
            break
    cpu_seconds = time.process_time() - cpu_start
    voluntary, involuntary = (end - start for end, start in zip(context_switches(), switches_start))

    batch_seconds = np.maximum(np.diff([timed_start] + batch_end_times), 1e-9)
    # Windows of consecutive whole batches: exact image counts, no batch split across windows.
    windows = np.array_split(np.arange(len(batch_end_times)), config.num_windows)
    window_seconds = [float(batch_seconds[window].sum()) for window in windows]
    window_images = [sum(batch_sizes[index] for index in window) for window in windows]
    stats = throughput_stats(window_seconds, window_images)
    window_rates = np.array(window_images) / np.array(window_seconds)
    num_images = int(sum(batch_sizes))
    # Reader rows say samples_per_sec (timm's name for a pipeline without a model).
    return {
        "samples_per_sec": stats["images_per_sec"],
        "samples_per_sec_stderr": stats["images_per_sec_stderr"],
        "samples_per_sec_ci95": stats["images_per_sec_ci95"],
        "samples_per_sec_window_min": float(window_rates.min()),
        "samples_per_sec_window_max": float(window_rates.max()),
        "samples_per_sec_jitter": throughput_stats(batch_seconds, batch_sizes)[
            "images_per_sec_jitter"],
        "samples_per_sec_per_thread": stats["images_per_sec"] / config.num_threads,
        **cpu_figures(cpu_seconds, batch_end_times[-1] - timed_start, num_images),
        # Wake-ups: a thread that blocks (a worker waiting for work, the consumer for a batch)
        # switches voluntarily; one the scheduler preempts, involuntarily. Per image, every thread.
        "voluntary_switches_per_image": voluntary / num_images,
        "involuntary_switches_per_image": involuntary / num_images,
        "batch_time_ms_mean": float(batch_seconds.mean() * 1e3),
        "batch_time_ms_p95": float(np.percentile(batch_seconds, 95) * 1e3),
        "num_images": num_images,
        "num_batches": len(batch_end_times),
        "timed_windows": config.num_windows,
        "timed_seconds": batch_end_times[-1] - timed_start,
        "first_batch_seconds": first_batch_seconds,
    }


def run_one(
    config: ReaderBenchConfig,
    files: Files,
    labels: Labels,
    num_classes: int,
    environment: dict[str, Any],
) -> dict[str, Any]:
    """One result row; failures are caught into row['error'] so a sweep never stops."""
    row: dict[str, Any] = {
        "backend": config.backend,
        "num_threads": config.num_threads,
        "batch_size": config.batch_size,
        "image_size": config.image_size,
        "training": config.training,
        "num_files": len(files),
    }
    batches = None
    info: dict[str, Any] = {}  # what a backend reports about itself (a cache's fill time)
    try:
        batches = BACKEND_FUNCTIONS[config.backend](config, files, labels, info)
        row.update(time_batches(batches, config, num_classes))
        row.update(info)
    except Exception as error:  # noqa: BLE001 - a failed backend becomes a row, not a crash
        row["error"] = f"{type(error).__name__}: {error}"
    finally:
        if batches is not None:
            try:
                batches.close()  # stops the backend's threads before the next one starts
            except Exception as error:  # noqa: BLE001
                row.setdefault("error", f"while closing: {type(error).__name__}: {error}")
    row["config"] = dataclasses.asdict(config)
    row["environment"] = environment
    return row


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reader", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data_url", default=None,
                        help="class-per-folder JPEG tree (default: the built-in generated set)")
    parser.add_argument("--backend", type=parse_list(str, BACKENDS), action="append", required=True,
                        help=f"one or more of {','.join(BACKENDS)}; comma-separated or repeated")
    parser.add_argument("--num_threads", type=parse_list(int), action="append", required=True,
                        help="one or more thread counts, e.g. 1,2")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="timed seconds per (backend, threads)")
    parser.add_argument("--warmup_seconds", type=float, default=2.0,
                        help="untimed seconds before timing")
    parser.add_argument("--num_windows", type=int, default=5,
                        help="timed windows the spread is computed from")
    parser.add_argument("--eval", action="store_true",
                        help="eval transform: resize shorter side + central crop")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every (backend, threads) this many times, interleaved (round "
                             "2 in reverse order), so machine drift hits every backend alike; the "
                             "tables pool the rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="append JSON rows to this file (default: rows to stdout)")
    parser.add_argument("--plot", default=None,
                        help="also draw the thread scaling of the run's rows into this PNG")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be >= 1")
    if args.plot is not None:  # checked before minutes of measuring, not after
        folder = Path(args.plot).resolve().parent
        if Path(args.plot).suffix.lower() != ".png":
            parser.error(f"--plot {args.plot}: must end in .png")
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            parser.error(f"--plot {args.plot}: {folder} is not a writable folder")
    # Flatten repeated flags, keep first occurrence order, drop duplicates.
    args.backend = list(dict.fromkeys(value for values in args.backend for value in values))
    args.num_threads = list(dict.fromkeys(value for values in args.num_threads for value in values))
    return args


def load_dataset(data_url: str | None) -> tuple[list[str], list[int], int]:
    from flowers_tl import data

    if data_url is None:
        from flowers_tl import synth

        data_url = synth.default_dataset()
    listing = data.list_folder(data_url)
    return list(listing.files), list(listing.labels), len(listing.class_names)


def pool_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (backend, num_threads), in first-seen order: rows of several rounds pooled.

    The pooled rate is all timed images over all timed seconds; its stderr and 95% interval come
    from the rounds' rates (the spread that machine drift between rounds adds, which windows
    within one round do not see); CPU figures are totals over the rounds. A group with an error
    in any round is that error. Rows of a single round are returned as they are."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["backend"], row["num_threads"]), []).append(row)
    pooled = []
    for group in groups.values():
        if len(group) == 1:
            pooled.append(group[0])
            continue
        failed = next((row for row in group if "error" in row), None)
        if failed is not None:
            pooled.append({**failed, "rounds": len(group)})
            continue
        stats = throughput_stats([row["timed_seconds"] for row in group],
                                 [row["num_images"] for row in group])
        images = sum(row["num_images"] for row in group)
        cpu_seconds = sum(row["cpu_seconds"] for row in group)
        timed_seconds = sum(row["timed_seconds"] for row in group)
        merged = {**group[0]}
        merged.pop("round", None)
        merged.update(
            rounds=len(group),
            samples_per_sec=stats["images_per_sec"],
            samples_per_sec_stderr=stats["images_per_sec_stderr"],
            samples_per_sec_ci95=stats["images_per_sec_ci95"],
            samples_per_sec_rounds=[row["samples_per_sec"] for row in group],
            samples_per_sec_window_min=min(row["samples_per_sec_window_min"] for row in group),
            samples_per_sec_window_max=max(row["samples_per_sec_window_max"] for row in group),
            samples_per_sec_jitter=float(np.mean([row["samples_per_sec_jitter"] for row in group])),
            samples_per_sec_per_thread=stats["images_per_sec"] / group[0]["num_threads"],
            num_images=images,
            num_batches=sum(row["num_batches"] for row in group),
            timed_seconds=timed_seconds,
            **cpu_figures(cpu_seconds, timed_seconds, images),
        )
        for name in ("voluntary_switches_per_image", "involuntary_switches_per_image"):
            if all(name in row for row in group):
                merged[name] = sum(row[name] * row["num_images"] for row in group) / images
        if all("cache_fill_seconds" in row for row in group):
            merged["cache_fill_seconds"] = float(np.mean([row["cache_fill_seconds"] for row in group]))
        pooled.append(merged)
    return pooled


def format_table(rows: list[dict[str, Any]]) -> str:
    rates = {(row["backend"], row["num_threads"]): row.get("samples_per_sec") for row in rows}

    def ratio(row: dict[str, Any], reference: str) -> str:
        base = rates.get((reference, row["num_threads"]))
        return f"{row['samples_per_sec'] / base:.2f}x" if base and "error" not in row else "-"

    lines = [
        f"{'backend':<12} {'threads':>7} {'img/s':>9} {'± stderr':>9} {'jitter':>8} "
        f"{'vs tfdata':>9} {'vs tfdata-cache':>15} {'vs dali':>8} {'fill s':>7} "
        f"{'cores busy':>10} {'img/s/core':>10} {'switches/img':>12}"
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['backend']:<12} {row['num_threads']:>7}  error: {row['error'][:100]}")
            continue
        fill = row.get("cache_fill_seconds")
        lines.append(
            f"{row['backend']:<12} {row['num_threads']:>7} {row['samples_per_sec']:>9.1f} "
            f"{row['samples_per_sec_stderr']:>9.1f} {row['samples_per_sec_jitter']:>8.1f} "
            f"{ratio(row, 'tfdata'):>9} {ratio(row, 'tfdata-cache'):>15} {ratio(row, 'dali'):>8} "
            f"{'-' if fill is None else f'{fill:.1f}':>7} "
            f"{row['cpu_cores_busy']:>10.2f} {row['samples_per_cpu_second'] or 0:>10.0f} "
            f"{row.get('voluntary_switches_per_image', 0) + row.get('involuntary_switches_per_image', 0):>12.2f}"
        )
    return "\n".join(lines)


def report_row(row: dict[str, Any], config: ReaderBenchConfig, command: str,
               out: str | None) -> None:
    if "error" in row:
        print(f"{config.backend} x{config.num_threads}: error: {row['error']}", file=sys.stderr)
    else:
        print(f"{config.backend} x{config.num_threads}: {row['samples_per_sec']:.1f} "
              f"± {row['samples_per_sec_stderr']:.1f} img/s ({row['num_images']} images)",
              file=sys.stderr)
    row["command"] = command  # what made the row, for the tables bench.report writes
    append_row(row, out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "bench.reader", *(sys.argv[1:] if argv is None else argv)])
    configs = [
        ReaderBenchConfig(
            backend=backend,
            num_threads=num_threads,
            data_url=args.data_url,
            batch_size=args.batch_size,
            image_size=args.image_size,
            training=not args.eval,
            seconds=args.seconds,
            warmup_seconds=args.warmup_seconds,
            num_windows=args.num_windows,
            seed=args.seed,
        )
        for num_threads in args.num_threads
        for backend in args.backend
    ]  # every config is validated here, before any heavy work
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up banner out of the table

    files, labels, num_classes = load_dataset(args.data_url)
    environment = describe_environment()
    print(f"{len(files)} files, {num_classes} classes; {cpu_label(environment)}, "
          f"{environment['cpu_count_affinity']} usable cores", file=sys.stderr)
    rows = []
    for round_index in range(args.rounds):
        for config in configs if round_index % 2 == 0 else configs[::-1]:
            row = run_one(config, files, labels, num_classes, environment)
            row["round"] = round_index
            rows.append(row)
            report_row(row, config, command, args.out)
    rows = pool_rounds(rows)
    print(format_table(rows), file=sys.stderr)
    print("\nCores to feed GPU training (bench.feeding):\n" + "\n".join(feeding_table(rows)),
          file=sys.stderr)
    if args.plot:
        from bench.report import plot_reader_threads
        plot_reader_threads(rows, Path(args.plot))
        print(f"thread scaling plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
