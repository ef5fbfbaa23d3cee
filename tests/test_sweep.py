"""bench.sweep: the smoke preset end to end, and the matrix, checks, figures and choice alone.

The end-to-end test runs `python -m bench.sweep --preset smoke` once (module fixture) with one
extra cell whose batch is larger than the tiny data set, so the trainer fails at run time:
5 cell processes, a reader pass and the report (~1.5-2 minutes on 2 cores, most of it
TensorFlow start-up). The other tests are unit tests on small inputs.
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
from bench.cell import error_message, run_process, step_windows
from bench.matrix import (Machine, MatrixError, check_cell, expand, parse_assignments,
                          parse_value, plan)
from flowers_tl import config as config_lib
from flowers_tl.results import throughput_stats

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU = Machine(gpus=0, cpus=2)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep") / "smoke"
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "bench.sweep", "--preset", "smoke", "--out", str(folder),
         "--cell", "batch_size=64"],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    return folder, rows, result


def by_cell(rows, phase="throughput"):
    return {row["cell"]: row for row in rows if row["phase"] == phase}


# ------------------------------------------------------------------------------ end to end
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


def test_rows_carry_their_configuration_and_the_environment(smoke):
    _, rows, _ = smoke
    assert len(rows) == 6  # 3 matrix cells + the tf.data anchor + Keras fit + time to target
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


def test_impossible_cell_is_skipped_and_failing_cell_is_an_error_row(smoke):
    _, rows, _ = smoke
    cells = by_cell(rows)
    skipped = cells["nchw-bnfused-fp32-noxla-b4-32px-cxx-cpu"]
    assert skipped["status"] == "skipped" and "NCHW" in skipped["reason"]
    assert "XLA" in skipped["reason"] and "images_per_sec" not in skipped
    failed = cells["nhwc-bnfused-fp32-noxla-b64-32px-cxx-cpu"]
    assert failed["status"] == "error" and "less than one global batch" in failed["error"]
    assert failed["returncode"] != 0 and "images_per_sec" not in failed


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
        assert row["images_per_sec"] > 0 and row["images_per_sec_stderr"] >= 0
        assert row["images_per_sec_per_device"] == row["images_per_sec"]  # one device
        # images/sec is the timed images over the timed seconds
        assert row["images_per_sec"] == pytest.approx(4 / row["step_time_sec"], rel=1e-6)
    assert 0 <= default["data_wait_fraction"] <= 1
    assert default["config"]["max_steps"] == 4 and default["config"]["log_every"] == 1


def test_time_to_target_row(smoke):
    _, rows, _ = smoke
    (run,) = [row for row in rows if row["phase"] == "time_to_target"]
    assert run["status"] == "ok" and run["target_metric"] == "train_accuracy"
    assert run["config"]["stop_at_target"] and run["accuracy_curve"]
    if run["reached"]:
        assert 0 < run["seconds_to_target_from_first_step"] < \
            run["seconds_to_target_from_process_start"]
        assert run["accuracy_at_target"] >= run["target_accuracy"]
    else:
        assert run["best_accuracy"] is not None


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


def test_tuned_json_round_trips_into_the_train_configuration(smoke):
    folder, rows, _ = smoke
    tuned_path = str(folder / "tuned.json")
    tuned = json.loads(Path(tuned_path).read_text())
    given, config_file = config_lib.parse_args(["--config", tuned_path])
    config = config_lib.resolve(given, config_file, gpus_available=0)
    assert config == config_lib.TrainConfig(**tuned)
    cell = json.loads((folder / "sweep.json").read_text())["tuned_cell"]
    assert cell in tuned["note"]
    winner = next(row for row in rows if row["cell"] == cell and row["phase"] == "throughput")
    assert {k: v for k, v in winner["production_config"].items() if k != "note"} == \
        {k: v for k, v in tuned.items() if k != "note"} | {"train_url": None}


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
    assert all(cell["loss_scale"] == ("1024" if cell["precision"] == "fp16" else None)
               for cell in cells)


def test_precision_values_set_the_loss_scale():
    settings = [expand({}, [{"precision": [value]}])[0]
                for value in ("fp32", "fp16", "fp16_dynamic", "fp16:512", "bf16")]
    assert [(s["precision"], s["loss_scale"]) for s in settings] == [
        ("fp32", None), ("fp16", "1024"), ("fp16", "dynamic"), ("fp16", "512"), ("bf16", None)]


def test_axis_values_take_the_train_config_field_types():
    assert parse_assignments("batch_size=32,64", "--axis") == {"batch_size": [32, 64]}
    assert parse_assignments("xla=true,off", "--axis") == {"xla": [True, False]}
    assert parse_assignments("batch_size=64,precision=bf16", "--cell") == {
        "batch_size": [64], "precision": ["bf16"]}
    assert parse_value("reader_threads", "none") is None
    assert parse_value("checkpoint_url", "none") == "none"  # from scratch, not the built-in one
    for name, value in (("bogus", "1"), ("batch_size", "many"), ("xla", "maybe"),
                        ("precision", "fp8")):
        with pytest.raises(MatrixError):
            parse_value(name, value)


def test_cells_are_checked_against_the_machine():
    config, reason = check_cell({"data_format": "NCHW", "xla": False}, CPU)
    assert config is None and "NCHW" in reason and "XLA" in reason
    config, reason = check_cell({"data_format": "NCHW", "xla": True}, CPU)
    assert reason is None and config.data_format == "NCHW" and config.image_size == 64
    config, reason = check_cell({"num_gpus": 2}, CPU)
    assert config is None and "2 GPU" in reason and "has 0" in reason
    config, reason = check_cell({"num_gpus": 2}, Machine(gpus=2, cpus=16))
    assert reason is None and config.data_format == "NCHW"  # the GPU default
    config, reason = check_cell({"precision": "bf16", "loss_scale": "1024"}, CPU)
    assert config is None and reason.startswith("invalid configuration") and "loss_scale" in reason


def test_plan_names_cells_marks_the_default_and_adds_the_tfdata_anchor():
    default, cells = plan({}, [{"data_format": ["NHWC", "NCHW"], "xla": [False, True]}], CPU,
                          extra_cells=[{"batch_size": [8]}])
    names = [cell.name for cell in cells]
    assert len(set(names)) == len(names) == 6
    assert names[0] == "nhwc-bnfused-fp32-noxla-b32-64px-cxx-cpu" and cells[0].default
    assert [cell.default for cell in cells].count(True) == 1
    assert cells[2].skipped and cells[1].skipped is None
    assert cells[-1].role == "anchor-tfdata" and cells[-1].config.input == "tfdata"
    assert default.image_size == 64 and default.data_format == "NHWC"
    # settings that resolve to the same configuration are one cell
    _, cells = plan({}, [{"data_format": ["NHWC"]}, {"xla": [False]}, {"batch_size": [32]}], CPU)
    assert [cell.role for cell in cells] == ["cell", "anchor-tfdata"] and cells[0].default
    with pytest.raises(MatrixError, match="cannot run here"):
        plan({"num_gpus": 1}, [{}], CPU)


# ------------------------------------------------------------------------------ the figures
def test_single_step_times_come_back_from_the_trainers_cumulative_rates():
    """The trainer logs images/sec and data wait accumulated since the warm-up (log_every=1)."""
    durations, waits, batch, warmup = [0.5, 0.7, 0.4, 0.9], [0.01, 0.0, 0.05, 0.02], 8, 2
    metrics, seconds, waited = [{"kind": "step", "step": 1}, {"kind": "step", "step": 2}], 0, 0
    for index, (duration, wait) in enumerate(zip(durations, waits)):
        seconds, waited = seconds + duration, waited + wait
        metrics.append({"kind": "step", "step": warmup + index + 1,
                        "images_per_sec": (index + 1) * batch / seconds,
                        "data_wait_fraction": waited / seconds})
    metrics.append({"kind": "epoch", "epoch": 1})
    windows = step_windows(metrics, warmup, batch)
    assert [w[0] for w in windows] == pytest.approx([batch] * 4)
    assert [w[1] for w in windows] == pytest.approx(durations)
    assert [w[2] for w in windows] == pytest.approx(waits)
    images, seconds, waits = zip(*windows)
    figures = throughput_stats(seconds, images, waits, replicas=2)
    assert figures["images_per_sec"] == pytest.approx(32 / 2.5)
    assert figures["images_per_sec_per_device"] == pytest.approx(16 / 2.5)
    assert figures["data_wait_fraction"] == pytest.approx(0.08 / 2.5)
    assert figures["step_time_sec"] == pytest.approx(2.5 / 4) and figures["timed_steps"] == 4
    assert figures["images_per_sec_stderr"] > 0


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
    log.write_text("Traceback (most recent call last):\n  File x\nMemoryError: out of memory\n"
                   "I0000 some TensorFlow chatter\n")
    assert error_message(log) == "MemoryError: out of memory"
