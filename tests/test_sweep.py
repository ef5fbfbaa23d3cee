"""bench.sweep: the smoke preset end to end, and the matrix, checks, figures and choice alone.

The end-to-end test runs `python -m bench.sweep --preset smoke` once (module fixture) from an
empty temporary folder -- not the checkout, and with no PYTHONPATH, as a user of the installed
package would -- with one extra cell whose batch is larger than the tiny data set, so the
trainer fails at run time: 6 cell processes (the Keras-fit anchor twice: throughput, then to
the target), a reader pass and the report (~3 minutes on 2 quiet cores, most of it TensorFlow
start-up and Keras' first step; 8 on 2 cores loaded by other work). The other tests are unit
tests on small inputs.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench import sweep
from bench.cell import error_message, run_process
from bench.matrix import (Machine, MatrixError, check_cell, expand, parse_assignments,
                          parse_setting, plan)
from flowers_tl import config as config_lib

CPU = Machine(gpus=0, cpus=2)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    empty = tmp_path_factory.mktemp("cwd")  # the user's folder: empty, not the checkout
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [sys.executable, "-m", "bench.sweep", "--preset", "smoke", "--out", "smoke",
         "--cell", "batch_size=64"],
        cwd=empty, env=environment, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    folder = empty / "smoke"  # a relative --out is the caller's folder's
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    return folder, rows, result


def by_cell(rows, phase="throughput"):
    return {row["cell"]: row for row in rows if row["phase"] == phase}


# ------------------------------------------------------------------------------ end to end
@pytest.mark.e2e
def test_smoke_sweep_writes_every_file_and_each_parses(smoke):
    folder, rows, result = smoke
    for name in ("results.jsonl", "results.csv", "report.md", "tuned.json", "reader.jsonl",
                 "sweep.json", "images_per_sec.png", "accuracy_vs_time.png",
                 "reader_threads.png"):
        assert (folder / name).stat().st_size > 0, name
    for name in ("images_per_sec.png", "accuracy_vs_time.png", "reader_threads.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(folder / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["cell"] for row in table] == [row["cell"] for row in rows]
    assert {"images_per_sec", "speedup_vs_keras_fit", "config.batch_size",
            "environment.tensorflow_version"} <= set(table[0])
    readers = [json.loads(line) for line in (folder / "reader.jsonl").read_text().splitlines()]
    assert {row["num_threads"] for row in readers} == {1, 2}
    assert all(row["samples_per_sec"] > 0 for row in readers)
    assert json.loads((folder / "sweep.json").read_text())["preset"] == "smoke"
    assert result.stdout.strip() == f"python -m flowers_tl.train --config {folder}/tuned.json"


@pytest.mark.e2e
def test_rows_carry_their_configuration_and_the_environment(smoke):
    _, rows, _ = smoke
    assert len(by_cell(rows)) == 5  # 3 matrix cells + the tf.data anchor + Keras fit
    assert len(by_cell(rows, "throughput_round")) == 4  # one round of the 4 that run
    assert len(by_cell(rows, "time_to_target")) == 2  # the default's and Keras fit's
    for row in rows:
        assert row["sweep"] == "smoke" and row["status"] in ("ok", "skipped", "error")
        environment = row["environment"]
        assert environment["tensorflow_version"] and environment["cpu_model"]
        assert environment["cpu_count_logical"] >= 1 and "git_commit" in environment
        assert environment["libjpeg_turbo_version"] and environment["compiler"]
        if row["status"] != "skipped":
            assert row["config"]["seed"] == 0 and row["config"]["image_size"] == 32
        if row["role"] != "anchor-keras-fit" and row["status"] != "skipped":
            assert row["production_config"]["image_size"] == 32
            assert row["production_config"]["max_steps"] is None  # not the phase's cap


@pytest.mark.e2e
def test_impossible_cell_is_skipped_and_failing_cell_is_an_error_row(smoke):
    _, rows, _ = smoke
    cells = by_cell(rows)
    skipped = cells["nchw-bnfused-fp32-noxla-b4-32px-cxx-cpu"]
    assert skipped["status"] == "skipped" and skipped["reason"] == (
        "--data_format NCHW on a CPU needs --xla true (TensorFlow's CPU Conv2D is NHWC only)")
    assert "images_per_sec" not in skipped
    failed = cells["nhwc-bnfused-fp32-noxla-b64-32px-cxx-cpu"]
    assert failed["status"] == "error" and "less than one global batch" in failed["error"]
    assert failed["returncode"] != 0 and "images_per_sec" not in failed


@pytest.mark.e2e
def test_throughput_rows_and_the_anchors(smoke):
    _, rows, _ = smoke
    cells = by_cell(rows)
    default = cells["nhwc-bnfused-fp32-noxla-b4-32px-cxx-cpu"]
    tfdata = cells["nhwc-bnfused-fp32-noxla-b4-32px-tfdata-cpu"]
    keras = cells["keras-fit-fp32-b4-32px-cpu"]
    assert default["default"] and tfdata["role"] == "anchor-tfdata"
    assert keras["role"] == "anchor-keras-fit" and keras["xla"] is False  # Keras' "auto" on CPU
    for row in (default, tfdata, keras):
        assert row["status"] == "ok", row.get("error")
        assert row["timed_steps"] == 3 and row["warmup_steps"] == 1
        assert row["images_per_sec_per_device"] == row["images_per_sec"]  # one device
        assert len(row["step_seconds"]) == 3 and row["rounds_ok"] == 1  # the timed steps, kept
        # The figures are those of the kept step times, recomputed here by hand: images over
        # seconds, and the standard error of the per-step rates (rounded times: 1e-3).
        rates = [4 / t for t in row["step_seconds"]]
        mean = sum(rates) / 3
        stderr = (sum((r - mean) ** 2 for r in rates) / 2) ** 0.5 / 3 ** 0.5
        assert row["images_per_sec"] == pytest.approx(12 / sum(row["step_seconds"]), rel=1e-3)
        # Rounding a time t to 5 decimals moves its rate by at most 4 * 0.5e-5 / t^2; with steps
        # this even the standard error is small, so that bounds its error, not a relative 1e-3.
        rounding = max(4 * 0.5e-5 / t ** 2 for t in row["step_seconds"])
        assert row["images_per_sec_stderr"] == pytest.approx(stderr, rel=1e-3, abs=2 * rounding)
        low, high = row["images_per_sec_ci95"]
        assert low < row["images_per_sec"] < high
    assert 0 <= default["data_wait_fraction"] <= 1
    assert keras["data_wait_fraction"] is None  # Keras fit does not say
    assert default["config"]["max_steps"] == 4 and default["config"]["log_every"] == 1


@pytest.mark.e2e
def test_time_to_target_row(smoke):
    _, rows, _ = smoke
    (run,) = [row for row in rows if row["phase"] == "time_to_target"
              and row["role"] != "anchor-keras-fit"]
    assert run["status"] == "ok" and run["target_metric"] == "train_accuracy"
    assert run["config"]["stop_at_target"] and run["accuracy_curve"]
    # The smoke target (5% train accuracy, 3 classes) is met in the first epoch unless the
    # machinery is broken: the run stops there and says when.
    assert run["reached"] and run["stop_reason"] == "target reached"
    assert 0 < run["seconds_to_target_from_first_step"] < \
        run["seconds_to_target_from_process_start"]
    assert run["accuracy_at_target"] >= run["target_accuracy"] == 0.05
    assert run["start_weights"] == "scratch (residual branches' last BN gamma 0)"


@pytest.mark.e2e
def test_keras_fit_runs_to_the_same_target_on_the_same_split(smoke):
    """The peer in the same run: keras.applications.ResNet50 with fit, the default's recipe."""
    folder, rows, _ = smoke
    ours = next(row for row in rows if row["phase"] == "time_to_target" and row["default"])
    keras = by_cell(rows, "time_to_target")["keras-fit-fp32-b4-32px-cpu"]
    assert keras["status"] == "ok", keras.get("error")
    assert keras["role"] == "anchor-keras-fit" and keras["production_config"] is None
    for key in ("target_metric", "target_accuracy", "val_images", "seed", "global_batch"):
        assert keras[key] == ours[key], key
    for key in ("image_size", "batch_size", "epochs", "lr_schedule", "warmup_epochs",
                "lr_schedule_shape", "batch_norm_momentum", "zero_init_residual", "val_fraction",
                "crop_area_min", "checkpoint_url"):
        assert keras["config"][key] == ours["config"][key], key
    assert keras["config"]["variant"] == "keras" and ours["config"]["variant"] == "slim"
    assert keras["start_weights"].startswith("scratch (Keras' own initialisers")
    assert keras["reached"] and keras["stop_reason"] == "target reached"  # 5%: see above
    assert 0 < keras["seconds_to_target_from_first_step"] < \
        keras["seconds_to_target_from_process_start"]
    # held-out accuracy evaluated every epoch, its time counted in the clock and on its own
    assert keras["accuracy_curve"][0][2] is not None and keras["eval_seconds"] > 0
    assert 0 < keras["eval_seconds_to_target"] < keras["seconds_to_target_from_first_step"]
    # the rate Keras' optimizer used at every step is the one our trainer used (warm-up included)
    def rates(run):
        lines = (folder / "cells" / f"ttt-{run}" / "metrics.jsonl").read_text().splitlines()
        return [row["learning_rate"] for row in map(json.loads, lines) if row["kind"] == "step"]

    ours_rates, keras_rates = rates(ours["cell"]), rates(keras["cell"])
    assert len(keras_rates) >= 2 and len(set(keras_rates)) > 1  # the warm-up ramps
    shared = min(len(ours_rates), len(keras_rates))
    assert keras_rates[:shared] == pytest.approx(ours_rates[:shared], rel=1e-6)  # fp32 rates
    text = (folder / "report.md").read_text()
    assert "Keras' time over ours: " in text
    assert "training accuracy (train_accuracy over each epoch's batches; seed 0" in text


