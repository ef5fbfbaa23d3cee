"""Train-step throughput: the trainer's own step vs Keras' ResNet50 `train_on_batch`, side by side.

    python -m bench.step --image_size 128 --batch_size 32 --steps 8 --warmup 2 \\
        --model ours,keras --precision fp32,bf16 --out results/step-128px-b32.jsonl

`ours` is exactly the step flowers_tl.train trains with: flowers_tl.step.make_strategy(0) (one
CPU device, as the trainer on a CPU), ResNet50(ModelConfig) and MomentumSGD built under its
scope, make_train_step(model, optimizer, strategy, global batch, LossScale("dynamic") for fp16,
the trainer's fp16 default), each batch handed over by distribute_batch as in the training loop.
Measured figures are not quoted here: they live with their rows and environment under
results/published/ (<cpu>-<date>-step/), written by the command above.

Cells are the product of the list-valued flags (--data_format, --batch_norm_fused, --precision,
--xla, --onednn for `ours`; only --precision, --xla and --onednn apply to `keras`). Each cell
runs in a fresh subprocess (TensorFlow keeps global state: the mixed-precision policy, XLA
caches, TF_ENABLE_ONEDNN_OPTS read at import) with a timeout, on one fixed random batch (uint8
images, int32 labels) held in memory, so only the step is timed:

  1. check:   one step (it includes tracing / XLA compilation); the loss must be finite and the
              weights must have changed (fp16: within the steps its dynamic loss scale skips);
  2. warm-up: --warmup steps, not counted;
  3. timed:   --steps steps, each synchronised (the loss is read back) and timed alone;
  4. ceiling: flowers_tl.env.measure_peak_gflops in the same process, in the cell's compute
              dtype (float32, bfloat16, float16), unless --peak_gflops gives one.

images_per_sec and its spread come from flowers_tl.results.throughput_stats (total images over
total time; stderr, 95% interval and jitter from the per-step rates). A failing cell is an
`error` row; a cell this machine cannot run (NCHW without XLA on a CPU) is a `skipped` row
saying why. Rows are flat JSON objects with the cell's config, the CPU model and the environment
(flowers_tl.env), appended to --out (default: stdout); the table goes to stderr.

Napkin math: ResNet-50's forward pass is ~4.1 G multiply-adds = ~8.2 GFLOP at 224 px (an FMA is
2 FLOPs, as in the GEMM probe), training ~3x forward, scaled by (S/224)^2; fraction_of_peak is
the achieved GFLOP/s over the ceiling the probe measured on this machine, in this cell's dtype,
while the cell's process held the machine (the row's load average says how busy it was).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from flowers_tl.config import ConfigError, ModelConfig, check_model, parse_value
from flowers_tl.env import cpu_label, describe_environment
from flowers_tl.results import append_row, parse_list, throughput_stats

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = ("ours", "keras")
DATA_FORMATS = ("NHWC", "NCHW")
PRECISIONS = ("fp32", "fp16", "bf16")
KERAS_POLICIES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
PEAK_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # the convs' dtype
CHECK_VARIABLES = {"ours": "resnet_v1_50/conv1/weights", "keras": "conv1_conv"}
MAX_FP16_CHECK_STEPS = 24  # 2^15 down to 2^-8; Keras fp16 needed 14 at 32 px


@dataclasses.dataclass(frozen=True)
class StepBenchConfig:
    """One cell; saved whole in its row. data_format and batch_norm_fused are knobs of ours
    (default NHWC, fused); for `keras` they stay None (Keras is NHWC and picks its own BN ops)."""

    model: str
    precision: str = "fp32"
    xla: bool = False
    data_format: str | None = None
    batch_norm_fused: bool | None = None
    # TF_ENABLE_ONEDNN_OPTS for the cell's process; None: left unset, so importing flowers_tl
    # turns oneDNN on (rows record what was really used in `onednn_enabled`).
    onednn: bool | None = None
    image_size: int = 128
    batch_size: int = 32
    num_classes: int = 5
    steps: int = 10
    warmup: int = 2
    learning_rate: float = 0.01
    momentum: float = 0.9
    seed: int = 0
    # The FLOP ceiling: None measures it in the cell's process (peak_seconds of GEMMs).
    peak_gflops: float | None = None
    peak_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model {self.model!r} is not one of {', '.join(MODELS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.model == "keras" and (self.data_format, self.batch_norm_fused) != (None, None):
            raise ValueError("keras cells take no data_format / batch_norm_fused (leave them None)")
        if self.model == "ours":  # frozen: fill the defaults in the one place they are known
            if self.data_format is None:
                object.__setattr__(self, "data_format", "NHWC")
            if self.batch_norm_fused is None:
                object.__setattr__(self, "batch_norm_fused", True)
        if self.model == "ours" and self.data_format not in DATA_FORMATS:
            raise ValueError(f"data_format {self.data_format!r} is not one of {DATA_FORMATS}")
        if self.model == "ours" and not isinstance(self.batch_norm_fused, bool):
            raise ValueError("ours cells need batch_norm_fused true or false")
        if min(self.image_size, self.batch_size, self.num_classes, self.steps) < 1:
            raise ValueError("image_size, batch_size, num_classes and steps must be >= 1")
        if self.steps < 2:
            raise ValueError("steps must be >= 2 to give a spread")
        if self.warmup < 0:
            raise ValueError("warmup must be >= 0")
        if self.peak_gflops is not None and not self.peak_gflops > 0:
            raise ValueError(f"--peak_gflops {self.peak_gflops}: must be > 0")
        if not self.peak_seconds > 0:
            raise ValueError(f"--peak_seconds {self.peak_seconds}: must be > 0")

    @property
    def name(self) -> str:
        """e.g. ours-nhwc-fusedbn-fp32-xla, keras-fp32-noxla-onednn (files and tables)."""
        parts = [self.model]
        if self.model == "ours":
            parts += [self.data_format.lower(), "fusedbn" if self.batch_norm_fused else "unfusedbn"]
        parts += [self.precision, "xla" if self.xla else "noxla"]
        if self.onednn is not None:
            parts.append("onednn" if self.onednn else "noonednn")
        return "-".join(parts)

    def model_config(self) -> ModelConfig:
        """The run configuration's model section for an `ours` cell (other knobs: defaults)."""
        return ModelConfig(data_format=self.data_format, batch_norm_fused=self.batch_norm_fused,
                           precision=self.precision, xla=self.xla)


