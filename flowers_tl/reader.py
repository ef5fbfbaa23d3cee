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

Decoded-image cache: `cache="memory"` decodes every file once (in parallel, before the first
batch), keeps its pixels with the shorter side capped at `cache_short_side` (default
flowers_tl.geometry.cache_short_side(image_size), 320 px for 224), and resamples every later
crop, the same crop boxes as streaming, from those pixels: no JPEG decode after the fill.
`cache=FOLDER` does the same into a memory-mapped file there that later runs reuse while the
file list, sizes, mtimes, cap and build match (otherwise it is rebuilt, and one line says
why). Above `cache_max_bytes` (default: CACHE_MEMORY_FRACTION of the available memory) the
reader says so in one line and streams.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from flowers_tl import _reader, geometry

DecodeError = _reader.DecodeError

LAYOUTS = ("NHWC", "NCHW")


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroups affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# The cache's default budget: this share of the memory available to the process, so that the
# model, TensorFlow and the page cache keep the other half.
CACHE_MEMORY_FRACTION = 0.5


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo, or the cgroup's memory limit where that is lower."""
    available = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max",  # cgroup v2
                       "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # v1
        try:
            with open(limit_file) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or v1's huge number: no limit
            available = int(text) if available is None else min(available, int(text))
    if available is None:  # not Linux: the physical memory
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return available


@functools.lru_cache(maxsize=None)
def build_identity() -> str:
    """The package version and a hash of the compiled reader: part of a cache file's key, so
    that any rebuild of the C++ code (a change to the decoder or the resampler) rebuilds it."""
    from flowers_tl import __version__
    with open(_reader.__file__, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:16]
    return f"flowers_tl {__version__}, _reader {digest}"


# Where the defaults live: the C++ structs (csrc/batch_reader.h, image_task.h, jpeg_decode.h)
# carry the reader's, read here from a default-constructed options object; the preprocessing
# geometry (crop ranges, eval resize ratio) lives in flowers_tl.geometry, which the C++ side
# leaves unset. A None default below is resolved by ReaderConfig.resolved(), not a second value.
_DEFAULTS = _reader.ReaderOptions()


