"""Every named preset, in one registry: training presets (a set of knob values and when they
apply) and sweep presets (a base configuration plus the sweep's plan).

    from flowers_tl.presets import PRESETS
    PRESETS["cpu-default"].overrides      # {"image_size": 64, ...}
    PRESETS["cpu"].sweep.matrices          # what `python -m bench.sweep --preset cpu` measures

Keys of `overrides` are configuration knobs (flowers_tl.config: flat or dotted names). Measured
figures are not quoted here: each preset's docstring names the command, and the results behind
every published number are under results/published/ (see README.md, `python -m bench.report
--readme README.md` regenerates its tables).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class SweepPlan:
    """What bench.sweep runs on top of a preset's base configuration."""

    matrices: tuple[dict[str, list], ...]  # cells: union of each product over the base
    warmup_steps: int = 3  # per cell process, excluded (the first traces and compiles)
    timed_steps: int = 20  # per cell and round
    rounds: int = 2  # every cell measured this many times, interleaved (round 2 runs backwards)
    cell_budget_sec: float = 180.0  # per cell process; then SIGTERM (it saves and exits)
    # "default" and/or "fastest" (the fastest cell, when it is not the default); with the
    # keras-fit anchor, Keras' fit also trains to the default's target (bench.keras_fit)
    time_to_target: tuple[str, ...] = ()
    ttt_budget_sec: float = 900.0
    anchors: tuple[str, ...] = ("keras-fit", "tfdata")
    reader_backends: tuple[str, ...] = ("cxx", "tfdata")
    reader_threads: tuple[int, ...] | None = None  # None: 1, 2, 4, ... up to the core count
    reader_seconds: float = 3.0
    tiny_data: dict[str, int] | None = None  # generate this set into <results>/data and use it


@dataclass(frozen=True)
class Preset:
    name: str
    doc: str
    overrides: dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # the reason printed with the configuration when it applies by itself
    applies: Callable[[dict[str, Any], int], bool] | None = None  # (explicit knobs, GPUs)
    # Knobs the preset sets as a starting point that flowers_tl.adapt's rules still fit to the
    # run, as they fit the recipe's defaults: a schedule stretched to a given --epochs and
    # scaled with the global batch. Every other override wins over the rules.
    adaptable: frozenset[str] = frozenset()
    sweep: SweepPlan | None = None


# ------------------------------------------------------------------------------ training
CPU_DEFAULT = Preset(
    name="cpu-default",
    doc="""The built-in run on a machine without a GPU: CPU-sized (64 px, batch 32) on a
    tf_flowers-like split: 5 classes x 400 generated photos, 20% held out (378 photos at seed
    0, enough to resolve a 95% target), so its clock runs on held-out accuracy like any other
    run. Fine-tuning from the built-in source checkpoint: 8 epochs at 0.02 (0.04 per 64 images,
    scaled to the batch like the recipe's rates, and stretched to a given --epochs) along a
    half cosine after a 1-epoch warm-up, crops of at least half the photo (at 64 px smaller crops lose the
    flower), BN momentum 0.9 (400 steps: the averages forget the source task's statistics).
    Measured on an AMD EPYC (2 cores): 83.9% held-out after the 8 epochs (generator v2); with
    generator v1, 6 epochs: 81% fine-tuned vs 72% from scratch at the same budget (v2, 8
    epochs: 84.4% vs 76.5%). 95% held-out is not reached at this budget, nor at 6x it (48
    epochs: 92.9% at best; results/published/amd-epyc-2c-2026-12-04-builtin-ceiling/).
    Applies by itself when there is no --data_url and no GPU; every value can be overridden.""",
    overrides=dict(image_size=64, batch_size=32, per_class=400, val_fraction=0.2, epochs=8,
                   lr_schedule="8:0.04", lr_schedule_shape="cosine", warmup_epochs=1,
                   crop_area_min=0.5, batch_norm_momentum=0.9, checkpoint_every_minutes=2.0),
    adaptable=frozenset({"lr_schedule"}),
    summary="CPU-sized built-in run (no GPU, no --data_url)",
    applies=lambda explicit, gpus: explicit.get("data_url") is None and gpus == 0)

BUILTIN_SOURCE = Preset(
    name="builtin-source",
    doc="""The built-in source task's training (flowers_tl.train.source_checkpoint): 10 other
    generated classes trained from scratch once per (variant, image size) and cached, so the
    built-in run fine-tunes from a checkpoint with the logits excluded, as a user would from
    resnet_v1_50.ckpt. From scratch at batch 32 ResNet-50 needs zero-init residual branches,
    a warm-up, BN momentum 0.9 and milder crops to learn at all. Every recipe knob is pinned
    here, so the cached source never depends on the run that happened to train it first (it
    shares only the network, resolution, batch, arithmetic and devices of that run).""",
    overrides=dict(epochs=16, lr_schedule="12:0.04,16:0.004", lr_schedule_shape="cosine",
                   warmup_epochs=2, zero_init_residual=True, crop_area_min=0.35,
                   batch_norm_momentum=0.9, checkpoint_url="none", val_fraction=0.0,
                   target_metric="train", stop_at_target=False, export=False, max_steps=None,
                   per_class=None, label_smoothing=0.0, lr_reference_batch=None,
                   classifier_lr_multiplier=1.0, ema_decay=None, progressive_min_size=None,
                   eval_image_size=None, input="cxx", reader_cache=None, momentum=0.9,
                   freeze_batch_norm=False, checkpoint_exclude_patterns=None,
                   trainable_scopes=None),
    summary="built-in source task")


