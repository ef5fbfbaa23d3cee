"""The single-image path: full decode, ROI + DCT-scaled decode, resize, eval crop, layouts.

Reference: PIL, which decodes with libjpeg-turbo's default settings (accurate integer IDCT,
fancy upsampling), exactly what our decoder asks libjpeg for, so full decodes must be identical.
Resizes are compared with PIL's antialiased BILINEAR, the same triangle filter; both compute in
fixed point, at different precisions, hence ±2 levels.
"""

import io

import numpy as np
import pytest
from PIL import Image

from conftest import encode_jpeg, reference_decode, smooth_rgb
from flowers_tl import _reader, geometry, reader

ALL_SCALES = _reader.DecoderOptions(dct_scales=list(range(1, 9)))
RECIPE_CROP = reader.ReaderConfig(batch_size=1).resolved().to_options().image.crop


def crop_resize(data, box, width, height, flip=False, use_dct_scaling=True):
    """The ROI decode with every DCT scale allowed, so the reduced scales are all exercised."""
    return _reader.decode_crop_resize(data, box, width, height, flip,
                                      _reader.ImageOptions(use_dct_scaling=use_dct_scaling),
                                      ALL_SCALES)[:2]

KINDS = ("420", "444", "progressive", "gray", "cmyk")


@pytest.mark.parametrize("kind", KINDS)
def test_full_decode_equals_reference_decoder(kind):
    data = encode_jpeg(smooth_rgb(173, 259, seed=3), kind=kind)
    ours = reader.decode_jpeg(data)
    assert ours.shape == (173, 259, 3) and ours.dtype == np.uint8
    # Same library, same IDCT and upsampling: bit-exact. CMYK goes through our conversion and
    # PIL's; both compute (255-C)(255-K)/255, rounding may differ by one.
    tolerance = 1 if kind == "cmyk" else 0
    assert np.abs(ours.astype(int) - reference_decode(data)).max() <= tolerance


def test_jpeg_info_reports_header():
    info = reader.jpeg_info(encode_jpeg(smooth_rgb(50, 70), kind="progressive"))
    assert info == {"width": 70, "height": 50, "components": 3, "color_space": "ycbcr",
                    "progressive": True}
    assert reader.jpeg_info(encode_jpeg(smooth_rgb(50, 70), kind="gray"))["color_space"] == "grayscale"
    assert reader.jpeg_info(encode_jpeg(smooth_rgb(50, 70), kind="cmyk"))["components"] == 4


def pil_crop_resize(full, box, size):
    x, y, w, h = box
    return np.asarray(Image.fromarray(full).crop((x, y, x + w, y + h)).resize(size, Image.BILINEAR))


def random_case(rng, index):
    height, width = (int(v) for v in rng.integers(150, 600, 2))
    kind = ("420", "444", "progressive", "gray")[index % 4]
    data = encode_jpeg(smooth_rgb(height, width, seed=index), kind=kind)
    crop_w, crop_h = int(rng.integers(20, width)), int(rng.integers(20, height))
    box = (int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1)),
           crop_w, crop_h)
    size = (int(rng.integers(16, 120)), int(rng.integers(16, 120)))
    return data, box, size


