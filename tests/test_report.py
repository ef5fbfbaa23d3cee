"""bench.report: the tie rule of the tuned choice, the tables, and the README written from the
committed results (bench.published)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import published, report
from flowers_tl import env

REPO_ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = REPO_ROOT / "results" / "published"


def _cell(cell, rate, default=False, phase="throughput", **figures):
    production = {"data_format": "NHWC", "xla": cell.startswith("xla"), "precision": "fp32",
                  "batch_size": 32, "input": "tfdata" if "tfdata" in cell else "cxx",
                  "note": "", "train_url": None}
    return {"sweep": "t", "cell": cell, "phase": phase, "role": "cell", "status": "ok",
            "default": default, "images_per_sec": rate, "images_per_sec_per_device": rate,
            "step_time_sec": 32 / rate, "data_wait_fraction": 0.01,
            "production_config": production, "environment": {"cpu_model": "Test CPU"}, **figures}


# ---------------------------------------------------------------------------- the tie rule
def test_overlapping_intervals_keep_the_default_and_say_they_tie():
    rows = [_cell("default", 40.0, default=True, images_per_sec_ci95=[38.5, 41.5]),
            _cell("tfdata", 41.0, images_per_sec_ci95=[40.0, 42.0])]
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "default"
    assert "ties with the fastest cell, tfdata" in why
    assert "40.0-42.0" in why and "38.5-41.5" in why and "no time-to-target phase ran" in why


def test_disjoint_intervals_pick_the_faster_cell():
    rows = [_cell("default", 40.0, default=True, images_per_sec_ci95=[39.5, 40.5]),
            _cell("tfdata", 41.0, images_per_sec_ci95=[40.6, 41.4])]
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "tfdata" and "ties" not in why and "40.6-41.4" in why


def test_rows_without_recorded_intervals_tie_from_stderr_and_step_count():
    # bench.cell's rows before images_per_sec_ci95: t(0.975, 11) = 2.201 x stderr each side.
    default = _cell("default", 40.0, default=True, images_per_sec_stderr=0.4, timed_steps=12)
    faster = _cell("xla", 41.5, images_per_sec_stderr=0.4, timed_steps=12)
    assert report.choose_tuned([default, faster])[0]["cell"] == "default"  # 40.88 > 40.62
    faster["images_per_sec"] = 42.0  # 41.12 > 40.88: apart
    assert report.choose_tuned([default, faster])[0]["cell"] == "xla"
    # no spread at all: nothing to call a tie, the faster one wins
    assert report.choose_tuned([_cell("default", 40.0, default=True),
                                _cell("xla", 40.1)])[0]["cell"] == "xla"


def test_a_default_that_did_not_reach_the_target_is_not_kept_by_a_tie():
    rows = [_cell("default", 40.0, default=True, images_per_sec_ci95=[38.0, 42.0]),
            _cell("xla", 41.0, images_per_sec_ci95=[39.0, 43.0]),
            _cell("xla", 41.0, phase="time_to_target", reached=True,
                  target_metric="train_accuracy", target_accuracy=0.95,
                  seconds_to_target_from_process_start=200.0)]
    rows[0]["production_config"]["precision"] = "bf16"  # other arithmetic: its run does not count
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "xla" and "its own time-to-target run" in why
    rows[0]["production_config"]["precision"] = "fp32"  # same arithmetic: the xla run counts
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "default" and "ties with the fastest cell that reached" in why
    assert "the time-to-target run of xla (same arithmetic, other kernels)" in why


def test_report_md_and_tuned_json_of_a_tie(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_cell("default", 40.0, default=True, images_per_sec_ci95=[38.5, 41.5],
                  images_per_sec_stderr=0.7, images_per_sec_jitter=1.0),
            _cell("tfdata", 41.0, images_per_sec_ci95=[40.0, 42.0], images_per_sec_stderr=0.5,
                  images_per_sec_jitter=1.0)]
    meta = {"preset": "t", "default_config": {}, "command": "python -m bench.sweep --preset t"}
    report.write_all(tmp_path, rows, meta)
    text = (tmp_path / "report.md").read_text()
    assert "`tuned.json` is default: the default cell, which ties with the fastest cell, tfdata" \
        in text
    assert "| tfdata | cell | 41.00 | 0.50 | 40.00-42.00 |" in text
    tuned = json.loads((tmp_path / "tuned.json").read_text())
    assert tuned["input"] == "cxx" and "ties with" in tuned["note"]


# ------------------------------------------------------------- time to target: the choice
def _run(cell, seconds, steps, reached=True, default=False, precision="fp32", **figures):
    """One of our time-to-target rows (seconds None: not reached)."""
    row = _cell(cell, 1.0, default=default, phase="time_to_target", reached=reached,
                target_metric="val_accuracy", target_accuracy=0.95, val_images=300, seed=0,
                seconds_to_target_from_process_start=seconds, steps_to_target=steps, **figures)
    row["production_config"]["precision"] = precision
    return row


def _timed(cell, rate, low, high, default=False, precision="fp32"):
    row = _cell(cell, rate, default=default, images_per_sec_ci95=[low, high])
    row["production_config"]["precision"] = precision
    return row


def test_tuned_is_the_configuration_first_to_the_held_out_target():
    """bf16 is faster per step and needs more steps, yet gets there first: it is tuned."""
    rows = [_timed("default", 40.0, 39.0, 41.0, default=True),
            _timed("bf16", 60.0, 59.0, 61.0, precision="bf16"),
            _run("default", 300.0, 200, default=True),
            _run("bf16", 250.0, 240, precision="bf16")]
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "bf16"
    assert "val_accuracy 0.95 in 250 s by its own time-to-target run" in why
    assert "the best time to the target of the runs that reached it (others: default 300 s)" in why
    # the other way round: bf16's arithmetic needs so many more steps that fp32 is first
    rows[-1].update(seconds_to_target_from_process_start=330.0, steps_to_target=400)
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "default" and "others: bf16 330 s" in why
    # bf16 did not reach the target: the fastest cell does not win for its images/sec alone
    rows[-1].update(reached=False, seconds_to_target_from_process_start=None)
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "default" and "others" not in why


def test_a_faster_cell_whose_own_run_was_slower_to_the_target_is_not_tuned():
    """The 2026-12-03 digits sweep: the tf.data twin had the higher images/sec but its own
    run reached the target 16 s after the default's, so the default is tuned."""
    rows = [_timed("default", 85.5, 84.2, 86.9, default=True),
            _timed("tfdata", 103.8, 102.2, 105.5),
            _run("default", 102.0, 115, default=True), _run("tfdata", 118.0, 138)]
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "default" and "by its own time-to-target run" in why
    rows.pop()  # without its own run, the faster cell of the same arithmetic wins as before
    assert report.choose_tuned(rows)[0]["cell"] == "tfdata"


