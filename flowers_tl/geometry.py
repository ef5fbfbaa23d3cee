"""The preprocessing geometry, in one place: the C++ reader (flowers_tl.reader), the tf.data
pipeline (flowers_tl.tfdata), the SavedModel export (flowers_tl.export) and bench.reader all
take these values from here. No TensorFlow and no compiled module are imported.

Training: random-resized-crop (the Inception / torchvision recipe) with an area fraction in
TRAIN_AREA_RANGE and a log-uniform aspect ratio (width / height) in TRAIN_ASPECT_RANGE, up to
TRAIN_CROP_MAX_ATTEMPTS tries before falling back to the (aspect-clamped) whole image; resized to
image_size x image_size; mirrored with probability 1/2.
Evaluation: the shorter side resized to eval_resize_size(image_size) = round(image_size * 256/224)
(the ImageNet "resize 256, crop 224"), then the central image_size x image_size crop.
Normalisation: the model takes uint8 RGB 0-255 and subtracts per-channel means on the device,
in the order the network sees (VGG_MEAN_RGB for the slim variant, CAFFE_MEAN_BGR for Keras);
flowers_tl.model's ModelMeta holds which variant uses which.

Where the three pipelines differ (same geometry everywhere; the pixels differ on purpose):

- C++ reader: for evaluation libjpeg's accurate integer IDCT (JDCT_ISLOW), for training crops
  TF's default fast one (JDCT_IFAST, as tf.data; reader.ReaderConfig.fast_idct), the crop region decoded at the
  smallest DCT scale M/8 in {1/8, 1/4, 1/2, 1} that covers the output, then one antialiased
  triangle-filter resample straight from the fractional crop box in source pixels.
- SavedModel export (predict_jpeg): the reader's eval path in TF ops, so a served model sees
  what it was evaluated on: the same IDCT (dct_method="INTEGER_ACCURATE") and the same
  fractional centre box through the same triangle filter (ScaleAndTranslate). It decodes at
  full resolution (no DCT scaling in a TF graph), which is the only difference left: within 1
  grey level of the reader (float rounding; mean 0.04 on a smooth 768x1024 photo the reader
  decodes at scale 1/2; tests/test_export.py checks mean < 0.1, max <= 1).
- tf.data (flowers_tl.tfdata): the baseline the reader is timed against, written as the common
  TF recipes write it, with the fastest settings tf.data has so the baseline is not handicapped:
  TF's default IDCT (libjpeg's JDCT_IFAST), bilinear resize without antialiasing, and for eval
  a resize to whole pixels before the crop (up to half a source pixel off centre). Its eval
  images differ from the reader's and the export's by a mean of 1.5 to 7.1 grey levels per
  image (3.7 over all), max 129 at sharp edges and in fine texture, where the unfiltered shrink
  aliases and the crop sits half a pixel over (8 synthetic flowers of generator version 2,
  254x326 to 406x408, at 224: measured by
  tests/test_tfdata.py::test_eval_pixels_differ_from_the_readers_as_geometry_py_says, which
  also checks tf.data's eval geometry against a plain bilinear reference, max 1 level). Its
  training crops use the same ranges but TF's own sampler, so individual crops differ. Consequence: a model trained and evaluated through tf.data
  is served with the reader's (slightly sharper) preprocessing.
"""
from __future__ import annotations

import math

TRAIN_AREA_RANGE = (0.08, 1.0)  # fraction of the image area
TRAIN_ASPECT_RANGE = (3 / 4, 4 / 3)  # width / height, sampled log-uniformly
TRAIN_CROP_MAX_ATTEMPTS = 10  # then the whole image, trimmed to the aspect range (slim's fallback)

EVAL_RESIZE_RATIO = 256 / 224  # eval: shorter side to image_size * this, then the centre crop

VGG_MEAN_RGB = (123.68, 116.78, 103.94)  # slim's resnet_v1 preprocessing, subtracted in RGB
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # Keras' "caffe" mode, subtracted in BGR


# The decoded-image cache (flowers_tl.reader, cache=...) keeps each image with its shorter side
# capped at cache_short_side(image_size) = ceil(eval_resize_size(image_size) * this): 320 px for
# 224. The cap must be at least the eval resize (256 for 224) or the eval centre crop, and a
# training crop of the whole shorter side (area 1.0), would be upsampled from the cache. The
# margin above it makes both a shrink (1.25x and 1.43x) instead of a 1:1 resample at a
# fractional offset, which blurs by half a pixel, and keeps training crops down to an area of
# (224/320)^2 = 49% of the image shrinks of cached pixels too. Smaller crops are upsampled from
# the cache where streaming may read more of a large photo: the price of ~0.4 MB per
# tf_flowers-sized photo instead of ~4x that to serve the 8% crops at full detail. Where the
# cached pixels differ from streaming ones: tests/test_reader_cache.py states and checks it.
CACHE_SHORT_SIDE_MARGIN = 1.25


def cache_short_side(image_size: int, ratio: float = EVAL_RESIZE_RATIO) -> int:
    """The decoded-image cache's cap on each image's shorter side (see CACHE_SHORT_SIDE_MARGIN)."""
    return int(math.ceil(eval_resize_size(image_size, ratio) * CACHE_SHORT_SIDE_MARGIN))


def eval_resize_size(image_size: int, ratio: float = EVAL_RESIZE_RATIO) -> int:
    """Shorter side before the eval centre crop: image_size * ratio rounded half away from zero,
    as the C++ reader's std::round (Python's round() rounds half to even; with 256/224 no
    integer image_size is a tie, so both agree there)."""
    return int(math.floor(image_size * ratio + 0.5))
