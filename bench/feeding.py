"""How many CPU cores it takes to feed a GPU's ResNet-50 training rate, from bench.reader rows.

    python -m bench.reader ... --out reader.jsonl   # rows carry samples_per_cpu_second
    python -m bench.report --readme README.md        # tables of kind `feeding`

A reader row's `samples_per_cpu_second` is its images per second of process CPU time (user +
system, every thread: the decode threads, the hand-over into numpy and the consumer) over its
timed window, i.e. what one fully busy core delivers. Cores to feed a training rate R are then
R / samples_per_cpu_second: the napkin figure assumes the reader scales linearly with cores,
which bench.reader's thread axis checks on the machine at hand (on 2 cores only to 2 threads;
beyond that the figure is an extrapolation and the table says so).

Training rates are ResNet-50 v1.5 at 224 px with mixed precision and XLA, images/sec, from
NVIDIA's published TensorFlow tables (DeepLearningExamples,
TensorFlow/Classification/ConvNets/resnet50v1.5/README.md, "Training performance results",
TensorFlow 20.06-tf1-py3 NGC container, averaged over an epoch): DGX-1 8x V100 16G 1,270 per GPU,
9,510 on 8; DGX A100 8x A100 40GB 2,375 per GPU, 17,400 on 8. H100: ~6,900 per GPU is the figure
issue 12 gives; no primary source for it was reachable from this workplace, and 8x is taken as
8 x 6,900 (no published weak-scaling figure here), so treat that column as the order of magnitude.
"""
from __future__ import annotations

import math
from typing import Any

# name -> (img/s on 1 GPU, img/s on 8 GPUs, where the figures come from)
GPU_TRAINING_RATES: dict[str, tuple[float, float, str]] = {
    "V100": (1270.0, 9510.0, "NVIDIA DeepLearningExamples TF resnet50v1.5, DGX-1 8x V100 16G, AMP+XLA"),
    "A100": (2375.0, 17400.0, "NVIDIA DeepLearningExamples TF resnet50v1.5, DGX A100 8x A100 40GB, "
                              "AMP+XLA"),
    "H100": (6900.0, 8 * 6900.0, "issue 12's figure (source not verified here); 8 GPUs = 8 x 1"),
}


def cores_to_feed(samples_per_cpu_second: float, rate: float) -> float:
    """CPU cores a reader needing 1/samples_per_cpu_second core-seconds per image spends at `rate`."""
    if not samples_per_cpu_second > 0:
        raise ValueError(f"samples_per_cpu_second must be > 0, got {samples_per_cpu_second}")
    return rate / samples_per_cpu_second


def best_per_core(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per backend, the row with the highest images per CPU-second (ties: fewer threads)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        rate = row.get("samples_per_cpu_second")
        if "error" in row or not rate:
            continue
        kept = best.get(row["backend"])
        if kept is None or rate > kept["samples_per_cpu_second"]:
            best[row["backend"]] = row
    return best


FEEDING_IMAGE_SIZE = 224  # the GPU rates' resolution: only reader rows at this size are used


def feeding_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: per backend, img/s per core and the cores that feed 1 and 8 of each GPU."""
    best = best_per_core([r for r in rows if r.get("image_size") == FEEDING_IMAGE_SIZE])
    gpus = list(GPU_TRAINING_RATES)
    lines = ["| backend | img/s per core | ms CPU per image | measured at | "
             + " | ".join(f"{gpu} x1 | {gpu} x8" for gpu in gpus) + " |",
             "|---|---|---|---|" + "---|---|" * len(gpus)]
    if not best:
        return lines + [f"| (no {FEEDING_IMAGE_SIZE} px row with CPU time) |" + " |" * (3 + 2 * len(gpus))]
    for backend, row in best.items():
        per_core = row["samples_per_cpu_second"]
        cells = []
        for gpu in gpus:
            one, eight, _ = GPU_TRAINING_RATES[gpu]
            cells += [f"{math.ceil(cores_to_feed(per_core, one))}",
                      f"{math.ceil(cores_to_feed(per_core, eight))}"]
        lines.append(f"| {backend} | {per_core:.0f} | {1e3 / per_core:.2f} | "
                     f"{row['num_threads']} thread(s), {row.get('image_size')} px | "
                     + " | ".join(cells) + " |")
    return lines + ["", "Cores are rounded up and assume linear scaling from the measured thread "
                    "counts; training rates: ResNet-50 v1.5, 224 px, mixed precision + XLA, "
                    "sources in bench/feeding.py."]
