"""flowers_tl.results: rows, the per-step schema and throughput statistics, each checked against
a reference computed here by hand with the standard library (statistics) or scipy."""
import argparse
import json
import math
import statistics

import pytest

from flowers_tl import results

# Known data: six steps of 32 images with one slow step, as a loaded machine gives.
STEP_SECONDS = [0.50, 0.52, 0.48, 0.51, 0.90, 0.49]
IMAGES = 32
WAITS = [0.01, 0.00, 0.02, 0.01, 0.30, 0.00]


def test_throughput_stats_matches_statistics_by_hand():
    stats = results.throughput_stats(STEP_SECONDS, IMAGES, WAITS, replicas=2)
    rates = [IMAGES / seconds for seconds in STEP_SECONDS]
    total = IMAGES * len(STEP_SECONDS) / sum(STEP_SECONDS)
    stderr = statistics.stdev(rates) / math.sqrt(len(rates))
    median = statistics.median(rates)
    # Floating-point sums in a different order: 1e-12 relative is rounding, not a formula change.
    assert stats["images_per_sec"] == pytest.approx(total, rel=1e-12)
    assert stats["images_per_sec_per_device"] == pytest.approx(total / 2, rel=1e-12)
    assert stats["images_per_sec_stderr"] == pytest.approx(stderr, rel=1e-12)
    assert stats["images_per_sec_jitter"] == pytest.approx(
        1.4826 * statistics.median(abs(rate - median) for rate in rates), rel=1e-12)
    # t(0.975, 5) = 2.5706 (printed tables); 1e-4 relative is the table's four decimals.
    low, high = stats["images_per_sec_ci95"]
    assert (high - low) / 2 == pytest.approx(2.5706 * stderr, rel=1e-4)
    assert (low + high) / 2 == pytest.approx(total, rel=1e-12)
    assert stats["step_time_sec"] == pytest.approx(statistics.fmean(STEP_SECONDS), rel=1e-12)
    assert (stats["step_time_sec_min"], stats["step_time_sec_max"]) == (0.48, 0.90)
    assert stats["data_wait_fraction"] == pytest.approx(sum(WAITS) / sum(STEP_SECONDS), rel=1e-12)
    assert stats["timed_steps"] == 6


def test_the_slow_step_moves_the_mean_but_hardly_the_jitter():
    steady = results.throughput_stats([0.50, 0.52, 0.48, 0.51, 0.50, 0.49], IMAGES)
    spiky = results.throughput_stats(STEP_SECONDS, IMAGES)
    assert spiky["images_per_sec"] < 0.95 * steady["images_per_sec"]
    assert spiky["images_per_sec_stderr"] > 3 * steady["images_per_sec_stderr"]
    assert spiky["images_per_sec_jitter"] < 1.5 * steady["images_per_sec_jitter"]


def test_images_per_step_may_differ_and_total_over_total_is_not_the_mean_rate():
    stats = results.throughput_stats([1.0, 3.0], [10, 90])
    assert stats["images_per_sec"] == pytest.approx(100 / 4)  # the mean of rates would be 20
    assert stats["images_per_sec_stderr"] == pytest.approx(statistics.stdev([10, 30]) / math.sqrt(2))


def test_one_step_has_no_spread_and_unknown_waits_give_no_fraction():
    stats = results.throughput_stats([0.5], 16)
    assert stats["images_per_sec"] == 32 and stats["images_per_sec_jitter"] == 0
    assert stats["images_per_sec_stderr"] is None and stats["images_per_sec_ci95"] is None
    assert stats["data_wait_fraction"] is None
    assert results.throughput_stats([0.5, 0.5], 16, [0.1, None])["data_wait_fraction"] is None
    assert results.throughput_stats([0.5, 0.5], 16, [0.1, math.nan])["data_wait_fraction"] is None


@pytest.mark.parametrize("seconds, images, waits, message", [
    ([], 8, None, "at least one timed step"),
    ([0.5, 0.0], 8, None, "finite and > 0"),
    ([0.5, math.inf], 8, None, "finite and > 0"),
    ([0.5, 0.5], [8], None, "1 image counts for 2 steps"),
    ([0.5, 0.5], 8, [0.1], "1 data waits for 2 steps"),
])
def test_bad_inputs_are_one_line_errors(seconds, images, waits, message):
    with pytest.raises(ValueError, match=message):
        results.throughput_stats(seconds, images, waits)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for degrees in list(range(1, 40)) + [50, 100, 1000, 10**6]:
        # Table entries carry four decimals (error <= 5e-5); the series beyond is exact to 1e-7.
        assert results.t_quantile_975(degrees) == pytest.approx(
            stats.t.ppf(0.975, degrees), abs=5e-5)
    with pytest.raises(ValueError, match="degrees_of_freedom 0"):
        results.t_quantile_975(0)