def train_gflop_per_image(image_size: int, forward_gflop_224: float) -> float:
    """Training FLOPs per image: ~3x the forward pass (forward, grad wrt activations, grad wrt
    weights), the forward scaled with the pixel count."""
    return 3.0 * forward_gflop_224 * (image_size / 224.0) ** 2


# ---------------------------------------------------------------------------------------------
# One cell (runs inside its own subprocess)
# ---------------------------------------------------------------------------------------------


def skip_reason(config: StepBenchConfig) -> str | None:
    """Why this machine cannot run the cell (the run configuration's own rule), or None. The
    step runs on the CPU (make_strategy(0)), so GPUs do not count."""
    if config.model != "ours":
        return None
    try:
        check_model(config.model_config(), gpus=0)
    except ConfigError as error:
        return str(error)
    return None


def build_ours(config: StepBenchConfig, images: np.ndarray, labels: np.ndarray
               ) -> tuple[Callable[[], float], Callable]:
    """(run one step of the trainer's step and return its loss, read the checked weights)."""
    from flowers_tl.model import ResNet50
    from flowers_tl.step import (LossScale, MomentumSGD, distribute_batch, make_strategy,
                                 make_train_step)

    strategy = make_strategy(0)  # the trainer's choice on a machine without GPUs
    with strategy.scope():
        model = ResNet50(config.model_config(), num_classes=config.num_classes, seed=config.seed)
        optimizer = MomentumSGD(config.learning_rate, momentum=config.momentum)
        # fp16's run-configuration default (flowers_tl.config.resolve) is a dynamic scale.
        loss_scale = LossScale("dynamic") if config.precision == "fp16" else None
        step = make_train_step(model, optimizer, strategy, config.batch_size, loss_scale)
    weights = model.variables_by_name[CHECK_VARIABLES["ours"]]

    def run_step() -> float:
        # As the training loop: numpy batch -> distribute_batch -> step; float() reads the loss
        # back, which waits for the step, so each timed step is complete.
        metrics = step(*distribute_batch(strategy, images, labels, config.batch_size))
        return float(metrics["loss"])

    return run_step, weights.numpy


