"""Real labelled images that packages ship, written as class-per-folder JPEG sets, for
benchmarks and accuracy checks on data no one here made (test extras: scikit-learn).

    python -m bench.realdata digits --out /tmp/digits48 --size 48

`digits`: scikit-learn's load_digits, 1,797 scans of handwritten digits (8x8, 17 grey levels,
from the UCI optical-recognition set), one folder per digit, each scan scaled to --size pixels
(bicubic, as a scanner's output would be resampled) and saved as a grey JPEG (quality 95).
Never the product's default data: the built-in set stays flowers_tl.synth's.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np


def write_digits(out_dir: str, size: int = 48, quality: int = 95) -> str:
    """Writes load_digits into out_dir/<digit>/<index>.jpg (out_dir must be missing or empty);
    returns its absolute path."""
    import cv2
    from sklearn.datasets import load_digits

    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir}: folder is not empty; remove it or pick another --out")
    if size < 8:
        raise ValueError(f"--size {size}: must be >= 8 (the scans are 8x8)")
    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realdata",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["digits"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=48)
    args = parser.parse_args(argv)
    try:
        print(write_digits(args.out, args.size))
    except (FileExistsError, ValueError, ImportError) as error:
        print(f"bench.realdata: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