def test_intervals_overlap_from_recorded_or_rebuilt_intervals():
    a = {"images_per_sec": 40.0, "images_per_sec_ci95": [39.0, 41.0]}
    assert results.intervals_overlap(a, {"images_per_sec_ci95": [40.5, 42.0]})
    assert results.intervals_overlap(a, {"images_per_sec_ci95": [41.0, 42.0]})  # touching ties
    assert not results.intervals_overlap(a, {"images_per_sec_ci95": [41.1, 42.0]})
    # A row written before intervals were recorded: rebuilt from stderr and the step count.
    old = {"images_per_sec": 42.0, "images_per_sec_stderr": 0.5, "timed_steps": 12}
    assert results.ci95(old) == pytest.approx((42.0 - 2.2010 * 0.5, 42.0 + 2.2010 * 0.5))
    assert results.intervals_overlap(a, old)  # 42 - 1.1 = 40.9 < 41
    assert not results.intervals_overlap(a, {"images_per_sec": 42.0})  # no spread: no tie
    assert not results.intervals_overlap(a, dict(old, timed_steps=1))


def test_append_row_then_read_jsonl_skips_only_a_cut_last_line(tmp_path, capsys):
    path = tmp_path / "deep" / "folder" / "results.jsonl"
    results.append_row({"a": 1}, path)
    results.append_row({"b": [1, 2], "when": tmp_path}, str(path))  # default=str for the rest
    assert results.read_jsonl(path) == [{"a": 1}, {"b": [1, 2], "when": str(tmp_path)}]
    with open(path, "a") as handle:
        handle.write('{"c": 3, "cut sh')
    assert [list(row) for row in results.read_jsonl(path)] == [["a"], ["b", "when"]]
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: not a JSON row"):
        results.read_jsonl(path)
    assert results.read_jsonl(tmp_path / "missing.jsonl") == []
    results.append_row({"to": "stdout"}, None)
    assert json.loads(capsys.readouterr().out) == {"to": "stdout"}


def _step(step, seconds, warmup=False, **extra):
    return {"kind": "step", "step": step, "step_seconds": seconds, "images": 32,
            "data_wait_seconds": 0.01, "warmup": warmup, "loss": 1.0, "accuracy": 0.5,
            "learning_rate": 0.1, "time": 1000.0 + step, **extra}


def test_step_rows_give_throughput_without_the_warmup():
    rows = [_step(1, 5.0, warmup=True), _step(2, 0.5), _step(3, 0.7), {"kind": "epoch"}]
    stats = results.throughput_from_step_rows(rows, replicas=1)
    assert stats["timed_steps"] == 2 and stats["images_per_sec"] == pytest.approx(64 / 1.2)
    assert stats["data_wait_fraction"] == pytest.approx(0.02 / 1.2)
    with pytest.raises(ValueError, match="no timed step rows"):
        results.throughput_from_step_rows(rows[:1])


@pytest.mark.parametrize("field, value", [("images", True), ("step_seconds", None),
                                          ("warmup", 0), ("kind", 1)])
def test_a_step_row_off_the_schema_names_its_field(field, value):
    row = _step(7, 0.5, **{field: value})
    with pytest.raises(ValueError, match=f"step row .*field '{field}'"):
        results.check_step_row(row)
    results.check_step_row(_step(7, 0.5))


def test_parse_list_for_axis_flags():
    assert results.parse_list(int)("1, 2,,4") == [1, 2, 4]
    with pytest.raises(argparse.ArgumentTypeError, match="'x' is not a valid int"):
        results.parse_list(int)("1,x")
    with pytest.raises(argparse.ArgumentTypeError, match="invalid choice: 'c'"):
        results.parse_list(str, ("a", "b"))("a,c")
    with pytest.raises(argparse.ArgumentTypeError, match="empty list"):
        results.parse_list(str)(" , ")
