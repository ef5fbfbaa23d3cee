"""What the input costs the train step: one process, the trainer's step, the inputs taking turns.

    python -m bench.input_cost --data_url DIR --inputs synthetic,cxx,cxx-cache,tfdata \\
        --image_size 64 --batch_size 32 --block 8 --rounds 6 --out rows.jsonl

On a CPU the input pipeline and the train step share the cores, so what matters is not the
input's peak rate but how much of the step's speed it leaves. Separate training processes, one
per input, cannot tell a few per cent apart on a shared 2-core VM whose speed drifts by 10-40%
over minutes; here one compiled step (flowers_tl.step.make_train_step on flowers_tl.model.ResNet50,
built as flowers_tl.train builds it on a CPU, each batch handed over by distribute_batch) is fed
by every input in turn, --block steps at a time, for --rounds rotations (the order reversed every
other round), so drift moves all inputs alike. Every input is started (and its cache filled)
before the first timed step; one that is not being consumed holds its prefetched batches and
sleeps. The first step of each block is not timed (the switch).

Inputs: `synthetic` (one in-memory random batch, what flowers_tl.train --input synthetic feeds),
`cxx` (the C++ reader, as --input cxx), `cxx-cache` (its decoded-image cache in memory, as
--input cxx-cache), `tfdata` (flowers_tl.tfdata, as --input tfdata). Rows: each input's img/s
(total images over total timed seconds), its share of synthetic's (when synthetic is in the
run) overall and per round, with the rounds' spread; plus the CPU model and the environment
(flowers_tl.env).

After the rounds each input is also read on its own, no step running, for --cpu_batches
batches: the process CPU time per image it costs (cpu_ms_per_image_alone). If an input took
from the step only its own CPU time, spread over the usable cores the step keeps busy, it would
leave 1 / (1 + R * c / cores) of synthetic's rate R (c: its CPU seconds per image): the
`predicted` share. Measured well below it: the input interferes beyond its CPU time (wake-ups,
preempted compute threads waiting at each op's barrier, caches); near it: the input costs what
its decoding costs, and only less CPU per image raises the share.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from flowers_tl import geometry
from flowers_tl.env import describe_environment
from flowers_tl.results import append_row, parse_list

INPUTS = ("synthetic", "cxx", "cxx-cache", "tfdata")


def open_inputs(names: Sequence[str], files: list[str], labels: list[int],
                args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Iterator]:
    """name -> endless iterator of (uint8 images NHWC, int32 labels) numpy batches."""
    area_range = (args.crop_area_min, 1.0)
    inputs: dict[str, Iterator] = {}
    for name in names:
        if name == "synthetic":
            rng = np.random.default_rng(args.seed)
            images = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3),
                                  dtype=np.uint8)
            batch_labels = rng.integers(0, max(labels) + 1, args.batch_size, dtype=np.int32)
            inputs[name] = iter(lambda: (images, batch_labels), None)
        elif name == "tfdata":
            from flowers_tl.tfdata import make_dataset
            dataset = make_dataset(files, labels, args.batch_size, args.image_size, training=True,
                                   num_threads=args.threads, seed=args.seed, drop_remainder=True,
                                   area_range=area_range)
            inputs[name] = iter(dataset.as_numpy_iterator())
        else:
            from flowers_tl.reader import Reader
            reader = stack.enter_context(Reader(
                files, labels, batch_size=args.batch_size, image_size=args.image_size,
                training=True, num_threads=args.threads, seed=args.seed, drop_remainder=True,
                area_range=area_range, cache="memory" if name == "cxx-cache" else None))
            inputs[name] = iter(reader)
    return inputs


def build_step(args: argparse.Namespace, num_classes: int
               ) -> Callable[[np.ndarray, np.ndarray], float]:
    """The trainer's step on one CPU device; returns a function that runs one step and waits."""
    from flowers_tl.config import ModelConfig
    from flowers_tl.model import ResNet50
    from flowers_tl.step import MomentumSGD, distribute_batch, make_strategy, make_train_step

    strategy = make_strategy(0)
    with strategy.scope():
        model = ResNet50(ModelConfig(data_format="NHWC", precision=args.precision),
                         num_classes=num_classes, seed=args.seed)
        optimizer = MomentumSGD(0.01, momentum=0.9)
        step = make_train_step(model, optimizer, strategy, args.batch_size)

    def run(images: np.ndarray, labels: np.ndarray) -> float:
        metrics = step(*distribute_batch(strategy, images, labels, args.batch_size))
        return float(metrics["loss"].numpy())  # waits for the step, as the training loop does

    return run


def measure(inputs: dict[str, Iterator], run_step: Callable, block: int, rounds: int,
            warmup: int) -> dict[str, list[list[float]]]:
    """name -> per round, the timed steps' seconds (input wait + step, as train.py times them)."""
    for batches in inputs.values():  # trace the step and start (fill) every input
        for _ in range(warmup):
            run_step(*next(batches))
    seconds: dict[str, list[list[float]]] = {name: [] for name in inputs}
    names = list(inputs)
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            timed = []
            for index in range(block):
                start = time.perf_counter()
                images, labels = next(inputs[name])
                run_step(images, labels)
                if index > 0:  # the first step after a switch is not timed
                    timed.append(time.perf_counter() - start)
            seconds[name].append(timed)
    return seconds


