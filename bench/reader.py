"""Input-pipeline throughput, side by side in one run: C++ reader vs tf.data vs OpenCV vs DALI.

    python -m bench.reader --data_url /data/flower_photos --backend cxx,tfdata,dali \\
        --num_threads 1,2 --image_size 224 --seconds 10 --out results/reader.jsonl

Every backend produces the same thing: uint8 [B, S, S, 3] batches of random-resized-crop
(area 0.08-1, aspect 3/4-4/3) + random flip, with int32 labels (--eval: shorter side to
S*256/224 + central crop instead). Each (backend, num_threads) pair is checked, then timed:

  1. check:   pull one batch; shape, dtype, label range and "not a blank image" are verified;
  2. warm-up: --warmup_seconds of batches, not counted (thread start, file cache, autotuning);
  3. timed:   batches for --seconds (and at least --num_windows batches).

samples_per_sec is the images of the timed batches over the timed wall time; its spread comes
from splitting the timed batches into --num_windows consecutive windows (stderr of the window
rates), and its jitter is tf_cnn_benchmarks' (1.4826 * median absolute deviation of per-batch
rates). A backend that fails gives a row with `error` and the sweep goes on.

Rows are flat JSON objects (timm benchmark.py style) appended to --out, one per line, each with
its config and environment (bench.env). Without --data_url the built-in generated dataset
(flowers_tl.synth.default_dataset()) is used.

Without --out the rows go to stdout; the human-readable lines and the final table go to stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import math
import os
import sys
import time
from collections import deque
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from flowers_tl.env import describe_environment
from flowers_tl.results import append_row

BACKENDS = ("cxx", "tfdata", "opencv", "dali")
Batch = tuple[np.ndarray, np.ndarray]
Files = Sequence[str]
Labels = Sequence[int]
# tf_cnn_benchmarks' jitter: median absolute deviation scaled to match a normal's std.
MAD_TO_STD = 1.4826


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
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)

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
# Backends: each is a generator of (uint8 images [B,S,S,3], int32 labels [B]) batches, endless,
# that frees its threads when closed.
# ---------------------------------------------------------------------------------------------


def cxx_batches(config: ReaderBenchConfig, files: Files, labels: Labels) -> Iterator[Batch]:
    from flowers_tl.reader import Reader

    with Reader(
        files,
        labels,
        batch_size=config.batch_size,
        image_size=config.image_size,
        training=config.training,
        num_threads=config.num_threads,
        seed=config.seed,
    ) as reader:
        yield from reader


def tfdata_batches(config: ReaderBenchConfig, files: Files, labels: Labels) -> Iterator[Batch]:
    from flowers_tl.tfdata import make_dataset

    dataset = make_dataset(
        files,
        labels,
        batch_size=config.batch_size,
        image_size=config.image_size,
        training=config.training,
        num_threads=config.num_threads,
        seed=config.seed,
        area_range=config.area_range,
        aspect_range=config.aspect_range,
        drop_remainder=True,
    )
    yield from dataset.as_numpy_iterator()


def opencv_batches(config: ReaderBenchConfig, files: Files, labels: Labels) -> Iterator[Batch]:
    """What a careful person writes in an afternoon: N Python threads around OpenCV calls.

    cv2.imdecode / resize / flip release the GIL, so N worker threads decode N images at once;
    the calling thread only stacks finished images into batches (like tf.data's batch op).
    """
    import cv2

    # OpenCV's own parallel_for would otherwise add threads of its own inside resize.
    previous_cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    # Decode straight to RGB when this OpenCV can (4.10+), rather than BGR + cvtColor; ignore
    # EXIF orientation, as tf.data does, so all backends do the same work.
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    read_flags = (cv2.IMREAD_COLOR if rgb_flag is None else rgb_flag) | cv2.IMREAD_IGNORE_ORIENTATION
    size = config.image_size

    def load(stream_index: int, file_index: int) -> np.ndarray:
        # Seeded per stream position, so the crops do not depend on thread timing.
        rng = np.random.default_rng([config.seed, stream_index])
        with open(files[file_index], "rb") as handle:
            encoded = np.frombuffer(handle.read(), np.uint8)
        image = cv2.imdecode(encoded, read_flags)
        if image is None:
            raise ValueError(f"{files[file_index]}: OpenCV cannot decode this file")
        if rgb_flag is None:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if config.training:
            top, left, height, width = random_crop_window(
                image.shape[0], image.shape[1], rng, config.area_range, config.aspect_range
            )
            image = cv2.resize(
                image[top : top + height, left : left + width], (size, size),
                interpolation=cv2.INTER_LINEAR,
            )
            if rng.random() < 0.5:
                image = cv2.flip(image, 1)
        else:
            image = resize_and_centre_crop(image, size, cv2)
        return image

    def file_order() -> Iterator[int]:
        epoch = 0
        while True:
            order = np.arange(len(files))
            if config.training:
                np.random.default_rng([config.seed, epoch]).shuffle(order)
            yield from order.tolist()
            epoch += 1

    executor = concurrent.futures.ThreadPoolExecutor(config.num_threads, "opencv_reader")
    try:
        order = file_order()
        # Two batches in flight keeps every worker busy while the caller stacks the last one.
        pending: deque[tuple[concurrent.futures.Future[np.ndarray], int]] = deque()
        stream_index = 0
        while True:
            while len(pending) < 2 * config.batch_size:
                file_index = next(order)
                pending.append((executor.submit(load, stream_index, file_index), file_index))
                stream_index += 1
            chosen = [pending.popleft() for _ in range(config.batch_size)]
            images = np.stack([future.result() for future, _ in chosen])
            batch_labels = np.array([labels[file_index] for _, file_index in chosen], np.int32)
            yield images, batch_labels
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        cv2.setNumThreads(previous_cv2_threads)


def random_crop_window(
    height: int,
    width: int,
    rng: np.random.Generator,
    area_range: tuple[float, float],
    aspect_range: tuple[float, float],
    max_attempts: int = 10,
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of a random-resized-crop; the whole image after
    max_attempts misses, as tf.image.sample_distorted_bounding_box does."""
    log_low, log_high = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(max_attempts):
        area = height * width * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(log_low, log_high))
        crop_width = int(round(math.sqrt(area * aspect)))
        crop_height = int(round(math.sqrt(area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width
    return 0, 0, height, width


def resize_and_centre_crop(image: np.ndarray, size: int, cv2: Any) -> np.ndarray:
    shorter_target = round(size * 256 / 224)
    height, width = image.shape[:2]
    scale = shorter_target / min(height, width)
    new_height = max(round(height * scale), shorter_target)
    new_width = max(round(width * scale), shorter_target)
    image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def dali_batches(config: ReaderBenchConfig, files: Files, labels: Labels) -> Iterator[Batch]:
    from nvidia.dali import fn, pipeline_def, types

    size = config.image_size

    @pipeline_def
    def pipeline():
        encoded, label = fn.readers.file(
            files=list(files), labels=list(labels), random_shuffle=config.training, name="reader"
        )
        if config.training:
            images = fn.decoders.image_random_crop(
                encoded,
                device="cpu",
                output_type=types.RGB,
                random_area=list(config.area_range),
                random_aspect_ratio=list(config.aspect_range),
                num_attempts=10,
            )
            # DALI's default resize: antialiased, like our reader (tf.data and OpenCV use plain
            # 2-tap bilinear). antialias=False measured no faster here (927 vs 966 img/s, 2
            # threads, separate runs): DALI's time goes to decoding.
            images = fn.resize(images, resize_x=size, resize_y=size)
            images = fn.crop_mirror_normalize(
                images, dtype=types.UINT8, output_layout="HWC", mirror=fn.random.coin_flip()
            )
        else:
            images = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
            images = fn.resize(images, resize_shorter=round(size * 256 / 224))
            images = fn.crop_mirror_normalize(
                images, crop=(size, size), dtype=types.UINT8, output_layout="HWC"
            )
        return images, label

    # device_id=None: a CPU-only pipeline, no CUDA needed.
    dali_pipeline = pipeline(
        batch_size=config.batch_size,
        num_threads=config.num_threads,
        device_id=None,
        seed=config.seed,
    )
    dali_pipeline.build()
    try:
        while True:
            images, batch_labels = dali_pipeline.run()
            yield images.as_array(), batch_labels.as_array().reshape(-1).astype(np.int32)
    finally:
        del dali_pipeline


BACKEND_FUNCTIONS: dict[str, Callable[..., Iterator[Batch]]] = {
    "cxx": cxx_batches,
    "tfdata": tfdata_batches,
    "opencv": opencv_batches,
    "dali": dali_batches,
}


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
    timed_start = time.perf_counter()
    deadline = timed_start + config.seconds
    while True:
        images, _ = next(batches)
        now = time.perf_counter()
        batch_end_times.append(now)
        batch_sizes.append(len(images))
        if now >= deadline and len(batch_end_times) >= config.num_windows:
            break

    elapsed = batch_end_times[-1] - timed_start
    num_images = int(sum(batch_sizes))
    batch_seconds = np.diff([timed_start] + batch_end_times)
    batch_rates = np.array(batch_sizes) / np.maximum(batch_seconds, 1e-9)
    # Windows of consecutive whole batches: exact image counts, no batch split across windows.
    window_rates = []
    for window in np.array_split(np.arange(len(batch_end_times)), config.num_windows):
        window_start = timed_start if window[0] == 0 else batch_end_times[window[0] - 1]
        window_images = sum(batch_sizes[index] for index in window)
        window_rates.append(window_images / (batch_end_times[window[-1]] - window_start))
    window_rates = np.array(window_rates)

    samples_per_sec = num_images / elapsed
    return {
        "samples_per_sec": samples_per_sec,
        "samples_per_sec_stderr": float(window_rates.std(ddof=1) / math.sqrt(len(window_rates))),
        "samples_per_sec_window_min": float(window_rates.min()),
        "samples_per_sec_window_max": float(window_rates.max()),
        "samples_per_sec_jitter": float(
            MAD_TO_STD * np.median(np.abs(batch_rates - np.median(batch_rates)))
        ),
        "samples_per_sec_per_thread": samples_per_sec / config.num_threads,
        "batch_time_ms_mean": float(batch_seconds.mean() * 1e3),
        "batch_time_ms_p95": float(np.percentile(batch_seconds, 95) * 1e3),
        "num_images": num_images,
        "num_batches": len(batch_end_times),
        "timed_seconds": elapsed,
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
    try:
        batches = BACKEND_FUNCTIONS[config.backend](config, files, labels)
        row.update(time_batches(batches, config, num_classes))
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


def _list_of(
    item_type: Callable[[str], Any], choices: Sequence[Any] | None = None
) -> Callable[[str], list[Any]]:
    """argparse type for 'a,b' (and, with action='append', for repeated flags)."""

    def parse(text: str) -> list[Any]:
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                value = item_type(part)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{part!r} is not a valid {item_type.__name__}")
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(
                    f"invalid choice: {part!r} (choose from {', '.join(map(str, choices))})"
                )
            values.append(value)
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reader", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data_url", default=None,
                        help="class-per-folder JPEG tree (default: the built-in generated set)")
    parser.add_argument("--backend", type=_list_of(str, BACKENDS), action="append", required=True,
                        help=f"one or more of {','.join(BACKENDS)}; comma-separated or repeated")
    parser.add_argument("--num_threads", type=_list_of(int), action="append", required=True,
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="append JSON rows to this file (default: rows to stdout)")
    args = parser.parse_args(argv)
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


def format_table(rows: list[dict[str, Any]]) -> str:
    rates = {(row["backend"], row["num_threads"]): row.get("samples_per_sec") for row in rows}

    def ratio(row: dict[str, Any], reference: str) -> str:
        base = rates.get((reference, row["num_threads"]))
        return f"{row['samples_per_sec'] / base:.2f}x" if base and "error" not in row else "-"

    lines = [
        f"{'backend':<8} {'threads':>7} {'img/s':>9} {'± stderr':>9} {'jitter':>8} "
        f"{'vs tfdata':>9} {'vs dali':>8}"
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['backend']:<8} {row['num_threads']:>7}  error: {row['error'][:100]}")
            continue
        lines.append(
            f"{row['backend']:<8} {row['num_threads']:>7} {row['samples_per_sec']:>9.1f} "
            f"{row['samples_per_sec_stderr']:>9.1f} {row['samples_per_sec_jitter']:>8.1f} "
            f"{ratio(row, 'tfdata'):>9} {ratio(row, 'dali'):>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
    print(f"{len(files)} files, {num_classes} classes; {environment['cpu_model']}, "
          f"{environment['cpu_count_affinity']} usable cores", file=sys.stderr)
    rows = []
    for config in configs:
        row = run_one(config, files, labels, num_classes, environment)
        rows.append(row)
        if "error" in row:
            print(f"{config.backend} x{config.num_threads}: error: {row['error']}", file=sys.stderr)
        else:
            print(f"{config.backend} x{config.num_threads}: {row['samples_per_sec']:.1f} "
                  f"± {row['samples_per_sec_stderr']:.1f} img/s ({row['num_images']} images)",
                  file=sys.stderr)
        append_row(row, args.out)
    print(format_table(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