def build_keras(config: StepBenchConfig, images: np.ndarray, labels: np.ndarray
                ) -> tuple[Callable[[], float], Callable]:
    """The anchor: keras.applications.ResNet50 as its users train it, train_on_batch."""
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(KERAS_POLICIES[config.precision])
    keras.utils.set_random_seed(config.seed)
    model = keras.applications.ResNet50(weights=None, classes=config.num_classes,
                                        input_shape=(config.image_size, config.image_size, 3))
    model.compile(optimizer=keras.optimizers.SGD(config.learning_rate, momentum=config.momentum),
                  loss="sparse_categorical_crossentropy", jit_compile=config.xla)
    kernel = model.get_layer(CHECK_VARIABLES["keras"]).kernel
    images, labels = tf.constant(images), tf.constant(labels)
    return (lambda: float(model.train_on_batch(images, labels))), kernel.numpy


def time_steps(run_step: Callable[[], float], read_weights: Callable, config: StepBenchConfig,
               ) -> dict[str, Any]:
    """Check, then time: the first step is verified, then warm-up, then timed steps."""
    weights_before = np.array(read_weights())
    start = time.perf_counter()
    first_loss = run_step()  # tracing / compilation happens here
    first_step_sec = time.perf_counter() - start
    if not math.isfinite(first_loss):
        raise FloatingPointError(f"first step: loss is {first_loss}")
    # Dynamic loss scaling (fp16) skips the update of every step whose gradients overflow while
    # its scale (2^15 at first) halves: allow those steps before calling the check failed.
    check_steps = 1
    while np.array_equal(np.array(read_weights()), weights_before):
        if check_steps >= (MAX_FP16_CHECK_STEPS if config.precision == "fp16" else 1):
            raise AssertionError(f"the checked weights did not change in {check_steps} step(s)")
        run_step()
        check_steps += 1

    for _ in range(config.warmup):
        run_step()
    step_seconds, loss = [], first_loss
    for _ in range(config.steps):
        start = time.perf_counter()
        loss = run_step()
        step_seconds.append(time.perf_counter() - start)

    return {
        **throughput_stats(step_seconds, config.batch_size),
        "num_steps": len(step_seconds),
        "first_step_sec": first_step_sec,
        "check_steps": check_steps,
        "first_loss": first_loss,
        "last_loss": loss if math.isfinite(loss) else None,  # not checked: a fixed batch at lr 0.01
    }


