"""The sweep's matrix: axes parsed, expanded over a base configuration, and every cell checked
against this machine before anything runs.

    cells = expand({"image_size": 64}, [{"data_format": ["NHWC", "NCHW"], "xla": [False, True]},
                                        {"precision": ["bf16"]}])       # 4 + 1 settings dicts
    default, cells = plan(base, matrices, detect_machine())            # names, checks, roles

An axis is any flowers_tl.config.TrainConfig key; `precision` takes fp32, fp16 (the recipe's
static loss scale 1024), fp16_dynamic, bf16 or fp16:<scale>, and sets loss_scale with it. A cell
this machine cannot run -- NCHW on a CPU without XLA, more GPUs than present, or anything
flowers_tl.config.check rejects -- keeps its reason and becomes a `skipped` row.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

# precision axis value -> TrainConfig (precision, loss_scale); "fp16" is the recipe's static 1024
PRECISION_SETTINGS = {"fp32": ("fp32", None), "fp16": ("fp16", "1024"),
                      "fp16_dynamic": ("fp16", "dynamic"), "bf16": ("bf16", None)}
NAMED_AXES = ("data_format", "batch_norm_fused", "precision", "num_gpus", "xla", "batch_size",
              "input")


class MatrixError(ValueError):
    """A bad axis, value or base configuration: one line, raised before any cell runs."""


def _field_types() -> dict[str, str]:
    from flowers_tl.config import TrainConfig
    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def parse_value(name: str, text: str) -> Any:
    """'NCHW', 'true', '64', 'none' -> the TrainConfig field's type (precision: its own names)."""
    text = text.strip()
    if name == "precision":
        if text in PRECISION_SETTINGS or re.fullmatch(r"fp16:(dynamic|[0-9.]+)", text):
            return text
        raise MatrixError(f"precision value {text!r}: one of {', '.join(PRECISION_SETTINGS)} "
                          "or fp16:<loss scale>")
    types = _field_types()
    if name not in types:
        raise MatrixError(f"{name!r} is not a TrainConfig key (python -m flowers_tl.train --help)")
    kind = types[name]
    if name == "checkpoint_url":
        return text  # "none" is a value here: train from scratch (None: the built-in checkpoint)
    if text.lower() == "none" and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if text.lower() not in ("true", "false", "on", "off", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "on", "1", "yes")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise MatrixError(f"{name}={text!r}: expected {kind.split(' ')[0]}") from None
    return text


def parse_assignments(text: str, flag: str) -> dict[str, list]:
    """'data_format=NHWC,NCHW' -> {'data_format': ['NHWC', 'NCHW']} (--axis);
    'batch_size=64,precision=bf16' -> {'batch_size': [64], 'precision': ['bf16']} (--cell)."""
    if flag == "--axis":
        name, sep, values = text.partition("=")
        if not sep or not values.strip(","):
            raise MatrixError(f"--axis {text!r}: expected name=value1,value2")
        parsed = [parse_value(name.strip(), v) for v in values.split(",") if v.strip()]
        return {name.strip(): list(dict.fromkeys(parsed))}
    result = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise MatrixError(f"{flag} {text!r}: expected key=value,key=value")
        result[name.strip()] = [parse_value(name.strip(), value)]
    return result


def axis_settings(name: str, value: Any) -> dict[str, Any]:
    if name != "precision":
        return {name: value}
    if value.startswith("fp16:"):
        return {"precision": "fp16", "loss_scale": value.split(":", 1)[1]}
    precision, loss_scale = PRECISION_SETTINGS[value]
    return {"precision": precision, "loss_scale": loss_scale}


def expand(base: dict[str, Any], matrices: Sequence[dict[str, list]],
           overrides: dict[str, list] | None = None) -> list[dict[str, Any]]:
    """The cells' settings: each matrix (with `overrides` set in it) as a product over `base`,
    in order, duplicates dropped."""
    cells: list[dict[str, Any]] = []
    for matrix in matrices or ({},):
        matrix = {**matrix, **(overrides or {})}
        names = list(matrix)
        for values in itertools.product(*(matrix[name] for name in names)):
            settings = dict(base)
            for name, value in zip(names, values):
                settings.update(axis_settings(name, value))
            if settings not in cells:
                cells.append(settings)
    return cells


