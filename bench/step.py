"""Train-step throughput: our ResNet-50 step vs Keras' ResNet50 `train_on_batch`, side by side.

    python -m bench.step --image_size 128 --batch_size 32 --steps 8 --warmup 2 \\
        --model ours,keras --precision fp32 --xla false,true --batch_norm_fused true,false \\
        --out results/step-128px-b32-fp32.jsonl

Measured on this project's 2-core AMD EPYC (AVX2, TF 2.21, Keras 3.15, nothing else running),
128 px, batch 32, fp32, 8 timed steps: ours 7.1 img/s (fused BN; 7.5 with XLA) vs Keras 6.8
(1.05x); with --onednn true ours 12.8 vs Keras 11.0 (1.17x; 2.0x Keras as users run it).

Cells are the product of the list-valued flags (--data_format, --batch_norm_fused, --precision,
--xla, --onednn for `ours`; only --precision, --xla and --onednn apply to `keras`). Each cell
runs in a fresh subprocess (TensorFlow keeps global state: the mixed-precision policy, XLA
caches, TF_ENABLE_ONEDNN_OPTS read at import) with a timeout, on one fixed random batch (uint8
images, int32 labels) held in memory, so only the step is timed:

  1. check:   one step (it includes tracing / XLA compilation); the loss must be finite and the
              weights must have changed;
  2. warm-up: --warmup steps, not counted;
  3. timed:   --steps steps, each synchronised (the loss is read back) and timed alone.

images_per_sec is the images of the timed steps over their total time; its stderr comes from
the per-step rates, and jitter is tf_cnn_benchmarks' (1.4826 * median absolute deviation of the
per-step rates). A failing cell is an `error` row; a cell this machine cannot run (NCHW without
XLA on a CPU) is a `skipped` row saying why. Rows are flat JSON objects with the cell's config
and environment (flowers_tl.env), appended to --out (default: stdout); the table goes to stderr.

Napkin math: ResNet-50's forward pass is ~4.1 G multiply-adds = ~8.2 GFLOP at 224 px (an FMA is
2 FLOPs, as in the peak figure), training ~3x forward, scaled by (S/224)^2; the fraction of the
CPU's fp32 peak (--peak_gflops, 157 for this project's 2-core machine) is achieved over peak.
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

from flowers_tl.env import describe_environment
from flowers_tl.results import append_row, parse_list, throughput_stats

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = ("ours", "keras")
DATA_FORMATS = ("NHWC", "NCHW")
PRECISIONS = ("fp32", "fp16", "bf16")
KERAS_POLICIES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
CHECK_VARIABLES = {"ours": "resnet_v1_50/conv1/weights", "keras": "conv1_conv"}
MAX_FP16_CHECK_STEPS = 24  # 2^15 down to 2^-8; Keras fp16 needed 14 at 32 px


@dataclasses.dataclass(frozen=True)
class StepBenchConfig:
    """One cell; saved whole in its row. data_format and fused_batch_norm are knobs of ours
    (default NHWC, fused); for `keras` they stay None (Keras is NHWC and picks its own BN ops)."""

    model: str
    precision: str = "fp32"
    xla: bool = False
    data_format: str | None = None
    fused_batch_norm: bool | None = None
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

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model {self.model!r} is not one of {', '.join(MODELS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.model == "keras" and (self.data_format, self.fused_batch_norm) != (None, None):
            raise ValueError("keras cells take no data_format / fused_batch_norm (leave them None)")
        if self.model == "ours":  # frozen: fill the defaults in the one place they are known
            if self.data_format is None:
                object.__setattr__(self, "data_format", "NHWC")
            if self.fused_batch_norm is None:
                object.__setattr__(self, "fused_batch_norm", True)
        if self.model == "ours" and self.data_format not in DATA_FORMATS:
            raise ValueError(f"data_format {self.data_format!r} is not one of {DATA_FORMATS}")
        if self.model == "ours" and not isinstance(self.fused_batch_norm, bool):
            raise ValueError("ours cells need fused_batch_norm true or false")
        if min(self.image_size, self.batch_size, self.num_classes, self.steps) < 1:
            raise ValueError("image_size, batch_size, num_classes and steps must be >= 1")
        if self.steps < 2:
            raise ValueError("steps must be >= 2 to give a spread")
        if self.warmup < 0:
            raise ValueError("warmup must be >= 0")

    @property
    def name(self) -> str:
        """e.g. ours-nhwc-fusedbn-fp32-xla, keras-fp32-noxla-onednn (files and tables)."""
        parts = [self.model]
        if self.model == "ours":
            parts += [self.data_format.lower(), "fusedbn" if self.fused_batch_norm else "unfusedbn"]
        parts += [self.precision, "xla" if self.xla else "noxla"]
        if self.onednn is not None:
            parts.append("onednn" if self.onednn else "noonednn")
        return "-".join(parts)


def train_gflop_per_image(image_size: int, forward_gflop_224: float) -> float:
    """Training FLOPs per image: ~3x the forward pass (forward, grad wrt activations, grad wrt
    weights), the forward scaled with the pixel count."""
    return 3.0 * forward_gflop_224 * (image_size / 224.0) ** 2


# ---------------------------------------------------------------------------------------------
# One cell (runs inside its own subprocess)
# ---------------------------------------------------------------------------------------------


def skip_reason(config: StepBenchConfig) -> str | None:
    """Why this machine cannot run the cell (the model's own check), or None."""
    if config.model != "ours":
        return None
    from flowers_tl.model import ModelConfig

    try:
        ModelConfig(num_classes=config.num_classes, data_format=config.data_format,
                    fused_batch_norm=config.fused_batch_norm, precision=config.precision,
                    xla=config.xla, seed=config.seed).check()
    except ValueError as error:
        return str(error)
    return None


def build_ours(config: StepBenchConfig, images, labels) -> tuple[Callable[[], float], Callable]:
    """(run one step and return its loss, read the checked weights)."""
    from flowers_tl.model import resnet_v1_50
    from flowers_tl.step import MomentumSGD, make_train_step

    model = resnet_v1_50(config.num_classes, data_format=config.data_format,
                         fused_batch_norm=config.fused_batch_norm, precision=config.precision,
                         xla=config.xla, seed=config.seed)
    step = make_train_step(model, MomentumSGD(config.learning_rate, config.momentum),
                           jit_compile=config.xla)
    weights = model.variables_by_name[CHECK_VARIABLES["ours"]]
    # float(): reading the loss back waits for the step, so each timed step is complete.
    return (lambda: float(step(images, labels)["loss"])), weights.numpy


def build_keras(config: StepBenchConfig, images, labels) -> tuple[Callable[[], float], Callable]:
    """The anchor: keras.applications.ResNet50 as its users train it, train_on_batch."""
    import keras

    keras.mixed_precision.set_global_policy(KERAS_POLICIES[config.precision])
    keras.utils.set_random_seed(config.seed)
    model = keras.applications.ResNet50(weights=None, classes=config.num_classes,
                                        input_shape=(config.image_size, config.image_size, 3))
    model.compile(optimizer=keras.optimizers.SGD(config.learning_rate, momentum=config.momentum),
                  loss="sparse_categorical_crossentropy", jit_compile=config.xla)
    kernel = model.get_layer(CHECK_VARIABLES["keras"]).kernel
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
    # Dynamic loss scaling (Keras' fp16) skips the update of every step whose gradients overflow
    # while its scale (2^15 at first) halves: allow those steps before calling the check failed.
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


def base_row(config: StepBenchConfig) -> dict[str, Any]:
    return {"cell": config.name, "model": config.model, "data_format": config.data_format,
            "fused_batch_norm": config.fused_batch_norm, "precision": config.precision,
            "xla": config.xla, "onednn": config.onednn, "image_size": config.image_size,
            "batch_size": config.batch_size}


def run_cell(config: StepBenchConfig, environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """One result row; skips and failures are rows too. Meant for a fresh process."""
    if environment is None:  # described first: its load average is the one before the cell
        environment = describe_environment()
    row = base_row(config)
    try:
        reason = skip_reason(config)
        if reason is not None:
            row["skipped"] = reason
        else:
            import tensorflow as tf

            row["onednn_enabled"] = onednn_enabled()
            rng = np.random.default_rng(config.seed)
            images = tf.constant(rng.integers(0, 256, (config.batch_size, config.image_size,
                                                       config.image_size, 3), dtype=np.uint8))
            labels = tf.constant(rng.integers(0, config.num_classes, config.batch_size,
                                              dtype=np.int32))
            build = build_ours if config.model == "ours" else build_keras
            row.update(time_steps(*build(config, images, labels), config))
    except Exception as error:  # noqa: BLE001 - a failed cell becomes a row, not a crash
        row["error"] = f"{type(error).__name__}: {error}"
    # Other work on the machine shows up here: on 2 cores a cell alone reads ~2 after a minute.
    row["load_average_1min_after"] = os.getloadavg()[0]
    row["config"] = dataclasses.asdict(config)
    row["environment"] = environment
    return row


def run_cell_in_subprocess(config: StepBenchConfig, timeout_sec: float) -> dict[str, Any]:
    """run_cell in a fresh interpreter; a crash or a timeout becomes an error row."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else []))
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if config.onednn is not None:  # read once, when TensorFlow is imported
        environment["TF_ENABLE_ONEDNN_OPTS"] = "1" if config.onednn else "0"
    command = [sys.executable, "-m", "bench.step", "--cell", json.dumps(dataclasses.asdict(config))]
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
    row = base_row(config)
    row["error"] = problem
    row["config"] = dataclasses.asdict(config)
    row["environment"] = describe_environment()
    return row


# ---------------------------------------------------------------------------------------------
# Sweep, table, command line
# ---------------------------------------------------------------------------------------------


def make_configs(args: argparse.Namespace) -> list[StepBenchConfig]:
    """The product of the list-valued flags; keras cells only vary precision, xla and onednn."""
    common = dict(image_size=args.image_size, batch_size=args.batch_size,
                  num_classes=args.num_classes, steps=args.steps, warmup=args.warmup,
                  seed=args.seed)
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


def add_napkin_math(row: dict[str, Any], forward_gflop: float, peak_gflops: float) -> None:
    gflop = train_gflop_per_image(row["image_size"], forward_gflop)
    row.update(train_gflop_per_image=gflop, peak_gflops=peak_gflops)
    if "images_per_sec" in row:
        row["achieved_gflops"] = row["images_per_sec"] * gflop
        row["fraction_of_peak"] = row["achieved_gflops"] / peak_gflops


def napkin_math(image_size: int, forward_gflop: float, peak_gflops: float) -> str:
    gflop = train_gflop_per_image(image_size, forward_gflop)
    return (f"napkin math: training = 3 x {forward_gflop:g} GFLOP forward at 224 px x "
            f"({image_size}/224)^2 = {gflop:.2f} GFLOP/image; fp32 peak {peak_gflops:g} GFLOP/s "
            f"-> ceiling {peak_gflops / gflop:.1f} img/s at {image_size} px")


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
             f"{'vs keras alike':>14} {'of peak':>7} {'load':>5}"]
    for row in rows:
        if "images_per_sec" not in row:
            status = f"skipped: {row['skipped']}" if "skipped" in row else f"error: {row['error']}"
            lines.append(f"{row['cell']:<37} {status[:140]}")
            continue
        alike = keras.get((row["precision"], row["xla"], row.get("onednn")))
        lines.append(
            f"{row['cell']:<37} {row['images_per_sec']:>7.2f} {row['images_per_sec_stderr']:>8.2f} "
            f"{row['images_per_sec_jitter']:>7.2f} {row['step_time_sec']:>7.2f} "
            f"{row['first_step_sec']:>7.1f} {ratio(row, anchor):>22} {ratio(row, alike):>14} "
            f"{row.get('fraction_of_peak', 0):>7.1%} "
            f"{row.get('load_average_1min_after') or 0:>5.1f}")
    lines.append("load: 1-min load average after the cell; well above the core count means other "
                 "work shared the CPU and the cell's figure is low")
    return "\n".join(lines)


def boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(text)


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
    parser.add_argument("--peak_gflops", type=float, default=157.0,
                        help="the CPU's fp32 peak (157: this project's 2-core machine)")
    parser.add_argument("--forward_gflop", type=float, default=8.2,
                        help="ResNet-50 forward FLOPs at 224 px: 4.1 G multiply-adds = 8.2 GFLOP, "
                             "counted like --peak_gflops (an FMA is 2 FLOPs)")
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
        print(json.dumps(run_cell(StepBenchConfig(**json.loads(args.cell))), default=str))
        return 0

    configs = make_configs(args)  # every cell is validated here, before any heavy work
    environment = describe_environment()
    print(f"{len(configs)} cells; {environment['cpu_model']}, {environment['cpu_count_affinity']} "
          f"usable cores, load average {environment['load_average_1min']}", file=sys.stderr)
    rows = []
    for config in configs:
        start = time.perf_counter()
        row = run_cell_in_subprocess(config, args.cell_timeout)
        add_napkin_math(row, args.forward_gflop, args.peak_gflops)
        rows.append(row)
        if "images_per_sec" in row:
            status = (f"{row['images_per_sec']:.2f} ± {row['images_per_sec_stderr']:.2f} img/s, "
                      f"first step {row['first_step_sec']:.1f} s")
        else:
            status = f"skipped: {row['skipped']}" if "skipped" in row else f"error: {row['error']}"
        print(f"{config.name}: {status} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        append_row(row, args.out)
    print(format_table(rows), file=sys.stderr)
    print(napkin_math(args.image_size, args.forward_gflop, args.peak_gflops), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
