"""The fair tf.data input pipeline: the baseline the C++ reader is measured against.

It is the pipeline the common TF recipes use (slim / tf_cnn_benchmarks / official ResNet), written
so that it is as fast as tf.data gets at a given thread count:

  training: shuffle the file list every epoch -> read_file -> extract_jpeg_shape ->
            sample_distorted_bounding_box -> decode_and_crop_jpeg (decodes only the crop window)
            -> bilinear resize to image_size x image_size -> random left-right flip -> uint8
  eval:     decode the whole image -> resize the shorter side to eval_resize_size(image_size)
            -> central image_size x image_size crop -> uint8

The crop ranges and the eval resize come from flowers_tl.geometry, shared with the C++ reader
and the SavedModel export; the IDCT and the resize filter are the recipes' own (fast IDCT, no
antialiasing), and geometry.py says how far that puts these pixels from the reader's.

Both yield (uint8 images [B, image_size, image_size, 3], int32 labels [B]).

With cache_short_side set: tf.data's own `.cache()` of decoded images, the anchor the reader's
decoded-image cache is measured against, written as a tf.data user would: decode each whole
image once, shrink its shorter side to cache_short_side (the reader's cap, antialiased: it is
done once), keep it as uint8 in `.cache()`, then shuffle, and every epoch crop (the same
sampler on the cached image), resize and flip, or resize the shorter side and centre-crop.

`num_threads` really means N threads: the map runs on a private pool of N threads and every op
inside it is single-threaded, so a comparison "at 2 threads" is not quietly using the global
intra-op pool as well.

TensorFlow is imported here and nowhere else in the package, so the rest of flowers_tl (and the
C++ reader benchmark) does not pay TF's import time or memory.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from flowers_tl import geometry


def make_dataset(
    files: Sequence[str],
    labels: Sequence[int],
    batch_size: int,
    image_size: int,
    training: bool = True,
    num_threads: int | None = None,
    seed: int = 0,
    area_range: tuple[float, float] = geometry.TRAIN_AREA_RANGE,
    aspect_range: tuple[float, float] = geometry.TRAIN_ASPECT_RANGE,
    drop_remainder: bool = False,
    repeat: bool = True,
    cache_short_side: int | None = None,
    start_batch: int = 0,
) -> tf.data.Dataset:
    """Batches of (uint8 [B, image_size, image_size, 3], int32 [B]) from JPEG files.

    start_batch (training): the stream starts at this batch, the one it would have reached
    (skipped before decoding, so a resume or a new size phase costs nothing).

    num_threads=None lets tf.data autotune its parallelism (and use the global thread pools);
    an integer pins everything to exactly that many worker threads.
    The output is deterministic for a given seed, whatever num_threads is.
    """
    if len(files) != len(labels):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
    if not files:
        raise ValueError("make_dataset needs at least one file")
    if batch_size < 1 or image_size < 1:
        raise ValueError(f"batch_size={batch_size} and image_size={image_size} must be >= 1")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads={num_threads} must be >= 1 (or None to autotune)")
    if start_batch < 0 or (start_batch and not training):
        raise ValueError(f"start_batch={start_batch}: must be >= 0, and only when training")

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(files), tf.string), tf.constant(list(labels), tf.int32))
    )
    parallel_calls = tf.data.AUTOTUNE if num_threads is None else num_threads
    if cache_short_side is not None:
        dataset = dataset.map(lambda path, label: (_decode_capped(path, cache_short_side), label),
                              num_parallel_calls=parallel_calls).cache()
    if training:
        # Shuffle the whole file list (cheap: strings) before repeat, so every epoch sees each
        # image exactly once and in a new, seeded order.
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    if training:
        # Each element gets its position in the stream as part of its random seed. Stateless ops
        # keyed on (seed, position) cost the same as the stateful ones but give the same crops
        # whatever order the parallel map finishes in.
        dataset = dataset.enumerate()
        example = _train_example if cache_short_side is None else _train_example_cached
        if start_batch:  # uncached: file names and positions only, nothing read or decoded
            dataset = dataset.skip(start_batch * batch_size)
        dataset = dataset.map(
            lambda index, pair: example(
                pair[0], pair[1], index, seed, image_size, area_range, aspect_range
            ),
            num_parallel_calls=parallel_calls,
        )
    elif cache_short_side is None:
        dataset = dataset.map(
            lambda path, label: (_eval_image(path, image_size), label),
            num_parallel_calls=parallel_calls,
        )
    else:
        dataset = dataset.map(
            lambda image, label: (_to_uint8(resize_shorter_and_center_crop(
                image, image_size, antialias=False)), label),
            num_parallel_calls=parallel_calls,
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.deterministic = True
    if num_threads is not None:
        options.threading.private_threadpool_size = num_threads
        # Without this, ops such as resize fan out onto the global intra-op pool (all cores),
        # and "N threads" would not be N threads.
        options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def _train_example(path, label, index, seed, image_size, area_range, aspect_range):
    encoded = tf.io.read_file(path)
    # No boxes + min_object_covered=0: a plain random-resized-crop over the whole image; after
    # max_attempts misses the whole image is used (the same fallback as slim's recipe).
    begin, size, flip_seed = _crop_window(tf.io.extract_jpeg_shape(encoded), seed, index,
                                          area_range, aspect_range)
    offset_y, offset_x, _ = tf.unstack(begin)
    crop_height, crop_width, _ = tf.unstack(size)
    crop_window = tf.stack([offset_y, offset_x, crop_height, crop_width])
    # Decoding only the crop window is the "up to 30% faster" trick of the TF performance guide.
    # dct_method is left at TF's default, which is libjpeg's fast integer IDCT (JDCT_IFAST): it is
    # what the recipes run and faster than the accurate IDCT OpenCV and DALI use (pixels differ
    # by a few levels), so the baseline is not handicapped.
    image = tf.io.decode_and_crop_jpeg(encoded, crop_window, channels=3)
    # antialias=False is what the common recipes use and the fastest resize tf.data has.
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=False)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return _to_uint8(image), label


def _crop_window(shape, seed, index, area_range, aspect_range):
    """(begin, size) of a random-resized-crop of an image of `shape`, and the flip's seed.
    Each element gets its position in the stream as part of its seed (see make_dataset)."""
    element_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(element_seed, 2))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=crop_seed,
        min_object_covered=0.0,
        aspect_ratio_range=list(aspect_range),
        area_range=list(area_range),
        max_attempts=geometry.TRAIN_CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size, flip_seed


def _decode_capped(path, short_side):
    """The whole image, its shorter side shrunk to short_side if longer, uint8 (what .cache()
    keeps)."""
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = float(short_side) / tf.reduce_min(shape)

    def shrink():
        size = tf.cast(tf.round(shape * scale), tf.int32)
        return _to_uint8(tf.image.resize(image, size, method="bilinear", antialias=True))

    return tf.cond(scale < 1.0, shrink, lambda: image)


def _train_example_cached(image, label, index, seed, image_size, area_range, aspect_range):
    begin, size, flip_seed = _crop_window(tf.shape(image), seed, index, area_range, aspect_range)
    image = tf.slice(image, begin, size)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=False)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return _to_uint8(image), label


def _eval_image(path, image_size):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)  # default IDCT: see above
    return _to_uint8(resize_shorter_and_center_crop(image, image_size, antialias=False))


def resize_shorter_and_center_crop(image, image_size: int, antialias: bool):
    """Evaluation geometry as the recipes write it: shorter side to
    geometry.eval_resize_size(image_size) in whole pixels, then the central square crop (which
    may sit half a source pixel off the exact centre). Float [image_size, image_size, 3]."""
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    shorter_target = float(geometry.eval_resize_size(image_size))
    scale = shorter_target / tf.minimum(height, width)
    # Round, and never below the target, so the central crop always fits.
    new_height = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), int(shorter_target))
    new_width = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), int(shorter_target))
    image = tf.image.resize(image, [new_height, new_width], method="bilinear", antialias=antialias)
    offset_y = (new_height - image_size) // 2
    offset_x = (new_width - image_size) // 2
    image = image[offset_y : offset_y + image_size, offset_x : offset_x + image_size, :]
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _to_uint8(image):
    # resize returns float32; round rather than truncate, or every pixel is biased down by 0.5.
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