def test_without_a_run_at_the_target_a_faster_cell_that_trained_worse_is_not_tuned():
    """The 2026-12-04 cpu sweep on the built-in data: no run reached 95%; the tf.data twin was
    faster per step (98.2 against 93.9 img/s, disjoint intervals) but its own run ended at
    74.1% held-out against the default's 82.0%, so the default is tuned."""
    rows = [_timed("default", 93.9, 92.1, 95.7, default=True),
            _timed("tfdata", 98.2, 96.8, 99.6),
            _run("default", None, None, reached=False, default=True, best_accuracy=0.820),
            _run("tfdata", None, None, reached=False, best_accuracy=0.741)]
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "default"
    assert why.startswith("the fastest cell")
    assert ("no time-to-target run reached its target within its budget; default came "
            "closest, best val_accuracy 0.820 (others: tfdata 0.741)") in why
    rows[-1]["best_accuracy"] = 0.830  # the twin came closer: it is the one tuned
    assert report.choose_tuned(rows)[0]["cell"] == "tfdata"
    rows[-1]["best_accuracy"] = 0.820  # a tie on accuracy: the faster cell, as before
    assert report.choose_tuned(rows)[0]["cell"] == "tfdata"
    rows.pop()  # without its own run the faster cell of the same arithmetic wins as before
    assert report.choose_tuned(rows)[0]["cell"] == "tfdata"


