"""bench.feeding: cores to feed GPU training rates, checked by hand."""
import math

import pytest

from bench import feeding


def _row(backend, threads, per_core, image_size=224, **extra):
    return {"backend": backend, "num_threads": threads, "image_size": image_size,
            "samples_per_sec": per_core * threads, "samples_per_cpu_second": per_core, **extra}


def test_cores_to_feed_is_the_rate_over_images_per_cpu_second():
    assert feeding.cores_to_feed(500.0, 1270.0) == pytest.approx(2.54)
    with pytest.raises(ValueError, match="samples_per_cpu_second"):
        feeding.cores_to_feed(0.0, 1270.0)


def test_every_gpu_rate_names_its_source():
    for one, eight, source in feeding.GPU_TRAINING_RATES.values():
        assert 0 < one < eight and source


def test_table_by_hand_rounds_cores_up_and_keeps_each_backends_best_row():
    rows = [_row("cxx", 1, 400.0), _row("cxx", 2, 500.0), _row("cxx-cache", 2, 4000.0),
            _row("tfdata", 1, 900.0, image_size=64),  # not at the GPU rates' 224 px: ignored
            {"backend": "dali", "num_threads": 1, "image_size": 224, "error": "no DALI"}]
    lines = feeding.feeding_table(rows)
    assert lines[0].startswith("| backend | img/s per core | ms CPU per image | measured at | V100 x1 |")
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in body] == ["| cxx", "| cxx-cache"]
    # cxx at 500 img/s per core: V100 1270 -> 2.54 -> 3, 9510 -> 19.02 -> 20; A100 2375 -> 5,
    # 17400 -> 35; H100 6900 -> 14, 55200 -> 111.
    assert body[0] == "| cxx | 500 | 2.00 | 2 thread(s), 224 px | 3 | 20 | 5 | 35 | 14 | 111 |"
    assert body[1].endswith(f"| 1 | 3 | 1 | 5 | 2 | {math.ceil(55200 / 4000)} |")


def test_without_a_224_px_row_the_table_says_so():
    lines = feeding.feeding_table([_row("cxx", 1, 400.0, image_size=64)])
    assert "no 224 px row" in lines[2]
