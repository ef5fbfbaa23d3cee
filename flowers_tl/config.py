"""The training run's configuration: one frozen dataclass, its flags, files and checks.

    config = resolve(parse_args(argv))      # defaults <- CPU preset <- --config FILE <- flags

Every check that can fail does so here, with a one-line message naming the flag, before any data
is read or any model built. The resolved configuration is printed first and saved with the run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from flowers_tl.model import DATA_FORMATS, PRECISIONS, VARIANTS, get_model_meta

INPUTS = ("cxx", "tfdata", "synthetic")
TARGET_METRICS = ("train", "val")
FROM_SCRATCH = "none"  # --checkpoint_url none: no pretrained weights


class ConfigError(ValueError):
    """A bad flag or combination; the message is one line and names the flag."""


@dataclass(frozen=True)
class TrainConfig:
    data_url: str | None = None  # None: the built-in generated flowers set
    train_url: str | None = None  # None: runs/<timestamp>
    checkpoint_url: str | None = None  # None: built-in source checkpoint (built-in data only)
    checkpoint_exclude_patterns: str | None = None  # None: global_step + the logits layer
    num_gpus: int | None = None  # None: every visible GPU
    cpu_devices: int = 1  # >1: mirror over that many logical CPU devices (testing)
    batch_size: int = 64  # per device
    image_size: int = 224
    epochs: float = 20
    lr_schedule: str = "10:0.01,20:0.001"  # epoch:lr, MoXing's piecewise form
    warmup_epochs: float = 0  # learning rate ramps linearly from 0 over these epochs
    momentum: float = 0.9
    weight_decay: float = 4e-5
    data_format: str | None = None  # None: NCHW on GPUs, NHWC on a CPU
    batch_norm_fused: bool = True
    precision: str = "fp32"
    loss_scale: str | None = None  # fp16 only: a number such as 1024, or "dynamic" (default)
    xla: bool = False
    variant: str = "slim"
    freeze_batch_norm: bool = False
    batch_norm_momentum: float = 0.997  # the checkpoint's; lower for runs of a few hundred steps
    crop_area_min: float = 0.08  # random-resized-crop area range is [crop_area_min, 1]
    zero_init_residual: bool = False  # from scratch: residual branches start at 0 (BN gamma)
    target_accuracy: float = 0.95
    target_metric: str = "train"
    stop_at_target: bool = False
    val_fraction: float = 0.1
    seed: int = 0
    reader_threads: int | None = None
    input: str = "cxx"  # the C++ reader, the tf.data pipeline, or in-memory random tensors
    checkpoint_every_steps: int = 0  # 0: by time only
    checkpoint_every_minutes: float = 5.0
    max_steps: int | None = None  # stop early (smoke runs, benchmarks)
    log_every: int = 10
    warmup_steps: int = 3  # excluded from images/sec
    export: bool = True
    per_class: int | None = None  # built-in data only: images per class
    note: str = ""  # what decided the values that differ from the recipe


# The built-in default on a machine without a GPU: a CPU-sized run (64 px, 300 photos) that
# reaches 95% training accuracy within ~10 minutes on 2 cores; printed with the configuration.
# Short fine-tuning runs need BN statistics that keep up (momentum 0.9: 0.997 over 500 steps
# keeps 22% of the source task's), crops that keep the flower (area >= 0.5 of the photo at
# 64 px) and, from a weak source, a higher rate after one warm-up epoch.
CPU_DEFAULT = dict(image_size=64, batch_size=32, epochs=50, lr_schedule="30:0.02,50:0.002",
                   warmup_epochs=1, crop_area_min=0.5, batch_norm_momentum=0.9, per_class=60,
                   checkpoint_every_minutes=2.0)


def parse_lr_schedule(text: str) -> list[tuple[float, float]]:
    """'10:0.01,20:0.001' -> [(10.0, 0.01), (20.0, 0.001)]: lr 0.01 until epoch 10, then 0.001."""
    pieces = []
    try:
        for item in text.split(","):
            epoch, rate = item.split(":")
            pieces.append((float(epoch), float(rate)))
    except ValueError:
        raise ConfigError(f"--lr_schedule {text!r}: expected epoch:lr pairs such as "
                          "10:0.01,20:0.001") from None
    epochs = [epoch for epoch, _ in pieces]
    if any(b <= a for a, b in zip(epochs, epochs[1:])) or epochs[0] <= 0:
        raise ConfigError(f"--lr_schedule {text!r}: epochs must be positive and increasing")
    if not all(math.isfinite(value) for piece in pieces for value in piece):
        raise ConfigError(f"--lr_schedule {text!r}: epochs and rates must be finite numbers")
    if any(rate < 0 for _, rate in pieces):
        raise ConfigError(f"--lr_schedule {text!r}: learning rates must be >= 0")
    return pieces


def learning_rate_at(schedule: list[tuple[float, float]], epoch: float) -> float:
    for boundary, rate in schedule:
        if epoch < boundary:
            return rate
    return schedule[-1][1]


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flowers_tl.train",
        description="Fine-tune ResNet-50 v1 on a class-per-folder JPEG set and export it for "
                    "TF Serving. Without --data_url: the built-in generated flowers set.")
    parser.add_argument("--config", help="JSON run configuration (e.g. a sweep's tuned.json); "
                                         "flags override its values")
    types = {bool: _bool, int: int, float: float, str: str}
    for field in dataclasses.fields(TrainConfig):
        annotation = str(field.type)
        kind = next((t for name, t in (("bool", bool), ("int", int), ("float", float)) if
                     annotation.startswith(name)), str)
        parser.add_argument(f"--{field.name}", type=types[kind], default=None,
                            metavar=kind.__name__.upper(), help=f"default: {field.default!r}")
    return parser


def parse_args(argv: list[str] | None) -> tuple[dict[str, Any], str | None]:
    """Only the flags actually given (so that a config file or preset can fill the rest)."""
    namespace = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(namespace).items() if v is not None and k != "config"}
    return given, namespace.config


def load_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path) as handle:
            values = json.load(handle)
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config {path}: not JSON: {error}") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]  # a run's own config.json
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of training options")
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown key(s) {unknown}")
    return values


def resolve(given: dict[str, Any], config_file: str | None = None,
            gpus_available: int | None = None) -> TrainConfig:
    """Defaults, then the CPU preset (built-in data, no GPU), then the file, then the flags."""
    if gpus_available is None:
        import tensorflow as tf
        gpus_available = len(tf.config.list_physical_devices("GPU"))
    values: dict[str, Any] = {}
    from_file = load_config_file(config_file) if config_file else {}
    explicit = {**from_file, **given}
    num_gpus = explicit.get("num_gpus")
    num_gpus = gpus_available if num_gpus is None else num_gpus
    notes = []
    if explicit.get("data_url") is None and num_gpus == 0:
        preset = {k: v for k, v in CPU_DEFAULT.items() if k not in explicit}
        values.update(preset)
        if preset:
            notes.append("CPU-sized built-in run (no GPU, no --data_url): "
                         + ", ".join(f"{k}={v}" for k, v in preset.items()))
    values.update(explicit)
    values["num_gpus"] = num_gpus
    if values.get("data_format") is None:
        values["data_format"] = "NCHW" if num_gpus > 0 else "NHWC"
    if values.get("precision") == "fp16" and values.get("loss_scale") is None:
        values["loss_scale"] = "dynamic"
    if notes:
        values["note"] = "; ".join(notes + ([values["note"]] if values.get("note") else []))
    try:
        config = TrainConfig(**values)
    except TypeError as error:
        raise ConfigError(str(error)) from None
    check(config, gpus_available)
    return config


def check(config: TrainConfig, gpus_available: int) -> None:
    def fail(message: str):
        raise ConfigError(message)

    if config.num_gpus < 0 or config.num_gpus > gpus_available:
        fail(f"--num_gpus {config.num_gpus}: this machine has {gpus_available} GPU(s)")
    if config.cpu_devices < 1 or (config.cpu_devices > 1 and config.num_gpus > 0):
        fail(f"--cpu_devices {config.cpu_devices}: needs >= 1, and only without GPUs")
    if config.data_format not in DATA_FORMATS:
        fail(f"--data_format {config.data_format}: one of {DATA_FORMATS}")
    if config.data_format == "NCHW" and config.num_gpus == 0 and not config.xla:
        fail("--data_format NCHW on a CPU needs --xla true (TensorFlow's CPU Conv2D is NHWC only)")
    if config.precision not in PRECISIONS:
        fail(f"--precision {config.precision}: one of {PRECISIONS}")
    if config.variant not in VARIANTS:
        fail(f"--variant {config.variant}: one of {VARIANTS}")
    if config.loss_scale is not None:
        if config.precision != "fp16":
            fail(f"--loss_scale {config.loss_scale}: only fp16 needs a loss scale "
                 f"(precision is {config.precision})")
        if config.loss_scale != "dynamic":
            try:
                scale = float(config.loss_scale)
            except ValueError:
                fail(f"--loss_scale {config.loss_scale}: a number such as 1024, or dynamic")
            if not 0 < scale < float("inf"):
                fail(f"--loss_scale {config.loss_scale}: must be a finite number > 0")
    for name in ("batch_size", "image_size", "log_every"):
        if getattr(config, name) < 1:
            fail(f"--{name} {getattr(config, name)}: must be >= 1")
    if config.image_size < 32:
        fail(f"--image_size {config.image_size}: ResNet-50 needs at least 32 px")
    if not config.epochs > 0:
        fail(f"--epochs {config.epochs}: must be > 0")
    parse_lr_schedule(config.lr_schedule)
    if not config.warmup_epochs >= 0:  # also refuses NaN
        fail(f"--warmup_epochs {config.warmup_epochs}: must be >= 0")
    if not 0 <= config.momentum < 1:
        fail(f"--momentum {config.momentum}: must be in [0, 1)")
    if not 0 <= config.batch_norm_momentum < 1:
        fail(f"--batch_norm_momentum {config.batch_norm_momentum}: must be in [0, 1)")
    if not 0 < config.crop_area_min <= 1:
        fail(f"--crop_area_min {config.crop_area_min}: must be in (0, 1]")
    if not config.weight_decay >= 0:
        fail(f"--weight_decay {config.weight_decay}: must be >= 0")
    if not 0 < config.target_accuracy <= 1:
        fail(f"--target_accuracy {config.target_accuracy}: must be in (0, 1]")
    if config.target_metric not in TARGET_METRICS:
        fail(f"--target_metric {config.target_metric}: one of {TARGET_METRICS}")
    if not 0 <= config.val_fraction < 1:
        fail(f"--val_fraction {config.val_fraction}: must be in [0, 1)")
    if config.target_metric == "val" and config.val_fraction == 0:
        fail("--target_metric val needs --val_fraction > 0")
    if config.input not in INPUTS:
        fail(f"--input {config.input}: one of {INPUTS}")
    if config.reader_threads is not None and config.reader_threads < 1:
        fail(f"--reader_threads {config.reader_threads}: must be >= 1")
    if not 0 <= config.seed < 2 ** 63:
        fail(f"--seed {config.seed}: must be in [0, 2**63)")
    if config.checkpoint_every_steps < 0:
        fail(f"--checkpoint_every_steps {config.checkpoint_every_steps}: must be >= 0 "
             "(0: by time only)")
    if not config.checkpoint_every_minutes > 0:
        fail(f"--checkpoint_every_minutes {config.checkpoint_every_minutes}: must be > 0")
    if config.warmup_steps < 0:
        fail(f"--warmup_steps {config.warmup_steps}: must be >= 0")
    if config.max_steps is not None and config.max_steps < 1:
        fail(f"--max_steps {config.max_steps}: must be >= 1")
    if config.data_url is not None and not os.path.isdir(config.data_url):
        fail(f"--data_url {config.data_url}: no such folder")
    if config.data_url is not None and config.checkpoint_url is None:
        fail("--checkpoint_url: name the pretrained checkpoint (e.g. resnet_v1_50.ckpt), or "
             f"'{FROM_SCRATCH}' to train from scratch")
    if config.checkpoint_url not in (None, FROM_SCRATCH) and not (
            os.path.exists(config.checkpoint_url) or os.path.exists(config.checkpoint_url + ".index")):
        fail(f"--checkpoint_url {config.checkpoint_url}: no such file or folder")
    if config.per_class is not None and (config.per_class < 2 or config.data_url is not None):
        fail(f"--per_class {config.per_class}: only for the built-in data, and >= 2")
    if config.checkpoint_exclude_patterns is not None:
        from flowers_tl.checkpoint import parse_exclude_patterns
        try:
            parse_exclude_patterns(config.checkpoint_exclude_patterns)
        except ValueError as error:
            fail(f"--checkpoint_exclude_patterns {config.checkpoint_exclude_patterns}: {error}")
    get_model_meta(config.variant)


def to_json(config: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def resolve_or_exit(argv: list[str] | None) -> TrainConfig:
    """For the CLI: a ConfigError becomes one line on stderr and exit status 2."""
    try:
        given, config_file = parse_args(argv)
        return resolve(given, config_file)
    except ConfigError as error:
        print(f"flowers_tl.train: error: {error}", file=sys.stderr)
        raise SystemExit(2)
    except ValueError as error:  # e.g. a bad regular expression in the exclude patterns
        print(f"flowers_tl.train: error: {error}", file=sys.stderr)
        raise SystemExit(2)