@pytest.mark.parametrize("use_dct_scaling", [False, True])
def test_roi_decode_matches_full_decode_crop_resize(use_dct_scaling):
    rng = np.random.default_rng(0)
    scales = set()
    for index in range(24):
        data, box, size = random_case(rng, index)
        expected = pil_crop_resize(reference_decode(data), box, size).astype(int)
        ours, scale = crop_resize(data, box, size[0], size[1], use_dct_scaling=use_dct_scaling)
        scales.add(scale)
        error = np.abs(ours.astype(int) - expected)
        # Without DCT scaling only arithmetic differs (±2). With it, libjpeg's reduced IDCT
        # replaces part of the low-pass filtering: on smooth content that stays within ±3.
        assert error.max() <= (2 if not use_dct_scaling else 3), (index, box, size, scale)
        assert error.mean() <= (0.3 if not use_dct_scaling else 0.5), (index, box, size, scale)
    if use_dct_scaling:
        assert len(scales - {8}) >= 3, scales  # the cases really exercised reduced scales
    else:
        assert scales == {8}


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_resize_avx2_and_portable_passes_write_the_same_bytes(layout):
    # Exact integer sums: the AVX2 passes (this CPU, if it has AVX2) and the portable ones agree
    # byte for byte, so batches do not depend on the CPU. Odd and even widths, widths below and
    # above the AVX2 step of 4, shrinks and enlargements (1 to 4 tap pairs), flips.
    rng = np.random.default_rng(11)
    options = _reader.ImageOptions(use_dct_scaling=False, layout=layout)
    noisy = (rng.random((300, 420, 3)) * 255).astype(np.uint8)
    data = encode_jpeg(noisy, quality=95, kind="444")
    for width, height, box in [(1, 1, (0, 0, 420, 300)), (3, 5, (10, 7, 200, 90)),
                               (224, 224, (13.5, 2.25, 301, 290)), (97, 61, (0, 0, 420, 300)),
                               (250, 33, (100, 100, 50, 20)), (64, 64, (5, 5, 410, 290))]:
        for flip in (False, True):
            fast, _, _ = _reader.decode_crop_resize(data, box, width, height, flip, options,
                                                 ALL_SCALES, simd=True)
            portable, _, _ = _reader.decode_crop_resize(data, box, width, height, flip, options,
                                                     ALL_SCALES, simd=False)
            assert np.array_equal(fast, portable), (width, height, box, flip)


def test_resize_keeps_a_flat_image_flat():
    # Every output's integer weights sum to exactly one: no level drifts, at any size.
    flat = np.full((120, 170, 3), (17, 128, 250), np.uint8)
    data = encode_jpeg(flat, quality=100, kind="444")
    decoded = reader.decode_jpeg(data)
    for width, height in [(224, 224), (33, 7), (400, 301)]:
        ours, _ = crop_resize(data, (3.3, 1.7, 150, 111), width, height, use_dct_scaling=False)
        assert np.array_equal(ours, np.broadcast_to(decoded[0, 0], ours.shape)), (width, height)


def test_dct_scaled_decode_on_detailed_content_stays_close():
    # Fine texture is where a scaled IDCT and a pixel-domain low-pass differ most, and where an
    # aliasing resize would be far off: mean error within 3 levels.
    rng = np.random.default_rng(5)
    noisy = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
    data = encode_jpeg(noisy, quality=95, kind="444")
    expected = pil_crop_resize(reference_decode(data), (40, 30, 560, 420), (96, 72)).astype(int)
    ours, scale = crop_resize(data, (40, 30, 560, 420), 96, 72)
    assert scale == 2
    assert np.abs(ours.astype(int) - expected).mean() <= 3.0


def test_shrinking_does_not_alias():
    # A one-pixel checkerboard shrunk 8x must come out flat grey, as any low-pass resize gives;
    # a 2-tap bilinear would pick up whole stripes of black or white.
    board = (np.indices((512, 512)).sum(0) % 2 * 255).astype(np.uint8)
    data = encode_jpeg(np.repeat(board[..., None], 3, -1), quality=100, kind="444")
    for use_dct_scaling in (False, True):
        ours, _ = crop_resize(data, (0, 0, 512, 512), 64, 64, use_dct_scaling=use_dct_scaling)
        assert abs(ours.mean() - 127.5) < 6 and ours.std() < 6


@pytest.mark.parametrize("box_width, box_height, expected", [
    (224, 224, 8), (448, 448, 4), (1792, 1792, 1), (300, 224, 8), (300, 600, 6), (2000, 250, 8),
])
def test_dct_scale_is_smallest_that_covers_output(box_width, box_height, expected):
    scale = _reader.choose_dct_scale(box_width, box_height, 224, 224, ALL_SCALES)
    assert scale == expected
    if scale < 8:
        assert box_width * scale / 8 >= 224 and box_height * scale / 8 >= 224


