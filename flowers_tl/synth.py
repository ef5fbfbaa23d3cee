"""Generated flowers-like JPEG set, laid out like tf_flowers' ``flower_photos/``.

    python -m flowers_tl.synth --out /tmp/flowers --classes 5 --per-class 100 --seed 0

writes ``<class>/<class>_<index:05d>.jpg`` plus a ``LICENSE.txt`` at the root, so
the set stands in for tf_flowers wherever no network or licence allows the real
one. What is imitated, and why:

* sizes: mostly 240-500 px per side in photo aspect ratios, ~3% up to ~1000 px,
  so resize cost and decode cost look like the real set's;
* JPEG kinds on a fixed schedule over the index (70% baseline 4:2:0, 10% each of
  4:4:4, progressive and grayscale), so even a 6-per-class test set holds every
  kind a decoder has to handle, at a web-photo quality mix (70-96, mean ~88);
* bytes per pixel like real photos at the same kind schedule and quality mix
  (``python -m bench.photos``: mean 0.33 vs 0.29, median 0.29 vs 0.28 against
  the photos scikit-image and scikit-learn ship, re-encoded alike; version 1:
  0.21 / 0.18), from fine 1/f luma texture and luma-heavy sensor noise, so
  Huffman decoding weighs what it weighs on real photos (baseline files cost the
  same ns per byte; progressive ones ~1.25x more per byte than the real ones);
* content: textured backgrounds, flower shapes whose hue, petal count, petal
  shape and centre depend on the class, with deliberate overlap (yellow
  dandelions vs sunflowers, red roses vs tulips, white daisies vs dandelion seed
  heads, 10% grayscale) and nuisance position, scale, tilt, lighting, blur and
  noise, so a classifier has to learn shapes over a few epochs, not one colour.

Class ``class_offset + i`` always draws the same kind of flower; ``class_offset``
therefore picks another family of classes (a different source task for transfer
learning) while ``seed`` only picks other samples of the same classes. The same
arguments give byte-identical files: each image has its own numpy Generator
seeded from (seed, class index, image index). The drawing itself lives in
``flowers_tl.synth_render``; this module lays out, writes and caches the set.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter

import numpy as np

from flowers_tl.synth_render import encode, flower_class, render

GENERATOR_VERSION = 2  # bump whenever output bytes change, so cached sets are regenerated
DEFAULT_PER_CLASS = 100
# Kinds by index % 10: minority kinds early, so any class with >= 6 images holds all four.
KIND_SCHEDULE = ("420", "444", "420", "progressive", "420", "grayscale", "420", "420", "420", "420")
KIND_NAMES = {"420": "baseline 4:2:0", "444": "baseline 4:4:4", "progressive": "progressive 4:2:0",
              "grayscale": "grayscale"}


def draw_image_size(rng: np.random.Generator, min_side: int | None, max_side: int | None) -> tuple[int, int]:
    """(height, width) in tf_flowers' mix: many 500-wide, some 320-500, ~3% large."""
    if rng.random() < 0.03:
        long_side = int(rng.integers(640, 1025))
    elif rng.random() < 0.6:
        long_side = 500
    else:
        long_side = int(rng.integers(320, 501))
    aspect = rng.choice([1.0, 1.25, 1.333, 1.333, 1.5, 1.5, 1.6, 1.78]) * rng.uniform(0.97, 1.03)
    short_side = min(long_side, max(240, round(long_side / aspect)))
    height, width = (long_side, short_side) if rng.random() < 0.25 else (short_side, long_side)
    scale = 1.0
    if max_side is not None:
        scale = min(scale, max_side / max(height, width))
    if min_side is not None:
        scale = max(scale, min_side / min(height, width))
    height, width = (max(1, round(side * scale)) for side in (height, width))
    if max_side is not None:  # min_side may have pushed the long side past the limit
        height, width = min(height, max_side), min(width, max_side)
    return height, width


def _make_image(task: tuple[int, int, int, int, int, int | None, int | None]) -> tuple[bytes, str, int, int]:
    """(JPEG bytes, kind, height, width) of one image from (seed, class_offset, classes,
    position, index, min_side, max_side).
    Everything random comes from this image's own Generator, so results do not
    depend on which process makes which image, or in which order."""
    seed, class_offset, classes, position, index, min_side, max_side = task
    family = tuple(flower_class(class_offset + number) for number in range(classes))
    rng = np.random.default_rng([seed, class_offset + position, index])
    detail = np.random.default_rng([seed, class_offset + position, index, 1])  # see synth_render
    height, width = draw_image_size(rng, min_side, max_side)
    kind = KIND_SCHEDULE[index % len(KIND_SCHEDULE)]
    rgb = render(rng, family[position], family, height, width, detail)
    return encode(detail, rgb, kind), kind, height, width


