"""Independent ResNet-50 v1 reference for parity tests: tf-slim's own `resnet_v1_50`.

Our Keras model (`flowers_tl/model.py`) must be the same *computation* as the public
`resnet_v1_50.ckpt`, not just the same shapes (see shared/reference/resnet_v1_50_checkpoint.md).
The 100 MB public file cannot be fetched here, so this module makes a checkpoint with the same
names, shapes and formats from tf-slim's network (graph mode, `is_training=False`) and returns
slim's logits for it; a parity test loads that checkpoint into our model and compares.

The weights are random but the network is calibrated so that a parity test can catch real bugs:
- conv weights are He-normal, drawn with numpy from (seed, variable name), so a seed means the
  same weights in every TF version and for every image size;
- BatchNorm gamma/beta are random (a model that swaps or drops them fails parity);
- BatchNorm moving_mean/moving_variance are measured layer by layer on the given images and then
  perturbed (mean +- 0.2 std, variance x 0.6..1.6): activations stay O(1) through all 16 units
  (with the default 0/1 statistics, random slim weights give logits of ~1e3), and a model that
  leaves BN in training mode (batch statistics) gives visibly different logits;
- logits biases are random, so a head without biases fails parity.

Needs `tf-slim` and `tf-keras` (see `import_slim_resnet_v1`). Costs on 2 CPU cores: one
`make_slim_checkpoint` at batch 2 x 224 px ~5-6 s, one `slim_logits` ~3-4 s, mostly the
~2.5 s it takes TF to build the slim graph.
"""
import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import warnings
import zlib

import numpy as np
import tensorflow as tf

MEAN_RGB = (123.68, 116.78, 103.94)  # vgg_preprocessing means, subtracted from 0-255 RGB
SCOPE = "resnet_v1_50"
REQUIREMENTS = ("tf-slim>=1.1,<2", "tf-keras>=2.21,<2.22")

# tensorflow/python/layers/normalization.py (TF 2.21) lazy-loads
# `tf_keras.legacy_tf_layers.normalization`, a path tf-keras 2.21 only ships as
# `tf_keras.src.legacy_tf_layers.normalization`. slim's batch_norm reaches it because
# resnet_arg_scope sets updates_collections=UPDATE_OPS (the non-fused-wrapper path).
# base/convolutional/core/pooling still come from TF's own frozen copy today; they are aliased
# too so that the day TF switches them to lazy tf_keras loaders this keeps working.
_LEGACY_LAYER_MODULES = ("", ".base", ".convolutional", ".core", ".normalization", ".pooling")

_slim_modules = None  # (tf_slim, tf_slim.nets.resnet_v1) once imported


def import_slim_resnet_v1():
    """Imports tf_slim's resnet_v1 under TF 2.21 (once) and returns the module.

    Deliberately does NOT set TF_USE_LEGACY_KERAS: that variable only decides what `tf.keras`
    resolves to, it is read once per process on the first `tf.keras` access, and slim never
    touches `tf.keras`; setting it here would silently turn `tf.keras` into Keras 2 for every
    other test in the same pytest process (our model is Keras 3).
    """
    global _slim_modules
    if _slim_modules is not None:
        return _slim_modules[1]
    missing = [name for name in ("tf_slim", "tf_keras") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"slim_reference needs {' and '.join(missing)} (not installed): "
            f"pip install {' '.join(repr(r) for r in REQUIREMENTS)}, "
            "or pip install -e '.[test]'")
    for suffix in _LEGACY_LAYER_MODULES:
        public_name = "tf_keras.legacy_tf_layers" + suffix
        if public_name not in sys.modules:
            try:  # a tf-keras that ships the public path again needs no alias
                importlib.import_module(public_name)
            except ModuleNotFoundError:
                sys.modules[public_name] = importlib.import_module(
                    "tf_keras.src.legacy_tf_layers" + suffix)
    import tf_slim
    from tf_slim.nets import resnet_v1
    _slim_modules = (tf_slim, resnet_v1)
    return resnet_v1


