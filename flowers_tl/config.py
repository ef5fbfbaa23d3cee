"""The run configuration: one nested, typed tree, one parser, one place for every check.

    config = resolve(parse_args(argv))            # defaults <- presets <- --config FILE <- flags
    config.train.batch_size, config.model.precision, ...
    with_overrides(config, {"model.precision": "bf16", "batch_size": 16})

Sections: `data` (what to read), `reader` (how it is read and augmented), `model` (the network
and its arithmetic), `train` (optimisation and devices), `run` (where results go, checkpoints,
logging). Every knob has one name, unique across the sections, spelled as in the MoXing recipe:
`--batch_size` on the command line, `batch_size` or `train.batch_size` in a --config file and in
the sweep's --set / --axis / --cell. Strings become values in one function (`parse_value`), so
`true`, `64`, `none` mean the same everywhere.

Every check that can fail does so in `check`, with a one-line message naming the flag, before any
data is read or any model built. Importing this module loads no TensorFlow.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

DATA_FORMATS = ("NHWC", "NCHW")
PRECISIONS = ("fp32", "fp16", "bf16")
VARIANTS = ("slim", "keras")
INPUTS = ("cxx", "cxx-cache", "tfdata", "synthetic")
TARGET_METRICS = ("train", "val")
SCHEDULE_SHAPES = ("step", "cosine", "linear")
FROM_SCRATCH = "none"  # --checkpoint_url none: no pretrained weights
PROGRESSIVE_STEP = 16  # px between the sizes of progressive resizing: few sizes, few retraces
MIN_IMAGE_SIZE = 32  # five stride-2 stages leave 1x1 at 32 px
MAX_IMAGE_SIZE = 1024  # a 1024 px ResNet-50 step already needs ~20x the memory of 224 px


class ConfigError(ValueError):
    """A bad flag or combination; the message is one line and names the flag."""


def knob(default: Any, help: str) -> Any:  # noqa: A002 - argparse's word
    return field(default=default, metadata={"help": help})


# ==================================================================================== sections
@dataclass(frozen=True)
class DataConfig:
    data_url: str | None = knob(None, "class-per-folder JPEG set; none: the built-in generated "
                                      "flowers set")
    val_fraction: float = knob(0.1, "held-out share, split by a seeded hash of each path")
    per_class: int | None = knob(None, "built-in data only: photos per class")


@dataclass(frozen=True)
class ReaderConfig:
    input: str = knob("cxx", f"input pipeline: one of {INPUTS} (cxx-cache: the C++ reader "
                             "with --reader_cache memory unless a folder is given; synthetic: "
                             "in-memory random tensors, the step alone)")
    image_size: int = knob(224, "square training and evaluation size in pixels (see "
                                "--progressive_min_size, --eval_image_size)")
    reader_threads: int | None = knob(None, "decode threads; none: every core this process may use")
    crop_area_min: float = knob(0.08, "random-resized-crop area range is [crop_area_min, 1]")
    reader_cache: str | None = knob(None, "decoded-image cache of the C++ reader: none, memory, "
                                          "or a folder whose cache file later runs reuse (a "
                                          "folder also serves the held-out evaluation)")
    cache_short_side: int | None = knob(None, "cache: cap on each image's shorter side in px; "
                                              "none: 1.25 x the eval resize (320 for 224)")
    progressive_min_size: int | None = knob(None, "progressive resizing: training starts at this "
                                                  "size and rises by epoch in steps of "
                                                  f"{PROGRESSIVE_STEP} px to --image_size; none: "
                                                  "off")
    progressive_until: float = knob(0.75, "progressive resizing: fraction of the epochs after "
                                          "which training runs at --image_size (at the latest "
                                          "the last epoch)")
    eval_image_size: int | None = knob(None, "held-out evaluation and export size (FixRes: "
                                             "above --image_size); none: --image_size")

    @property
    def eval_size(self) -> int:
        """The held-out evaluation and export size: --eval_image_size, else --image_size."""
        return self.eval_image_size or self.image_size


@dataclass(frozen=True)
class ModelConfig:
    """The network and its arithmetic; flowers_tl.model.ResNet50 takes this section as is."""

    variant: str = knob("slim", "slim (resnet_v1_50.ckpt) or keras (keras.applications.ResNet50)")
    data_format: str | None = knob(None, "NHWC or NCHW; none: NCHW on GPUs, NHWC on a CPU")
    batch_norm_fused: bool = knob(True, "FusedBatchNormV3, or the same arithmetic as plain ops")
    precision: str = knob("fp32", "fp32, fp16 (mixed, fp32 master weights) or bf16 (mixed); "
                          "unset: bf16 on a CPU with AMX-BF16 or AVX512-BF16 and no GPU, "
                          "else fp32")
    xla: bool = knob(False, "compile the forward and backward pass with XLA")
    freeze_batch_norm: bool = knob(False, "batch norm in inference mode while fine-tuning")
    batch_norm_momentum: float = knob(0.997, "moving-average momentum (the checkpoint's 0.997; "
                                             "lower for runs of a few hundred steps)")
    zero_init_residual: bool = knob(False, "last BN gamma of every residual branch starts at 0")
    weight_decay: float = knob(4e-5, "L2 on the weights (slim's recipe)")


@dataclass(frozen=True)
class TrainConfig:
    num_gpus: int | None = knob(None, "GPUs to mirror over; none: every visible GPU")
    cpu_devices: int = knob(1, ">1: mirror over that many logical CPU devices (testing)")
    batch_size: int = knob(64, "per device")
    epochs: float = knob(20, "length of the run in epochs")
    lr_schedule: str = knob("10:0.01,20:0.001", "epoch:lr pairs, MoXing's piecewise form; "
                                                "unset: stretched to --epochs and scaled with "
                                                "the global batch")
    lr_schedule_shape: str = knob("step", f"one of {SCHEDULE_SHAPES}: the schedule as given, or "
                                          "from its first rate down to 0 at the last epoch")
    lr_reference_batch: int | None = knob(None, "global batch the schedule's rates are for "
                                                "(linear scaling); none: 64, the recipe's")
    label_smoothing: float = knob(0.0, "targets (1 - s) on the label, s spread over all classes")
    random_grayscale: float = knob(0.0, "each training image turned grayscale (its JPEG luma in "
                                        "all three channels) with this probability")
    classifier_lr_multiplier: float = knob(1.0, "learning rate x this for the new classifier (the "
                                                "variables --checkpoint_exclude_patterns names: "
                                                "the logits layer), also from scratch")
    ema_decay: float | None = knob(None, "evaluate and export an exponential moving average of "
                                         "the weights with this decay (e.g. 0.999; warmed up as "
                                         "TF's num_updates); none or 0: off")
    trainable_scopes: str | None = knob(None, "comma-separated scopes to train, each matched "
                                              "from a variable name's start (TF-slim's "
                                              "--trainable_scopes), e.g. "
                                              "resnet_v1_50/block3,resnet_v1_50/block4,"
                                              "resnet_v1_50/logits); the rest keep their "
                                              "restored weights and get no backward pass (batch "
                                              "norm still learns its statistics); none: all")
    warmup_epochs: float = knob(0, "learning rate ramps linearly from 0 over these epochs")
    momentum: float = knob(0.9, "TF1 MomentumOptimizer momentum")
    loss_scale: str | None = knob(None, "fp16 only: a number such as 1024, or dynamic (fp16's "
                                        "default)")
    target_accuracy: float = knob(0.95, "time to target: this accuracy")
    target_metric: str = knob("val", "time to target on held-out (val) or train accuracy")
    eval_every_epochs: int = knob(1, "evaluate the held-out split every N epochs (and at the "
                                     "end); its time counts in the clock")
    stop_at_target: bool = knob(False, "stop once the target is reached")
    max_steps: int | None = knob(None, "stop after this many steps (smoke runs, benchmarks)")
    seed: int = knob(0, "data split, crops, initial weights")


@dataclass(frozen=True)
class RunSettings:
    train_url: str | None = knob(None, "run folder; none: runs/<timestamp>")
    checkpoint_url: str | None = knob(None, "pretrained checkpoint, or none to train from "
                                            "scratch; unset: the built-in source (built-in data)")
    checkpoint_exclude_patterns: str | None = knob(None, "comma-separated regexes not restored; "
                                                         "unset: global_step and the logits")
    checkpoint_every_steps: int = knob(0, "also save every N steps (0: by time only)")
    checkpoint_every_minutes: float = knob(5.0, "save at least this often")
    log_every: int = knob(10, "a progress line every N steps (metrics.jsonl has every step)")
    warmup_steps: int = knob(3, "steps excluded from images/sec")
    export: bool = knob(True, "export a SavedModel for TF Serving at the end")
    note: str = knob("", "what decided the values that differ from the recipe")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunSettings = field(default_factory=RunSettings)


SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}
_SECTION_CLASSES = {"data": DataConfig, "reader": ReaderConfig, "model": ModelConfig,
                    "train": TrainConfig, "run": RunSettings}
# knob name -> (section, dataclasses.Field): the names are unique across sections
KNOBS: dict[str, tuple[str, dataclasses.Field]] = {
    f.name: (section, f) for section, cls in _SECTION_CLASSES.items()
    for f in dataclasses.fields(cls)}


# ================================================================================ values
def knob_name(key: str) -> str:
    """'train.batch_size' or 'batch_size' -> 'batch_size'; anything else is a ConfigError."""
    section, dot, name = key.rpartition(".")
    if name not in KNOBS or (dot and KNOBS[name][0] != section):
        raise ConfigError(f"{key!r} is not a configuration key (python -m flowers_tl.train "
                          "--help lists them)")
    return name


def _kind(name: str) -> tuple[type, bool]:
    annotation = str(KNOBS[name][1].type)
    base = next((t for t in (bool, int, float) if annotation.startswith(t.__name__)), str)
    return base, "None" in annotation


def parse_value(name: str, value: Any) -> Any:
    """A flag's text (or a JSON value) as the knob's type: 'true' -> True, '64' -> 64,
    'none' -> None where the knob may be unset. --checkpoint_url none stays the string 'none'
    (train from scratch). Raises ConfigError naming the flag."""
    base, optional = _kind(name)
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"
                         and optional and name != "checkpoint_url"):
        if not optional:
            raise ConfigError(f"--{name}: needs a value ({base.__name__})")
        return None
    if isinstance(value, str):
        text = value.strip()
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"--{name} {text!r}: expected true or false")
        if base in (int, float):
            try:
                return base(text)
            except ValueError:
                raise ConfigError(f"--{name} {text!r}: expected {base.__name__}") from None
        return text
    if base is bool and isinstance(value, bool):
        return value
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. loss_scale 1024 written as a JSON number
    raise ConfigError(f"--{name} {value!r}: expected {base.__name__}")


def flatten(values: dict[str, Any], where: str = "--config") -> dict[str, Any]:
    """Nested ({"train": {"batch_size": 8}}), dotted ({"train.batch_size": 8}) or flat
    ({"batch_size": 8}) keys -> {knob name: value}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            for inner, inner_value in value.items():
                flat[knob_name(f"{key}.{inner}")] = inner_value
        else:
            try:
                flat[knob_name(key)] = value
            except ConfigError:
                raise ConfigError(f"{where}: unknown key {key!r}") from None
    return flat