def onednn_enabled() -> bool | None:
    """Whether this process's TensorFlow runs oneDNN kernels (None: cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def add_napkin_math(row: dict[str, Any], forward_gflop: float, peak_gflops: float | None) -> None:
    """train_gflop_per_image, and where a rate and a ceiling are known, achieved_gflops and
    fraction_of_peak."""
    gflop = train_gflop_per_image(row["image_size"], forward_gflop)
    row.update(train_gflop_per_image=gflop, peak_gflops=peak_gflops)
    if "images_per_sec" in row and peak_gflops:
        row["achieved_gflops"] = row["images_per_sec"] * gflop
        row["fraction_of_peak"] = row["achieved_gflops"] / peak_gflops


def ceiling(config: StepBenchConfig) -> tuple[float, str]:
    """(GFLOP/s, where it came from): --peak_gflops, else the GEMM probe in this process."""
    if config.peak_gflops is not None:
        return config.peak_gflops, "--peak_gflops"
    from flowers_tl.env import measure_peak_gflops

    dtype = PEAK_DTYPES[config.precision]
    return (measure_peak_gflops(dtype, config.peak_seconds),
            f"measured: flowers_tl.env.measure_peak_gflops({dtype!r}, {config.peak_seconds:g})")


def base_row(config: StepBenchConfig, environment: dict[str, Any]) -> dict[str, Any]:
    return {"cell": config.name, "model": config.model, "data_format": config.data_format,
            "batch_norm_fused": config.batch_norm_fused, "precision": config.precision,
            "xla": config.xla, "onednn": config.onednn, "image_size": config.image_size,
            "batch_size": config.batch_size, "cpu_model": environment.get("cpu_model")}


def run_cell(config: StepBenchConfig, environment: dict[str, Any] | None = None,
             forward_gflop: float = 8.2) -> dict[str, Any]:
    """One result row; skips and failures are rows too. Meant for a fresh process."""
    if environment is None:  # described first: its load average is the one before the cell
        environment = describe_environment()
    row = base_row(config, environment)
    try:
        reason = skip_reason(config)
        if reason is not None:
            row["skipped"] = reason
        else:
            row["onednn_enabled"] = onednn_enabled()
            rng = np.random.default_rng(config.seed)
            images = rng.integers(0, 256, (config.batch_size, config.image_size,
                                           config.image_size, 3), dtype=np.uint8)
            labels = rng.integers(0, config.num_classes, config.batch_size, dtype=np.int32)
            build = build_ours if config.model == "ours" else build_keras
            row.update(time_steps(*build(config, images, labels), config))
            # After the steps, so a failing cell costs no probe; same process, same threads.
            peak, row["peak_gflops_source"] = ceiling(config)
            row["peak_dtype"] = PEAK_DTYPES[config.precision]
            add_napkin_math(row, forward_gflop, peak)
    except Exception as error:  # noqa: BLE001 - a failed cell becomes a row, not a crash
        row["error"] = f"{type(error).__name__}: {error}"
    # Other work on the machine shows up here: on 2 cores a cell alone reads ~2 after a minute.
    row["load_average_1min_after"] = os.getloadavg()[0]
    if config.model == "ours":
        row["model_config"] = dataclasses.asdict(config.model_config())
    row["config"] = dataclasses.asdict(config)
    row["environment"] = environment
    return row


def run_cell_in_subprocess(config: StepBenchConfig, timeout_sec: float,
                           forward_gflop: float = 8.2) -> dict[str, Any]:
    """run_cell in a fresh interpreter; a crash or a timeout becomes an error row."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else []))
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if config.onednn is not None:  # read once, when TensorFlow is imported
        environment["TF_ENABLE_ONEDNN_OPTS"] = "1" if config.onednn else "0"
    command = [sys.executable, "-m", "bench.step", "--forward_gflop", repr(forward_gflop),
               "--cell", json.dumps(dataclasses.asdict(config))]
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True,
                                text=True, timeout=timeout_sec, check=False)
    except subprocess.TimeoutExpired:
        problem = f"TimeoutExpired: cell ran over {timeout_sec:.0f} s (--cell_timeout)"
    else:
        lines = result.stdout.strip().splitlines()
        if result.returncode == 0 and lines:
            try:
                return json.loads(lines[-1])
            except ValueError:
                pass
        problem = (f"cell process exited with {result.returncode} and no row: "
                   f"{result.stderr.strip()[-1500:] or '(no stderr)'}")
    described = describe_environment()
    row = base_row(config, described)
    row["error"] = problem
    row["config"] = dataclasses.asdict(config)
    row["environment"] = described
    return row