def test_the_default_ties_with_a_run_of_the_same_steps_and_overlapping_rates():
    rows = [_timed("default", 40.0, 39.0, 41.0, default=True),
            _timed("bf16", 40.8, 40.5, 41.1, precision="bf16"),
            _run("default", 300.0, 200, default=True), _run("bf16", 294.0, 200, precision="bf16")]
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "default"
    assert ("it ties on time to the target with bf16 (294 s against the default's 300 s): the "
            "same 200 steps and overlapping images/sec intervals") in why
    rows[1]["images_per_sec_ci95"] = [41.2, 41.6]  # apart: the faster run wins
    assert report.choose_tuned(rows)[0]["cell"] == "bf16"
    rows[1]["images_per_sec_ci95"] = [40.5, 41.1]
    rows[3]["steps_to_target"] = 180  # fewer steps: not noise
    assert report.choose_tuned(rows)[0]["cell"] == "bf16"


def test_within_the_winning_arithmetic_the_runs_own_cell_ties_with_a_faster_kernel():
    rows = [_timed("default", 40.0, 39.0, 41.0, default=True),
            _timed("bf16", 60.0, 59.0, 61.0, precision="bf16"),
            _timed("xla-bf16", 60.5, 59.5, 61.5, precision="bf16"),
            _run("default", 300.0, 200, default=True), _run("bf16", 250.0, 240, precision="bf16")]
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "bf16"
    assert why.startswith("bf16, which ties with the fastest cell that reached the target, "
                          "xla-bf16 (60.5 img/s, 95% interval 59.5-61.5) against its 60.0 img/s")
    assert "the configuration measured to the target is kept" in why
    rows[2]["images_per_sec_ci95"] = [61.2, 61.8]  # a faster kernel, same arithmetic: it wins
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "xla-bf16" and "the time-to-target run of bf16 (same arithmetic" in why


def test_the_keras_runs_are_never_candidates():
    keras = _run("keras-fit-fp32", 100.0, 50)
    keras["role"] = "anchor-keras-fit"
    rows = [_timed("default", 40.0, 39.0, 41.0, default=True), _run("default", 300.0, 200,
                                                                    default=True), keras]
    winner, why = report.choose_tuned(rows)
    assert winner["cell"] == "default" and "others" not in why


# ---------------------------------------------------- time to target: the words and the ratio
def test_time_to_target_text_says_how_long_it_tried_and_the_best_it_got():
    reached = _run("ours", 131.4, 252)
    assert report.time_to_target_text(reached) == "131 s"
    cut = _run("keras", None, None, reached=False, best_accuracy=0.8704, best_epoch=7,
               over_budget=True, cell_seconds=661.2, run_seconds=None,
               stop_reason="killed before writing result.json", epochs_run=7)
    assert report.time_to_target_text(cut) == \
        "not reached in 661 s (best val_accuracy 0.870 at epoch 7)"
    cut.update(run_seconds=655.0, stop_reason="interrupted by SIGTERM")
    assert report.time_to_target_text(cut) == \
        "not reached in 655 s (best val_accuracy 0.870 at epoch 7)"
    finished = dict(cut, over_budget=False, stop_reason="finished", epochs_run=50,
                    run_seconds=400.0)
    assert report.time_to_target_text(finished) == \
        "not reached in its 50 epochs (400 s) (best val_accuracy 0.870 at epoch 7)"
    assert report.time_to_target_text(dict(finished, best_accuracy=None, best_epoch=None)) == \
        "not reached in its 50 epochs (400 s) (no accuracy measured)"


def test_the_keras_ratio_is_its_time_over_ours_or_a_bound_or_nothing():
    ours, keras = _run("ours", 100.0, 200), _run("keras", 250.0, 200)
    assert report.keras_ratio(ours, keras) == (2.5, "2.50x")
    not_reached = dict(keras, reached=False, over_budget=True, run_seconds=660.0)
    assert report.keras_ratio(ours, not_reached) == (
        None, "> 6.60x (Keras fit not reached in 660 s; a lower bound)")
    finished = dict(not_reached, over_budget=False, stop_reason="finished")
    assert report.keras_ratio(ours, finished) == (
        None, "- (Keras fit did not reach the target in its epochs)")
    assert report.keras_ratio(dict(ours, reached=False), keras)[0] is None
    assert report.keras_ratio(ours, None) == (None, "-")


