"""The sweep's matrix: axes expanded over a base configuration, and every cell checked against
this machine before anything runs.

    cells = expand({"image_size": 64}, [{"data_format": ["NHWC", "NCHW"], "xla": [False, True]},
                                        {"precision": ["bf16"]}])       # 4 + 1 settings dicts
    default, cells = plan(base, matrices, detect_machine())            # names, checks, roles

An axis is any configuration knob (flowers_tl.config; flat or dotted names, values parsed by
flowers_tl.config.parse_value, so `fp16` means the same here as on the trainer's command line:
dynamic loss scaling). A value may also be a dict of knobs set together (a preset's
`{"precision": "fp16", "loss_scale": "1024"}`; on the command line: `--cell
precision=fp16,loss_scale=1024`). A cell this machine cannot run -- anything
flowers_tl.config.check rejects, e.g. NCHW on a CPU without XLA, more GPUs than present --
keeps the check's one-line reason and becomes a `skipped` row.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

from flowers_tl import config as config_lib

# Knobs named in every cell name, in this order; cells differing elsewhere get "-knob=value".
NAMED_AXES = ("data_format", "batch_norm_fused", "precision", "loss_scale", "xla", "batch_size",
              "image_size", "input", "num_gpus")


class MatrixError(ValueError):
    """A bad axis, value or base configuration: one line, raised before any cell runs."""


def parse_setting(key: str, text: Any) -> tuple[str, Any]:
    """('model.precision', 'bf16') -> ('precision', 'bf16'), through the configuration's own
    parser; a MatrixError names the key."""
    try:
        name = config_lib.knob_name(key.strip())
        return name, config_lib.parse_value(name, text)
    except config_lib.ConfigError as error:
        raise MatrixError(str(error)) from None


def parse_assignments(text: str, flag: str) -> dict[str, list]:
    """'data_format=NHWC,NCHW' -> {'data_format': ['NHWC', 'NCHW']} (--axis);
    'batch_size=64,precision=bf16' -> {'batch_size': [64], 'precision': ['bf16']} (--cell)."""
    if flag == "--axis":
        name, sep, values = text.partition("=")
        if not sep or not values.strip(","):
            raise MatrixError(f"--axis {text!r}: expected name=value1,value2")
        parsed = [parse_setting(name, v) for v in values.split(",") if v.strip()]
        return {parsed[0][0]: list(dict.fromkeys(value for _, value in parsed))}
    result = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise MatrixError(f"{flag} {text!r}: expected key=value,key=value")
        knob, parsed = parse_setting(name, value)
        result[knob] = [parsed]
    return result


def _settings_of(name: str, value: Any) -> dict[str, Any]:
    """An axis value: one knob's value, or a dict of knobs set together."""
    if isinstance(value, dict):
        return dict(parse_setting(k, v) for k, v in value.items())
    return dict([parse_setting(name, value)])


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
                settings.update(_settings_of(name, value))
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
    return Machine(gpus=gpu_count(), cpus=len(os.sched_getaffinity(0)))


def check_cell(settings: dict[str, Any], machine: Machine):
    """(the production RunConfig, None), or (None, why this machine cannot run the cell)."""
    try:
        return config_lib.resolve(settings, gpus_available=machine.gpus), None
    except config_lib.ConfigError as error:
        return None, str(error)


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
    settings: dict[str, Any]  # what was asked (base + axes), flat knob names
    config: Any = None  # production RunConfig (None: skipped)
    skipped: str | None = None
    default: bool = False  # the base configuration: what you would run without the sweep

    @property
    def values(self) -> dict[str, Any]:
        """The production configuration as flat knobs (what tuned.json holds)."""
        return config_lib.flat_dict(self.config) if self.config is not None else dict(self.settings)


def plan(base: dict[str, Any], matrices: Sequence[dict[str, list]], machine: Machine,
         overrides: dict[str, list] | None = None, extra_cells: Sequence[dict[str, list]] = (),
         tfdata_anchor: bool = True) -> tuple[Any, list[Cell]]:
    """(the default configuration, the cells with their checks): nothing runs here. The
    tf.data anchor is the default configuration fed by tf.data."""
    base = dict(parse_setting(k, v) for k, v in base.items())
    default, reason = check_cell(base, machine)
    if default is None:
        raise MatrixError(f"the base configuration cannot run here: {reason}")
    default_values = config_lib.flat_dict(default)
    without_note = lambda values: {k: v for k, v in values.items() if k != "note"}
    settings_list = expand(base, matrices, overrides)
    for extra in extra_cells:
        settings_list += [s for s in expand(base, [extra]) if s not in settings_list]
    if tfdata_anchor and default.reader.input != "tfdata":
        anchor = {**base, "input": "tfdata"}
        if anchor not in settings_list:
            settings_list.append(anchor)
    cells, seen = [], set()
    for settings in settings_list:
        config, reason = check_cell(settings, machine)
        shown = config_lib.flat_dict(config) if config else {**default_values, **{
            k: v for k, v in settings.items() if v is not None}}
        name = cell_name(shown)
        extra = sorted(k for k in settings if k not in NAMED_AXES and settings[k] != base.get(k))
        name += "".join(f"-{k}={settings[k]}" for k in extra)
        key = json.dumps(without_note(shown), sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        is_default = config is not None and without_note(shown) == without_note(default_values)
        tfdata_twin = config is not None and config.reader.input == "tfdata" and \
            without_note({**shown, "input": default.reader.input}) == without_note(default_values)
        cells.append(Cell(name=re.sub(r"[^A-Za-z0-9_.=+-]", "_", name),
                          role="anchor-tfdata" if tfdata_twin else "cell", settings=settings,
                          config=config, skipped=reason, default=is_default))
    return default, cells