def test_eval_center_crop_matches_resize_then_crop():
    # 56 px output: the shorter side goes to round(56 * 256 / 224) = 64 (geometry's ratio). The image sizes are
    # chosen so the resized size and the centre offsets are whole pixels in the reference too
    # (otherwise it rounds the crop by half a pixel and the comparison measures that rounding).
    size, resize_size = 56, geometry.eval_resize_size(56)
    assert resize_size == 64
    for index, (height, width) in enumerate([(128, 200), (64, 90), (48, 72), (200, 128)]):
        data = encode_jpeg(smooth_rgb(height, width, seed=10 + index), kind="444")
        scale = resize_size / min(height, width)
        resized_size = (round(width * scale), round(height * scale))
        resized = np.asarray(Image.fromarray(reference_decode(data)).resize(resized_size,
                                                                          Image.BILINEAR))
        left, top = (resized_size[0] - size) // 2, (resized_size[1] - size) // 2
        expected = resized[top:top + size, left:left + size].astype(int)
        ours = reader.augment(data, size, training=False, use_dct_scaling=False).astype(int)
        # We resample the crop box alone; the reference's border pixels also see the pixels just
        # outside the box. Smooth content: mean within 0.5, any pixel within 8.
        error = np.abs(ours - expected)
        assert error.mean() <= 0.5 and error.max() <= 8, (height, width)
        scaled = reader.augment(data, size, training=False).astype(int)
        assert np.abs(scaled - expected).mean() <= 1.0, (height, width)


def test_nchw_is_exact_transpose_of_nhwc():
    data = encode_jpeg(smooth_rgb(90, 130))
    for training in (True, False):
        nhwc = reader.augment(data, 48, training=training, seed=7)
        nchw = reader.augment(data, 48, training=training, seed=7, layout="NCHW")
        assert nchw.shape == (3, 48, 48)
        np.testing.assert_array_equal(nchw, nhwc.transpose(2, 0, 1))


def test_flip_mirrors_the_crop():
    data = encode_jpeg(smooth_rgb(90, 130))
    flips = set()
    for seed in range(16):
        plain = reader.augment(data, 40, seed=seed, random_flip=False)
        maybe = reader.augment(data, 40, seed=seed)
        if np.array_equal(maybe, plain):
            flips.add(False)
        else:
            np.testing.assert_array_equal(maybe, plain[:, ::-1])
            flips.add(True)
    assert flips == {True, False}


def test_random_crops_respect_area_and_aspect():
    areas, aspects = [], []
    for seed in range(2000):
        x, y, w, h = _reader.random_resized_crop(400, 300, seed, RECIPE_CROP)
        assert 0 <= x and 0 <= y and x + w <= 400 and y + h <= 300 and w >= 1 and h >= 1
        areas.append(w * h / (400 * 300))
        aspects.append(w / h)
    # Rounding the box to whole pixels moves area and aspect a little past the bounds.
    (area_min, _), (aspect_min, aspect_max) = geometry.TRAIN_AREA_RANGE, geometry.TRAIN_ASPECT_RANGE
    assert area_min * 0.95 <= min(areas) < 0.15 and max(areas) > 0.9
    assert aspect_min * 0.97 <= min(aspects) < 0.8 and 1.25 < max(aspects) <= aspect_max * 1.03
    # A strip far outside the aspect range falls back to a centred crop of allowed aspect.
    strip_crop = _reader.CropOptions(area_min=0.9, area_max=1.0, aspect_min=RECIPE_CROP.aspect_min,
                                     aspect_max=RECIPE_CROP.aspect_max, max_attempts=10)
    x, y, w, h = _reader.random_resized_crop(1000, 10, 0, strip_crop)
    assert (w, h) == (13, 10) and x == (1000 - 13) // 2


def test_full_area_crop_is_a_plain_resize():
    data = encode_jpeg(smooth_rgb(100, 100))
    full = reader.augment(data, 32, seed=1, area_range=(1.0, 1.0), aspect_range=(1.0, 1.0),
                          random_flip=False, use_dct_scaling=False,
                          fast_idct=False)  # the reference decodes with ISLOW
    expected = np.asarray(Image.fromarray(reference_decode(data)).resize((32, 32), Image.BILINEAR))
    assert np.abs(full.astype(int) - expected).max() <= 2