def test_the_headline_names_metric_split_seed_and_machine():
    ours = _run("default", 120.0, 200, default=True, environment={
        "cpu_model": "Test CPU", "cpu_count_affinity": 2})
    keras = _run("keras-fit-fp32-b32-64px-cpu", 300.0, 200)
    keras["role"] = "anchor-keras-fit"
    (line,) = report.keras_headline([ours, keras])
    assert line == ("Time to 95% held-out accuracy (val_accuracy, 300 held-out images, seed 0) "
                    "on Test CPU (2 usable cores): ours (default) 120 s, Keras fit "
                    "(keras-fit-fp32-b32-64px-cpu) 300 s; Keras' time over ours: 2.50x (at "
                    "least the 2x goal).")
    keras.update(seconds_to_target_from_process_start=180.0)
    assert "1.50x (under the 2x goal)" in report.keras_headline([ours, keras])[0]
    failed = {"cell": "keras-fit", "phase": "time_to_target", "role": "anchor-keras-fit",
              "status": "error", "error": "cannot load x into keras.applications.ResNet50"}
    assert report.keras_headline([ours, failed]) == [
        "Keras fit to the target: error: cannot load x into keras.applications.ResNet50."]


def test_time_to_target_table_rows_and_starting_weights():
    ours = _run("default", 120.0, 200, default=True, eval_seconds_to_target=9.25,
                seconds_to_target_from_first_step=110.0, best_accuracy=0.953,
                stop_reason="target reached", start_weights="the built-in source checkpoint")
    keras = _run("keras-fit", None, None, reached=False, best_accuracy=0.9, best_epoch=3,
                 over_budget=True, run_seconds=660.0, stop_reason="interrupted by SIGTERM",
                 start_weights="the built-in source checkpoint trained for variant keras")
    keras["role"] = "anchor-keras-fit"
    lines = report.time_to_target_table([keras, ours])
    assert lines[2] == ("| default | cell, default | val_accuracy | 0.95 | 300 | 0 | 120 s | "
                        "110 s | 9.2 s | 200 | 0.953 | target reached | > 5.50x (Keras fit not "
                        "reached in 660 s; a lower bound) |")
    assert lines[3].startswith("| keras-fit | anchor-keras-fit | val_accuracy | 0.95 | 300 | 0 "
                               "| not reached in 660 s (best val_accuracy 0.900 at epoch 3) |")
    assert lines[3].endswith("| interrupted by SIGTERM | - |")
    assert lines[-2:] == ["- default started from the built-in source checkpoint.",
                          "- keras-fit started from the built-in source checkpoint trained for "
                          "variant keras."]


def test_a_bf16_cell_on_a_cpu_without_bf16_units_says_why_it_is_slower():
    avx2 = {"sse4_2": True, "avx": True, "avx2": True, "avx512_bf16": False, "amx_bf16": False}
    rows = [_cell("default", 40.0, default=True, precision="fp32", num_gpus=0,
                  environment={"cpu_features": avx2}),
            _cell("bf16", 20.0, precision="bf16", num_gpus=0,
                  environment={"cpu_features": avx2})]
    lines = report.throughput_table(rows)
    assert lines[-1] == ("bf16 (0.50x the default): bf16 on a CPU without AVX512-BF16 or "
                         "AMX-BF16: no bf16 arithmetic units, so every bf16 op (oneDNN's or "
                         "Eigen's) converts to fp32 and back; expected slower than fp32.")
    amx = dict(avx2, avx512_bf16=True, amx_bf16=True)
    for row in rows:
        row["environment"] = {"cpu_features": amx}
    assert report.throughput_table(rows)[-1].startswith("| bf16 |")  # no note: it has them