def cpu_per_image(batches: Iterator, count: int, skip: int) -> float:
    """Process CPU seconds per image of pulling `count` batches from one input on its own (no
    step running), after `skip` batches that it may have decoded ahead (prefetched)."""
    for _ in range(skip):
        next(batches)
    images = 0
    start = time.process_time()
    for _ in range(count):
        images += len(next(batches)[0])
    return (time.process_time() - start) / images


def summarise(seconds: dict[str, list[list[float]]], batch_size: int,
              cpu_seconds_per_image: dict[str, float] | None = None,
              cores: int | None = None) -> list[dict[str, Any]]:
    rows = []
    base = seconds.get("synthetic")
    base_rate = (sum(len(r) for r in base) * batch_size / sum(sum(r) for r in base)
                 if base is not None else None)
    for name, per_round in seconds.items():
        total = sum(sum(r) for r in per_round)
        steps = sum(len(r) for r in per_round)
        row: dict[str, Any] = {"input": name, "images_per_sec": steps * batch_size / total,
                               "timed_steps": steps, "rounds": len(per_round)}
        if base is not None:
            ratios = [sum(b) / sum(r) for r, b in zip(per_round, base)]  # same round, same drift
            row["vs_synthetic"] = sum(sum(r) for r in base) / total
            row["vs_synthetic_per_round"] = ratios
            row["vs_synthetic_min"], row["vs_synthetic_max"] = min(ratios), max(ratios)
            row["vs_synthetic_stderr"] = (statistics.stdev(ratios) / len(ratios) ** 0.5
                                          if len(ratios) > 1 else None)
        cpu = (cpu_seconds_per_image or {}).get(name)
        if cpu is not None:
            row["cpu_ms_per_image_alone"] = 1e3 * cpu
            if base_rate is not None and cores:
                row["cpu_share_prediction"] = 1.0 / (1.0 + base_rate * cpu / cores)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| input | img/s | vs synthetic | ± stderr | rounds' range | CPU ms/img alone "
             "| predicted from CPU |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "vs_synthetic" in row:
            stderr = row["vs_synthetic_stderr"]
            share = (f"{row['vs_synthetic']:.1%} | {stderr:.1%} | "
                     f"{row['vs_synthetic_min']:.1%}-{row['vs_synthetic_max']:.1%}"
                     if stderr is not None else f"{row['vs_synthetic']:.1%} | - | -")
        else:
            share = "- | - | -"
        cpu = row.get("cpu_ms_per_image_alone")
        predicted = row.get("cpu_share_prediction")
        lines.append(f"| {row['input']} | {row['images_per_sec']:.1f} | {share} | "
                     f"{'-' if cpu is None else f'{cpu:.2f}'} | "
                     f"{'-' if predicted is None else f'{predicted:.1%}'} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_url", required=True, help="class-per-folder JPEG set")
    parser.add_argument("--inputs", type=parse_list(str, INPUTS), default=list(INPUTS))
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="the step's arithmetic; default: what flowers_tl.train picks on "
                             "this machine (bf16 on a CPU with bf16 units)")
    parser.add_argument("--threads", type=int, default=None,
                        help="decode threads of cxx*/tfdata; default: every usable core")
    parser.add_argument("--crop_area_min", type=float, default=geometry.TRAIN_AREA_RANGE[0])
    parser.add_argument("--block", type=int, default=8, help="steps per turn (the first untimed)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps per input at the start")
    parser.add_argument("--cpu_batches", type=int, default=40,
                        help="batches each input is read alone for its CPU time per image "
                             "(0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="append rows to this JSONL file")
    args = parser.parse_args(argv)
    if args.block < 2:
        parser.error(f"--block {args.block}: must be >= 2 (the first step of a turn is untimed)")
    if args.rounds < 1 or args.warmup < 1:
        parser.error("--rounds and --warmup must be >= 1")
    if args.cpu_batches < 0:
        parser.error(f"--cpu_batches {args.cpu_batches}: must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from flowers_tl.data import DatasetError, list_folder
    try:
        dataset = list_folder(args.data_url)
    except DatasetError as error:
        print(f"bench.input_cost: {error}", file=sys.stderr)
        return 2
    files, labels = list(dataset.files), list(dataset.labels)
    if args.precision is None:
        from flowers_tl.config import resolve
        # The precision rule looks at the CPU only; the checkpoint does not matter to it.
        args.precision = resolve({"data_url": args.data_url, "checkpoint_url": "none"},
                                 gpus_available=0).model.precision
    environment = describe_environment()
    with contextlib.ExitStack() as stack:
        inputs = open_inputs(args.inputs, files, labels, args, stack)
        run_step = build_step(args, num_classes=max(labels) + 1)
        seconds = measure(inputs, run_step, args.block, args.rounds, args.warmup)
        # Skip: what a reader may hold decoded ahead (its prefetch window and a batch in hand).
        cpu = {name: cpu_per_image(batches, args.cpu_batches, skip=4)
               for name, batches in inputs.items()
               if name != "synthetic" and args.cpu_batches > 0}
    rows = summarise(seconds, args.batch_size, cpu, environment.get("cpu_count_affinity"))
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    for row in rows:
        append_row({"bench": "input_cost", **row, **settings, "images": len(files),
                    "cpu_model": environment.get("cpu_model"), "environment": environment},
                    args.out)
    print(format_table(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
