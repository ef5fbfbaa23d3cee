"""Writes the fuzzer's starting corpus: valid JPEGs of every kind the reader supports, each
behind a few 12-byte parameter headers (see fuzz_decode.cc for their meaning).

    python fuzz/make_seeds.py OUT_DIR

Made at run time with PIL and OpenCV: baseline 4:2:0, 4:2:2, 4:4:4, progressive, grayscale
(baseline and progressive), CMYK (Adobe, inverted), restart markers, optimised Huffman tables,
EXIF and ICC segments, quality 1 and 100, 1x1, 1xN, Nx1, 8x8, 16x16 and odd sizes. Plus the
committed files in fuzz/seeds/ that PIL cannot write (arithmetic coding, 4:1:1, 4:4:0, 3x2 and
chroma-larger-than-luma sampling, progressive with restarts; made with libjpeg-turbo's cjpeg
and jpegtran, see fuzz/README.md) and the crash inputs in fuzz/regressions/.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys

import cv2
import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
PARAM_BYTES = 12

# Parameter headers every image gets: training and eval crops, with and without DCT scaling,
# NCHW, fast IDCT, the merged upsampler, only the scalar DCT scales, extreme crop ranges.
FIXED_HEADERS = [
    bytes([31, 0b0000111, 0, 20, 255, 47, 10, 0, 0, 0, 255, 255]),     # training 32 px, defaults
    bytes([15, 0b0000010, 0, 20, 255, 47, 10, 3, 64, 64, 127, 127]),   # eval 16 px
    bytes([63, 0b0001101, 0, 255, 0, 63, 0, 9, 200, 10, 20, 250]),     # no scaling, NCHW, full area
    bytes([7, 0b0110011, 0b01110100, 0, 0, 0, 255, 5, 1, 2, 3, 4]),    # scalar scales, fast, merged
    bytes([0, 0b1000011, 0x01, 0, 255, 255, 255, 15, 255, 255, 0, 0]),  # 1 px, 1/8 only, thin box
]


def smooth(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32) * 255, (0, 0), 2)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = noise * 0.5 + np.stack([xx / max(width, 1) * 120, yy / max(height, 1) * 120,
                                    (xx + yy) / max(width + height, 1) * 80], -1) + 30
    return np.clip(image, 0, 255).astype(np.uint8)


def pil_jpeg(rgb: np.ndarray, mode: str = "RGB", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def cv2_jpeg(rgb: np.ndarray, params: list[int]) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    return encoded.tobytes()


def generated() -> dict[str, bytes]:
    rng_image = lambda h, w, s=0: smooth(h, w, 100 + s)  # noqa: E731
    exif = Image.Exif()
    exif[0x010E] = "fuzz seed"  # ImageDescription
    files = {
        "baseline_420_45x61.jpg": pil_jpeg(rng_image(45, 61), quality=85, subsampling=2),
        "baseline_422_45x61.jpg": pil_jpeg(rng_image(45, 61, 1), quality=85, subsampling=1),
        "baseline_444_45x61.jpg": pil_jpeg(rng_image(45, 61, 2), quality=85, subsampling=0),
        "progressive_420_61x45.jpg": pil_jpeg(rng_image(61, 45, 3), quality=85, progressive=True),
        "progressive_444_33x40.jpg": pil_jpeg(rng_image(33, 40, 4), quality=85, subsampling=0,
                                              progressive=True),
        "gray_45x61.jpg": pil_jpeg(rng_image(45, 61, 5), "L", quality=85),
        "gray_progressive_29x37.jpg": pil_jpeg(rng_image(29, 37, 6), "L", quality=85,
                                               progressive=True),
        "cmyk_adobe_40x52.jpg": pil_jpeg(rng_image(40, 52, 7), "CMYK", quality=85),
        "cmyk_progressive_24x20.jpg": pil_jpeg(rng_image(24, 20, 8), "CMYK", quality=85,
                                               progressive=True),
        "restart_every_block_40x56.jpg": pil_jpeg(rng_image(40, 56, 9), quality=80,
                                                  restart_marker_blocks=1),
        "restart_every_row_64x40.jpg": cv2_jpeg(rng_image(64, 40, 10),
                                                [cv2.IMWRITE_JPEG_QUALITY, 80,
                                                 cv2.IMWRITE_JPEG_RST_INTERVAL, 2]),
        "optimized_huffman_45x61.jpg": pil_jpeg(rng_image(45, 61, 11), quality=85, optimize=True),
        "exif_icc_40x40.jpg": pil_jpeg(rng_image(40, 40, 12), quality=85, exif=exif.tobytes(),
                                       icc_profile=bytes(range(256)) * 4),
        "quality_1_48x48.jpg": pil_jpeg(rng_image(48, 48, 13), quality=1),
        "quality_100_20x20.jpg": pil_jpeg(rng_image(20, 20, 14), quality=100),
        "tiny_1x1.jpg": pil_jpeg(rng_image(1, 1, 15), quality=90),
        "tiny_1x1_gray.jpg": pil_jpeg(rng_image(1, 1, 16), "L", quality=90),
        "line_1x97.jpg": pil_jpeg(rng_image(1, 97, 17), quality=90),
        "column_97x1.jpg": pil_jpeg(rng_image(97, 1, 18), quality=90, progressive=True),
        "mcu_8x8.jpg": pil_jpeg(rng_image(8, 8, 19), quality=90, subsampling=0),
        "mcu_16x16.jpg": pil_jpeg(rng_image(16, 16, 20), quality=90),
        "odd_17x33.jpg": pil_jpeg(rng_image(17, 33, 21), quality=90),
        "odd_33x17_422.jpg": pil_jpeg(rng_image(33, 17, 22), quality=90, subsampling=1),
        "wide_9x150.jpg": pil_jpeg(rng_image(9, 150, 23), quality=75),
    }
    return files


def committed(folder: str) -> dict[str, bytes]:
    if not os.path.isdir(folder):
        return {}
    return {name: open(os.path.join(folder, name), "rb").read()
            for name in sorted(os.listdir(folder)) if not name.startswith(".")}


def write_corpus(out_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    count = 0
    images = {**generated(), **committed(os.path.join(HERE, "seeds"))}
    for name, data in images.items():
        headers = FIXED_HEADERS + [rng.integers(0, 256, PARAM_BYTES, dtype=np.uint8).tobytes()
                                   for _ in range(2)]
        for header in headers:
            body = header + data
            digest = hashlib.sha1(body).hexdigest()[:16]
            with open(os.path.join(out_dir, f"{os.path.splitext(name)[0]}-{digest}"), "wb") as f:
                f.write(body)
            count += 1
    # Regression inputs are already complete fuzzer inputs (header included): copied as they are.
    for name, data in committed(os.path.join(HERE, "regressions")).items():
        with open(os.path.join(out_dir, f"regression-{name}"), "wb") as handle:
            handle.write(data)
        count += 1
    return count


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"make_seeds: {write_corpus(sys.argv[1])} seed inputs in {sys.argv[1]}")
