"""Where the time goes in one training crop, stage by stage, on generated and on real photos.

    python -m bench.profile --out results/profile.json
    python -m bench.profile --corpus real=/tmp/real-photos --image_size 224 \\
        --variants default,accurate_idct,merged_upsampling

For each corpus (default: both of bench.photos' yardsticks, built in a temporary folder), --files
files spread over its listing, --crops training crops each (the crops a Reader with --seed draws
in epochs 0, 1, ...), every crop through `_reader.profile_crop` (csrc/profile.h): the reader's
own decode path with libjpeg's module methods wrapped in timers, --repeats times, the minimum of
each stage kept. One table per corpus and decoder variant, each stage in ms/image (mean over
the crops) and its share of the stages' sum:

  read            the file into memory (page cache)
  header          jpeg_read_header, crop choice
  setup           jpeg_start_decompress and the column crop; for progressive (multi-scan) files
                  this is where every scan is entropy-decoded, each down to the crop's last
                  rows (variant every_row: the whole image, as libjpeg alone does)
  entropy         Huffman decode of the MCUs the crop needs: every row down to its bottom edge,
                  all columns (single-scan files)
  idct            dequantisation and inverse DCT of the crop's columns
  upsample        chroma upsampling (with the merged upsampler: also colour conversion)
  color_convert   YCbCr -> RGB
  decode_other    the rest of the decode: row bookkeeping, skipping, abort
  resize          the antialiased resample into the batch slot

Below the stages: the timers' own cost (estimated, in no stage), the same crops through the
reader's path without timers (`reader path`), through flowers_tl.reader.Reader with one thread
(`Reader, 1 thread`: what a worker achieves with batching, per image, best of --repeats runs),
and the references: the
decode-only floor of the same rows (header + entropy, + setup for progressive files), entropy
decode of every row (jpeg_read_coefficients), a whole-image RGB decode at 8/8, and the same crop
decoded at 8/8 (DCT scaling off). Per JPEG kind: ms/image and the entropy floor's share.

Variants (--variants, interleaved file by file so a busy machine hits them alike): `default`
(the reader's training defaults: JDCT_IFAST, fancy upsampling), `accurate_idct` (JDCT_ISLOW,
what evaluation uses), `merged_upsampling` (fancy upsampling off: libjpeg's merged upsample +
colour conversion), `fast` (IFAST and merged upsampling, whatever the defaults), `every_row`
(progressive scans decoded over the whole image, not cut below the crop: the same pixels).
The others' pixels differ from the default's by at most a few levels (tests/test_profile.py
states the tolerances).
The machine's load moves every figure: read them as shares and ratios, not as published rates.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

STAGES = ("read", "header", "start", "entropy", "idct", "upsample", "color_convert",
          "decode_other", "resize")
STAGE_NAMES = {"start": "setup (progressive: + entropy, all scans)"}
REFERENCES = ("full_entropy", "full_decode_rgb", "full_decode_ycbcr", "crop_no_dct_scaling")
VARIANTS = {"default": {}, "accurate_idct": {"fast_idct": False},
            "merged_upsampling": {"fancy_upsampling": False},
            "fast": {"fast_idct": True, "fancy_upsampling": False},
            "every_row": {"skip_rows_below_crop": False}}


def pick_files(files: Sequence[str], count: int) -> list[str]:
    """`count` files spread evenly over the listing (all of them when count >= len)."""
    if count >= len(files):
        return list(files)
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, count).round()]


def reader_config(image_size: int, seed: int, decoder: dict[str, Any]):
    from flowers_tl.reader import ReaderConfig

    return ReaderConfig(batch_size=8, image_size=image_size, seed=seed, num_threads=1,
                        **decoder).resolved()


def profile_files(files: Sequence[str], image_size: int, crops: int, repeats: int, seed: int,
                  variants: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """{variant: one profile_crop row per (file, crop)}; file_index is the position in `files`,
    so the crops are those of Reader(files, seed=seed)'s epochs 0 .. crops-1."""
    from bench.photos import jpeg_kind
    from flowers_tl import _reader

    options = {name: reader_config(image_size, seed, VARIANTS[name]).to_options() for name in variants}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for index, path in enumerate(files):
        with open(path, "rb") as handle:
            kind = jpeg_kind(handle.read())[0]
        for epoch in range(crops):
            for name in variants:  # interleaved: A, B, A, B ...
                row = _reader.profile_crop(path, options[name].image, options[name].decoder, seed,
                                           epoch, index, repeats)
                row.update(path=path, epoch=epoch, kind=kind)
                rows[name].append(row)
    return rows