# ------------------------------------------------------------------------------ sweeps
SMOKE = Preset(
    name="smoke",
    doc="""`python -m bench.sweep --preset smoke`: every phase in a few minutes, for the tests.
    A 24-image generated set written into the results folder, 32 px, batch 4, 1 warm-up + 3
    timed steps per cell, 1 round: NHWC (runs) and NCHW without XLA (skipped on a CPU), the
    Keras-fit and tf.data anchors, a reader pass, and 2-epoch time-to-target runs from scratch
    of the default and of the Keras-fit anchor against a trivial 5% target on training accuracy
    (its 5-photo held-out split resolves nothing; it is evaluated every epoch all the same).
    Its figures mean nothing; it proves the machinery.""",
    overrides=dict(checkpoint_url="none", image_size=32, batch_size=4, epochs=2,
                   lr_schedule="2:0.01", target_accuracy=0.05, val_fraction=0.2,
                   target_metric="train"),
    # The budgets are caps, not durations (a time-to-target run stops at the target): on 2
    # cores loaded by other work Keras' first fit step alone took 98 s (tracing, graph passes).
    sweep=SweepPlan(matrices=({"data_format": ["NHWC", "NCHW"]},), warmup_steps=1,
                    timed_steps=3, rounds=1, cell_budget_sec=240, time_to_target=("default",),
                    ttt_budget_sec=300, reader_backends=("cxx",), reader_threads=(1, 2),
                    reader_seconds=1.0, tiny_data=dict(classes=3, per_class=8, max_side=96)))

CPU = Preset(
    name="cpu",
    doc="""The default: `python -m bench.sweep` (= `--preset cpu`), on the built-in data.
    The CPU default run (preset cpu-default: 64 px, batch 32) against its knobs one at a time
    -- XLA, NCHW under XLA, unfused batch norm, fp32 and bf16 (one of them is the default: bf16
    on a CPU with AMX-BF16, fp32 elsewhere), tf.data input -- 20 timed steps after 3
    warm-up steps per cell, every cell twice in interleaved order, the Keras-fit anchor, reader
    threads 1..cores; then the time to the default's target (on its --target_metric) of the
    default configuration, of the fastest cell when that is another (bf16 where it wins:
    tuned.json takes the best time to the target), and of keras.applications.ResNet50 trained
    with fit on the same data, split, resolution, epochs, schedule and batch, up to 11 minutes
    each. The default and the fastest
    cell fine-tune from the built-in source checkpoint, Keras from the same source trained for
    variant keras. The first run also generates the built-in data and trains both source
    checkpoints (cached in ~/.cache/flowers_tl, with progress lines). Published runs:
    results/published/*-sweep-cpu/ (README.md's sweep table).""",
    sweep=SweepPlan(matrices=({"data_format": ["NHWC", "NCHW"], "xla": [False, True]},
                              {"batch_norm_fused": [False]}, {"precision": ["fp32", "bf16"]}),
                    warmup_steps=3, timed_steps=20, rounds=2, cell_budget_sec=180,
                    time_to_target=("default", "fastest"), ttt_budget_sec=660))

GPU = Preset(
    name="gpu",
    doc="""The recipe's full matrix at 224 px, batch 64 per GPU: `python -m bench.sweep --preset
    gpu`. NHWC/NCHW x fp32 / fp16 (dynamic loss scale) / fp16 with the recipe's static 1024 /
    bf16 x XLA off/on on every GPU, plus unfused batch norm, 1/2/4/8 GPUs (more than present:
    skipped) and batch 128/256, 20 timed steps each, both anchors, and the time to 95% train
    accuracy of the default configuration and of the fastest cell (30 minutes each). Not yet
    run on a GPU machine: there are no published results for it.""",
    overrides=dict(image_size=224, batch_size=64),
    sweep=SweepPlan(matrices=({"data_format": ["NHWC", "NCHW"],
                               "precision": ["fp32", "fp16", {"precision": "fp16",
                                                              "loss_scale": "1024"}, "bf16"],
                               "xla": [False, True]},
                              {"batch_norm_fused": [False], "precision": ["fp32", "fp16"]},
                              {"num_gpus": [1, 2, 4, 8]}, {"batch_size": [128, 256]}),
                    warmup_steps=10, timed_steps=20, rounds=2, cell_budget_sec=600,
                    time_to_target=("default", "fastest"), ttt_budget_sec=1800,
                    reader_backends=("cxx", "cxx-cache", "tfdata"), reader_seconds=5.0))

PRESETS: dict[str, Preset] = {p.name: p for p in (CPU_DEFAULT, BUILTIN_SOURCE, SMOKE, CPU, GPU)}
SWEEP_PRESETS = tuple(name for name, p in PRESETS.items() if p.sweep is not None)


def applying(explicit: dict[str, Any], gpus: int) -> list[Preset]:
    """The training presets that apply by themselves to a run with these explicit knobs."""
    return [p for p in PRESETS.values() if p.applies is not None and p.applies(explicit, gpus)]
