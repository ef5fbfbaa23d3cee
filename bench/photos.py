"""Do the generated photos weigh what real ones weigh? Bytes per pixel side by side.

    python -m bench.photos --out results/photos.json
    python -m bench.photos --corpus generated=/tmp/flowers --corpus real=/tmp/real-photos

Without --corpus it builds both yardsticks in a temporary folder: `generated`, the built-in
set's generator (flowers_tl.synth, 5 classes x --per_class) and `real`, the photographs that
scikit-image and scikit-learn ship, re-encoded like camera and web files (python -m
bench.realdata photos: same kind schedule and quality mix as the generator, tf_flowers-like
sizes, never enlarged). Per corpus, one row: file count, JPEG kinds (read from the SOF marker,
not from how the files were made), pixels, file size and bytes per pixel (file bytes / (width x
height), grayscale files included, as a decoder meets them) with mean, median, 10th/90th
percentile and standard deviation; bytes per pixel by kind; and `content_bpp_q90`, every
colour file decoded and re-encoded at quality 90, 4:2:0, which takes the quality mix out and
leaves the content's entropy. Bytes per pixel is what sets the entropy decoder's work (the
Huffman decode every backend shares), so these are the figures the generator is tuned on.

The table goes to stdout; --out also writes it with the environment as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from typing import Any, Sequence

import numpy as np

KINDS = ("420", "444", "progressive", "grayscale", "other")


def jpeg_kind(data: bytes) -> tuple[str, int, int]:
    """(kind, height, width) from the first SOF marker: "grayscale" (one component),
    "progressive" (SOF2), "420" / "444" (baseline or extended, luma sampling 2x2 / 1x1 with 1x1
    chroma) or "other". ValueError when no SOF marker is found."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError(f"not a marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            segment = data[position + 4:position + 2 + length]
            height, width = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
            components = segment[5]
            if components == 1:
                return "grayscale", height, width
            if marker == 0xC2:
                return "progressive", height, width
            sampling = [segment[6 + 3 * index + 1] for index in range(components)]
            if sampling[0] == 0x22 and all(factor == 0x11 for factor in sampling[1:]):
                return "420", height, width
            if all(factor == 0x11 for factor in sampling):
                return "444", height, width
            return "other", height, width
        position += 2 + length
    raise ValueError("no SOF marker")


def _spread(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "median": float(np.median(array)),
            "p10": float(np.percentile(array, 10)), "p90": float(np.percentile(array, 90)),
            "std": float(array.std())}


def corpus_stats(files: Sequence[str]) -> dict[str, Any]:
    """The row described in the module docstring for these JPEG files."""
    import cv2

    if not files:
        raise ValueError("no JPEG files to measure")
    kinds, pixels, sizes, bpp, content = [], [], [], [], []
    for path in files:
        with open(path, "rb") as handle:
            data = handle.read()
        kind, height, width = jpeg_kind(data)
        kinds.append(kind)
        pixels.append(height * width)
        sizes.append(len(data))
        bpp.append(len(data) / (height * width))
        if kind != "grayscale":
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            ok, again = cv2.imencode(".jpg", decoded, [
                cv2.IMWRITE_JPEG_QUALITY, 90,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420])
            content.append(len(again) / (height * width))
    by_kind = {kind: float(np.mean([b for b, k in zip(bpp, kinds) if k == kind]))
               for kind in KINDS if kind in kinds}
    return {"files": len(files), "kinds": dict(Counter(kinds)), "pixels": _spread(pixels),
            "file_bytes": _spread(sizes), "bpp": _spread(bpp), "bpp_by_kind": by_kind,
            "content_bpp_q90": _spread(content) if content else None}


def jpeg_files(root: str) -> list[str]:
    files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root)
                   for name in names if name.lower().endswith((".jpg", ".jpeg")))
    if not files:
        raise FileNotFoundError(f"{root}: no .jpg/.jpeg files under it")
    return files