@dataclass(frozen=True)
class Machine:
    gpus: int
    cpus: int


def detect_machine() -> Machine:
    """GPUs from nvidia-smi (respecting CUDA_VISIBLE_DEVICES) without importing TensorFlow."""
    from flowers_tl.env import gpu_count
    gpus = gpu_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = min(gpus, len([v for v in visible.split(",") if v.strip() not in ("", "-1")]))
    return Machine(gpus=gpus, cpus=len(os.sched_getaffinity(0)))


def check_cell(settings: dict[str, Any], machine: Machine):
    """(the production TrainConfig, None), or (None, why this machine cannot run the cell)."""
    from flowers_tl.config import ConfigError, resolve
    num_gpus = settings.get("num_gpus")
    num_gpus = machine.gpus if num_gpus is None else num_gpus
    if num_gpus > machine.gpus:
        return None, f"needs {num_gpus} GPU(s); this machine has {machine.gpus}"
    if settings.get("data_format") == "NCHW" and num_gpus == 0 and not settings.get("xla"):
        return None, "NCHW on a CPU needs XLA (TensorFlow's CPU Conv2D is NHWC only)"
    try:
        return resolve(settings, gpus_available=machine.gpus), None
    except (ConfigError, ValueError) as error:
        return None, f"invalid configuration: {error}"


def cell_name(values: dict[str, Any]) -> str:
    """e.g. nhwc-bnfused-fp32-noxla-b32-64px-cxx-cpu: every named axis, always in this order."""
    precision = values["precision"] + (f"-ls{values['loss_scale']}" if values.get("loss_scale")
                                       else "")
    return "-".join([str(values["data_format"]).lower(),
                     "bnfused" if values["batch_norm_fused"] else "bnplain", precision,
                     "xla" if values["xla"] else "noxla", f"b{values['batch_size']}",
                     f"{values['image_size']}px", values["input"],
                     f"{values['num_gpus']}gpu" if values["num_gpus"] else "cpu"])


@dataclass
class Cell:
    name: str
    role: str  # "cell", "anchor-tfdata", "anchor-keras-fit"
    settings: dict[str, Any]  # what was asked (base + axes)
    config: Any = None  # production TrainConfig (None: skipped)
    skipped: str | None = None
    default: bool = False  # the base configuration: what you would run without the sweep


def plan(base: dict[str, Any], matrices: Sequence[dict[str, list]], machine: Machine,
         overrides: dict[str, list] | None = None, extra_cells: Sequence[dict[str, list]] = (),
         tfdata_anchor: bool = True) -> tuple[Any, list[Cell]]:
    """(the default configuration, the cells with their checks): nothing runs here. The
    tf.data anchor is the default configuration fed by tf.data."""
    default, reason = check_cell(base, machine)
    if default is None:
        raise MatrixError(f"the base configuration cannot run here: {reason}")
    default_values = dataclasses.asdict(default)
    same = lambda a, b: dataclasses.replace(a, note="") == dataclasses.replace(b, note="")
    settings_list = expand(base, matrices, overrides)
    for extra in extra_cells:
        settings_list += [s for s in expand(base, [extra]) if s not in settings_list]
    if tfdata_anchor and default.input != "tfdata":
        anchor = {**base, "input": "tfdata"}
        if anchor not in settings_list:
            settings_list.append(anchor)
    cells, seen = [], set()
    for settings in settings_list:
        config, reason = check_cell(settings, machine)
        shown = dataclasses.asdict(config) if config else {**default_values, **{
            k: v for k, v in settings.items() if v is not None}}
        name = cell_name(shown)
        extra = sorted(k for k in settings if k not in NAMED_AXES + ("loss_scale", "image_size")
                       and settings[k] != base.get(k))
        name += "".join(f"-{k}={settings[k]}" for k in extra)
        key = json.dumps({**shown, "note": ""}, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        role = "anchor-tfdata" if config is not None and config.input == "tfdata" and \
            same(dataclasses.replace(config, input=default.input), default) else "cell"
        cells.append(Cell(name=re.sub(r"[^A-Za-z0-9_.=+-]", "_", name), role=role,
                          settings=settings, config=config, skipped=reason,
                          default=config is not None and same(config, default)))
    return default, cells