# ---------------------------------------------------------------------------- the tables
def _reader(backend, threads, rate, **extra):
    return {"backend": backend, "num_threads": threads, "samples_per_sec": rate,
            "samples_per_sec_stderr": 1.0, "samples_per_sec_ci95": [rate - 3, rate + 3],
            "samples_per_sec_jitter": 2.0, **extra}


def test_reader_table_ratios_by_hand_and_dali_only_where_it_ran():
    rows = [_reader("cxx", 1, 300.0), _reader("tfdata", 1, 200.0), _reader("cxx", 2, 500.0),
            _reader("tfdata", 2, 400.0), {"backend": "opencv", "num_threads": 2,
                                          "error": "ValueError: a|b"}]
    lines = report.reader_table(rows)
    assert lines[0] == ("| backend | threads | img/s | ± | 95% interval | jitter | vs tf.data | "
                        "cores busy | img/s per core |")
    assert lines[2] == "| cxx | 1 | 300.0 | 1.0 | 297.0-303.0 | 2.0 | 1.50x | - | - |"
    assert lines[4] == "| cxx | 2 | 500.0 | 1.0 | 497.0-503.0 | 2.0 | 1.25x | - | - |"
    assert lines[6] == "| opencv | 2 | error: ValueError: a\\|b | | | | | | |"
    with_dali = report.reader_table(rows[:2] + [_reader("dali", 1, 400.0)])
    assert with_dali[0].endswith("| vs tf.data | vs DALI | cores busy | img/s per core |")
    assert with_dali[2].endswith("| 1.50x | 0.75x | - | - |")
    with_cpu = report.reader_table([_reader("cxx", 2, 500.0, cpu_cores_busy=1.954,
                                            samples_per_cpu_second=255.9)])
    assert with_cpu[2].endswith("| 1.95 | 256 |")


def test_step_table_against_keras_fp32():
    rows = [{"cell": "keras-fp32", "model": "keras", "precision": "fp32", "images_per_sec": 10.0,
             "images_per_sec_stderr": 0.1, "images_per_sec_ci95": [9.8, 10.2],
             "images_per_sec_jitter": 0.2, "step_time_sec": 3.2, "load_average_1min_after": 2.5},
            {"cell": "ours-bf16", "model": "ours", "precision": "bf16", "images_per_sec": 15.0,
             "images_per_sec_stderr": 0.2, "timed_steps": 10, "images_per_sec_jitter": 0.3,
             "step_time_sec": 2.1, "fraction_of_peak": 0.123, "peak_gflops": 1400.0},
            {"cell": "nchw", "model": "ours", "skipped": "NCHW needs XLA on a CPU"}]
    lines = published.step_table(rows)
    assert lines[2] == "| keras-fp32 | 10.00 | 0.10 | 9.80-10.20 | 0.20 | 3.20 | 1.00x | - | - | 2.5 |"
    # interval rebuilt: 15 +- t(0.975, 9) 2.2622 x 0.2
    assert lines[3] == "| ours-bf16 | 15.00 | 0.20 | 14.55-15.45 | 0.30 | 2.10 | 1.50x | 12.3% | 1400 | - |"
    assert lines[4].startswith("| nchw | skipped: NCHW needs XLA on a CPU |")


# --------------------------------------------------------------- the README from the results
def _published_folder(root: Path, name: str = "test-cpu-2c-2026-01-01-reader") -> str:
    folder = root / name
    folder.mkdir(parents=True)
    rows = [_reader("cxx", 1, 300.0, environment={"load_average_1min": 0.5}),
            _reader("tfdata", 1, 200.0, environment={"load_average_1min": 0.5})]
    (folder / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "environment.json").write_text(json.dumps({
        "commands": ["python -m bench.reader --backend cxx,tfdata --num_threads 1"],
        "environment": {"cpu_model": "Test CPU", "cpu_count_affinity": 2,
                        "time_utc": "2026-01-01T10:00:00+00:00"}}))
    return name


def _report_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.report", *args], cwd=REPO_ROOT,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True,
                          text=True, timeout=120)


