"""Real labelled images that packages ship, written as class-per-folder JPEG sets, for
benchmarks and accuracy checks on data no one here made (test extras: scikit-learn,
scikit-image).

    python -m bench.realdata digits --out /tmp/digits48 --size 48
    python -m bench.realdata digits --out /tmp/digits04 --size 48 --digits 0,1,2,3,4
    python -m bench.realdata photos --out /tmp/real-photos

`digits`: scikit-learn's load_digits, 1,797 scans of handwritten digits (8x8, 17 grey levels,
from the UCI optical-recognition set), one folder per digit, each scan scaled to --size pixels
(bicubic, as a scanner's output would be resampled) and saved as a grey JPEG (quality 95).
`--digits` keeps only those classes: a source task on some digits and a target task on the
others is the transfer-learning workflow (train, then fine-tune with the logits excluded) on
real scans.

`photos`: the colour photographs that ship inside scikit-image (astronaut, chelsea, coffee,
rocket, the two motorcycle stereo views; no download) and scikit-learn (china, flower), 8
photos of 427-741 px, re-encoded the way a camera or photo site writes them, as a real-content
stand-in for tf_flowers when benchmarking decoders. One folder per photo, --variants files each
(default 16: 128 files). Variant 0 is the whole photo at its own size; the others take
flowers_tl.synth's tf_flowers size and aspect model (draw_image_size), cut a random window of
that aspect ratio at a random scale between native pixels and the largest window that fits, and
shrink it to that size with pixel-area averaging (INTER_AREA, as a camera or site resizes).
Never enlarged: the sources are at most 741 px, so sides over that (tf_flowers' ~3% of
640-1024 px files) are capped at the source's; upsampling would add pixels without entropy.
Kinds and quality follow the generator's schedule and mix exactly (synth.KIND_SCHEDULE by
variant index: 70% baseline 4:2:0, 10% each 4:4:4, progressive, grayscale; quality
synth_render.draw_quality), so bytes per pixel compare like with like (bench.photos). Caveat:
rocket, china and flower ship as JPEGs already (their 8x8 grid shows through only at native
scale, variant 0 and unscaled windows).

Never the product's default data: the built-in set stays flowers_tl.synth's.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np


def write_digits(out_dir: str, size: int = 48, quality: int = 95,
                 digits: Sequence[int] | None = None) -> str:
    """Writes load_digits into out_dir/<digit>/<index>.jpg (out_dir must be missing or empty),
    only the classes in `digits` when given; returns its absolute path."""
    import cv2
    from sklearn.datasets import load_digits

    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir}: folder is not empty; remove it or pick another --out")
    if size < 8:
        raise ValueError(f"--size {size}: must be >= 8 (the scans are 8x8)")
    keep = set(range(10)) if digits is None else set(digits)
    if not keep or not keep <= set(range(10)) or (digits is not None and len(keep) != len(digits)):
        raise ValueError(f"--digits {','.join(map(str, digits or []))}: need distinct digits "
                         "0-9, at least one")
    scans = load_digits()
    for index, (image, label) in enumerate(zip(scans.images, scans.target)):
        if int(label) not in keep:
            continue
        grey = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
        grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_CUBIC)
        folder = os.path.join(out_dir, str(int(label)))
        os.makedirs(folder, exist_ok=True)
        ok, data = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"could not encode digit scan {index}")
        with open(os.path.join(folder, f"{index:04d}.jpg"), "wb") as handle:
            handle.write(data.tobytes())
    return out_dir


def package_photos() -> dict[str, np.ndarray]:
    """{name: uint8 RGB array} of the colour photographs bundled with scikit-image and
    scikit-learn (no network: skimage.data's bundled files only)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    left, right, _ = skimage.data.stereo_motorcycle()
    china, flower = load_sample_images().images
    photos = {"astronaut": skimage.data.astronaut(), "chelsea": skimage.data.chelsea(),
              "coffee": skimage.data.coffee(), "rocket": skimage.data.rocket(),
              "motorcycle_left": left, "motorcycle_right": right, "china": china, "flower": flower}
    return {name: np.ascontiguousarray(photo[..., :3], dtype=np.uint8) for name, photo in photos.items()}


def photo_variant(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A window of `photo` (RGB) at a tf_flowers-like size and aspect ratio, never enlarged."""
    import cv2

    from flowers_tl.synth import draw_image_size

    source_height, source_width = photo.shape[:2]
    height, width = draw_image_size(rng, None, None)
    # Largest window of the output's aspect ratio that fits; shrink the output to it if needed.
    fit = min(source_height / height, source_width / width)
    if fit < 1:
        height, width = max(1, int(height * fit)), max(1, int(width * fit))
        fit = 1.0
    scale = rng.uniform(1.0, fit)  # source pixels per output pixel
    window_height = min(source_height, round(height * scale))
    window_width = min(source_width, round(width * scale))
    top = int(rng.integers(0, source_height - window_height + 1))
    left = int(rng.integers(0, source_width - window_width + 1))
    window = photo[top:top + window_height, left:left + window_width]
    if (window_height, window_width) == (height, width):
        return np.ascontiguousarray(window)
    return cv2.resize(window, (width, height), interpolation=cv2.INTER_AREA)


def write_photos(out_dir: str, variants: int = 16, seed: int = 0,
                 names: Sequence[str] | None = None) -> str:
    """Writes package_photos() (or only those in `names`) as out_dir/<photo>/<photo>_<variant:03d>.jpg
    (out_dir must be missing or empty); returns its absolute path. Same arguments, same bytes."""
    from flowers_tl.synth import KIND_SCHEDULE
    from flowers_tl.synth_render import draw_quality, encode_bgr

    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir}: folder is not empty; remove it or pick another --out")
    if variants < 1:
        raise ValueError(f"--variants {variants}: must be >= 1")
    photos = package_photos()
    unknown = sorted(set(names or ()) - photos.keys())
    if unknown:
        raise ValueError(f"unknown photos {unknown}; the package photos are {sorted(photos)}")
    for number, (name, photo) in enumerate(photos.items()):
        if names is not None and name not in names:
            continue
        folder = os.path.join(out_dir, name)
        os.makedirs(folder, exist_ok=True)
        for variant in range(variants):
            rng = np.random.default_rng([seed, number, variant])
            pixels = photo if variant == 0 else photo_variant(photo, rng)
            data = encode_bgr(np.ascontiguousarray(pixels[..., ::-1]),
                              KIND_SCHEDULE[variant % len(KIND_SCHEDULE)], draw_quality(rng))
            with open(os.path.join(folder, f"{name}_{variant:03d}.jpg"), "wb") as handle:
                handle.write(data)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realdata",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["digits", "photos"])
    parser.add_argument("--out", required=True, help="folder to create (must be missing or empty)")
    parser.add_argument("--size", type=int, default=48, help="digits: side of each scan in pixels")
    parser.add_argument("--digits", help="digits: comma-separated digits to keep (default: all ten)")
    parser.add_argument("--variants", type=int, default=16, help="photos: files per photo")
    parser.add_argument("--seed", type=int, default=0, help="photos: fixes windows, kinds, qualities")
    args = parser.parse_args(argv)
    try:
        if args.name == "digits":
            digits = None
            if args.digits is not None:
                try:
                    digits = [int(part) for part in args.digits.split(",")]
                except ValueError:
                    raise ValueError(f"--digits {args.digits}: need comma-separated digits 0-9")
            print(write_digits(args.out, args.size, digits=digits))
        else:
            print(write_photos(args.out, args.variants, args.seed))
    except (FileExistsError, ValueError, ImportError) as error:
        print(f"bench.realdata: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
