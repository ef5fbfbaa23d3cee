"""Real labelled images that packages ship, written as class-per-folder JPEG sets, for
benchmarks and accuracy checks on data no one here made (test extras: scikit-learn).

    python -m bench.realdata digits --out /tmp/digits48 --size 48
    python -m bench.realdata digits --out /tmp/digits04 --size 48 --digits 0,1,2,3,4


`digits`: scikit-learn's load_digits, 1,797 scans of handwritten digits (8x8, 17 grey levels,
from the UCI optical-recognition set), one folder per digit, each scan scaled to --size pixels
(bicubic, as a scanner's output would be resampled) and saved as a grey JPEG (quality 95).
`--digits` keeps only those classes: a source task on some digits and a target task on the
others is the transfer-learning workflow (train, then fine-tune with the logits excluded) on
real scans.
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realdata",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["digits"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--digits", help="comma-separated digits to keep (default: all ten)")
    args = parser.parse_args(argv)
    try:
        digits = None
        if args.digits is not None:
            try:
                digits = [int(part) for part in args.digits.split(",")]
            except ValueError:
                raise ValueError(f"--digits {args.digits}: need comma-separated digits 0-9")
        print(write_digits(args.out, args.size, digits=digits))
    except (FileExistsError, ValueError, ImportError) as error:
        print(f"bench.realdata: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