@pytest.mark.e2e
def test_report_is_sorted_by_images_per_sec_and_ends_with_the_train_command(smoke):
    folder, rows, _ = smoke
    text = (folder / "report.md").read_text()
    table = text.split("## Images/sec, fastest first")[1].split("\n## ")[0]
    rates = [float(line.split("|")[3]) for line in table.splitlines()
             if line.startswith("| ") and not line.startswith("| cell")]
    assert len(rates) == 3 and rates == sorted(rates, reverse=True)
    assert "| nchw-bnfused-fp32-noxla-b4-32px-cxx-cpu | throughput | skipped |" in text
    assert "less than one global batch" in text and "## Time to target" in text
    assert text.rstrip().splitlines()[-1].strip() == \
        f"python -m flowers_tl.train --config {folder}/tuned.json"


@pytest.mark.e2e
def test_tuned_json_round_trips_into_the_train_configuration(smoke):
    folder, rows, _ = smoke
    tuned_path = str(folder / "tuned.json")
    tuned = json.loads(Path(tuned_path).read_text())
    given, config_file = config_lib.parse_args(["--config", tuned_path])
    config = config_lib.resolve(given, config_file, gpus_available=0)
    assert config == config_lib.with_overrides(config_lib.RunConfig(), tuned)
    cell = json.loads((folder / "sweep.json").read_text())["tuned_cell"]
    assert cell in tuned["note"]
    winner = next(row for row in rows if row["cell"] == cell and row["phase"] == "throughput")
    flat = config_lib.flatten(tuned)
    assert {k: v for k, v in winner["production_config"].items() if k != "note"} == \
        {k: v for k, v in flat.items() if k != "note"} | {"train_url": None}


