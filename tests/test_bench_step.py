"""bench.step: the CLI writes self-describing rows, skips and fails per cell, and times honestly.

The CLI test runs three tiny cells, each in its own process (~50 s on 2 cores, most of it
TensorFlow start-up and Keras' first train_on_batch); the rest are fast unit tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench import step as bench_step

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_cli_writes_rows_with_config_environment_and_a_skipped_nchw_cell(tmp_path):
    out = tmp_path / "tmp.jsonl"
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "bench.step", "--image_size", "32", "--batch_size", "2",
         "--steps", "2", "--warmup", "1", "--data_format", "NHWC,NCHW", "--xla", "false",
         "--model", "ours,keras", "--peak_seconds", "0.5", "--out", str(out)],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["cell"] for row in rows] == [
        "ours-nhwc-fusedbn-fp32-noxla", "ours-nchw-fusedbn-fp32-noxla", "keras-fp32-noxla"]
    for row in rows:
        assert row["config"]["image_size"] == 32 and row["config"]["batch_size"] == 2
        assert row["config"]["model"] == row["model"] and row["config"]["seed"] == 0
        assert row["environment"]["cpu_count_logical"] >= 1
        assert "git_commit" in row["environment"] and row["environment"]["tensorflow_version"]
        assert row["cpu_model"] == row["environment"]["cpu_model"]
    ours, nchw, keras = rows
    assert "NCHW" in nchw["skipped"] and "--xla true" in nchw["skipped"] and "images_per_sec" not in nchw
    for row in (ours, keras):
        assert "error" not in row, row["error"]
        assert row["images_per_sec"] > 0 and row["images_per_sec_stderr"] >= 0
        assert row["num_steps"] == 2 and np.isfinite(row["first_loss"])
        # The ceiling was measured in the cell's own process, in its dtype.
        assert row["peak_dtype"] == "float32" and row["peak_gflops"] > 0
        assert row["peak_gflops_source"].startswith("measured: flowers_tl.env.measure_peak_gflops")
        assert 0 < row["fraction_of_peak"] < 1
    assert ours["model_config"]["batch_norm_fused"] is True and ours["batch_norm_fused"] is True
    assert keras["config"]["data_format"] is None  # not a Keras knob
    assert "vs keras-fp32-noxla" in result.stderr and "napkin math" in result.stderr


def test_cells_are_the_product_of_the_list_flags_and_keras_varies_only_precision_and_xla():
    args = bench_step.parse_args(
        ["--model", "keras,ours", "--data_format", "NHWC,NCHW", "--batch_norm_fused", "true,false",
         "--precision", "fp32,bf16", "--xla", "false,true"])
    names = [config.name for config in bench_step.make_configs(args)]
    assert len(names) == 4 + 16 and len(set(names)) == len(names)
    assert names[:4] == ["keras-fp32-noxla", "keras-fp32-xla", "keras-bf16-noxla", "keras-bf16-xla"]
    assert "ours-nchw-unfusedbn-bf16-xla" in names
    args = bench_step.parse_args(["--model", "keras", "--onednn", "false,true"])
    configs = bench_step.make_configs(args)
    assert [config.name for config in configs] == ["keras-fp32-noxla-noonednn",
                                                   "keras-fp32-noxla-onednn"]


def test_bad_flags_and_impossible_cells_fail_before_any_work(capsys):
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--xla", "maybe"])
    assert "'maybe' is not a valid boolean" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--precision", "fp8"])
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--fused_batch_norm", "true"])  # one spelling: batch_norm_fused
    assert bench_step.main(["--peak_gflops", "-1"]) == 2
    assert "--peak_gflops -1.0: must be > 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="keras cells take no data_format"):
        bench_step.StepBenchConfig("keras", data_format="NCHW")
    with pytest.raises(ValueError, match="steps must be >= 2"):
        bench_step.StepBenchConfig("ours", steps=1)
    assert bench_step.StepBenchConfig("ours").name == "ours-nhwc-fusedbn-fp32-noxla"


def test_time_steps_measures_a_known_rate_and_checks_first():
    config = bench_step.StepBenchConfig("ours", batch_size=8, steps=5, warmup=1)
    weights = [np.zeros(3)]

    def fake_step():  # 8 images every 20 ms is 400 img/s; sleep overshoot only lowers it
        time.sleep(0.02)
        weights[0] = weights[0] + 1
        return 1.0

    figures = bench_step.time_steps(fake_step, lambda: weights[0], config)
    assert 300 < figures["images_per_sec"] <= 401 and figures["num_steps"] == 5
    assert weights[0][0] == 1 + 1 + 5  # check, warm-up, timed

    with pytest.raises(FloatingPointError, match="loss is nan"):
        bench_step.time_steps(lambda: float("nan"), lambda: weights[0], config)
    with pytest.raises(AssertionError, match="did not change in 1 step"):
        bench_step.time_steps(lambda: 1.0, lambda: np.zeros(3), config)

    # fp16 with dynamic loss scaling: the first steps may be skipped (overflow), then it trains.
    calls = []

    def skips_two_steps():
        calls.append(1)
        return 1.0

    fp16 = bench_step.StepBenchConfig("keras", precision="fp16", steps=2, warmup=0)
    figures = bench_step.time_steps(skips_two_steps, lambda: np.full(3, max(0, len(calls) - 2)),
                                    fp16)
    assert figures["check_steps"] == 3 and len(calls) == 3 + 2


def test_a_failing_cell_is_an_error_row(monkeypatch):
    def broken_build(config, images, labels):
        return (lambda: float("inf")), (lambda: np.zeros(1))

    monkeypatch.setattr(bench_step, "build_keras", broken_build)
    config = bench_step.StepBenchConfig("keras", image_size=8, batch_size=2)
    row = bench_step.run_cell(config, environment={"cpu_model": "test"})
    assert row["error"] == "FloatingPointError: first step: loss is inf"
    assert row["config"]["model"] == "keras" and "images_per_sec" not in row


def test_a_cell_over_its_timeout_is_an_error_row():
    config = bench_step.StepBenchConfig("ours", image_size=8, batch_size=2)
    row = bench_step.run_cell_in_subprocess(config, timeout_sec=0.5)  # TF alone takes longer
    assert row["error"].startswith("TimeoutExpired") and row["cell"] == config.name
    assert row["config"]["image_size"] == 8 and "cpu_model" in row["environment"]


def test_table_reports_speedup_over_keras_fp32_and_fraction_of_peak():
    def row(cell, model, rate, xla=False):
        result = {"cell": cell, "model": model, "precision": "fp32", "xla": xla, "image_size": 224,
                  "images_per_sec": rate, "images_per_sec_stderr": 0.1,
                  "images_per_sec_jitter": 0.1, "step_time_sec": 32 / rate, "first_step_sec": 9.0}
        bench_step.add_napkin_math(result, forward_gflop=8.2, peak_gflops=200.0)
        return result

    rows = [row("ours-a", "ours", 3.0), row("keras-fp32-xla", "keras", 4.0, xla=True),
            row("keras-fp32-noxla", "keras", 2.0),
            {"cell": "ours-b", "model": "ours", "precision": "fp32", "xla": False,
             "skipped": "needs XLA"}]
    table = bench_step.format_table(rows).splitlines()
    assert "vs keras-fp32-noxla" in table[0]  # Keras' CPU default (no XLA) is the anchor
    assert table[1].split()[-5:-3] == ["1.50x", "1.50x"]  # vs the anchor, vs Keras alike
    assert table[2].split()[-5:-3] == ["2.00x", "1.00x"]
    assert "skipped: needs XLA" in table[4]
    # 224 px: 3 x 8.2 = 24.6 GFLOP/image; 3 img/s = 73.8 GFLOP/s = 36.9% of 200.
    assert rows[0]["train_gflop_per_image"] == pytest.approx(24.6)
    assert rows[0]["fraction_of_peak"] == pytest.approx(3 * 24.6 / 200)
    assert "36.9%" in table[1]


def test_ours_builds_the_trainers_step_with_its_strategy_batch_and_fp16_loss_scale(monkeypatch):
    import flowers_tl.step
    import tensorflow as tf

    calls = []
    real = flowers_tl.step.make_train_step

    def recording(model, optimizer, strategy=None, global_batch_size=None, loss_scale=None,
                  jit_compile=None):
        calls.append(dict(strategy=strategy, global_batch_size=global_batch_size,
                          loss_scale=loss_scale, model=model))
        return real(model, optimizer, strategy, global_batch_size, loss_scale, jit_compile)

    monkeypatch.setattr(flowers_tl.step, "make_train_step", recording)
    config = bench_step.StepBenchConfig("ours", precision="fp16", image_size=32, batch_size=2,
                                        batch_norm_fused=False)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    bench_step.build_ours(config, images, np.zeros(2, np.int32))
    (call,) = calls
    assert isinstance(call["strategy"], tf.distribute.OneDeviceStrategy)  # make_strategy(0)
    assert call["global_batch_size"] == 2
    assert call["loss_scale"].dynamic and float(call["loss_scale"].scale) == 2.0 ** 15
    assert call["model"].config.batch_norm_fused is False
    assert call["model"].config.precision == "fp16"


def test_run_cell_holds_the_rate_against_the_given_ceiling(monkeypatch):
    def steady_build(config, images, labels):  # 4 images every 40 ms: at most 100 img/s
        weights = [np.zeros(1)]

        def run_step():
            time.sleep(0.04)
            weights[0] = weights[0] + 1
            return 1.0
        return run_step, lambda: weights[0]

    monkeypatch.setattr(bench_step, "build_ours", steady_build)
    config = bench_step.StepBenchConfig("ours", image_size=224, batch_size=4, steps=3, warmup=0,
                                        peak_gflops=1000.0)
    row = bench_step.run_cell(config, environment={"cpu_model": "Test CPU"})
    assert "error" not in row, row.get("error")
    assert row["peak_gflops"] == 1000.0 and row["peak_gflops_source"] == "--peak_gflops"
    assert row["cpu_model"] == "Test CPU" and 80 < row["images_per_sec"] <= 100
    # 224 px: 3 x 8.2 = 24.6 GFLOP per image, so r img/s is 24.6 r GFLOP/s of the 1000.
    assert row["fraction_of_peak"] == pytest.approx(row["images_per_sec"] * 24.6 / 1000)
