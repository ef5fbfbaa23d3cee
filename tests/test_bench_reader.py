"""bench.reader: the CLI writes self-describing rows, fails per backend, and times honestly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench import reader as bench_reader
from bench import reader_backends

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_bench")
    rng = np.random.default_rng(0)
    for class_name in ("daisy", "roses"):
        os.makedirs(root / class_name)
        for index in range(6):
            height, width = rng.integers(40, 121, 2)
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            ok, encoded = cv2.imencode(".jpg", image)
            assert ok
            (root / class_name / f"{index}.jpg").write_bytes(encoded.tobytes())
    (root / "LICENSE.txt").write_text("not an image")
    return root


def _run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "bench.reader", *args],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.e2e
def test_cli_writes_one_self_describing_row_per_backend(tiny_folder, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = _run_cli(
        "--data_url", str(tiny_folder), "--backend", "tfdata,opencv", "--backend", "dali",
        "--num_threads", "1", "--seconds", "1", "--warmup_seconds", "0.2",
        "--batch_size", "4", "--image_size", "32", "--out", str(out),
        "--plot", str(tmp_path / "scaling.png"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["backend"] for row in rows] == ["tfdata", "opencv", "dali"]
    for row in rows:
        assert row["config"]["backend"] == row["backend"]
        assert row["config"]["image_size"] == 32 and row["config"]["seed"] == 0
        assert row["environment"]["cpu_count_logical"] >= 1
        assert "git_commit" in row["environment"] and "python_version" in row["environment"]
    for row in rows[:2]:
        assert "error" not in row, row["error"]
        assert row["samples_per_sec"] > 0 and row["samples_per_sec_stderr"] >= 0
        assert row["num_images"] == 4 * row["num_batches"]
    # DALI may be missing on a machine: then its row says why, and the run still succeeds.
    dali = rows[2]
    assert ("error" in dali and dali["error"]) or dali["samples_per_sec"] > 0
    assert "vs tfdata" in result.stderr  # the side-by-side table


def test_unknown_backend_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_reader.parse_args(["--backend", "tfdata,torch", "--num_threads", "1"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'torch'" in capsys.readouterr().err


def test_zero_rounds_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_reader.parse_args(["--backend", "cxx", "--num_threads", "1", "--rounds", "0"])
    assert exit_info.value.code == 2 and "--rounds 0: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("plot, message", [("scaling.svg", "must end in .png"),
                                           ("missing/scaling.png", "is not a writable folder")])
def test_a_bad_plot_path_is_refused_before_measuring(tmp_path, capsys, plot, message):
    with pytest.raises(SystemExit) as exit_info:
        bench_reader.parse_args(["--backend", "cxx", "--num_threads", "1",
                                 "--plot", str(tmp_path / plot)])
    assert exit_info.value.code == 2
    assert f"--plot {tmp_path / plot}: " in capsys.readouterr().err


def test_thread_scaling_plot_draws_rates_and_per_core_rates(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from bench import report

    rows = [{"backend": backend, "num_threads": threads, "samples_per_sec": rate * threads ** 0.9,
             "samples_per_sec_stderr": 5.0, "samples_per_cpu_second": rate * threads ** -0.1}
            for backend, rate in (("cxx", 1400.0), ("tfdata", 900.0)) for threads in (1, 2, 4)]
    rows.append({"backend": "dali", "num_threads": 1, "error": "not installed"})
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at it
    report.plot_reader_threads(rows, tmp_path / "scaling.png")
    (figure,) = figures
    rates, per_core = figure.axes
    lines = {(line.get_linestyle(), tuple(line.get_ydata())) for line in rates.get_lines()}
    assert ("--", (1400.0, 2800.0, 5600.0)) in lines  # linear from the 1-thread rate
    assert ("--", (900.0, 1800.0, 3600.0)) in lines
    assert [tuple(line.get_ydata()) for line in per_core.get_lines()] == [
        tuple(1400.0 * t ** -0.1 for t in (1, 2, 4)), tuple(900.0 * t ** -0.1 for t in (1, 2, 4))]
    assert [text.get_text() for text in rates.get_legend().get_texts()] == ["cxx", "tfdata"]
    assert plt.imread(tmp_path / "scaling.png").shape[:2] == (440, 1210)


def test_lists_of_backends_and_threads_are_flattened():
    args = bench_reader.parse_args(
        ["--backend", "cxx,tfdata", "--backend", "dali,cxx", "--num_threads", "1,2", "--num_threads", "4"]
    )
    assert args.backend == ["cxx", "tfdata", "dali"]
    assert args.num_threads == [1, 2, 4]


def test_a_failing_backend_becomes_an_error_row():
    config = bench_reader.ReaderBenchConfig(backend="opencv", num_threads=1, batch_size=2, image_size=8)
    row = bench_reader.run_one(config, ["/nonexistent/a.jpg"] * 4, [0] * 4, 1, environment={})
    assert "a.jpg" in row["error"] and "samples_per_sec" not in row
    assert row["config"]["backend"] == "opencv"


def test_check_batch_rejects_blank_images():
    config = bench_reader.ReaderBenchConfig(backend="cxx", num_threads=1, batch_size=2, image_size=4)
    labels = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="constant"):
        bench_reader.check_batch(np.zeros((2, 4, 4, 3), np.uint8), labels, config, num_classes=1)
    with pytest.raises(ValueError, match="expected uint8"):
        bench_reader.check_batch(np.ones((2, 4, 4, 3), np.float32), labels, config, num_classes=1)


def test_time_batches_measures_a_known_rate():
    # A fake backend giving 8 images every 20 ms is 400 img/s; sleep overshoot only lowers it.
    config = bench_reader.ReaderBenchConfig(
        backend="cxx", num_threads=1, batch_size=8, image_size=2, seconds=0.5, warmup_seconds=0.05
    )
    rng = np.random.default_rng(0)

    def fake_batches():
        while True:
            time.sleep(0.02)
            yield rng.integers(0, 256, (8, 2, 2, 3), dtype=np.uint8), np.zeros(8, np.int32)

    figures = bench_reader.time_batches(fake_batches(), config, num_classes=1)
    assert 300 < figures["samples_per_sec"] <= 401
    assert figures["num_images"] == 8 * figures["num_batches"]
    assert figures["samples_per_sec_window_min"] <= figures["samples_per_sec"] <= figures["samples_per_sec_window_max"]


def test_time_batches_counts_the_cpu_time_a_backend_spends():
    # A backend that keeps one core busy for 20 ms per batch costs ~one core while timed; one
    # that sleeps costs almost none. process_time counts every thread of the process.
    config = bench_reader.ReaderBenchConfig(
        backend="cxx", num_threads=1, batch_size=8, image_size=2, seconds=0.4, warmup_seconds=0.05
    )
    batch = np.arange(8 * 12, dtype=np.uint8).reshape(8, 2, 2, 3), np.zeros(8, np.int32)

    def busy_batches():
        while True:
            end = time.process_time() + 0.02
            while time.process_time() < end:
                pass
            yield batch

    def idle_batches():
        while True:
            time.sleep(0.02)
            yield batch

    busy = bench_reader.time_batches(busy_batches(), config, num_classes=1)
    # Up to one core; less when other work shares the machine (the busy loop waits for CPU
    # time, not wall time), but well above the idle backend's.
    assert 0.4 < busy["cpu_cores_busy"] < 1.3
    assert busy["samples_per_cpu_second"] == pytest.approx(busy["num_images"] / busy["cpu_seconds"])
    assert busy["cpu_ms_per_image"] == pytest.approx(1e3 / busy["samples_per_cpu_second"])
    assert 300 < busy["samples_per_cpu_second"] < 500  # 8 images per 20 ms of CPU
    idle = bench_reader.time_batches(idle_batches(), config, num_classes=1)
    assert idle["cpu_cores_busy"] < 0.3
    # Each sleep blocks once: about one voluntary switch per batch of 8.
    assert 0.1 <= idle["voluntary_switches_per_image"] <= 0.5
    assert busy["voluntary_switches_per_image"] < idle["voluntary_switches_per_image"]


def test_random_crop_window_stays_inside_the_image():
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = rng.integers(10, 500, 2)
        top, left, crop_height, crop_width = reader_backends.random_crop_window(
            int(height), int(width), rng, (0.08, 1.0), (3 / 4, 4 / 3)
        )
        assert 0 <= top and top + crop_height <= height and crop_height > 0
        assert 0 <= left and left + crop_width <= width and crop_width > 0


def test_missing_dali_is_an_error_row_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes "import nvidia.dali" fail
    config = bench_reader.ReaderBenchConfig(backend="dali", num_threads=1, batch_size=2, image_size=8)
    row = bench_reader.run_one(config, ["x.jpg"], [0], 1, environment={})
    assert row["backend"] == "dali" and "ModuleNotFoundError" in row["error"]


def test_the_cxx_cache_row_is_timed_from_the_cache_and_reports_its_fill(tiny_folder):
    from flowers_tl.data import list_folder

    listing = list_folder(str(tiny_folder))
    config = bench_reader.ReaderBenchConfig(backend="cxx-cache", num_threads=2, batch_size=4,
                                            image_size=16, seconds=0.3, warmup_seconds=0.05)
    row = bench_reader.run_one(config, list(listing.files), list(listing.labels), 2,
                               environment={})
    assert "error" not in row, row.get("error")
    assert row["samples_per_sec"] > 0 and 0 < row["cache_fill_seconds"] <= row["first_batch_seconds"]
    assert row["cache_bytes"] > 0


def test_every_backend_name_has_a_backend():
    assert set(reader_backends.BACKEND_FUNCTIONS) == set(bench_reader.BACKENDS)


def test_time_batches_statistics_against_a_fake_clock_by_hand(monkeypatch):
    """A clock that moves only when a batch is made: the figures are exact, checked with the
    standard library (1e-9 relative: float sums in another order)."""
    import statistics

    durations = [0.1, 0.3]  # check batch 0.1, then timed 0.3, 0.1, 0.3, 0.1, 0.3 (1.1 s >= 1 s)
    clock = {"now": 0.0}
    monkeypatch.setattr(bench_reader.time, "perf_counter", lambda: clock["now"])
    rng = np.random.default_rng(0)

    def fake_batches():
        index = 0
        while True:
            clock["now"] += durations[index % 2]
            index += 1
            yield rng.integers(0, 256, (4, 2, 2, 3), dtype=np.uint8), np.zeros(4, np.int32)

    config = bench_reader.ReaderBenchConfig(backend="cxx", num_threads=2, batch_size=4,
                                            image_size=2, seconds=1.0, warmup_seconds=0.0,
                                            num_windows=2)
    figures = bench_reader.time_batches(fake_batches(), config, num_classes=1)
    assert figures["num_batches"] == 5 and figures["num_images"] == 20
    window_rates = [12 / (0.3 + 0.1 + 0.3), 8 / (0.1 + 0.3)]  # batches [0, 1, 2] and [3, 4]
    assert figures["samples_per_sec"] == pytest.approx(20 / 1.1, rel=1e-9)
    assert figures["samples_per_sec_per_thread"] == pytest.approx(10 / 1.1, rel=1e-9)
    stderr = statistics.stdev(window_rates) / 2 ** 0.5
    assert figures["samples_per_sec_stderr"] == pytest.approx(stderr, rel=1e-9)
    low, high = figures["samples_per_sec_ci95"]
    assert (high - low) / 2 == pytest.approx(12.7062 * stderr, rel=1e-4)  # t(0.975, 1)
    assert figures["samples_per_sec_window_min"] == pytest.approx(min(window_rates), rel=1e-9)
    batch_rates = [4 / 0.3, 4 / 0.1, 4 / 0.3, 4 / 0.1, 4 / 0.3]
    median = statistics.median(batch_rates)
    assert figures["samples_per_sec_jitter"] == pytest.approx(
        1.4826 * statistics.median(abs(rate - median) for rate in batch_rates), abs=1e-9)
    assert figures["batch_time_ms_mean"] == pytest.approx(1100 / 5, rel=1e-9)


def test_eval_resize_uses_the_shared_geometry():
    from flowers_tl.geometry import eval_resize_size

    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    out = reader_backends.resize_and_centre_crop(image, 224, cv2)
    shorter = eval_resize_size(224)  # 256
    reference = cv2.resize(image, (round(400 * shorter / 300), shorter),
                           interpolation=cv2.INTER_LINEAR)
    top, left = (shorter - 224) // 2, (reference.shape[1] - 224) // 2
    np.testing.assert_array_equal(out, reference[top:top + 224, left:left + 224])


def _timed_row(backend, threads, images, seconds, cpu_seconds, **extra):
    return {"backend": backend, "num_threads": threads, "num_images": images, "num_batches": images // 8,
            "timed_seconds": seconds, "samples_per_sec": images / seconds, "cpu_seconds": cpu_seconds,
            "samples_per_sec_window_min": images / seconds - 5, "samples_per_sec_window_max": images / seconds + 5,
            "samples_per_sec_jitter": 2.0, "samples_per_sec_stderr": 1.0,
            "cpu_cores_busy": cpu_seconds / seconds, "samples_per_cpu_second": images / cpu_seconds,
            **extra}


def test_rounds_pool_by_hand_and_an_error_in_any_round_wins():
    rows = [_timed_row("cxx", 1, 800, 2.0, 2.0, round=0, cache_fill_seconds=1.0),
            _timed_row("tfdata", 1, 500, 2.0, 2.0, round=0),
            {"backend": "dali", "num_threads": 1, "round": 0, "error": "ImportError: no DALI"},
            {"backend": "dali", "num_threads": 1, "round": 1, "error": "ImportError: no DALI"},
            _timed_row("tfdata", 1, 400, 2.0, 2.0, round=1),
            _timed_row("cxx", 1, 1000, 2.0, 2.5, round=1, cache_fill_seconds=3.0)]
    pooled = bench_reader.pool_rounds(rows)
    assert [(row["backend"], row.get("rounds")) for row in pooled] == [("cxx", 2), ("tfdata", 2), ("dali", 2)]
    cxx = pooled[0]
    assert cxx["samples_per_sec"] == pytest.approx(1800 / 4.0)  # all images over all seconds
    assert cxx["samples_per_sec_rounds"] == [400.0, 500.0]
    # rates 400 and 500: stderr = std(ddof=1) / sqrt(2) = 70.71 / 1.414 = 50
    assert cxx["samples_per_sec_stderr"] == pytest.approx(50.0)
    assert cxx["samples_per_sec_ci95"][0] < 450 < cxx["samples_per_sec_ci95"][1]
    assert cxx["samples_per_cpu_second"] == pytest.approx(1800 / 4.5)
    assert cxx["cpu_cores_busy"] == pytest.approx(4.5 / 4.0)
    assert cxx["cache_fill_seconds"] == pytest.approx(2.0)
    assert "round" not in cxx and pooled[2]["error"].startswith("ImportError")
    single = [_timed_row("cxx", 2, 800, 2.0, 2.0)]
    assert bench_reader.pool_rounds(single) == single


def test_rounds_run_interleaved_the_second_backwards(monkeypatch, tmp_path):
    order = []

    def fake_run_one(config, files, labels, num_classes, environment):
        order.append((config.backend, config.num_threads))
        return _timed_row(config.backend, config.num_threads, 80, 1.0, 1.0)

    monkeypatch.setattr(bench_reader, "run_one", fake_run_one)
    monkeypatch.setattr(bench_reader, "load_dataset", lambda url: (["a.jpg"], [0], 1))
    monkeypatch.setattr(bench_reader, "describe_environment", lambda: {"cpu_model": "x", "cpu_count_affinity": 1})
    out = tmp_path / "rows.jsonl"
    assert bench_reader.main(["--backend", "cxx,tfdata", "--num_threads", "1", "--rounds", "3",
                              "--out", str(out)]) == 0
    assert order == [("cxx", 1), ("tfdata", 1), ("tfdata", 1), ("cxx", 1), ("cxx", 1), ("tfdata", 1)]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 0, 1, 1, 2, 2]