def to_dict(config: RunConfig) -> dict[str, dict[str, Any]]:
    """Nested plain dict (what config.json, result rows and tuned.json hold)."""
    return dataclasses.asdict(config)


def flat_dict(config: RunConfig) -> dict[str, Any]:
    return {name: getattr(getattr(config, section), name) for name, (section, _) in KNOBS.items()}


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A copy with these knobs changed (keys flat or dotted; values typed or text). Not checked:
    `resolve` and `check` do that."""
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in flatten(overrides, "override").items():
        by_section.setdefault(KNOBS[key][0], {})[key] = parse_value(key, value)
    return dataclasses.replace(config, **{
        section: dataclasses.replace(getattr(config, section), **changes)
        for section, changes in by_section.items()})


def to_json(config: RunConfig) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


# ================================================================================ files, flags
def load_config_file(path: str) -> dict[str, Any]:
    """{knob: value} from a JSON file: a nested configuration (a sweep's tuned.json), dotted or
    flat keys, or a run's own config.json (its "config" member)."""
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
    flat = flatten(values, f"--config {path}")
    return {name: parse_value(name, value) for name, value in flat.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flowers_tl.train",
        description="Fine-tune ResNet-50 v1 on a class-per-folder JPEG set and export it for "
                    "TF Serving. Without --data_url: the built-in generated flowers set.")
    parser.add_argument("--config", help="JSON run configuration (e.g. a sweep's tuned.json); "
                                         "flags override its values")
    for section, cls in _SECTION_CLASSES.items():
        group = parser.add_argument_group(section)
        for f in dataclasses.fields(cls):
            base, _ = _kind(f.name)
            group.add_argument(f"--{f.name}", default=None, metavar=base.__name__.upper(),
                               help=f"{f.metadata['help']} (default: {f.default!r})")
    return parser


def parse_args(argv: list[str] | None) -> tuple[dict[str, Any], str | None]:
    """(the flags actually given, as typed values; the --config path). Flags not given stay
    out, so a config file or preset fills them."""
    namespace = build_parser().parse_args(argv)
    given = {name: parse_value(name, text) for name, text in vars(namespace).items()
             if text is not None and name != "config"}
    return given, namespace.config


# ================================================================================ resolve
def resolve(given: dict[str, Any], config_file: str | None = None,
            gpus_available: int | None = None) -> RunConfig:
    """Defaults, then the presets that apply (flowers_tl.presets: the CPU-sized built-in run on
    a machine without a GPU), then the file, then the flags; then the derived values (num_gpus,
    data_format, fp16's loss scale) and `check`."""
    from flowers_tl import presets

    if gpus_available is None:
        from flowers_tl.env import gpu_count
        gpus_available = gpu_count()
    explicit = {**(load_config_file(config_file) if config_file else {}),
                **{name: parse_value(name, value) for name, value in flatten(given, "flag").items()}}
    num_gpus = explicit.get("num_gpus")
    num_gpus = gpus_available if num_gpus is None else num_gpus
    values: dict[str, Any] = {}
    notes = []
    adaptable: set[str] = set()  # set by a preset as a base that the rules below still fit
    for preset in presets.applying(explicit, num_gpus):
        chosen = {k: v for k, v in preset.overrides.items() if knob_name(k) not in explicit}
        adaptable |= {knob_name(k) for k in chosen if knob_name(k) in preset.adaptable}
        values.update(flatten(chosen, f"preset {preset.name}"))
        if chosen:
            notes.append(f"{preset.summary}: " + ", ".join(
                f"{knob_name(k)}={v}" for k, v in chosen.items()))
    values.update(explicit)
    values["num_gpus"] = num_gpus
    from flowers_tl.adapt import adapt
    try:
        reasons = adapt(values, set(values) - {"num_gpus"} - adaptable)
    except ConfigError:
        reasons = []  # a bad schedule or number: `check` below names it
    notes += reasons
    if values.get("data_format") is None:
        values["data_format"] = "NCHW" if num_gpus > 0 else "NHWC"
    if values.get("precision") == "fp16" and values.get("loss_scale") is None:
        values["loss_scale"] = "dynamic"
    if notes:
        values["note"] = "; ".join(notes + ([values["note"]] if values.get("note") else []))
    config = with_overrides(RunConfig(), values)
    check(config, gpus_available)
    return config


def resolve_or_exit(argv: list[str] | None, prog: str = "flowers_tl.train") -> RunConfig:
    """For a CLI: a ConfigError becomes one line on stderr and exit status 2."""
    try:
        given, config_file = parse_args(argv)
        return resolve(given, config_file)
    except ConfigError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2)


