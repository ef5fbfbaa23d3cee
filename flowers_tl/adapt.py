"""Defaults that fit the run: values chosen from what the run is, each with its reason.

flowers_tl.config.resolve calls `adapt` after the presets and before the checks. A rule sets
a knob only when neither the user (flags, --config file) nor a preset set it, and says why in
the run's note, printed at the top of every run:

- from scratch (--checkpoint_url none): residual branches start at zero and the rate warms up
  (what lets ResNet-50 train from scratch at small batches, Goyal et al. 2017); with no schedule
  given, a from-scratch schedule (0.1 per 64 images, half-cosine to 0 over the run) instead of
  the fine-tuning recipe's, and, for runs under 30 epochs, crops of at least 80% of the photo.
  Measured on scikit-learn's digits from scratch, 8 epochs (README/issue notes): the recipe's
  rate stretched 69% held-out, x2.5 74%, + crops >= 0.35 81%, rate x5 91%, cosine 93%,
  cosine at 0.1 95% (Intel Xeon; 94.8% / 94.2% on an AMD EPYC, seeds 0 / 1); then the crop
  floor on the AMD EPYC, seeds 0 / 1: 0.5 95.5% / 95.7%, 0.65 96.6% / 98.5%, 0.8 97.6% /
  98.5% and first past 95% at epochs 5 / 6, so 0.8 (digits only: a short run from scratch
  has no time to learn from small crops); label smoothing 0.1 lost 3 points, so it stays off;
- a schedule stretched to --epochs when epochs are given but no schedule (the recipe's
  `10:0.01,20:0.001` over 8 epochs would never decay);
- learning rates scaled with the global batch (the linear scaling rule) when no schedule is
  given, with a longer warm-up when they grow, so 1, 4 and 8 devices train alike;
- batch-norm momentum from the number of steps, so the moving averages have forgotten their
  start well before the end (the checkpoint's 0.997 only for runs of thousands of steps);
- bf16 on a CPU with bf16 arithmetic units, AMX-BF16 or AVX512-BF16 (no GPU, no XLA, no fp16
  loss scale asked for): there bf16 trains faster than fp32 (bench.step, ours, batch 32, 2 cores:
  Intel Xeon with AMX 1.33x at 64 px, 1.46x in the digits sweep, the same epoch to 95% held-out;
  AMD EPYC with AVX512-BF16 and no AMX 1.45x at 64 px, 1.79x at 128 px); fp32 on CPUs without
  them (AVX2: bf16 ops convert to fp32 and back, env.arithmetic_note) and on GPUs;
- the clock on held-out accuracy unless there is no held-out split.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from flowers_tl import env

RECIPE_SCHEDULE = "10:0.01,20:0.001"  # MoXing's, for a global batch of RECIPE_BATCH
RECIPE_BATCH = 64
# /proc/cpuinfo flags of x86 bf16 arithmetic units, each measured to make bf16 training faster
# than fp32 (see the module docstring), and how the printed reason names them.
BF16_UNITS = (("amx_bf16", "AMX-BF16 matrix units"), ("avx512_bf16", "AVX512-BF16 instructions"))
SCRATCH_RATE = 0.1  # per RECIPE_BATCH images, from scratch, half-cosine to 0 (see above)
SHORT_RUN_EPOCHS = 30  # below: milder crops from scratch
SHORT_RUN_CROP_AREA_MIN = 0.8  # measured on digits (above); fast.ai's DAWNBench runs used 0.35
BN_FORGET_STEPS = 10  # the moving averages keep e^-10 of their start after the run
BN_MOMENTUM_RANGE = (0.9, 0.997)


def _schedule(text: str) -> list[tuple[float, float]]:
    from flowers_tl.config import parse_lr_schedule
    return parse_lr_schedule(text)


def _format(schedule: list[tuple[float, float]]) -> str:
    return ",".join(f"{epoch:g}:{rate:.6g}" for epoch, rate in schedule)


def train_images(values: dict[str, Any]) -> int | None:
    """Training images of this run: the listed folder's train split, or the built-in set's
    size; None when the folder cannot be listed (the checks say why later)."""
    from flowers_tl.data import DatasetError, list_folder, split

    data_url = values.get("data_url")
    if data_url is None:
        from flowers_tl import builtin, synth
        per_class = values.get("per_class") or synth.DEFAULT_PER_CLASS
        return int(builtin.TARGET_CLASSES * per_class * (1 - values.get("val_fraction", 0.1)))
    try:
        train, _ = split(list_folder(data_url), values.get("val_fraction", 0.1),
                         values.get("seed", 0))
    except (DatasetError, OSError, ValueError):
        return None
    return len(train)


def replicas(values: dict[str, Any]) -> int:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    workers = max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))
    per_worker = values.get("num_gpus") or values.get("cpu_devices") or 1
    return workers * per_worker


def adapt(values: dict[str, Any], chosen: set[str]) -> list[str]:
    """Fills the knobs not in `chosen` (given by the user or a preset) that a rule decides;
    changes `values` in place and returns one reason per decision."""
    reasons: list[str] = []
    free = lambda name: name not in chosen  # noqa: E731

    def set_value(name: str, value: Any, why: str) -> None:
        values[name] = value
        reasons.append(f"{name}={value}: {why}")

    defaults = _defaults()
    get = lambda name: values.get(name, defaults[name])  # noqa: E731
    scratch = get("checkpoint_url") == "none"
    if scratch and free("zero_init_residual"):
        set_value("zero_init_residual", True, "from scratch, every residual unit starts as the "
                  "identity (zero last BN gamma), which keeps small-batch training stable")
    epochs = get("epochs")
    if scratch and free("crop_area_min") and epochs < SHORT_RUN_EPOCHS:
        set_value("crop_area_min", SHORT_RUN_CROP_AREA_MIN, f"from scratch in under "
                  f"{SHORT_RUN_EPOCHS} epochs, crops keep at least 80% of the photo")
    if scratch and free("lr_schedule"):
        values["lr_schedule"] = f"{epochs:g}:{SCRATCH_RATE:g}"
        reasons.append(f"lr_schedule={values['lr_schedule']}: from scratch, {SCRATCH_RATE:g} per "
                       f"{RECIPE_BATCH} images over the run, not the fine-tuning recipe's rates")
        if free("lr_schedule_shape"):
            set_value("lr_schedule_shape", "cosine", "from scratch, the rate falls along a "
                      "half cosine to 0 at the last epoch")
    if free("lr_schedule"):
        schedule = _schedule(get("lr_schedule"))
        last = schedule[-1][0]
        if "epochs" in chosen and not math.isclose(last, epochs) and not scratch:
            schedule = [(boundary * epochs / last, rate) for boundary, rate in schedule]
            set_value("lr_schedule", _format(schedule), f"the schedule stretched from {last:g} "
                      f"to the run's {epochs:g} epochs, so it still decays")
        reference = get("lr_reference_batch") or RECIPE_BATCH
        global_batch = get("batch_size") * replicas(values)
        if global_batch != reference:
            scale = global_batch / reference
            schedule = [(boundary, rate * scale) for boundary, rate in _schedule(get("lr_schedule"))]
            set_value("lr_schedule", _format(schedule), f"rates scaled x{scale:g} from global "
                      f"batch {reference} to {global_batch} (linear scaling rule)")
            if scale > 1 and free("warmup_epochs"):
                set_value("warmup_epochs", round(max(get("warmup_epochs"), min(5, epochs / 10)), 3),
                          "a larger scaled rate starts after a linear warm-up")
    if scratch and free("warmup_epochs") and get("warmup_epochs") == 0:
        set_value("warmup_epochs", round(min(2.0, max(1.0, epochs / 8)), 3),
                  "from scratch, the rate ramps up from 0 first")
    if free("batch_norm_momentum"):
        images = train_images(values)
        global_batch = get("batch_size") * replicas(values)
        if images and images >= global_batch:
            steps = max(1, int(round(epochs * (images // global_batch))))
            momentum = min(BN_MOMENTUM_RANGE[1],
                           max(BN_MOMENTUM_RANGE[0], round(1 - BN_FORGET_STEPS / steps, 3)))
            if momentum != defaults["batch_norm_momentum"]:
                set_value("batch_norm_momentum", momentum,
                          f"{steps} steps: the moving averages keep {momentum ** steps:.0e} of "
                          f"their start at the end (0.997 would keep "
                          f"{0.997 ** steps:.0%})")
    if (free("precision") and free("loss_scale") and not values.get("num_gpus")
            and not get("xla")):
        features = env.cpu_features()
        units = [name for flag, name in BF16_UNITS if features.get(flag)]
        if units:
            set_value("precision", "bf16", f"this CPU has {' and '.join(units)} and no GPU is "
                      "used: bf16 (fp32 master weights) trains faster than fp32 there "
                      "(--precision fp32 keeps fp32)")
    if free("target_metric") and get("val_fraction") == 0:
        set_value("target_metric", "train", "no held-out split (--val_fraction 0)")
    return reasons


def _defaults() -> dict[str, Any]:
    from flowers_tl import config
    return config.flat_dict(config.RunConfig())