@contextlib.contextmanager
def _quiet():
    """Hides slim's `layer.apply is deprecated` and the V1-format banner; errors still show."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be NHWC RGB [B, H, W, 3], got shape {images.shape}")
    return images


def _build(num_classes: int):
    """Fresh graph: 0-255 RGB placeholder -> minus means -> slim resnet_v1_50 -> [B,1,1,C]."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    resnet_v1 = import_slim_resnet_v1()
    tf_slim = _slim_modules[0]
    graph = tf.Graph()
    with graph.as_default(), _quiet():
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="images_rgb")
        centred = images - tf.constant(MEAN_RGB, tf.float32)
        with tf_slim.arg_scope(resnet_v1.resnet_arg_scope()):
            logits, _ = resnet_v1.resnet_v1_50(
                centred, num_classes=num_classes, is_training=False, scope=SCOPE)
        model_variables = list(tf.compat.v1.global_variables())
    return graph, images, logits, model_variables


def _rng(seed: int, name: str, stream: int = 0) -> np.random.Generator:
    """One generator per (seed, variable): values do not depend on creation order."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), stream])


def _initial_value(name: str, shape, seed: int) -> np.ndarray:
    rng = _rng(seed, name)
    leaf = name.rsplit("/", 1)[-1]
    if leaf == "weights":
        fan_in = int(np.prod(shape[:-1]))
        gain = 1.0 if name.startswith(f"{SCOPE}/logits/") else 2.0  # He for ReLU, LeCun for logits
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(gain / fan_in))
    if leaf == "biases":
        return rng.normal(0.0, 0.5, shape).astype(np.float32)
    if leaf == "gamma":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if leaf == "beta":
        return rng.normal(0.0, 0.2, shape).astype(np.float32)
    if leaf == "moving_mean":
        return np.zeros(shape, np.float32)  # replaced by calibration
    if leaf == "moving_variance":
        return np.ones(shape, np.float32)  # replaced by calibration
    raise ValueError(f"no initial value rule for slim variable {name}")


def _feeds_for(fetch, known: dict) -> dict:
    """Feeds the nearest already-computed tensors above `fetch`, so one run costs one layer."""
    feeds, stack, seen = {}, [fetch.op], {fetch.op.name}
    while stack:
        for tensor in stack.pop().inputs:
            if tensor.name in known:
                feeds[tensor.name] = known[tensor.name]
            elif tensor.op.name not in seen:
                seen.add(tensor.op.name)
                stack.append(tensor.op)
    return feeds


def _calibrate_batch_norms(session, graph, images_placeholder, images, values, seed) -> dict:
    """Moving statistics for every BN, measured on its own input, in graph (= data) order.

    Each BN output is computed here in numpy from the new statistics and fed to the layers
    below, so each session run costs one conv and nothing needs assigning until the end.
    `values` holds the gamma/beta already chosen. Returns {variable name: value}.
    """
    known = {images_placeholder.name: images}
    statistics = {}
    for batch_norm in graph.get_operations():
        if not batch_norm.type.startswith("FusedBatchNorm"):
            continue
        inputs = batch_norm.inputs[0]
        activations = session.run(inputs, _feeds_for(inputs, known))
        # Input 3 is ReadVariableOp(<scope>/BatchNorm/moving_mean).
        scope = batch_norm.inputs[3].op.inputs[0].op.name.rsplit("/", 1)[0]
        mean = activations.mean(axis=(0, 1, 2), dtype=np.float64)
        variance = np.maximum(activations.var(axis=(0, 1, 2), dtype=np.float64), 1e-3)
        rng = _rng(seed, scope, stream=1)
        # Perturbed so that batch statistics (BN left in training mode) do not reproduce them.
        mean = (mean + 0.2 * np.sqrt(variance) * rng.standard_normal(mean.shape)).astype(np.float32)
        variance = (variance * rng.uniform(0.6, 1.6, variance.shape)).astype(np.float32)
        statistics[f"{scope}/moving_mean"] = mean
        statistics[f"{scope}/moving_variance"] = variance
        scale = values[f"{scope}/gamma"] / np.sqrt(variance + batch_norm.get_attr("epsilon"))
        known[batch_norm.outputs[0].name] = (activations - mean) * scale + values[f"{scope}/beta"]
    return statistics


def _session_config():
    """Grappler off: calibration makes ~55 distinct run signatures and grappler would
    re-optimise the whole graph for each (~0.1 s apiece). It also leaves every op as its own
    plain kernel (no Conv+BN+ReLU remapping), which suits a reference."""
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


def _make_assigner(graph, variables):
    with graph.as_default():
        slots = {}
        for variable in variables:
            placeholder = tf.compat.v1.placeholder(variable.dtype.base_dtype, variable.shape)
            slots[variable.op.name] = (placeholder, variable.assign(placeholder, read_value=False))

    def assign(session, values: dict):
        session.run([slots[name][1] for name in values],
                    {slots[name][0]: value for name, value in values.items()})
    return assign


def make_slim_checkpoint(path_prefix: str, images: np.ndarray, num_classes: int = 1000,
                         seed: int = 0, checkpoint_format: str = "V2") -> dict:
    """Builds slim resnet_v1_50, calibrates it on `images`, saves it like the public checkpoint.

    images: float RGB 0-255, NHWC, any size (slim gets them minus MEAN_RGB). The file holds the
    267 model tensors (1000 classes) plus `global_step` (int64 scalar) and
    `resnet_v1_50/mean_rgb` [3], which no layer uses. checkpoint_format "V2" writes
    `<prefix>.index` + `<prefix>.data-*`; "V1" writes the old single file at `<prefix>` (as the
    2016 public file probably is). Calibrate on the images (or at least the size and kind of
    images) a parity test compares on: statistics from 224 px images still keep a 97x131 image
    finite, but its block4 activations reach std ~13 and its logits ~40.

    Returns {"path": absolute path for tf.train.load_checkpoint, "logits": [B, num_classes]
    float32, "variables": {name: shape tuple} of everything in the file}.
    """
    write_versions = {"V1": tf.compat.v1.train.SaverDef.V1, "V2": tf.compat.v1.train.SaverDef.V2}
    if checkpoint_format not in write_versions:
        raise ValueError(f"checkpoint_format must be 'V1' or 'V2', got {checkpoint_format!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    images = _check_images(images)
    path = os.path.abspath(path_prefix)  # V1 files load only from a path with a directory part
    os.makedirs(os.path.dirname(path), exist_ok=True)  # the V1 writer does not create it

    graph, images_placeholder, logits, model_variables = _build(num_classes)
    assign = _make_assigner(graph, model_variables)
    with graph.as_default(), _quiet():
        global_step = tf.compat.v1.train.get_or_create_global_step()
        mean_rgb = tf.compat.v1.get_variable(
            f"{SCOPE}/mean_rgb", initializer=tf.constant(MEAN_RGB, tf.float32), trainable=False)
        saver = tf.compat.v1.train.Saver(
            model_variables + [global_step, mean_rgb],
            write_version=write_versions[checkpoint_format])
        initialize = tf.compat.v1.variables_initializer([global_step, mean_rgb])

    with tf.compat.v1.Session(graph=graph, config=_session_config()) as session, _quiet():
        session.run(initialize)
        values = {variable.op.name: _initial_value(variable.op.name, variable.shape.as_list(), seed)
                  for variable in model_variables}
        assign(session, values)
        assign(session, _calibrate_batch_norms(
            session, graph, images_placeholder, images, values, seed))
        output = session.run(logits, {images_placeholder: images})
        saved_path = saver.save(session, path, write_meta_graph=False, write_state=False)

    output = output.reshape(output.shape[0], num_classes)
    if not np.all(np.isfinite(output)) or np.abs(output).max() > 1e3:
        raise RuntimeError(f"slim reference logits out of range (max |logit| "
                           f"{np.abs(output).max()}): BN calibration failed")
    shapes = tf.train.load_checkpoint(saved_path).get_variable_to_shape_map()
    return {"path": saved_path, "logits": output,
            "variables": {name: tuple(shape) for name, shape in shapes.items()}}


def slim_logits(path: str, images: np.ndarray, num_classes: int = 1000) -> np.ndarray:
    """Restores a slim-named checkpoint into a fresh slim resnet_v1_50; returns [B, C] logits.

    Only the 267 model tensors are restored (global_step, mean_rgb are ignored); a tensor
    missing from the file or of the wrong shape is an error from the Saver.
    """
    images = _check_images(images)
    graph, images_placeholder, logits, model_variables = _build(num_classes)
    with graph.as_default(), _quiet():
        saver = tf.compat.v1.train.Saver(model_variables)
    with tf.compat.v1.Session(graph=graph, config=_session_config()) as session, _quiet():
        saver.restore(session, path)
        output = session.run(logits, {images_placeholder: images})
    return output.reshape(output.shape[0], num_classes)