# ================================================================================ rules
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


def image_size_at_epoch(reader: ReaderConfig, epochs: float, epoch: int) -> int:
    """Training image size in epoch `epoch` (0-based) of a run of `epochs` epochs: --image_size,
    or with --progressive_min_size m a staircase rising linearly by epoch from m in steps of
    PROGRESSIVE_STEP px, with --image_size itself from epoch F = ceil(progressive_until x
    epochs) on (at the latest the last epoch): size = min(S, m + 16 floor((S - m) e / F / 16))
    before F. (FFCV's ResNet-50 ramp, by epoch; fast.ai's DAWNBench runs used stepped sizes.)"""
    low, size = reader.progressive_min_size, reader.image_size
    if low is None:
        return size
    last = max(0, math.ceil(epochs) - 1)
    full = min(math.ceil(reader.progressive_until * epochs - 1e-9), last)
    if epoch >= full:
        return size
    steps = math.floor((size - low) * epoch / full / PROGRESSIVE_STEP)
    return min(size, low + PROGRESSIVE_STEP * steps)


def check_model(model: ModelConfig, gpus: int) -> None:
    """The model section's rules (also what flowers_tl.model.ResNet50 checks on its own)."""
    def fail(message: str):
        raise ConfigError(message)

    if model.data_format not in DATA_FORMATS:
        fail(f"--data_format {model.data_format}: one of {DATA_FORMATS}")
    if model.data_format == "NCHW" and gpus == 0 and not model.xla:
        fail("--data_format NCHW on a CPU needs --xla true (TensorFlow's CPU Conv2D is NHWC only)")
    if model.precision not in PRECISIONS:
        fail(f"--precision {model.precision}: one of {PRECISIONS}")
    if model.variant not in VARIANTS:
        fail(f"--variant {model.variant}: one of {VARIANTS}")
    if not 0 <= model.batch_norm_momentum < 1:
        fail(f"--batch_norm_momentum {model.batch_norm_momentum}: must be in [0, 1)")
    if not model.weight_decay >= 0:
        fail(f"--weight_decay {model.weight_decay}: must be >= 0")


