"""The C++ decode-and-augment reader, seen from Python.

    from flowers_tl.data import list_folder
    from flowers_tl.reader import Reader

    dataset = list_folder("flower_photos")
    with Reader(dataset.files, dataset.labels, batch_size=64, image_size=224) as reader:
        for images, labels in reader:      # uint8 [64, 224, 224, 3], int32 [64]
            ...

Worker threads (default: every core this process may use) read each JPEG, pick a random-resized
crop (training) or the centre crop of the shorter-side-resized image (evaluation), decode only
that region at a reduced DCT scale, and resample it into a preallocated batch buffer that numpy
then wraps without a copy. Normalisation and casting are left to the model, on the device.
Same seed, same batches, whatever the thread count. Bad files are skipped and reported by
`summary()` unless `skip_bad_files=False`, which stops at the first one.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from flowers_tl import _reader

DecodeError = _reader.DecodeError

LAYOUTS = ("NHWC", "NCHW")


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroups affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ReaderConfig:
    """Everything that decides what a Reader produces; saved with every result that used it."""

    batch_size: int
    image_size: int = 224
    training: bool = True
    shuffle: bool | None = None  # None: shuffle when training
    num_threads: int | None = None  # None: available_cores()
    layout: str = "NHWC"
    seed: int = 0
    prefetch: int | None = None  # batches decoded ahead; None: enough to keep every thread busy
    shard_index: int = 0
    num_shards: int = 1
    drop_remainder: bool = False
    num_epochs: int | None = None  # None: repeat forever
    start_batch: int = 0  # resume: the stream starts at this batch (earlier ones not decoded)
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    random_flip: bool = True
    eval_resize_ratio: float = 256 / 224  # eval: shorter side to image_size * this, centre crop
    use_dct_scaling: bool = True
    # Allowed M of the DCT scale M/8. libjpeg-turbo has SIMD IDCTs for 1/8, 1/4, 1/2 and 1 only;
    # 3/8, 5/8, 6/8 and 7/8 run scalar code (for 4:2:0 chroma at up to 14x14) that costs more
    # than the smaller resize saves: 5.9M vs 7.7M instructions per flowers-like image (callgrind).
    dct_scales: tuple[int, ...] = (1, 2, 4, 8)
    fast_idct: bool = False  # libjpeg JDCT_IFAST (tf.image.decode_jpeg's default), not ISLOW
    fancy_upsampling: bool = True  # smooth chroma upsampling; False: merged upsampler, ~7% faster
    max_pixels: int = 100_000_000  # headers claiming more are refused before allocation
    skip_bad_files: bool = True

    def resolved(self) -> "ReaderConfig":
        """Fills the None defaults and checks every field, naming the bad one."""
        num_threads = self.num_threads if self.num_threads is not None else available_cores()
        prefetch = self.prefetch
        if prefetch is None:
            # Work is handed out image by image within a window of `prefetch` batches: the
            # window must hold more images than there are threads, or some threads idle.
            prefetch = max(2, -(-2 * num_threads // max(self.batch_size, 1)) + 1)
        config = dataclasses.replace(
            self,
            shuffle=self.training if self.shuffle is None else self.shuffle,
            num_threads=num_threads,
            prefetch=prefetch,
            area_range=tuple(float(v) for v in self.area_range),
            aspect_range=tuple(float(v) for v in self.aspect_range),
            dct_scales=tuple(sorted(set(int(v) for v in self.dct_scales))),
        )
        config._check()
        return config

    def _check(self) -> None:
        def need(condition: bool, field: str, rule: str) -> None:
            if not condition:
                raise ValueError(f"Reader: {field}={getattr(self, field)!r}: {rule}")

        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.image_size >= 1, "image_size", "must be >= 1")
        need(self.num_threads >= 1, "num_threads", "must be >= 1")
        need(self.prefetch >= 1, "prefetch", "must be >= 1")
        need(self.layout in LAYOUTS, "layout", f"must be one of {LAYOUTS}")
        need(self.num_shards >= 1, "num_shards", "must be >= 1")
        need(0 <= self.shard_index < self.num_shards, "shard_index", "must be in [0, num_shards)")
        need(self.num_epochs is None or self.num_epochs >= 0, "num_epochs", "must be >= 0 or None")
        need(self.start_batch >= 0, "start_batch", "must be >= 0")
        need(0.0 < self.area_range[0] <= self.area_range[1] <= 1.0, "area_range",
             "must satisfy 0 < min <= max <= 1")
        need(0.0 < self.aspect_range[0] <= self.aspect_range[1], "aspect_range",
             "must satisfy 0 < min <= max")
        need(self.eval_resize_ratio >= 1.0, "eval_resize_ratio", "must be >= 1")
        need(len(self.dct_scales) > 0 and all(1 <= m <= 8 for m in self.dct_scales),
             "dct_scales", "must be a non-empty subset of 1..8")
        need(self.max_pixels >= 1, "max_pixels", "must be >= 1")
        need(0 <= self.seed < 2**64, "seed", "must be in [0, 2**64)")


@dataclass(frozen=True)
class ReaderSummary:
    """What the reader did so far; `first_bad_files` holds (path, reason) pairs."""

    images_decoded: int
    failed_reads: int
    bad_files: int
    first_bad_files: tuple[tuple[str, str], ...]
    batches_delivered: int
    consumer_wait_seconds: float


def _scale_mask(scales: Sequence[int]) -> int:
    return sum(1 << (m - 1) for m in scales)


class Reader:
    """Iterator over (images, labels) batches: uint8 [B, H, W, 3] (or [B, 3, H, W] with
    layout="NCHW") and int32 [B]. An epoch's last batch is smaller unless drop_remainder.

    The arrays reference the C++ batch buffer (no copy); the buffer is recycled only once both
    arrays are gone, so holding on to a batch is safe. Any ReaderConfig field is a keyword.
    """

    def __init__(self, files: Sequence[str | os.PathLike], labels: Sequence[int], batch_size: int,
                 image_size: int = 224, training: bool = True, num_threads: int | None = None,
                 layout: str = "NHWC", seed: int = 0, **options):
        unknown = set(options) - {f.name for f in dataclasses.fields(ReaderConfig)}
        if unknown:
            raise TypeError(f"Reader: unknown option(s) {sorted(unknown)}")
        self.config = ReaderConfig(batch_size=batch_size, image_size=image_size, training=training,
                                   num_threads=num_threads, layout=layout, seed=seed,
                                   **options).resolved()
        paths = [os.fspath(f) for f in files]
        label_list = [int(v) for v in labels]
        if not paths:
            raise ValueError("Reader: files is empty")
        if len(paths) != len(label_list):
            raise ValueError(f"Reader: {len(paths)} files but {len(label_list)} labels")
        c = self.config
        self._reader = _reader.BatchReader(
            paths, label_list, c.batch_size, c.image_size, c.training, c.shuffle, c.num_threads,
            c.layout, c.seed, c.prefetch, c.shard_index, c.num_shards, c.drop_remainder,
            -1 if c.num_epochs is None else c.num_epochs, c.start_batch, c.area_range, c.aspect_range,
            c.random_flip, c.eval_resize_ratio, c.use_dct_scaling, _scale_mask(c.dct_scales),
            c.max_pixels, c.fast_idct, c.fancy_upsampling, c.skip_bad_files)
        self.epoch = 0  # epoch and step of the last batch returned
        self.step = -1

    @property
    def steps_per_epoch(self) -> int:
        return self._reader.steps_per_epoch

    @property
    def images_per_epoch(self) -> int:
        return self._reader.images_per_epoch

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self._reader is None:
            raise RuntimeError("Reader: closed")
        result = self._reader.next()
        if result is None:
            raise StopIteration
        images, labels, self.epoch, self.step = result
        return images, labels

    def summary(self) -> ReaderSummary:
        if self._reader is None:
            raise RuntimeError("Reader: closed")
        stats = self._reader.stats()
        stats["first_bad_files"] = tuple(tuple(pair) for pair in stats["first_bad_files"])
        return ReaderSummary(**stats)

    def close(self) -> None:
        """Stops the workers; batches already returned stay valid."""
        reader, self._reader = getattr(self, "_reader", None), None
        if reader is not None:
            reader.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def to_tf_dataset(self):
        """A tf.data.Dataset over this reader's batches, for Keras fit or a tf.function loop.
        The reader keeps doing the work on its own threads; tf.data only copies each batch
        into a tensor."""
        import tensorflow as tf  # only the bridge needs TensorFlow

        c = self.config
        image_shape = ((None, c.image_size, c.image_size, 3) if c.layout == "NHWC"
                       else (None, 3, c.image_size, c.image_size))
        return tf.data.Dataset.from_generator(
            lambda: iter(self),
            output_signature=(tf.TensorSpec(image_shape, tf.uint8),
                              tf.TensorSpec((None,), tf.int32)))


def decode_jpeg(data: bytes, max_pixels: int = 100_000_000, fast_idct: bool = False,
                fancy_upsampling: bool = True) -> np.ndarray:
    """Full decode of encoded JPEG bytes to RGB uint8 [H, W, 3] (grayscale and CMYK included)."""
    return _reader.decode_jpeg(data, max_pixels, fast_idct, fancy_upsampling)


def jpeg_info(data: bytes, max_pixels: int = 100_000_000) -> dict:
    """Header facts: width, height, components, color_space, progressive."""
    return _reader.jpeg_info(data, max_pixels)


def augment(data: bytes, image_size: int, training: bool = True, seed: int = 0,
            layout: str = "NHWC", **options) -> np.ndarray:
    """One image through the reader's exact decode-and-augment path (crop and flip fixed by
    `seed`); for tests, benchmarks and debugging."""
    config = ReaderConfig(batch_size=1, image_size=image_size, training=training, layout=layout,
                          seed=seed, num_threads=1, **options).resolved()
    return _reader.augment(data, image_size, training, seed, config.area_range,
                           config.aspect_range, config.random_flip, config.eval_resize_ratio,
                           config.use_dct_scaling, layout, _scale_mask(config.dct_scales),
                           config.max_pixels, config.fast_idct, config.fancy_upsampling)


build_info = _reader.build_info