def build_default_corpora(folder: str, per_class: int) -> dict[str, str]:
    """{"generated": ..., "real": ...}: the two yardsticks, written under `folder`."""
    from bench.realdata import write_photos
    from flowers_tl import synth

    generated = synth.generate(os.path.join(folder, "generated"), classes=5, per_class=per_class,
                               workers=os.cpu_count() or 1)
    return {"generated": generated, "real": write_photos(os.path.join(folder, "real"))}


def table(corpora: dict[str, dict[str, Any]]) -> str:
    header = ("| corpus | files | kinds | mean px | file KB mean / median | bytes/px mean | median |"
              " p10-p90 | std | content bytes/px at q90 4:2:0 (mean / median) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, row in corpora.items():
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(row["kinds"].items()))
        content = row["content_bpp_q90"]
        lines.append(
            f"| {name} | {row['files']} | {kinds} | {row['pixels']['mean']:,.0f} | "
            f"{row['file_bytes']['mean'] / 1000:.1f} / {row['file_bytes']['median'] / 1000:.1f} | "
            f"{row['bpp']['mean']:.3f} | {row['bpp']['median']:.3f} | "
            f"{row['bpp']['p10']:.3f}-{row['bpp']['p90']:.3f} | {row['bpp']['std']:.3f} | "
            + (f"{content['mean']:.3f} / {content['median']:.3f} |" if content else "- |"))
    lines += ["", "| corpus | " + " | ".join(f"bytes/px {kind}" for kind in KINDS[:4]) + " |",
              "|" + "---|" * 5]
    for name, row in corpora.items():
        by_kind = row["bpp_by_kind"]
        lines.append(f"| {name} | " + " | ".join(
            f"{by_kind[kind]:.3f}" if kind in by_kind else "-" for kind in KINDS[:4]) + " |")
    return "\n".join(lines)


def ratios(corpora: dict[str, dict[str, Any]], numerator: str, denominator: str) -> dict[str, float]:
    """numerator / denominator of the headline figures (e.g. generated / real)."""
    a, b = corpora[numerator], corpora[denominator]
    out = {f"bpp_{stat}": a["bpp"][stat] / b["bpp"][stat] for stat in ("mean", "median")}
    out["file_bytes_mean"] = a["file_bytes"]["mean"] / b["file_bytes"]["mean"]
    if a["content_bpp_q90"] and b["content_bpp_q90"]:
        out["content_bpp_q90_mean"] = a["content_bpp_q90"]["mean"] / b["content_bpp_q90"]["mean"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.photos", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", action="append", default=[], metavar="NAME=DIR",
                        help="a folder of JPEGs to measure (repeatable); none: build generated and real")
    parser.add_argument("--per_class", type=int, default=24,
                        help="generated corpus when built here: images per class (5 classes)")
    parser.add_argument("--out", help="also write the result as one JSON object here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-photos-") as folder:
        try:
            if args.corpus:
                roots = dict(item.split("=", 1) for item in args.corpus)
            else:
                roots = build_default_corpora(folder, args.per_class)
            corpora = {name: corpus_stats(jpeg_files(root)) for name, root in roots.items()}
        except (ValueError, FileNotFoundError, ImportError) as error:
            print(f"bench.photos: error: {error}", file=sys.stderr)
            return 2
    print(table(corpora))
    result: dict[str, Any] = {"corpora": corpora, "roots": roots}
    if {"generated", "real"} <= corpora.keys():
        result["generated_over_real"] = ratios(corpora, "generated", "real")
        print("generated / real: " + ", ".join(f"{key} {value:.2f}"
                                                for key, value in result["generated_over_real"].items()))
    if args.out:
        from flowers_tl import synth
        from flowers_tl.env import describe_environment

        result["generator_version"] = synth.GENERATOR_VERSION
        result["environment"] = describe_environment()
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