def progressive_files():
    """Multi-scan encodings of detailed content, 333 x 457 (not iMCU-aligned): OpenCV's
    (libjpeg-turbo's standard progression), Pillow's with optimised tables (a DHT segment
    before each scan, which the entropy decoder may already have reached when a scan is cut),
    4:4:4, grayscale, and Pillow's with restart markers (which keep the plain path)."""
    rng = np.random.default_rng(5)
    rgb = np.clip(smooth_rgb(333, 457).astype(float) + rng.normal(0, 12, (333, 457, 3)), 0, 255)
    rgb = rgb.astype(np.uint8)

    def pil(**options):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=90, progressive=True, **options)
        return buffer.getvalue()

    gray = io.BytesIO()
    Image.fromarray(rgb).convert("L").save(gray, format="JPEG", quality=85, progressive=True)
    # A flat lower half (a clear sky, upside down): AC scans run out of bits there, so the
    # decoder reads a scan's end marker while rows remain, before the cut would jump to it.
    flat = rgb.copy()
    flat[150:] = 128
    return {"opencv-420": encode_jpeg(rgb, kind="progressive"),
            "opencv-420-flat-bottom": encode_jpeg(flat, kind="progressive"),
            "pil-420-optimised": pil(subsampling=2, optimize=True),
            "pil-444": pil(subsampling=0), "pil-gray": gray.getvalue(),
            "pil-restart": pil(subsampling=2, restart_marker_rows=1)}


PROGRESSIVE = progressive_files()


def cut_and_plain(data, box, size):
    """(cut pixels, scans cut, plain pixels) of one ROI decode with and without the skip."""
    results = []
    for skip in (True, False):
        decoder = _reader.DecoderOptions(dct_scales=list(range(1, 9)), skip_rows_below_crop=skip)
        pixels, _, scans_cut = _reader.decode_crop_resize(
            data, box, size, size, False, _reader.ImageOptions(use_dct_scaling=True), decoder)
        results.append((pixels, scans_cut))
    assert results[1][1] == 0
    return results[0][0], results[0][1], results[1][0]


@pytest.mark.parametrize("name", sorted(PROGRESSIVE))
def test_progressive_scans_stop_below_the_crop_with_the_same_pixels(name):
    data = PROGRESSIVE[name]
    assert reader.jpeg_info(data)["progressive"]
    restart = name == "pil-restart"
    # A box in the top third: every scan stops early (none with restart markers).
    top, cut, plain = cut_and_plain(data, (40.5, 3.25, 200, 90), 64)
    assert np.array_equal(top, plain)
    scans = 6 if name == "pil-gray" else 10
    assert cut == (0 if restart else scans), cut
    # Boxes ending anywhere, down to the last iMCU rows: cuts everywhere, including where the
    # decoder already stands on the next marker; nothing to cut at the bottom.
    for y in (0, 60):
        for bottom in range(y + 24, 334, 12):
            pixels, _, plain = cut_and_plain(data, (10, y, 300, bottom - y), 48)
            assert np.array_equal(pixels, plain), (y, bottom)
    # The reader's own crops, training (224 and 48 px, DCT-scaled) and evaluation.
    for seed in range(12):
        for size, training in ((224, True), (48, True), (64, False)):
            cut = reader.augment(data, size, seed=seed, training=training)
            plain = reader.augment(data, size, seed=seed, training=training,
                                   skip_rows_below_crop=False)
            assert np.array_equal(cut, plain), (seed, size, training)


def test_baseline_files_have_no_scans_to_cut():
    data = encode_jpeg(smooth_rgb(333, 457), kind="420")
    pixels, cut, plain = cut_and_plain(data, (40.5, 3.25, 200, 90), 64)
    assert cut == 0 and np.array_equal(pixels, plain)