@dataclass(frozen=True)
class ReaderConfig:
    """Everything that decides what a Reader produces; saved with every result that used it."""

    batch_size: int
    image_size: int = _DEFAULTS.image.image_size
    training: bool = _DEFAULTS.image.training
    shuffle: bool | None = None  # None: shuffle when training
    num_threads: int | None = None  # None: available_cores()
    layout: str = _DEFAULTS.image.layout
    seed: int = _DEFAULTS.seed
    prefetch: int | None = None  # batches decoded ahead; None: enough to keep every thread busy
    shard_index: int = _DEFAULTS.shard_index
    num_shards: int = _DEFAULTS.num_shards
    drop_remainder: bool = _DEFAULTS.drop_remainder
    num_epochs: int | None = None  # None: repeat forever
    start_batch: int = _DEFAULTS.start_batch  # resume: the stream starts at this batch
    area_range: tuple[float, float] = geometry.TRAIN_AREA_RANGE
    aspect_range: tuple[float, float] = geometry.TRAIN_ASPECT_RANGE
    random_flip: bool = _DEFAULTS.image.random_flip
    eval_resize_ratio: float = geometry.EVAL_RESIZE_RATIO
    use_dct_scaling: bool = _DEFAULTS.image.use_dct_scaling
    # Allowed M of the DCT scale M/8 (why these: DecoderOptions::allowed_scales in jpeg_decode.h).
    dct_scales: tuple[int, ...] = tuple(_DEFAULTS.decoder.dct_scales)
    # JDCT_IFAST (TF's decode_jpeg default, so tf.data input does the same work) or ISLOW. None:
    # IFAST for training crops (~6% faster per image on real photos, AMD EPYC; its error of a
    # level or two is noise next to the augmentation), ISLOW for evaluation, which is what the
    # exported model decodes with (export.py, dct_method="INTEGER_ACCURATE").
    fast_idct: bool | None = None
    fancy_upsampling: bool = _DEFAULTS.decoder.fancy_upsampling  # False: merged upsampler, faster
    # Progressive (multi-scan) files: each scan stops at the crop's last rows (same pixels).
    skip_rows_below_crop: bool = _DEFAULTS.decoder.skip_rows_below_crop
    max_pixels: int = _DEFAULTS.decoder.max_pixels  # larger headers refused before allocation
    skip_bad_files: bool = _DEFAULTS.skip_bad_files
    # A skipped file's slot: a copy of the next good image (batches stay full), or, False,
    # zeros with label -1 (evaluation counts only files that decoded; an all-bad batch comes
    # through instead of stopping the reader).
    fill_bad_slots: bool = _DEFAULTS.fill_bad_slots
    # Decoded-image cache: None (decode every epoch), "memory", or a folder for a cache file
    # that later runs reuse. The cap and the budget apply only with a cache; None: the
    # defaults (geometry.cache_short_side(image_size), CACHE_MEMORY_FRACTION of the memory).
    cache: str | None = None
    cache_short_side: int | None = None
    cache_max_bytes: int | None = None

    def resolved(self) -> "ReaderConfig":
        """Fills the None defaults and checks every field, naming the bad one."""
        num_threads = self.num_threads if self.num_threads is not None else available_cores()
        prefetch = self.prefetch
        if prefetch is None:
            # Work is handed out image by image within a window of `prefetch` batches: the
            # window must hold more images than there are threads, or some threads idle.
            prefetch = max(2, -(-2 * num_threads // max(self.batch_size, 1)) + 1)
        cache = None if self.cache in (None, "", "none") else self.cache
        if cache is not None and cache != "memory":
            cache = os.path.abspath(os.fspath(cache))
        short_side, max_bytes = self.cache_short_side, self.cache_max_bytes
        if cache is not None and short_side is None:
            short_side = geometry.cache_short_side(self.image_size, self.eval_resize_ratio)
        if cache is not None and max_bytes is None:
            max_bytes = int(CACHE_MEMORY_FRACTION * available_memory_bytes())
        config = dataclasses.replace(
            self,
            cache=cache,
            cache_short_side=short_side,
            cache_max_bytes=max_bytes,
            shuffle=self.training if self.shuffle is None else self.shuffle,
            fast_idct=self.training if self.fast_idct is None else self.fast_idct,
            num_threads=num_threads,
            prefetch=prefetch,
            area_range=tuple(float(v) for v in self.area_range),
            aspect_range=tuple(float(v) for v in self.aspect_range),
            dct_scales=tuple(sorted(set(int(v) for v in self.dct_scales))),
        )
        config._check()
        return config

    def to_options(self) -> "_reader.ReaderOptions":
        """The C++ options this (resolved) config stands for; every field goes across by name."""
        if (self.num_threads is None or self.prefetch is None or self.shuffle is None
                or self.fast_idct is None):
            raise ValueError("Reader: to_options() needs a resolved() config")
        crop = _reader.CropOptions(
            area_min=self.area_range[0], area_max=self.area_range[1],
            aspect_min=self.aspect_range[0], aspect_max=self.aspect_range[1],
            max_attempts=geometry.TRAIN_CROP_MAX_ATTEMPTS)
        image = _reader.ImageOptions(
            image_size=self.image_size, training=self.training, crop=crop,
            random_flip=self.random_flip, eval_resize_ratio=self.eval_resize_ratio,
            use_dct_scaling=self.use_dct_scaling, layout=self.layout)
        decoder = _reader.DecoderOptions(
            max_pixels=self.max_pixels, dct_scales=list(self.dct_scales),
            fast_idct=self.fast_idct, fancy_upsampling=self.fancy_upsampling,
            skip_rows_below_crop=self.skip_rows_below_crop)
        cache = _reader.CacheOptions(
            location=self.cache or "", short_side=self.cache_short_side or 0,
            max_bytes=self.cache_max_bytes or 0, version=build_identity())
        return _reader.ReaderOptions(
            batch_size=self.batch_size, num_threads=self.num_threads, shuffle=self.shuffle,
            seed=self.seed, prefetch=self.prefetch, shard_index=self.shard_index,
            num_shards=self.num_shards, drop_remainder=self.drop_remainder,
            num_epochs=-1 if self.num_epochs is None else self.num_epochs,
            start_batch=self.start_batch, skip_bad_files=self.skip_bad_files,
            fill_bad_slots=self.fill_bad_slots, decoder=decoder, image=image, cache=cache)

    def _check(self) -> None:
        def need(condition: bool, field: str, rule: str) -> None:
            if not condition:
                raise ValueError(f"Reader: {field}={getattr(self, field)!r}: {rule}")

        for field in dataclasses.fields(self):  # bool is an int: check it before the numbers
            value = getattr(self, field.name)
            if field.type in ("bool", "bool | None") and value is not None:
                need(isinstance(value, bool), field.name, "must be True or False")
            elif field.type in ("int", "int | None") and value is not None:
                need(isinstance(value, int) and not isinstance(value, bool), field.name,
                     "must be an integer")
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
        need(self.cache is None or isinstance(self.cache, str), "cache",
             "must be None, 'memory' or a folder")
        need(self.cache_short_side is None or self.cache_short_side >= 1, "cache_short_side",
             "must be >= 1")
        need(self.cache_max_bytes is None or self.cache_max_bytes >= 0, "cache_max_bytes",
             "must be >= 0")


@dataclass(frozen=True)
class ReaderSummary:
    """What the reader did so far; `first_bad_files` holds (path, reason) pairs."""

    images_decoded: int
    failed_reads: int
    bad_files: int
    first_bad_files: tuple[tuple[str, str], ...]
    batches_delivered: int
    consumer_wait_seconds: float
    images_from_cache: int  # crops served from the decoded-image cache (images_decoded: JPEGs)
    cache: str  # "none", "memory", "file", or "streaming" (asked for; cache_message says why not)
    cache_reused: bool  # a cache file of an earlier run: nothing decoded
    cache_bytes: int
    cache_fill_seconds: float
    cache_message: str


class Reader:
    """Iterator over (images, labels) batches: uint8 [B, H, W, 3] (or [B, 3, H, W] with
    layout="NCHW") and int32 [B]. An epoch's last batch is smaller unless drop_remainder.

    The arrays reference the C++ batch buffer (no copy); the buffer is recycled only once both
    arrays are gone, so holding on to a batch is safe. Any ReaderConfig field is a keyword
    (image_size, training, num_threads, layout, seed, ...); an unknown one is a TypeError.
    """

    def __init__(self, files: Sequence[str | os.PathLike], labels: Sequence[int], batch_size: int,
                 **options):
        self.config = _config(batch_size=batch_size, **options).resolved()
        paths = [os.fspath(f) for f in files]
        label_list = [int(v) for v in labels]
        if not paths:
            raise ValueError("Reader: files is empty")
        if len(paths) != len(label_list):
            raise ValueError(f"Reader: {len(paths)} files but {len(label_list)} labels")
        if self.config.cache not in (None, "memory"):
            try:
                os.makedirs(self.config.cache, exist_ok=True)
            except OSError as error:
                raise ValueError(f"Reader: cache={self.config.cache!r}: cannot create the "
                                 f"folder: {error.strerror}") from None
        self._reader = _reader.BatchReader(paths, label_list, self.config.to_options())
        message = self._reader.stats()["cache_message"]
        if message:  # a (re)build, or the budget's fallback to streaming
            print(f"reader: {message}", file=sys.stderr, flush=True)
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


def _config(**options) -> ReaderConfig:
    unknown = set(options) - {f.name for f in dataclasses.fields(ReaderConfig)}
    if unknown:
        raise TypeError(f"Reader: unknown option(s) {sorted(unknown)}")
    return ReaderConfig(**options)


def decode_jpeg(data: bytes, **decoder_options) -> np.ndarray:
    """Full decode of encoded JPEG bytes to RGB uint8 [H, W, 3] (grayscale and CMYK included).
    decoder_options: fields of _reader.DecoderOptions (max_pixels, fast_idct, ...)."""
    return _reader.decode_jpeg(data, _reader.DecoderOptions(**decoder_options))


def jpeg_info(data: bytes, **decoder_options) -> dict:
    """Header facts: width, height, components, color_space, progressive."""
    return _reader.jpeg_info(data, _reader.DecoderOptions(**decoder_options))


def augment(data: bytes, image_size: int, seed: int = 0, **options) -> np.ndarray:
    """One image through the reader's exact decode-and-augment path (crop and flip fixed by
    `seed`); for tests, benchmarks and debugging. options: any ReaderConfig field."""
    config = _config(batch_size=1, image_size=image_size, seed=seed, num_threads=1,
                     **options).resolved()
    reader_options = config.to_options()
    return _reader.augment(data, reader_options.image, reader_options.decoder, seed)


def augment_cached(data: bytes, image_size: int, cache_short_side: int, seed: int = 0,
                   **options) -> tuple[np.ndarray, np.ndarray]:
    """One image through the cache's path: decoded whole at its capped size (the cached
    pixels, returned second), then the crop `seed` draws, resampled from those pixels (first).
    For tests and debugging; options: any ReaderConfig field."""
    config = _config(batch_size=1, image_size=image_size, seed=seed, num_threads=1,
                     **options).resolved()
    reader_options = config.to_options()
    return _reader.augment_cached(data, reader_options.image, reader_options.decoder, seed,
                                  cache_short_side)


build_info = _reader.build_info
