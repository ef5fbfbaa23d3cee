"""The threaded Reader over bad files: a salted class-per-folder set (every corrupt case of the
corpus, a FIFO, a device, a file deleted after listing) is read with each bad file skipped,
counted and reported with its reason, or, with skip_bad_files=False, the first one named in a
one-line error; paths that are not regular files, unreadable files, and a file that fails only
for some crops behave the same whatever the thread count.
"""
import os
import re

import numpy as np
import pytest

from conftest import encode_jpeg, smooth_rgb
from flowers_tl import reader
from flowers_tl.reader import DecodeError, Reader
from hostile_data import (CROP_DEPENDENT, GOOD, SALTED_BATCH, colour_label, failing_epochs,
                          reader_image_seed, salted_folder, watchdog_for_fifos)


def test_reader_skips_counts_and_reports_every_bad_file(tmp_path):
    dataset, bad = salted_folder(tmp_path / "salted")
    fifos = [path for path in bad if path.endswith("named_pipe.jpg")]
    timer, released = watchdog_for_fifos(fifos)
    # Full batches of 7, about 30% bad: for this seed no batch is all bad (that would be an
    # error, test_reader.py::test_all_bad_batch_is_an_error).
    with Reader(dataset.files, dataset.labels, batch_size=SALTED_BATCH, image_size=16,
                num_threads=2, num_epochs=3, seed=5) as stream:
        batches = [(images.copy(), labels.copy()) for images, labels in stream]
        summary = stream.summary()
    timer.cancel()
    assert not released.is_set(), "a reader thread blocked opening a FIFO"
    assert len(batches) == 3 * len(dataset.files) // SALTED_BATCH
    for images, labels in batches:  # every slot holds a good image with its own label
        assert colour_label(images, dataset.class_names) == labels.tolist()
    failures = {path: failing_epochs(path, dataset.files.index(path), 3, seed=5, image_size=16)
                for path in bad}
    failing = {path for path, epochs in failures.items() if epochs}
    assert len(failing) >= len(bad) - len(CROP_DEPENDENT)
    assert summary.bad_files == len(failing)
    assert summary.failed_reads == sum(len(epochs) for epochs in failures.values())
    assert summary.images_decoded == 3 * len(dataset.files) - summary.failed_reads
    reasons = dict(summary.first_bad_files)  # up to 20 (BatchReader::kMaxReportedBadFiles)
    assert set(reasons) == failing
    for path in failing:
        assert re.search(bad[path], reasons[path]), (path, reasons[path])


def test_a_file_failing_for_some_crops_gives_the_same_batches_whatever_the_thread_count(tmp_path):
    # A large truncated baseline JPEG whose epoch-0 crop reaches the cut and epoch-1 crop does
    # not, among small good files. Decoding it takes long enough that, with two threads, its
    # epoch-1 slot starts before its epoch-0 failure is recorded; the reader used to skip files
    # that had failed before, so one thread gave a copy in that slot and two threads the image.
    import cv2

    rng = np.random.default_rng(1)
    detail = cv2.resize(smooth_rgb(300, 300, seed=1), (2400, 2400)).astype(np.int16)
    detail += rng.integers(-12, 13, detail.shape, dtype=np.int16)  # entropy: a slow decode
    big = encode_jpeg(np.clip(detail, 0, 255).astype(np.uint8), quality=95, kind="444")
    truncated_big = big[:int(len(big) * 0.6)]
    options = dict(image_size=32, area_range=(0.08, 0.2), use_dct_scaling=False)
    seed = 2
    files = [str(tmp_path / "big.jpg")]
    (tmp_path / "big.jpg").write_bytes(truncated_big)
    for index in range(5):
        files.append(str(tmp_path / f"small_{index}.jpg"))
        (tmp_path / f"small_{index}.jpg").write_bytes(encode_jpeg(smooth_rgb(40, 40, seed=index)))
    outcomes = []
    for epoch in range(2):
        try:
            reader.augment(truncated_big, seed=reader_image_seed(seed, epoch, 0), **options)
            outcomes.append("image")
        except DecodeError:
            outcomes.append("error")
    assert outcomes == ["error", "image"]  # the premise of the test

    def batches(num_threads):
        with Reader(files, list(range(6)), batch_size=6, num_threads=num_threads, seed=seed,
                    num_epochs=2, prefetch=2, **options) as stream:
            return [images.copy() for images, _ in stream], stream.summary()

    one, one_summary = batches(1)
    for _ in range(2):
        two, two_summary = batches(2)
        assert all(np.array_equal(a, b) for a, b in zip(one, two))
        assert two_summary.failed_reads == one_summary.failed_reads == 1


def test_fail_fast_names_the_first_bad_file_and_its_reason(tmp_path):
    dataset, bad = salted_folder(tmp_path / "salted")
    timer, released = watchdog_for_fifos([p for p in bad if p.endswith("named_pipe.jpg")])
    with Reader(dataset.files, dataset.labels, batch_size=SALTED_BATCH, image_size=16,
                num_threads=2, skip_bad_files=False) as stream:
        with pytest.raises(RuntimeError) as error:
            for _ in stream:
                pass
    timer.cancel()
    assert not released.is_set()
    message = str(error.value)
    assert message.startswith("Error in thread ")
    path, reason = message.split(": ", 1)[1].split(": ", 1)
    assert path in bad and re.search(bad[path], reason), message


def test_unreadable_file_is_skipped_with_its_reason(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root reading (the FIFO, device and "
                    "deleted-file cases cover the cannot-open/read paths)")
    files = []
    for index in range(3):
        path = tmp_path / f"{index}.jpg"
        path.write_bytes(GOOD)
        files.append(str(path))
    os.chmod(files[1], 0)
    with Reader(files, [0, 1, 2], batch_size=3, image_size=8, num_epochs=1) as stream:
        next(stream)
        summary = stream.summary()
    assert summary.first_bad_files == ((files[1], "cannot open: Permission denied"),)


def test_paths_that_are_not_readable_images_are_skipped_not_fatal(tmp_path):
    """Named by hand (a listing only yields files): a directory named .jpg (its size on ext4 is
    2^63 - 1, which used to make the buffer allocation throw and stop the reader), a device, and
    a sparse file over the 1 GiB limit for one image (refused before reading it)."""
    (tmp_path / "folder.jpg").mkdir()
    with open(tmp_path / "huge.jpg", "wb") as handle:
        handle.truncate((1 << 30) + 1)
    good = tmp_path / "good.jpg"
    good.write_bytes(GOOD)
    files = [str(tmp_path / "folder.jpg"), "/dev/null", str(tmp_path / "huge.jpg"), str(good)]
    with Reader(files, [0, 1, 2, 3], batch_size=4, image_size=8, num_epochs=1) as stream:
        images, labels = next(stream)
        summary = stream.summary()
    assert labels.tolist() == [3, 3, 3, 3]  # every slot a copy of the one good image
    assert dict(summary.first_bad_files) == {
        files[0]: "not a regular file (a directory)",
        files[1]: "not a regular file (a device)",
        files[2]: "file is 1073741825 bytes, over the 1024 MiB limit for one image"}

