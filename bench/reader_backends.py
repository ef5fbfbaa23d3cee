"""bench.reader's backends: each turns a ReaderBenchConfig and a file list into an endless
generator of (uint8 images [B, S, S, 3], int32 labels [B]) batches that frees its threads when
closed. All do the same work (flowers_tl.geometry's random-resized-crop + flip, or the eval
resize + central crop), so their images/sec compare pipelines, not recipes.

    cxx           flowers_tl.reader.Reader, the C++ decode-and-augment reader
    cxx-cache     the same with cache="memory": every file decoded once, crops from pixels
    tfdata        flowers_tl.tfdata.make_dataset, the tf.data baseline
    tfdata-cache  the same over tf.data's own .cache() of decoded images (the cache's anchor)
    opencv        N Python threads around OpenCV calls (what a careful person writes in an
                  afternoon)
    dali          NVIDIA DALI's CPU pipeline, where it is installed

The two cache backends keep the same pixels (shorter side at geometry.cache_short_side) and
fill their cache before their first batch (tf.data's shuffle buffer holds the whole set, so its
first batch waits for every decode too): bench.reader's timing after the first batch and the
warm-up is the cached rate, fill excluded. Each reports its fill time in `info`
("cache_fill_seconds": the reader's own count; for tf.data the time to the first batch).

Each imports its library inside the function, so a missing one fails only its own row.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from flowers_tl.geometry import TRAIN_CROP_MAX_ATTEMPTS, cache_short_side, eval_resize_size

if TYPE_CHECKING:
    from bench.reader import ReaderBenchConfig

Batch = tuple[np.ndarray, np.ndarray]
Files = Sequence[str]
Labels = Sequence[int]


def cxx_batches(config: ReaderBenchConfig, files: Files, labels: Labels, info: dict,
                cache: str | None = None) -> Iterator[Batch]:
    from flowers_tl.reader import Reader

    with Reader(
        files,
        labels,
        batch_size=config.batch_size,
        image_size=config.image_size,
        training=config.training,
        num_threads=config.num_threads,
        seed=config.seed,
        cache=cache,
    ) as reader:
        first = next(reader)
        if cache is not None:
            summary = reader.summary()
            if summary.cache != "memory":
                raise RuntimeError(f"the cache is not in use: {summary.cache_message}")
            info.update(cache_fill_seconds=summary.cache_fill_seconds,
                        cache_bytes=summary.cache_bytes)
        yield first
        yield from reader


def cxx_cache_batches(config: ReaderBenchConfig, files: Files, labels: Labels,
                      info: dict) -> Iterator[Batch]:
    yield from cxx_batches(config, files, labels, info, cache="memory")


def tfdata_batches(config: ReaderBenchConfig, files: Files, labels: Labels, info: dict,
                   cached: bool = False) -> Iterator[Batch]:
    from flowers_tl.tfdata import make_dataset

    start = time.perf_counter()
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
        cache_short_side=cache_short_side(config.image_size) if cached else None,
    )
    batches = dataset.as_numpy_iterator()
    first = next(batches)
    if cached:
        info["cache_fill_seconds"] = time.perf_counter() - start
    yield first
    yield from batches


def tfdata_cache_batches(config: ReaderBenchConfig, files: Files, labels: Labels,
                         info: dict) -> Iterator[Batch]:
    yield from tfdata_batches(config, files, labels, info, cached=True)


def opencv_batches(config: ReaderBenchConfig, files: Files, labels: Labels,
                   info: dict) -> Iterator[Batch]:
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
    max_attempts: int = TRAIN_CROP_MAX_ATTEMPTS,
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
    shorter_target = eval_resize_size(size)
    height, width = image.shape[:2]
    scale = shorter_target / min(height, width)
    new_height = max(round(height * scale), shorter_target)
    new_width = max(round(width * scale), shorter_target)
    image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def dali_batches(config: ReaderBenchConfig, files: Files, labels: Labels,
                 info: dict) -> Iterator[Batch]:
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
            # 2-tap bilinear). Kept on: DALI's time goes to decoding, and antialias=False was no
            # faster when tried (rerun bench.reader --backend dali with it to check a machine).
            images = fn.resize(images, resize_x=size, resize_y=size)
            images = fn.crop_mirror_normalize(
                images, dtype=types.UINT8, output_layout="HWC", mirror=fn.random.coin_flip()
            )
        else:
            images = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
            images = fn.resize(images, resize_shorter=eval_resize_size(size))
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
    "cxx-cache": cxx_cache_batches,
    "tfdata": tfdata_batches,
    "tfdata-cache": tfdata_cache_batches,
    "opencv": opencv_batches,
    "dali": dali_batches,
}
