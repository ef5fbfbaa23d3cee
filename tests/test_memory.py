"""Memory stays flat: the Reader over thousands of batches of a salted set, and every error
path of the decoder repeated, measured as resident set size."""
import os

import pytest

from flowers_tl import reader
from flowers_tl.reader import DecodeError, Reader
from hostile_data import BAD_CASES, CASES, SALTED_BATCH, salted_folder, watchdog_for_fifos

pytestmark = pytest.mark.slow


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


BATCHES = 4000


def test_memory_stays_flat_over_thousands_of_batches_and_bad_decodes(tmp_path):
    # A leak of one batch buffer (21 x 32 x 32 x 3 = 63 KB) per batch would add 250 MB over the
    # 4000 batches, of 1 KB per image 84 MB; allocator noise and numpy's caches stay under a
    # few MB once warm. Tolerance: 8 MB.
    dataset, bad = salted_folder(tmp_path / "salted")
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
    assert summary.batches_delivered == 200 + BATCHES and summary.bad_files == len(bad)
    assert after_batches - before < 8 << 20, (before, after_batches)
    # The error paths (setjmp/longjmp out of libjpeg, exceptions through pybind11) leak nothing
    # either: every bad case, 200 times each.
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
    assert rss_bytes() - before < 8 << 20

