"""Memory stays flat: the Reader over thousands of batches of a salted set, and every error
path of the decoder repeated, measured as resident set size.

Each measurement runs in a fresh spawned process holding only the reader: in the suite's own
process, threads other tests leave behind (TensorFlow's pools, watchdogs) allocate while we
measure, and one such 9 MB step failed a CI run whose reader was flat (0.0 MB over 16,000
batches measured alone, AMD EPYC, 2026-12-05)."""
import multiprocessing
import os
import pathlib

import pytest

from flowers_tl import reader
from flowers_tl.reader import DecodeError, Reader
from hostile_data import BAD_CASES, CASES, SALTED_BATCH, salted_folder, watchdog_for_fifos

pytestmark = pytest.mark.slow


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


BATCHES = 4000


def in_fresh_process(function, *args):
    """function(*args) in a spawned interpreter (only this module's imports); its result."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


def batches_growth(folder: str):
    dataset, bad = salted_folder(pathlib.Path(folder))
    timer, _ = watchdog_for_fifos([p for p in bad if p.endswith("named_pipe.jpg")])
    # Batches of 21 with 19 bad files: never an all-bad batch.
    with Reader(dataset.files, dataset.labels, batch_size=3 * SALTED_BATCH, image_size=32,
                num_threads=2) as stream:
        for _ in range(200):  # warm-up: buffer pool, thread-local scratch, numpy
            next(stream)
        before = rss_bytes()
        for _ in range(BATCHES):
            images, labels = next(stream)
        after_batches = rss_bytes()
        summary = stream.summary()
    timer.cancel()
    return summary.batches_delivered, summary.bad_files, len(bad), before, after_batches


def bad_decodes_growth():
    bad_bytes = [CASES[name][0] for name in BAD_CASES]

    def decode_all_bad():
        for data in bad_bytes:
            with pytest.raises(DecodeError):
                reader.decode_jpeg(data)
            try:
                reader.augment(data, 16)  # may succeed for a crop above a truncation
            except DecodeError:
                pass

    for _ in range(10):
        decode_all_bad()
    before = rss_bytes()
    for _ in range(200):
        decode_all_bad()
    return before, rss_bytes()


def test_memory_stays_flat_over_thousands_of_batches(tmp_path):
    # A leak of one batch buffer (21 x 32 x 32 x 3 = 63 KB) per batch would add 250 MB over the
    # 4000 batches, of 1 KB per image 84 MB; allocator noise and numpy's caches stay under a
    # few MB once warm. Tolerance: 8 MB.
    delivered, bad_files, bad, before, after = in_fresh_process(
        batches_growth, str(tmp_path / "salted"))
    assert delivered == 200 + BATCHES and bad_files == bad
    assert after - before < 8 << 20, (before, after)


def test_memory_stays_flat_over_every_bad_decode_repeated():
    # The error paths (setjmp/longjmp out of libjpeg, exceptions through pybind11) leak nothing
    # either: every bad case, 200 times each. Tolerance: 8 MB.
    before, after = in_fresh_process(bad_decodes_growth)
    assert after - before < 8 << 20, (before, after)

