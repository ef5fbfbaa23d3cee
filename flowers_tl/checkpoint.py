"""Loading pretrained weights into flowers_tl.model.ResNet50, with checks and a report.

    report = restore_pretrained(model, "resnet_v1_50.ckpt")          # TF-slim, V1 or V2 format
    report = restore_pretrained(model, "resnet50_..._notop.h5")      # Keras, variant="keras"
    report = restore_pretrained(model, "runs/earlier/checkpoints")   # our own tf.train.Checkpoint
    print(report.summary())

Exclude patterns are regular expressions searched in checkpoint names (MoXing's
`--checkpoint_exclude_patterns`, also accepted as one comma-separated string); by default
`global_step` and the model's logits layer, so fine-tuning starts with a fresh classifier.
Every model variable not excluded must be found with its exact shape, or one error lists every
missing and mismatched name; checkpoint tensors no variable uses (`mean_rgb`) are reported, not
fatal. The model's variables carry the checkpoint's names, so the name map is the identity for
TF-slim and Keras files, and an unescaping of the object path for our own checkpoints.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from flowers_tl.config import parse_exclude_patterns  # the one home of the rule

OWN_PREFIX = "variables_by_name/"  # the model's dict of variables, in tf.train.Checkpoint paths
OBJECT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
AVERAGE_PREFIX = "ema/shadows/"  # the weight average's shadows (flowers_tl.step.WeightAverage)


@dataclass(frozen=True)
class RestoreReport:
    path: str
    source_format: str
    loaded: tuple[str, ...]  # model variables set from the file
    excluded: tuple[str, ...]  # model variables excluded by pattern: left at their initial values
    unused: tuple[str, ...]  # tensors in the file that no model variable took
    exclude_patterns: tuple[str, ...]

    def summary(self) -> str:
        total = len(self.loaded) + len(self.excluded)
        lines = [f"restored {len(self.loaded)} of {total} variables from {self.path} "
                 f"({self.source_format})"]
        if self.excluded:
            lines.append(f"  newly initialised (excluded by {list(self.exclude_patterns)}): "
                         + _short_list(self.excluded))
        if self.unused:
            lines.append("  in the file but not used: " + _short_list(self.unused))
        return "\n".join(lines)


def _short_list(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _unescape_object_path(segment: str) -> str:
    """tf.train.Checkpoint escapes '/' as '.S' and '.' as '..' in dictionary keys."""
    out, i = [], 0
    while i < len(segment):
        if segment[i] == "." and i + 1 < len(segment):
            out.append("/" if segment[i + 1] == "S" else segment[i + 1])
            i += 2
        else:
            out.append(segment[i])
            i += 1
    return "".join(out)


def _resolve_tf_path(path: str) -> str:
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"no TensorFlow checkpoint in folder {path}")
        return latest
    # The old single-file (V1) format is only found through a path with a directory part.
    return path if os.path.dirname(path) else os.path.join(".", path)


def _read_tf_checkpoint(path: str, moving_average: bool = False
                        ) -> tuple[str, dict[str, np.ndarray], str]:
    resolved = _resolve_tf_path(path)
    try:
        reader = tf.train.load_checkpoint(resolved)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as error:
        raise FileNotFoundError(f"cannot read a TensorFlow checkpoint at {path}: "
                                f"{str(error).splitlines()[0]}") from None
    shapes = reader.get_variable_to_shape_map()
    if "_CHECKPOINTABLE_OBJECT_GRAPH" in shapes:
        # Ours: model/variables_by_name/<escaped name>/.ATTRIBUTES/VARIABLE_VALUE. Optimizer
        # slots, counters and the like are not model weights and are left out.
        # With moving_average: ema/shadows/<escaped name>/... instead, the weight average.
        tensors = {}
        prefix = AVERAGE_PREFIX if moving_average else OWN_PREFIX
        for key in shapes:
            at = key.find(prefix)
            if at >= 0 and key.endswith(OBJECT_SUFFIX) and "/.OPTIMIZER_SLOT/" not in key:
                name = _unescape_object_path(key[at + len(prefix): -len(OBJECT_SUFFIX)])
                tensors[name] = reader.get_tensor(key)
        if moving_average and not tensors:
            raise ValueError(f"{resolved}: no weight average in this checkpoint (the run had "
                             "no --ema_decay)")
        return resolved, tensors, "flowers_tl checkpoint" + (
            ", weight average" if moving_average else "")
    if moving_average:
        raise ValueError(f"{resolved}: not a flowers_tl checkpoint, it has no weight average")
    tensors = {name: reader.get_tensor(name) for name in shapes}
    single_file = os.path.isfile(resolved)
    return resolved, tensors, "TF-slim checkpoint, V1 single file" if single_file else \
        "TF-slim checkpoint, V2"


def _read_keras_h5(path: str) -> tuple[str, dict[str, np.ndarray], str]:
    """Keras weight files in the legacy HDF5 layout of the public
    resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5 (and of keras.saving.save_model(
    model, 'x.h5')): layer groups listed in `layer_names`, each with its `weight_names`."""
    import h5py  # comes with TensorFlow

    tensors = {}
    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" in group.attrs:
            for layer in group.attrs["layer_names"]:
                layer = layer.decode() if isinstance(layer, bytes) else layer
                for weight in group[layer].attrs["weight_names"]:
                    weight = weight.decode() if isinstance(weight, bytes) else weight
                    variable = weight.split(":")[0]
                    short = variable.split("/")[-1]
                    tensors[f"{layer}/{short}"] = np.asarray(group[layer][weight])
            return path, tensors, "Keras HDF5 weights"
        if "layers" in handle and "vars" in handle:
            # Keras 3 keys layers by position-derived names (conv2d_12, ...), not layer names.
            raise ValueError(f"{path} is a Keras 3 .weights.h5 file, whose layers are named by "
                             "position, not by layer name, so it cannot be checked name by name; "
                             "save the model with keras.saving.save_model(model, 'x.h5') (the "
                             "legacy HDF5 layout of the public ResNet50 weight files)")
    raise ValueError(f"{path}: not a Keras weights file (no layer_names and no layers group)")


def read_weights(path: str | os.PathLike, moving_average: bool = False
                 ) -> tuple[str, dict[str, np.ndarray], str]:
    """(resolved path, {checkpoint name: array}, format description) for any supported file;
    moving_average: the weight average of one of our checkpoints (--ema_decay) instead."""
    path = os.fspath(path)
    if path.endswith(".h5"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such Keras weights file: {path}")
        if moving_average:
            raise ValueError(f"{path}: a Keras weights file has no weight average")
        return _read_keras_h5(path)
    return _read_tf_checkpoint(path, moving_average)


def excluded_names(model, exclude_patterns: str | Iterable[str]) -> list[str]:
    """The model's variables that these exclude patterns match (searched in each name): the
    ones a restore leaves at their initial values, i.e. the new classifier by default."""
    compiled = [re.compile(pattern) for pattern in parse_exclude_patterns(exclude_patterns)]
    return [name for name in model.variables_by_name
            if any(pattern.search(name) for pattern in compiled)]


def restore_pretrained(model, path: str | os.PathLike,
                       exclude_patterns: str | Iterable[str] | None = None,
                       moving_average: bool = False) -> RestoreReport:
    """Sets the model's variables from a TF-slim / Keras / flowers_tl checkpoint (see module
    docstring). exclude_patterns=None means ("global_step", the model's logits pattern);
    moving_average: from a flowers_tl checkpoint's weight average (--ema_decay)."""
    if exclude_patterns is None:
        exclude_patterns = ("global_step", model.meta.logits_pattern)
    patterns = parse_exclude_patterns(exclude_patterns)
    compiled = [re.compile(pattern) for pattern in patterns]

    def is_excluded(name: str) -> bool:
        return any(pattern.search(name) for pattern in compiled)

    resolved, tensors, source_format = read_weights(path, moving_average)
    problems, loaded, excluded, assignments = [], [], [], []
    for name, variable in model.variables_by_name.items():
        if is_excluded(name):
            excluded.append(name)
            continue
        if name not in tensors:
            problems.append(f"missing: {name} {variable.shape.as_list()}")
            continue
        value = tensors[name]
        if tuple(value.shape) != tuple(variable.shape.as_list()):
            problems.append(f"shape mismatch: {name} is {list(value.shape)} in the file, "
                            f"{variable.shape.as_list()} in the model")
            continue
        assignments.append((variable, value))
        loaded.append(name)
    if problems:
        raise ValueError(
            f"cannot restore {path} ({source_format}) into the {model.config.variant} model: "
            f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)
            + "\n(exclude variables with --checkpoint_exclude_patterns, e.g. the logits layer "
            "when the number of classes differs)")
    for variable, value in assignments:  # only once everything checked: all or nothing
        variable.assign(tf.cast(value, variable.dtype))
    unused = sorted(name for name in tensors
                    if name not in model.variables_by_name and not is_excluded(name))
    return RestoreReport(path=resolved, source_format=source_format, loaded=tuple(loaded),
                         excluded=tuple(excluded), unused=tuple(unused),
                         exclude_patterns=patterns)