# ---------------------------------------------------------------------------------------------
# Sweep, table, command line
# ---------------------------------------------------------------------------------------------


def make_configs(args: argparse.Namespace) -> list[StepBenchConfig]:
    """The product of the list-valued flags; keras cells only vary precision, xla and onednn."""
    common = dict(image_size=args.image_size, batch_size=args.batch_size,
                  num_classes=args.num_classes, steps=args.steps, warmup=args.warmup,
                  seed=args.seed, peak_gflops=args.peak_gflops, peak_seconds=args.peak_seconds)
    configs = []
    for model in args.model:
        if model == "keras":
            for precision, xla, onednn in itertools.product(args.precision, args.xla, args.onednn):
                configs.append(StepBenchConfig("keras", precision, xla, onednn=onednn, **common))
        else:
            for data_format, fused, precision, xla, onednn in itertools.product(
                    args.data_format, args.batch_norm_fused, args.precision, args.xla, args.onednn):
                configs.append(StepBenchConfig("ours", precision, xla, data_format, fused, onednn,
                                               **common))
    return configs


def napkin_math(rows: list[dict[str, Any]], image_size: int, forward_gflop: float) -> str:
    """The FLOPs per image, and per ceiling the rows used, the images/sec it allows."""
    gflop = train_gflop_per_image(image_size, forward_gflop)
    lines = [f"napkin math: training = 3 x {forward_gflop:g} GFLOP forward at 224 px x "
             f"({image_size}/224)^2 = {gflop:.2f} GFLOP/image"]
    peaks = {(row["precision"], row.get("peak_dtype"), round(row["peak_gflops"], 1),
              row.get("peak_gflops_source")): row.get("cpu_model")
             for row in rows if row.get("peak_gflops")}
    for (precision, dtype, peak, source), cpu in sorted(peaks.items(), key=str):
        lines.append(f"  {precision}: {dtype or ''} peak {peak:g} GFLOP/s ({source}; {cpu}) -> "
                     f"ceiling {peak / gflop:.1f} img/s at {image_size} px")
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Speed-ups against the Keras fp32 anchor (as its users run it: no XLA, TensorFlow's oneDNN
    default) and against the Keras cell with the same precision, XLA and oneDNN settings."""
    keras = {(row["precision"], row["xla"], row.get("onednn")): row for row in rows
             if row["model"] == "keras" and "images_per_sec" in row}
    anchors = sorted((key for key in keras if key[0] == "fp32"),
                     key=lambda key: (key[1], {None: 0, False: 1, True: 2}[key[2]]))
    anchor = keras[anchors[0]] if anchors else None

    def ratio(row: dict[str, Any], reference: dict[str, Any] | None) -> str:
        return f"{row['images_per_sec'] / reference['images_per_sec']:.2f}x" if reference else "-"

    lines = [f"{'cell':<37} {'img/s':>7} {'± stderr':>8} {'jitter':>7} {'step s':>7} "
             f"{'first s':>7} {'vs ' + (anchor['cell'] if anchor else 'keras fp32'):>22} "
             f"{'vs keras alike':>14} {'of peak':>7} {'peak':>6} {'load':>5}"]
    for row in rows:
        if "images_per_sec" not in row:
            status = f"skipped: {row['skipped']}" if "skipped" in row else f"error: {row['error']}"
            lines.append(f"{row['cell']:<37} {status[:140]}")
            continue
        alike = keras.get((row["precision"], row["xla"], row.get("onednn")))
        of_peak = f"{row['fraction_of_peak']:.1%}" if row.get("fraction_of_peak") else "-"
        lines.append(
            f"{row['cell']:<37} {row['images_per_sec']:>7.2f} {row['images_per_sec_stderr']:>8.2f} "
            f"{row['images_per_sec_jitter']:>7.2f} {row['step_time_sec']:>7.2f} "
            f"{row['first_step_sec']:>7.1f} {ratio(row, anchor):>22} {ratio(row, alike):>14} "
            f"{of_peak:>7} {row.get('peak_gflops') or 0:>6.0f} "
            f"{row.get('load_average_1min_after') or 0:>5.1f}")
    lines.append("peak: GFLOP/s of the cell's GEMM probe (or --peak_gflops); load: 1-min load "
                 "average after the cell; well above the core count means other work shared the "
                 "CPU and the cell's figure is low")
    return "\n".join(lines)


def boolean(text: str) -> bool:
    """true/false as the run configuration reads them (flowers_tl.config.parse_value)."""
    return parse_value("batch_norm_fused", text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.step",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_classes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps after the (untimed) check step")
    parser.add_argument("--model", type=parse_list(str, MODELS), default=list(MODELS),
                        help="ours,keras (keras: keras.applications.ResNet50 + train_on_batch)")
    parser.add_argument("--data_format", type=parse_list(str, DATA_FORMATS), default=["NHWC"])
    parser.add_argument("--batch_norm_fused", type=parse_list(boolean), default=[True])
    parser.add_argument("--precision", type=parse_list(str, PRECISIONS), default=["fp32"])
    parser.add_argument("--xla", type=parse_list(boolean), default=[False])
    parser.add_argument("--onednn", type=parse_list(boolean), default=[None],
                        help="TF_ENABLE_ONEDNN_OPTS per cell, e.g. false,true (default: unset, "
                             "i.e. flowers_tl's default, on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cell_timeout", type=float, default=1200.0,
                        help="seconds one cell (its own process) may take")
    parser.add_argument("--peak_gflops", type=float, default=None,
                        help="the FLOP ceiling for every cell; default: measured in each cell's "
                             "process by flowers_tl.env.measure_peak_gflops in its dtype")
    parser.add_argument("--peak_seconds", type=float, default=2.0,
                        help="how long the GEMM probe runs per cell")
    parser.add_argument("--forward_gflop", type=float, default=8.2,
                        help="ResNet-50 forward FLOPs at 224 px: 4.1 G multiply-adds = 8.2 GFLOP, "
                             "counted like the probe (an FMA is 2 FLOPs)")
    parser.add_argument("--out", default=None,
                        help="append JSON rows to this file (default: rows to stdout)")
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: one cell
    args = parser.parse_args(argv)
    for name in ("model", "data_format", "batch_norm_fused", "precision", "xla", "onednn"):
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))  # drop duplicates
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cell is not None:  # the per-cell subprocess: one row on stdout
        row = run_cell(StepBenchConfig(**json.loads(args.cell)), forward_gflop=args.forward_gflop)
        print(json.dumps(row, default=str))
        return 0

    try:  # every cell is validated here, before any heavy work
        configs = make_configs(args)
    except ValueError as error:
        print(f"python -m bench.step: error: {error}", file=sys.stderr)
        return 2
    environment = describe_environment()
    print(f"{len(configs)} cells; {cpu_label(environment)}, {environment['cpu_count_affinity']} "
          f"usable cores, load average {environment['load_average_1min']}", file=sys.stderr)
    rows = []
    for config in configs:
        start = time.perf_counter()
        row = run_cell_in_subprocess(config, args.cell_timeout, args.forward_gflop)
        rows.append(row)
        if "images_per_sec" in row:
            status = (f"{row['images_per_sec']:.2f} ± {row['images_per_sec_stderr']:.2f} img/s, "
                      f"first step {row['first_step_sec']:.1f} s")
        else:
            status = f"skipped: {row['skipped']}" if "skipped" in row else f"error: {row['error']}"
        print(f"{config.name}: {status} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        append_row(row, args.out)
    print(format_table(rows), file=sys.stderr)
    print(napkin_math(rows, args.image_size, args.forward_gflop), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
