"""The fuzzer's committed inputs (fuzz/regressions: 12 parameter bytes + file, as
fuzz_decode.cc wrote them; fuzz/seeds: plain JPEGs) replayed through the same four Python
paths as fuzz_decode.cc, and the production path of the fuzzer's first crash through the Reader.
"""
import os

import numpy as np
import pytest

from conftest import encode_jpeg, smooth_rgb
from flowers_tl import _reader, reader
from flowers_tl.reader import DecodeError, Reader
from hostile_data import FUZZ, reader_image_seed

pytestmark = pytest.mark.fuzz


PARAM_BYTES = 12
FUZZ_MAX_PIXELS = 1 << 18  # fuzz_decode.cc's kMaxPixels


def fuzz_params(raw: bytes):
    """The parameters fuzz_decode.cc derives from an input's first 12 bytes, and the file."""
    p = raw[:PARAM_BYTES].ljust(PARAM_BYTES, b"\0")
    area_min = (p[3] + 1) / 256.0
    aspect_min = (p[5] + 1) / 64.0
    options = dict(
        training=bool(p[1] & 1), use_dct_scaling=bool(p[1] & 2), random_flip=bool(p[1] & 4),
        layout="NCHW" if p[1] & 8 else "NHWC", fast_idct=bool(p[1] & 16),
        fancy_upsampling=not p[1] & 32,
        skip_rows_below_crop=not p[1] & 128,
        dct_scales=tuple(m for m in range(1, 9) if (p[2] or 0xFF) & (1 << (m - 1))),
        area_range=(area_min, area_min + (1.0 - area_min) * p[4] / 255.0),
        aspect_range=(aspect_min, aspect_min * (1.0 + p[6] / 16.0)),
        eval_resize_ratio=1.0 + (p[7] % 16) / 8.0, max_pixels=FUZZ_MAX_PIXELS)
    return 1 + p[0] % 64, p[7], options, bytes(p[8:12]), raw[PARAM_BYTES:]


def fuzz_inputs():
    inputs = []
    for folder in ("regressions", "seeds"):
        path = os.path.join(FUZZ, folder)
        for name in sorted(os.listdir(path)):
            inputs.append(pytest.param(folder, name, id=f"{folder}/{name}"))
    return inputs


@pytest.mark.parametrize("folder, name", fuzz_inputs())
def test_fuzzer_inputs_replay_through_python(folder, name):
    """Regression inputs (12 parameter bytes + file, as the fuzzer wrote them) must give a
    DecodeError or an image of the right shape through the same four paths as fuzz_decode.cc;
    the committed seeds are plain JPEGs and must decode, with a few parameter sets."""
    with open(os.path.join(FUZZ, folder, name), "rb") as handle:
        raw = handle.read()
    headers = [raw[:PARAM_BYTES]] if folder == "regressions" else [
        bytes([31, 7, 0, 20, 255, 47, 10, 0, 0, 0, 255, 255]),
        bytes([15, 0b110010, 0b01000010, 0, 255, 255, 255, 3, 64, 200, 127, 30]),
        bytes([40, 0b101011, 0b11000010, 20, 255, 47, 10, 9, 10, 90, 200, 100])]
    for header in headers:
        data = raw[PARAM_BYTES:] if folder == "regressions" else raw
        size, seed, options, box_bytes, _ = fuzz_params(header)
        outcomes = []
        try:
            image = reader.augment(data, size, seed=seed, **options)
            assert image.shape == ((size, size, 3) if options["layout"] == "NHWC" else (3, size, size))
            outcomes.append("image")
        except DecodeError:
            outcomes.append("error")
        info = None
        try:
            info = reader.jpeg_info(data, max_pixels=FUZZ_MAX_PIXELS)
            w, h = info["width"], info["height"]
            x, y = w * (box_bytes[0] / 256.0), h * (box_bytes[1] / 256.0)
            box = (x, y, (w - x) * ((box_bytes[2] + 1) / 256.0), (h - y) * ((box_bytes[3] + 1) / 256.0))
            crop, _, _ = _reader.decode_crop_resize(
                data, box, size, size, bool(header[1] & 64),
                _reader.ImageOptions(image_size=size, use_dct_scaling=options["use_dct_scaling"],
                                     layout=options["layout"]),
                _reader.DecoderOptions(max_pixels=FUZZ_MAX_PIXELS,
                                       dct_scales=list(options["dct_scales"]),
                                       fast_idct=options["fast_idct"],
                                       fancy_upsampling=options["fancy_upsampling"],
                                       skip_rows_below_crop=options["skip_rows_below_crop"]))
            assert crop.size == size * size * 3
            outcomes.append("image")
        except DecodeError:
            outcomes.append("error")
        try:  # the decoded-image cache: fill at the capped size, then the same crop from it
            short_side = size + box_bytes[0] % 64
            image, cached = reader.augment_cached(data, size, short_side, seed=seed, **options)
            assert image.shape == ((size, size, 3) if options["layout"] == "NHWC" else (3, size, size))
            assert min(cached.shape[:2]) <= short_side and cached.shape[2] == 3
            outcomes.append("image")
        except DecodeError:
            outcomes.append("error")
        try:
            full = reader.decode_jpeg(data, max_pixels=FUZZ_MAX_PIXELS)
            assert full.shape[2] == 3 and full.shape[0] * full.shape[1] <= FUZZ_MAX_PIXELS
            # A full decode is the size its header gives (two entry points, one file).
            assert info is not None and full.shape[:2] == (info["height"], info["width"])
            outcomes.append("image")
        except DecodeError:
            outcomes.append("error")
        if folder == "seeds":
            assert outcomes == ["image"] * 4, (header.hex(), outcomes)


def test_reused_decoder_with_merged_upsampler_and_row_skips(tmp_path):
    """The production path of the fuzzer's first crash: one worker's decoder alternating between
    images that use libjpeg's merged upsampler (4:2:0 at full DCT scale, fancy upsampling off)
    and images that do not (4:4:4, or 4:2:0 at reduced scales), with crops that skip rows. Before
    the fix, jpeg_skip_scanlines() wrote through a freed colour converter; without ASan that may
    corrupt the heap silently, so this also checks every batch against a fresh decoder."""
    files = []
    for index in range(12):
        kind = ("420", "444")[index % 2]
        path = tmp_path / f"{index}.jpg"
        path.write_bytes(encode_jpeg(smooth_rgb(90 + 7 * index, 120, seed=index), kind=kind))
        files.append(str(path))
    options = dict(batch_size=4, image_size=24, num_threads=1, seed=3, num_epochs=3,
                   fancy_upsampling=False, dct_scales=(2, 7, 8), area_range=(0.3, 0.6))
    with Reader(files, list(range(12)), **options) as stream:
        batches = [(images.copy(), labels.copy(), stream.epoch) for images, labels in stream]
    assert len(batches) == 9
    for images, labels, epoch in batches:
        for image, label in zip(images, labels):
            data = open(files[label], "rb").read()
            seed = reader_image_seed(3, epoch, int(label))
            expected = reader.augment(data, 24, seed=seed, fancy_upsampling=False,
                                      dct_scales=(2, 7, 8), area_range=(0.3, 0.6))
            np.testing.assert_array_equal(image, expected)