def _write_set(out_dir: str, classes: int, per_class: int, seed: int, min_side: int | None,
               max_side: int | None, class_offset: int, workers: int,
               progress: bool = False) -> list[tuple[str, int, int]]:
    """Writes the tree; returns (kind, height, width) per image for the summary. With
    `progress`, a line on stderr every ~15 s with the time left."""
    if classes < 1 or per_class < 1 or class_offset < 0 or seed < 0 or workers < 1:
        raise ValueError(f"need classes, per_class, workers >= 1 and class_offset, seed >= 0; got "
                         f"classes={classes}, per_class={per_class}, workers={workers}, "
                         f"class_offset={class_offset}, seed={seed}")
    if (min_side is not None and min_side < 8) or (max_side is not None and max_side < (min_side or 8)):
        raise ValueError(f"need 8 <= min_side <= max_side; got min_side={min_side}, max_side={max_side}")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        # Writing over an old set would mix its leftover files into the new one.
        raise FileExistsError(f"{out_dir}: folder is not empty; remove it or pick another --out")
    names = [flower_class(class_offset + position).name for position in range(classes)]
    tasks = [(seed, class_offset, classes, position, index, min_side, max_side)
             for position in range(classes) for index in range(per_class)]
    records = []
    started = last_said = time.time()
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # spawn, not fork: callers may already run TensorFlow threads, which fork can deadlock.
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")))
            results = pool.map(_make_image, tasks, chunksize=4)
        else:
            results = map(_make_image, tasks)
        for (_, _, _, position, index, _, _), (data, kind, height, width) in zip(tasks, results):
            folder = os.path.join(out_dir, names[position])
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{names[position]}_{index:05d}.jpg"), "wb") as handle:
                handle.write(data)
            records.append((kind, height, width))
            if progress and time.time() - last_said >= 15:
                last_said = time.time()
                left = (last_said - started) / len(records) * (len(tasks) - len(records))
                print(f"[synth] {out_dir}: {len(records)}/{len(tasks)} images, about "
                      f"{left:.0f} s left", file=sys.stderr, flush=True)
    with open(os.path.join(out_dir, "LICENSE.txt"), "w", encoding="utf-8") as handle:
        handle.write(
            "All images in this folder are synthetic: drawn by flowers_tl.synth "
            f"(generator version {GENERATOR_VERSION}, seed {seed}, classes {classes}, "
            f"per class {per_class}, class offset {class_offset}).\n"
            "They contain no photographs and may be used without restriction (CC0).\n"
        )
    return records


def generate(out_dir: str | os.PathLike[str], classes: int = 5, per_class: int = DEFAULT_PER_CLASS,
             seed: int = 0, min_side: int | None = None, max_side: int | None = None,
             class_offset: int = 0, workers: int = 1, progress: bool = False) -> str:
    """Writes the set into ``out_dir`` (must be missing or empty); returns its absolute path.
    ``workers`` > 1 renders in that many processes; the bytes are the same either way."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    _write_set(out_dir, classes, per_class, seed, min_side, max_side, class_offset, workers,
               progress)
    return out_dir


def default_cache_dir() -> str:
    return os.environ.get("FLOWERS_TL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flowers_tl")


def default_dataset(cache_dir: str | None = None, classes: int = 5, per_class: int = DEFAULT_PER_CLASS,
                    seed: int = 0, min_side: int | None = None, max_side: int | None = None,
                    class_offset: int = 0, workers: int | None = None) -> str:
    """The set for these arguments, generated on first use (in ``workers`` processes,
    default all cores) and cached under ``cache_dir``, else $FLOWERS_TL_CACHE, else
    ~/.cache/flowers_tl.

    The set is written into a hidden temp folder beside its final name and then
    renamed, which is atomic on one filesystem: a crash leaves only a ``.tmp-*``
    folder (never listed, safe to delete), not a half-written cached set. If two
    processes race, the loser's copy is discarded (same bytes anyway).
    """
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    name = (f"synth-v{GENERATOR_VERSION}-c{classes}-n{per_class}-s{seed}-o{class_offset}"
            f"-min{min_side or 'default'}-max{max_side or 'default'}")
    final = os.path.join(cache_dir, name)
    if os.path.isdir(final):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=cache_dir)
    try:
        print(f"[synth] generating {classes} x {per_class} photos once into {final}",
              file=sys.stderr, flush=True)
        generate(temporary, classes, per_class, seed, min_side, max_side, class_offset,
                 workers or os.cpu_count() or 1, progress=True)
        os.rename(temporary, final)
    except OSError:
        if not os.path.isdir(final):
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # no-op after a successful rename
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowers_tl.synth", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to create (must be missing or empty)")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-side", type=int, help="scale images up to at least this short side")
    parser.add_argument("--max-side", type=int, help="scale images down to at most this long side")
    parser.add_argument("--class-offset", type=int, default=0, help="start at another family of classes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes rendering images (default: all cores; output is identical)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out_dir = os.path.abspath(args.out)
    try:
        records = _write_set(out_dir, args.classes, args.per_class, args.seed, args.min_side,
                             args.max_side, args.class_offset, args.workers)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    kinds = Counter(kind for kind, _, _ in records)
    sides = [side for _, height, width in records for side in (height, width)]
    print(f"wrote {len(records)} images ({args.classes} classes x {args.per_class}; "
          + ", ".join(f"{kinds[kind]} {KIND_NAMES[kind]}" for kind in KIND_NAMES)
          + f"; sides {min(sides)}-{max(sides)} px) to {out_dir} in {time.perf_counter() - start:.1f} s"
          + f" with {args.workers} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