# ------------------------------------------------------------------------------ the matrix
def test_expand_is_the_union_of_each_product_over_the_base():
    cells = expand({"image_size": 64}, [{"data_format": ["NHWC", "NCHW"], "xla": [False, True]},
                                        {"data_format": ["NHWC"], "xla": [True]},
                                        {"batch_norm_fused": [False]}])
    assert len(cells) == 4 + 0 + 1  # the second matrix only repeats a cell of the first
    assert cells[0] == {"image_size": 64, "data_format": "NHWC", "xla": False}
    assert cells[-1] == {"image_size": 64, "batch_norm_fused": False}


def test_an_override_sets_its_axis_in_every_matrix():
    cells = expand({}, [{"data_format": ["NHWC", "NCHW"]}, {"precision": ["bf16"]}],
                   overrides={"precision": ["fp32", "fp16"]})
    assert len(cells) == 2 * 2 + 2
    assert {cell["precision"] for cell in cells} == {"fp32", "fp16"}


def test_fp16_means_dynamic_loss_scaling_everywhere_and_bundles_set_a_static_one():
    """One meaning per value: the sweep's fp16 is the trainer's fp16 (dynamic)."""
    (dynamic,) = expand({}, [{"precision": ["fp16"]}])
    assert dynamic == {"precision": "fp16"}
    config, _ = check_cell(dynamic, CPU)
    assert config.train.loss_scale == "dynamic"
    assert config == config_lib.resolve({"precision": "fp16"}, gpus_available=0)
    (static,) = expand({}, [{"precision": [{"precision": "fp16", "train.loss_scale": "1024"}]}])
    assert static == {"precision": "fp16", "loss_scale": "1024"}
    assert parse_assignments("precision=fp16,loss_scale=1024", "--cell") == {
        "precision": ["fp16"], "loss_scale": ["1024"]}


