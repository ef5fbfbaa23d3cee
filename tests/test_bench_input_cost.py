"""bench.input_cost: the per-round shares against synthetic, and a tiny run through every input."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bench import input_cost


def test_shares_are_paired_by_round_and_pooled_over_time():
    # Round 2 ran at half speed for everyone: the per-round shares do not see it, the pooled
    # img/s do. cxx: round 1 1.0 s vs synthetic's 0.8 s (80%), round 2 2.0 vs 2.0 (100%).
    seconds = {"synthetic": [[0.4, 0.4], [1.0, 1.0]], "cxx": [[0.5, 0.5], [1.0, 1.0]]}
    rows = {row["input"]: row for row in input_cost.summarise(seconds, batch_size=8)}
    assert rows["synthetic"]["vs_synthetic_per_round"] == [1.0, 1.0]
    assert rows["cxx"]["vs_synthetic_per_round"] == pytest.approx([0.8, 1.0])
    assert rows["cxx"]["vs_synthetic"] == pytest.approx(2.8 / 3.0)
    assert rows["cxx"]["images_per_sec"] == pytest.approx(4 * 8 / 3.0)
    assert rows["cxx"]["vs_synthetic_stderr"] == pytest.approx(0.1)  # stdev 0.1414 / sqrt(2)
    assert (rows["cxx"]["vs_synthetic_min"], rows["cxx"]["vs_synthetic_max"]) == \
        pytest.approx((0.8, 1.0))
    table = input_cost.format_table(list(rows.values()))
    assert "| cxx | 10.7 | 93.3% | 10.0% | 80.0%-100.0% |" in table
    # Without synthetic in the run there is nothing to divide by: img/s only.
    (alone,) = input_cost.summarise({"cxx": seconds["cxx"]}, batch_size=8)
    assert "vs_synthetic" not in alone and "| cxx | 10.7 | - | - | - |" in \
        input_cost.format_table([alone])


def test_prediction_from_cpu_time_per_image():
    # synthetic: 4 steps of 8 images in 2.0 s = 16 img/s. cxx costs 25 ms of CPU per image on 2
    # cores: feeding 16 img/s takes 0.4 core-s of every 2 -> 1 / (1 + 16 * 0.025 / 2) = 83.3%.
    seconds = {"synthetic": [[0.5, 0.5], [0.5, 0.5]], "cxx": [[0.6, 0.6], [0.6, 0.6]]}
    rows = {row["input"]: row for row in input_cost.summarise(
        seconds, batch_size=8, cpu_seconds_per_image={"cxx": 0.025}, cores=2)}
    assert rows["cxx"]["cpu_ms_per_image_alone"] == pytest.approx(25.0)
    assert rows["cxx"]["cpu_share_prediction"] == pytest.approx(1 / 1.2)
    assert "cpu_ms_per_image_alone" not in rows["synthetic"]
    table = input_cost.format_table(list(rows.values()))
    assert "| cxx | 13.3 | 83.3% | 0.0% | 83.3%-83.3% | 25.00 | 83.3% |" in table
    assert "| synthetic | 16.0 | 100.0% | 0.0% | 100.0%-100.0% | - | - |" in table


def test_cpu_per_image_skips_the_prefetched_batches_and_counts_images():
    pulled = []

    def batches():
        for index in range(10):
            pulled.append(index)
            # CPU work only for batches 3.., so a count that included 0..2 would be lower.
            if index >= 3:
                end = time.process_time() + 0.02
                while time.process_time() < end:
                    pass
            yield np.zeros((4 if index < 9 else 2, 1)), None

    cost = input_cost.cpu_per_image(batches(), count=7, skip=3)
    assert pulled == list(range(10))
    assert cost == pytest.approx(7 * 0.02 / (6 * 4 + 2), rel=0.25)


def test_turns_rotate_reverse_and_leave_the_first_step_of_each_untimed():
    calls = []
    inputs = {name: iter(lambda name=name: (name, None), None) for name in ("a", "b")}
    seconds = input_cost.measure(inputs, lambda images, labels: calls.append(images),
                                 block=3, rounds=2, warmup=1)
    assert calls == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
    assert [len(turn) for turn in seconds["a"]] == [2, 2]


def test_bad_flags_and_folders_are_named(capsys, tmp_path):
    with pytest.raises(SystemExit):
        input_cost.parse_args(["--data_url", "x", "--block", "1"])
    assert "--block 1" in capsys.readouterr().err
    assert input_cost.main(["--data_url", str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


@pytest.mark.slow
def test_every_input_feeds_the_trainers_step(small_dataset, tmp_path):
    files, _ = small_dataset
    out = tmp_path / "rows.jsonl"
    data_url = str(tmp_path / "data")
    assert input_cost.main(["--data_url", data_url, "--image_size", "32", "--batch_size", "4",
                            "--block", "2", "--rounds", "2", "--warmup", "1", "--threads", "1",
                            "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["input"] for row in rows] == list(input_cost.INPUTS)
    for row in rows:
        assert row["timed_steps"] == 2 and row["rounds"] == 2 and row["images"] == len(files)
        assert row["images_per_sec"] > 0 and row["vs_synthetic"] > 0
        if row["input"] != "synthetic":  # every real input was also read on its own
            assert row["cpu_ms_per_image_alone"] > 0 and 0 < row["cpu_share_prediction"] < 1
        assert row["image_size"] == 32 and row["cpu_model"] == row["environment"]["cpu_model"]
        # The trainer's default arithmetic: fp32 here, where conftest hides bf16 units.
        assert row["precision"] == "fp32"