def test_readme_tables_are_written_between_markers_and_checked(tmp_path):
    name = _published_folder(tmp_path / "results" / "published")
    readme = tmp_path / "README.md"
    stale = f"# Title\n\nBefore.\n\n<!-- table:{name}/reader -->\nold\n<!-- /table:{name}/reader -->\n\nAfter.\n"
    readme.write_text(stale)
    checked = _report_cli("--readme", str(readme), "--check")
    assert checked.returncode == 1 and "out of date" in checked.stderr
    assert readme.read_text() == stale  # --check changes nothing
    assert _report_cli("--readme", str(readme)).returncode == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nBefore.\n\n") and text.endswith("\n\nAfter.\n")
    caption = text.splitlines()[5]
    assert caption.startswith("Measured on Test CPU (2 usable cores), 2026-01-01, 1-min load "
                              "average 0.5, with `python -m bench.reader --backend cxx,tfdata")
    assert f"[results/published/{name}](results/published/{name}/)" in caption
    assert "| cxx | 1 | 300.0 | 1.0 | 297.0-303.0 | 2.0 | 1.50x |" in text
    assert _report_cli("--readme", str(readme), "--check").returncode == 0
    # byte for byte: a second rewrite changes nothing
    assert published.render_readme(text, tmp_path / "results" / "published") == text


def test_caption_names_the_microarchitecture_where_the_rows_have_one(tmp_path):
    root = tmp_path / "results" / "published"
    name = _published_folder(root)
    info_path = root / name / "environment.json"
    info = json.loads(info_path.read_text())
    info["environment"]["cpu_microarchitecture"] = "Zen 5"
    info_path.write_text(json.dumps(info))
    marker = f"<!-- table:{name}/reader -->\n<!-- /table:{name}/reader -->\n"
    caption = published.render_readme(marker, root).splitlines()[1]
    assert caption.startswith("Measured on Test CPU, Zen 5 (2 usable cores), 2026-01-01")


@pytest.mark.parametrize("marker, message", [
    ("<!-- table:{name}/plots -->\n<!-- /table:{name}/plots -->", "kind one of reader, feeding, sweep"),
    ("<!-- table:nowhere/reader -->\n<!-- /table:nowhere/reader -->", "nowhere/environment.json"),
    ("<!-- table:{name}/reader -->\nno end", "no closing <!-- /table:"),
    ("<!-- table:{name}/step -->\n<!-- /table:{name}/step -->", "no step rows"),
])
def test_bad_markers_are_one_line_errors(tmp_path, marker, message):
    name = _published_folder(tmp_path / "results" / "published")
    readme = tmp_path / "README.md"
    readme.write_text(marker.format(name=name) + "\n")
    result = _report_cli("--readme", str(readme))
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_committed_readme_is_generated_from_the_committed_results(tmp_path):
    copy = tmp_path / "README.md"
    shutil.copy(REPO_ROOT / "README.md", copy)
    result = _report_cli("--readme", str(copy), "--check", "--published", str(PUBLISHED))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("folder", sorted(path.name for path in PUBLISHED.glob("*/"))
                         if PUBLISHED.exists() else [])
def test_each_published_folder_describes_itself(folder, monkeypatch):
    info = json.loads((PUBLISHED / folder / "environment.json").read_text())
    rows = [json.loads(line) for line in (PUBLISHED / folder / "results.jsonl").read_text()
            .splitlines()]
    assert rows and info["commands"]
    machine = info["environment"]
    # <cpu_slug>-<YYYY-MM-DD>-<what>, the slug and date those of the machine that measured it
    monkeypatch.setattr(env, "_cpu_model", lambda: machine["cpu_model"])
    monkeypatch.setattr(env, "_usable_cores", lambda: machine["cpu_count_affinity"])
    # Folders from before the microarchitecture was detected have none in slug or rows.
    monkeypatch.setattr(env, "_cpu_id", lambda: {
        "microarchitecture": machine.get("cpu_microarchitecture")})
    assert folder.startswith(f"{env.cpu_slug()}-{machine['time_utc'][:10]}-")
    for row in rows:
        assert row["environment"]["cpu_model"] == machine["cpu_model"]
        assert (row["environment"].get("cpu_microarchitecture")
                == machine.get("cpu_microarchitecture"))
        assert row.get("command", info["commands"][-1]) in info["commands"]