def reader_ms_per_image(files: Sequence[str], image_size: int, crops: int, seed: int,
                        decoder: dict[str, Any], repeats: int) -> float:
    """flowers_tl.reader.Reader over `files` for `crops` epochs with one decode thread: wall
    time per image delivered, the best of `repeats` runs after one untimed warm-up epoch."""
    from flowers_tl.reader import Reader

    labels = [0] * len(files)
    arguments = dict(image_size=image_size, seed=seed, num_threads=1, **decoder)
    with Reader(files, labels, 8, num_epochs=1, **arguments) as reader:
        for _ in reader:
            pass
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        images = 0
        with Reader(files, labels, 8, num_epochs=crops, **arguments) as reader:
            for _, batch_labels in reader:
                images += len(batch_labels)
        best = min(best, (time.perf_counter() - start) / images * 1e3)
    return best


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means in ms/image over the rows, shares of the stages' sum, and per-kind figures."""
    def mean_ms(key: str, subset: Sequence[dict[str, Any]] = rows) -> float:
        return float(np.mean([row[key] for row in subset])) * 1e3

    def floor_ms(subset: Sequence[dict[str, Any]]) -> float:
        return float(np.mean([row["header"] + row["entropy"] + (row["start"] if row["multi_scan"] else 0)
                              for row in subset])) * 1e3

    total = mean_ms("hooked_total")
    summary: dict[str, Any] = {
        "crops": len(rows),
        "stages_ms": {stage: mean_ms(stage) for stage in STAGES},
        "stages_share": {stage: mean_ms(stage) / total for stage in STAGES},
        "stages_total_ms": total,
        "timer_overhead_ms": mean_ms("timer_overhead"),
        "reader_path_ms": mean_ms("reader_total"),
        "entropy_floor_ms": floor_ms(rows),
        "references_ms": {name: mean_ms(name) for name in REFERENCES},
        "dct_scales_used": {str(m): sum(row["scale_num"] == m for row in rows)
                            for m in sorted({row["scale_num"] for row in rows})},
        "entropy_fraction_mean": float(np.mean([row["entropy_fraction"] for row in rows])),
        "by_kind": {},
    }
    for kind in sorted({row["kind"] for row in rows}):
        subset = [row for row in rows if row["kind"] == kind]
        kind_total = mean_ms("hooked_total", subset)
        summary["by_kind"][kind] = {"crops": len(subset), "ms": kind_total,
                                    "entropy_floor_share": floor_ms(subset) / kind_total}
    return summary


def table(title: str, summary: dict[str, Any]) -> str:
    total = summary["stages_total_ms"]
    lines = [f"### {title}: {summary['crops']} crops, DCT scales used {summary['dct_scales_used']}, "
             f"{summary['entropy_fraction_mean']:.0%} of MCUs entropy-decoded per crop (mean)",
             "| stage | ms/image | share |", "|---|---|---|"]
    for stage in STAGES:
        lines.append(f"| {STAGE_NAMES.get(stage, stage)} | {summary['stages_ms'][stage]:.3f} | "
                     f"{summary['stages_share'][stage]:.1%} |")
    lines.append(f"| **sum of stages** | **{total:.3f}** | 100% |")
    rows = [("timers' own cost (estimated, in no stage)", summary["timer_overhead_ms"]),
            ("reader path, no timers (read + augment_image)", summary["reader_path_ms"])]
    if "reader_ms_per_image" in summary:
        rows.append(("Reader, 1 thread, batches of 8 (wall / image, best run)",
                     summary["reader_ms_per_image"]))
    rows += [("decode-only floor of the same rows (header + entropy)", summary["entropy_floor_ms"]),
             ("entropy decode of every row (jpeg_read_coefficients)", summary["references_ms"]["full_entropy"]),
             ("whole image to RGB, 8/8", summary["references_ms"]["full_decode_rgb"]),
             ("whole image, no colour conversion, 8/8", summary["references_ms"]["full_decode_ycbcr"]),
             ("same crop, DCT scaling off", summary["references_ms"]["crop_no_dct_scaling"])]
    for name, value in rows:
        lines.append(f"| {name} | {value:.3f} | {value / total:.0%} of the sum |")
    lines += ["", "| kind | crops | ms/image | entropy floor share |", "|---|---|---|---|"]
    for kind, row in summary["by_kind"].items():
        lines.append(f"| {kind} | {row['crops']} | {row['ms']:.3f} | {row['entropy_floor_share']:.0%} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", action="append", default=[], metavar="NAME=DIR",
                        help="a class-per-folder JPEG tree (repeatable); none: bench.photos' generated and real")
    parser.add_argument("--files", type=int, default=48, help="files per corpus, spread over its listing")
    parser.add_argument("--crops", type=int, default=2, help="training crops per file (epochs 0..crops-1)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per crop; each stage keeps its minimum")
    parser.add_argument("--image_size", type=int, default=224, help="output side, as the reader's")
    parser.add_argument("--seed", type=int, default=0, help="the Reader seed whose crops are profiled")
    parser.add_argument("--variants", default="default",
                        help=f"comma-separated decoder variants: {', '.join(VARIANTS)}")
    parser.add_argument("--no_reader", action="store_true", help="skip the Reader wall-time row")
    parser.add_argument("--out", help="also write every summary and row as one JSON object here")
    args = parser.parse_args(argv)
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if min(args.files, args.crops, args.repeats, args.image_size) < 1:
        parser.error("--files, --crops, --repeats and --image_size must be >= 1")

    from bench.photos import build_default_corpora
    from flowers_tl.data import DatasetError, list_folder

    result: dict[str, Any] = {"config": vars(args), "corpora": {}}
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as folder:
        try:
            roots = (dict(item.split("=", 1) for item in args.corpus) if args.corpus
                     else build_default_corpora(folder, per_class=24))
            for name, root in roots.items():
                files = pick_files(list_folder(root).files, args.files)
                rows = profile_files(files, args.image_size, args.crops, args.repeats, args.seed, variants)
                result["corpora"][name] = {"root": root, "variants": {}}
                for variant in variants:
                    summary = summarise(rows[variant])
                    if not args.no_reader:
                        summary["reader_ms_per_image"] = reader_ms_per_image(
                            files, args.image_size, args.crops, args.seed, VARIANTS[variant],
                            args.repeats)
                    result["corpora"][name]["variants"][variant] = {"summary": summary,
                                                                    "rows": rows[variant]}
                    print(table(f"{name}, {variant}, {args.image_size} px train crops", summary) + "\n",
                          flush=True)
        except (DatasetError, ValueError, RuntimeError, ImportError) as error:
            print(f"bench.profile: error: {error}", file=sys.stderr)
            return 2
    if args.out:
        from flowers_tl.env import describe_environment

        result["environment"] = describe_environment()
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