def test_axis_values_take_the_configuration_types_through_its_parser():
    assert parse_assignments("batch_size=32,64", "--axis") == {"batch_size": [32, 64]}
    assert parse_assignments("train.batch_size=32", "--axis") == {"batch_size": [32]}
    assert parse_assignments("xla=true,off", "--axis") == {"xla": [True, False]}
    assert parse_assignments("batch_size=64,model.precision=bf16", "--cell") == {
        "batch_size": [64], "precision": ["bf16"]}
    assert parse_setting("reader_threads", "none") == ("reader_threads", None)
    assert parse_setting("checkpoint_url", "none") == ("checkpoint_url", "none")  # from scratch
    for name, value, message in (
            ("bogus", "1", "'bogus' is not a configuration key"),
            ("model.batch_size", "8", "'model.batch_size' is not a configuration key"),
            ("batch_size", "many", "--batch_size 'many': expected int"),
            ("xla", "maybe", "--xla 'maybe': expected true or false")):
        with pytest.raises(MatrixError) as error:
            parse_setting(name, value)
        assert str(error.value).startswith(message)


def test_cells_are_checked_against_the_machine():
    config, reason = check_cell({"data_format": "NCHW", "xla": False}, CPU)
    assert config is None and reason.startswith("--data_format NCHW on a CPU needs --xla true")
    config, reason = check_cell({"data_format": "NCHW", "xla": True}, CPU)
    assert reason is None and config.model.data_format == "NCHW"
    assert config.reader.image_size == 64  # the CPU default applies
    config, reason = check_cell({"num_gpus": 2}, CPU)
    assert config is None and reason == "--num_gpus 2: this machine has 0 GPU(s)"
    config, reason = check_cell({"num_gpus": 2}, Machine(gpus=2, cpus=16))
    assert reason is None and config.model.data_format == "NCHW"  # the GPU default
    config, reason = check_cell({"precision": "bf16", "loss_scale": "1024"}, CPU)
    assert config is None and reason == ("--loss_scale 1024: only fp16 needs a loss scale "
                                         "(precision is bf16)")


def test_plan_names_cells_marks_the_default_and_adds_the_tfdata_anchor():
    default, cells = plan({}, [{"data_format": ["NHWC", "NCHW"], "xla": [False, True]}], CPU,
                          extra_cells=[{"batch_size": [8]}])
    names = [cell.name for cell in cells]
    assert len(set(names)) == len(names) == 6
    assert names[0] == "nhwc-bnfused-fp32-noxla-b32-64px-cxx-cpu" and cells[0].default
    assert [cell.default for cell in cells].count(True) == 1
    assert cells[2].skipped and cells[1].skipped is None
    assert cells[-1].role == "anchor-tfdata" and cells[-1].config.reader.input == "tfdata"
    assert default.reader.image_size == 64 and default.model.data_format == "NHWC"
    # settings that resolve to the same configuration are one cell
    _, cells = plan({}, [{"data_format": ["NHWC"]}, {"xla": [False]}, {"batch_size": [32]}], CPU)
    assert [cell.role for cell in cells] == ["cell", "anchor-tfdata"] and cells[0].default
    with pytest.raises(MatrixError, match="cannot run here"):
        plan({"num_gpus": 1}, [{}], CPU)


# ------------------------------------------------------------------------------ the figures
def test_rounds_pool_their_timed_steps_and_keep_each_rounds_rate():
    """A cell measured in two rounds: its figures are those of all timed steps together."""
    def round_figures(seconds):
        steps = [{"kind": "step", "step": i + 2, "step_seconds": t, "images": 8,
                  "data_wait_seconds": 0.01, "warmup": False} for i, t in enumerate(seconds)]
        return {"status": "ok", "step_rows": steps, "cell_seconds": 30.0,
                "images_per_sec": 8 * len(seconds) / sum(seconds)}

    first, second = round_figures([0.5, 0.7]), round_figures([0.4, 0.9, 0.5])
    figures = sweep.pooled([first, {"status": "error", "error": "x", "cell_seconds": 5.0},
                            second], replicas=2)
    assert figures["images_per_sec"] == pytest.approx(40 / 3.0)
    assert figures["images_per_sec_per_device"] == pytest.approx(20 / 3.0)
    assert figures["timed_steps"] == 5 and figures["rounds"] == 3 and figures["rounds_ok"] == 2
    assert figures["round_images_per_sec"] == pytest.approx([16 / 1.2, 24 / 1.8])
    assert figures["data_wait_fraction"] == pytest.approx(0.05 / 3.0)
    assert figures["cell_seconds"] == 65.0
    rates = [8 / t for t in (0.5, 0.7, 0.4, 0.9, 0.5)]
    mean = sum(rates) / 5
    stderr = (sum((r - mean) ** 2 for r in rates) / 4) ** 0.5 / 5 ** 0.5
    assert figures["images_per_sec_stderr"] == pytest.approx(stderr)
    assert sweep.pooled([{"status": "error", "error": "x", "cell_seconds": 1.0}], 1)["status"] \
        == "error"