def check(config: RunConfig, gpus_available: int) -> None:
    """Every rule of a run configuration, each a one-line ConfigError naming the flag."""
    data, reader, model, train, run = (config.data, config.reader, config.model, config.train,
                                       config.run)

    def fail(message: str):
        raise ConfigError(message)

    if train.num_gpus < 0 or train.num_gpus > gpus_available:
        fail(f"--num_gpus {train.num_gpus}: this machine has {gpus_available} GPU(s)")
    if train.cpu_devices < 1 or (train.cpu_devices > 1 and train.num_gpus > 0):
        fail(f"--cpu_devices {train.cpu_devices}: needs >= 1, and only without GPUs")
    check_model(model, train.num_gpus)
    if train.loss_scale is not None:
        if model.precision != "fp16":
            fail(f"--loss_scale {train.loss_scale}: only fp16 needs a loss scale "
                 f"(precision is {model.precision})")
        if train.loss_scale != "dynamic":
            try:
                scale = float(train.loss_scale)
            except ValueError:
                fail(f"--loss_scale {train.loss_scale}: a number such as 1024, or dynamic")
            if not 0 < scale < float("inf"):
                fail(f"--loss_scale {train.loss_scale}: must be a finite number > 0")
    for name, value in (("batch_size", train.batch_size), ("image_size", reader.image_size),
                        ("log_every", run.log_every)):
        if value < 1:
            fail(f"--{name} {value}: must be >= 1")
    if not MIN_IMAGE_SIZE <= reader.image_size <= MAX_IMAGE_SIZE:
        fail(f"--image_size {reader.image_size}: ResNet-50 needs {MIN_IMAGE_SIZE} to "
             f"{MAX_IMAGE_SIZE} px")
    if not train.epochs > 0:
        fail(f"--epochs {train.epochs}: must be > 0")
    parse_lr_schedule(train.lr_schedule)
    if not train.warmup_epochs >= 0:  # also refuses NaN
        fail(f"--warmup_epochs {train.warmup_epochs}: must be >= 0")
    if not 0 <= train.momentum < 1:
        fail(f"--momentum {train.momentum}: must be in [0, 1)")
    if not 0 < reader.crop_area_min <= 1:
        fail(f"--crop_area_min {reader.crop_area_min}: must be in (0, 1]")
    if reader.progressive_min_size is not None and not \
            MIN_IMAGE_SIZE <= reader.progressive_min_size < reader.image_size:
        fail(f"--progressive_min_size {reader.progressive_min_size}: must be at least "
             f"{MIN_IMAGE_SIZE} px and below --image_size {reader.image_size}")
    if not 0 < reader.progressive_until <= 1:
        fail(f"--progressive_until {reader.progressive_until}: must be in (0, 1]")
    if reader.eval_image_size is not None and not \
            MIN_IMAGE_SIZE <= reader.eval_image_size <= MAX_IMAGE_SIZE:
        fail(f"--eval_image_size {reader.eval_image_size}: ResNet-50 needs {MIN_IMAGE_SIZE} to "
             f"{MAX_IMAGE_SIZE} px")
    if not 0 < train.target_accuracy <= 1:
        fail(f"--target_accuracy {train.target_accuracy}: must be in (0, 1]")
    if train.eval_every_epochs < 1:
        fail(f"--eval_every_epochs {train.eval_every_epochs}: must be >= 1")
    if not 0 <= train.label_smoothing < 1:
        fail(f"--label_smoothing {train.label_smoothing}: must be in [0, 1)")
    if not 0 <= train.random_grayscale <= 1:
        fail(f"--random_grayscale {train.random_grayscale}: must be in [0, 1]")
    if not 0 < train.classifier_lr_multiplier < float("inf"):
        fail(f"--classifier_lr_multiplier {train.classifier_lr_multiplier}: must be a finite "
             "number > 0")
    if train.ema_decay is not None and not 0 <= train.ema_decay < 1:
        fail(f"--ema_decay {train.ema_decay}: must be in [0, 1) (none or 0: off)")
    if train.trainable_scopes is not None:
        if not parse_scopes(train.trainable_scopes):
            fail(f"--trainable_scopes {train.trainable_scopes!r}: names no scope (none: train "
                 "all)")
        for scope in parse_scopes(train.trainable_scopes):
            try:
                re.compile(scope)
            except re.error as error:
                fail(f"--trainable_scopes {scope!r}: not a regular expression: {error}")
    if train.lr_schedule_shape not in SCHEDULE_SHAPES:
        fail(f"--lr_schedule_shape {train.lr_schedule_shape}: one of {SCHEDULE_SHAPES}")
    if train.lr_reference_batch is not None and train.lr_reference_batch < 1:
        fail(f"--lr_reference_batch {train.lr_reference_batch}: must be >= 1")
    if train.target_metric not in TARGET_METRICS:
        fail(f"--target_metric {train.target_metric}: one of {TARGET_METRICS}")
    if not 0 <= data.val_fraction < 1:
        fail(f"--val_fraction {data.val_fraction}: must be in [0, 1)")
    if train.target_metric == "val" and data.val_fraction == 0:
        fail("--target_metric val needs --val_fraction > 0")
    if reader.input not in INPUTS:
        fail(f"--input {reader.input}: one of {INPUTS}")
    if reader.reader_threads is not None and reader.reader_threads < 1:
        fail(f"--reader_threads {reader.reader_threads}: must be >= 1")
    check_reader_cache(reader)
    if not 0 <= train.seed < 2 ** 63:
        fail(f"--seed {train.seed}: must be in [0, 2**63)")
    if run.checkpoint_every_steps < 0:
        fail(f"--checkpoint_every_steps {run.checkpoint_every_steps}: must be >= 0 "
             "(0: by time only)")
    if not run.checkpoint_every_minutes > 0:
        fail(f"--checkpoint_every_minutes {run.checkpoint_every_minutes}: must be > 0")
    if run.warmup_steps < 0:
        fail(f"--warmup_steps {run.warmup_steps}: must be >= 0")
    if train.max_steps is not None and train.max_steps < 1:
        fail(f"--max_steps {train.max_steps}: must be >= 1")
    if data.data_url is not None and not os.path.isdir(data.data_url):
        fail(f"--data_url {data.data_url}: no such folder")
    if data.data_url is not None and run.checkpoint_url is None:
        fail("--checkpoint_url: name the pretrained checkpoint (e.g. resnet_v1_50.ckpt), or "
             f"'{FROM_SCRATCH}' to train from scratch")
    if run.checkpoint_url not in (None, FROM_SCRATCH) and not (
            os.path.exists(run.checkpoint_url) or os.path.exists(run.checkpoint_url + ".index")):
        fail(f"--checkpoint_url {run.checkpoint_url}: no such file or folder")
    if data.per_class is not None and (data.per_class < 2 or data.data_url is not None):
        fail(f"--per_class {data.per_class}: only for the built-in data, and >= 2")
    if run.checkpoint_exclude_patterns is not None:
        try:
            parse_exclude_patterns(run.checkpoint_exclude_patterns)
        except ValueError as error:
            fail(f"--checkpoint_exclude_patterns {run.checkpoint_exclude_patterns}: {error}")