def _row(cell, rate, phase="throughput", role="cell", reached=None, **config):
    production = {"data_format": "NHWC", "xla": False, "precision": "fp32", "batch_size": 32,
                  "note": "", "train_url": None, **config}
    row = {"sweep": "t", "cell": cell, "phase": phase, "role": role, "status": "ok",
           "default": False, "images_per_sec": rate, "production_config": production}
    if phase == "time_to_target":
        row.update(reached=reached, target_metric="train_accuracy", target_accuracy=0.95,
                   seconds_to_target_from_process_start=300.0, whole_run_images_per_sec=rate)
    return row


def test_tuned_is_the_fastest_cell_whose_arithmetic_reached_the_target():
    rows = [_row("default", 10.0), _row("xla", 12.0, xla=True),
            _row("bf16", 20.0, precision="bf16"),
            _row("keras", 50.0, role="anchor-keras-fit"),
            _row("default", 9.0, phase="time_to_target", reached=True)]
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "xla" and "same arithmetic" in why  # bf16 never ran to the target
    rows[-1]["reached"] = False
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "bf16" and "no time-to-target run reached" in why
    winner, why = report.choose_tuned(rows[:4])
    assert winner["cell"] == "bf16" and "no time-to-target phase ran" in why
    assert report.choose_tuned([]) == (None, "no cell was measured")


def test_a_cell_over_its_budget_gets_sigterm_then_sigkill(tmp_path):
    log = tmp_path / "cell.log"
    code, seconds, over = run_process([sys.executable, "-c", "import time; time.sleep(60)"],
                                      log, budget_sec=1, grace_sec=5)
    assert over and code == -15 and seconds < 10  # SIGTERM: the trainer saves and exits
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
               "print('ready', flush=True); time.sleep(60)"
    code, seconds, over = run_process([sys.executable, "-c", stubborn], log, budget_sec=1,
                                      grace_sec=1)
    assert over and code == -9 and seconds < 10 and log.read_text() == "ready\n"


def test_the_error_message_is_the_trainers_line_or_the_tracebacks_last(tmp_path):
    log = tmp_path / "cell.log"
    log.write_text("configuration: ...\nflowers_tl.train: error: 24 training images are less "
                   "than one global batch of 64\n")
    assert error_message(log).endswith("less than one global batch of 64")
    log.write_text("keras fit: ...\nbench.keras_fit: error: cannot load x (TF-slim checkpoint, V2) "
                   "into keras.applications.ResNet50: 320 problem(s)\nI0000 chatter\n")
    assert error_message(log).startswith("bench.keras_fit: error: cannot load x")
    log.write_text("Traceback (most recent call last):\n  File x\nMemoryError: out of memory\n"
                   "I0000 some TensorFlow chatter\n")
    assert error_message(log) == "MemoryError: out of memory"


def test_the_keras_run_to_the_target_takes_the_defaults_resolved_recipe():
    from flowers_tl.presets import PRESETS

    default = config_lib.resolve({"checkpoint_url": "none", "epochs": 8}, gpus_available=0)
    settings = sweep.keras_time_to_target_settings(default, PRESETS["cpu"], "/abs/data", "none",
                                                   "scratch")
    resolved = config_lib.flat_dict(default)
    for key in ("lr_schedule", "lr_schedule_shape", "warmup_epochs", "epochs", "batch_size",
                "image_size", "batch_norm_momentum", "zero_init_residual", "crop_area_min",
                "target_metric", "target_accuracy", "val_fraction", "seed", "momentum"):
        assert settings[key] == resolved[key], key  # as adapted for the run, not the raw knobs
    assert settings["variant"] == "keras" and settings["stop_at_target"] and not settings["export"]
    assert settings["data_url"] == "/abs/data" and settings["checkpoint_origin"] == "scratch"
    assert sweep.keras_cell(settings).name == (f"keras-fit-fp32-b{default.train.batch_size}-"
                                               f"{default.reader.image_size}px-cpu")
    assert sweep.our_start_weights(default, None) == "scratch (residual branches' last BN gamma 0)"
    built_in = config_lib.resolve({}, gpus_available=0)
    assert sweep.our_start_weights(built_in, "/cache/source/checkpoints") == (
        "the built-in source checkpoint (variant slim, /cache/source/checkpoints), global_step "
        "and the logits excluded")