def check_reader_cache(reader: ReaderConfig) -> None:
    """--reader_cache and --cache_short_side: one-line ConfigErrors; a cache folder is created
    here, so a path that cannot be one stops the run before any work."""
    cache = reader.reader_cache
    cached = cache is not None or reader.input == "cxx-cache"
    if cache == "memory" and reader.input not in ("cxx", "cxx-cache"):
        raise ConfigError(f"--reader_cache memory: only the C++ reader caches (--input is "
                          f"{reader.input}); a folder would still serve the held-out evaluation")
    if cache not in (None, "memory"):
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"--reader_cache {cache}: cannot create the folder: "
                              f"{error.strerror}") from None
        if not os.access(cache, os.W_OK):
            raise ConfigError(f"--reader_cache {cache}: the folder is not writable")
    if reader.cache_short_side is not None:
        if not cached:
            raise ConfigError(f"--cache_short_side {reader.cache_short_side}: needs "
                              "--reader_cache or --input cxx-cache")
        if reader.cache_short_side < reader.image_size:
            raise ConfigError(f"--cache_short_side {reader.cache_short_side}: must be >= "
                              f"--image_size {reader.image_size} (every crop would be "
                              "upsampled from the cache)")


def parse_scopes(scopes: str | None) -> tuple[str, ...]:
    """--trainable_scopes 'a, b,' -> ('a', 'b'); None -> () (train everything)."""
    return tuple(item.strip() for item in (scopes or "").split(",") if item.strip())


def parse_exclude_patterns(patterns) -> tuple[str, ...]:
    """'a,b' or ['a', 'b'] -> ('a', 'b'), each checked to be a valid regular expression
    (flowers_tl.checkpoint matches checkpoint names with them)."""
    import re

    if patterns is None:
        return ()
    items = patterns.split(",") if isinstance(patterns, str) else list(patterns)
    result = tuple(item.strip() for item in items if item.strip())
    for pattern in result:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"checkpoint exclude pattern {pattern!r} is not a regular "
                             f"expression: {error}") from None
    return result
