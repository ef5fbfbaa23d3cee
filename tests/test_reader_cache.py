"""The reader's decoded-image cache (csrc/image_cache.h): the same batches whatever the thread
count, the streaming crop rectangles, eval pixels within a stated tolerance of streaming, the
cache file's reuse and rebuilds, a killed fill, the memory budget, and bad files counted as
streaming counts them.

References: the streaming reader itself (the crop boxes must be its boxes) and PIL's BILINEAR
resize (the same triangle filter as ours; PIL computes in fixed point, we in float: +-1 level).
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import encode_jpeg, reference_decode, smooth_rgb, write_dataset
from flowers_tl import _reader, geometry
from flowers_tl.reader import ReaderConfig, Reader, available_memory_bytes, CACHE_MEMORY_FRACTION
from hostile_data import CROP_DEPENDENT, SALTED_BATCH, colour_label, salted_folder, watchdog_for_fifos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_all(files, labels, **options):
    with Reader(files, labels, **options) as reader:
        batches = [(images.copy(), batch_labels.copy()) for images, batch_labels in reader]
        return batches, reader.summary()


def noise_dataset(root, count=12):
    """4:4:4 noise JPEGs of 30-63 px (kept whole by a cache capped at 64 px): any crop that is
    off by a pixel differs by tens of grey levels."""
    root.mkdir(parents=True)
    files = []
    for index in range(count):
        rng = np.random.default_rng(index)
        pixels = rng.integers(0, 256, (30 + 3 * index, 35 + 2 * index, 3), dtype=np.uint8)
        path = root / f"noise_{index:02d}.jpg"
        path.write_bytes(encode_jpeg(pixels, quality=95, kind="444"))
        files.append(str(path))
    return files, [index % 3 for index in range(count)]


def test_cached_batches_are_the_same_whatever_the_thread_count(small_dataset):
    files, labels = small_dataset
    options = dict(batch_size=6, image_size=32, num_epochs=3, seed=3, cache="memory")
    one, summary = read_all(files, labels, num_threads=1, **options)
    three, _ = read_all(files, labels, num_threads=3, prefetch=5, **options)
    assert len(one) == len(three) == 3 * 7
    for (images_a, labels_a), (images_b, labels_b) in zip(one, three):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)
    # Each file decoded once, in the fill; every crop of the three epochs came from the cache.
    assert summary.cache == "memory" and summary.images_decoded == len(files)
    assert summary.images_from_cache == 3 * len(files) and summary.cache_fill_seconds > 0
    other, _ = read_all(files, labels, num_threads=2, **{**options, "seed": 4})
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(one, other))
    nchw, _ = read_all(files, labels, num_threads=2, layout="NCHW", **options)
    for (images, _), (transposed, _) in zip(one, nchw):
        np.testing.assert_array_equal(transposed, images.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("training", [True, False])
def test_cached_crops_are_the_streaming_crop_rectangles(tmp_path, training):
    # Noise photos kept whole in the cache, decoded at full scale both ways: the two resample
    # the same pixels, so away from the crop's edge they must be identical. Within 2 pixels of
    # the edge they differ: streaming's filter sees only the decoded region, the cache's also
    # the pixels just outside the box.
    files, labels = noise_dataset(tmp_path / "noise")
    options = dict(batch_size=4, image_size=32, num_threads=2, num_epochs=2, seed=8,
                   training=training, use_dct_scaling=False)
    streamed, _ = read_all(files, labels, **options)
    cached, summary = read_all(files, labels, cache="memory", cache_short_side=64, **options)
    assert summary.images_decoded == len(files)
    for (a, labels_a), (b, labels_b) in zip(streamed, cached):
        np.testing.assert_array_equal(labels_a, labels_b)
        np.testing.assert_array_equal(a[:, 2:-2, 2:-2], b[:, 2:-2, 2:-2])
        assert np.abs(a.astype(int) - b).mean() < 2  # a crop one pixel off: ~40


def test_cached_pixels_are_the_image_resized_to_the_cap():
    # Reference: PIL's full decode (the same libjpeg settings) resized with BILINEAR.
    options = ReaderConfig(batch_size=1, image_size=32, training=False,
                           use_dct_scaling=False).resolved().to_options()
    for index, (height, width) in enumerate([(300, 400), (500, 333), (101, 100), (90, 120)]):
        data = encode_jpeg(smooth_rgb(height, width, seed=index), kind="420")
        _, cached = _reader.augment_cached(data, options.image, options.decoder, 0, 100)
        scale = 100 / min(height, width)
        expected_size = (height, width) if scale >= 1 else (round(height * scale),
                                                            round(width * scale))
        assert cached.shape == (*expected_size, 3) and min(cached.shape[:2]) == min(100, height, width)
        expected = np.asarray(Image.fromarray(reference_decode(data)).resize(
            (cached.shape[1], cached.shape[0]), Image.BILINEAR))
        assert np.abs(cached.astype(int) - expected).max() <= 1, (height, width)


def test_cached_eval_batches_are_within_a_few_grey_levels_of_streaming(tmp_path):
    # Photo sizes around and above the cap (92 px at 64, 320 at 224): the cache resamples twice
    # (to the cap, then the crop), streaming once, from a DCT-scaled decode. Smooth content:
    # every pixel within 3 levels, each image's mean within 0.5 (measured: at most 2 and 0.31).
    sizes = [(333, 500), (500, 375), (240, 320), (768, 1024), (281, 500), (90, 120), (1200, 900)]
    files, labels = write_dataset(tmp_path / "photos", sizes,
                                  kinds=("420", "444", "progressive", "gray"))
    for image_size in (64, 224):
        options = dict(batch_size=len(files), image_size=image_size, training=False,
                       num_epochs=1, num_threads=2)
        [(streamed, _)], _ = read_all(files, labels, **options)
        [(cached, _)], summary = read_all(files, labels, cache="memory", **options)
        assert summary.cache == "memory" and summary.images_from_cache == len(files)
        error = np.abs(streamed.astype(int) - cached)
        assert error.max() <= 3, image_size
        assert error.reshape(len(files), -1).mean(axis=1).max() < 0.5, image_size


def cache_files(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".flcache"))


def messages(capfd):
    """The reader's one-line messages on stderr since the last call."""
    return [line for line in capfd.readouterr().err.splitlines() if line.startswith("reader:")]


def test_the_cache_file_is_reused_and_rebuilt_when_the_files_or_the_cap_change(tmp_path, capfd):
    files, labels = write_dataset(tmp_path / "data", [(40 + 7 * i, 90 - 3 * i) for i in range(9)])
    folder = tmp_path / "cache"
    options = dict(batch_size=4, image_size=32, num_threads=2, num_epochs=2, seed=1,
                   cache=str(folder))

    def run(files, labels, **changes):
        batches, summary = read_all(files, labels, **{**options, **changes})
        return batches, summary, messages(capfd)

    built, summary, said = run(files, labels)
    assert summary.cache == "file" and not summary.cache_reused
    assert summary.images_decoded == len(files)
    assert len(said) == 1 and said[0].startswith("reader: building the decoded-image cache of 9 "
                                                 "images (shorter side at most 47 px")
    assert len(cache_files(folder)) == 1 and cache_files(folder)[0].endswith(".flcache")
    name = cache_files(folder)[0]
    assert re.fullmatch(r"data-train-[0-9a-f]{8}\.flcache", name)

    reused, summary, said = run(files, labels)  # a later run: nothing decoded, same batches
    assert summary.cache_reused and summary.images_decoded == 0 and said == []
    assert summary.images_from_cache == 2 * len(files)
    for (a, _), (b, _) in zip(built, reused):
        np.testing.assert_array_equal(a, b)
    in_memory, _, _ = run(files, labels, cache="memory")
    for (a, _), (b, _) in zip(built, in_memory):
        np.testing.assert_array_equal(a, b)

    def rebuilt(reason, files=files, labels=labels, **changes):
        _, summary, said = run(files, labels, **changes)
        assert len(said) == 1 and said[0].startswith("reader: rebuilding the decoded-image "
                                                     "cache"), said
        assert said[0].endswith(reason), said
        assert summary.images_decoded == len(files) and not summary.cache_reused
        assert cache_files(folder) == [name]  # rebuilt in place, not one more file

    # A file rewritten with other pixels; then one only touched.
    os.remove(files[3])  # a new inode and mtime, whatever the clock's resolution
    with open(files[3], "wb") as handle:
        handle.write(encode_jpeg(smooth_rgb(61, 81, seed=50)))
    rebuilt(": 1 file(s) changed (size or mtime), 0 added, 0 removed since it was written")
    stat = os.stat(files[5])
    os.utime(files[5], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    rebuilt(": 1 file(s) changed (size or mtime), 0 added, 0 removed since it was written")
    assert run(files, labels)[1].cache_reused
    added = tmp_path / "data" / "c1" / "img_added.jpg"
    added.write_bytes(encode_jpeg(smooth_rgb(50, 50, seed=60)))
    rebuilt(": 0 file(s) changed (size or mtime), 1 added, 0 removed since it was written",
            files=files + [str(added)], labels=labels + [1])
    rebuilt(": 0 file(s) changed (size or mtime), 0 added, 1 removed since it was written")
    rebuilt(": its shorter-side cap is 47 px, now 50", cache_short_side=50)
    # The eval role has its own file, so a held-out split does not evict the training one.
    _, summary, said = run(files, labels, training=False)
    assert said[0].startswith("reader: building") and len(cache_files(folder)) == 2


def test_a_cache_folder_that_cannot_be_created_is_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    files, labels = noise_dataset(tmp_path / "noise", count=2)
    with pytest.raises(ValueError, match=r"^Reader: cache='.*file/cache': cannot create the "
                                         r"folder: Not a directory$"):
        Reader(files, labels, batch_size=2, cache=str(blocker / "cache"))


KILLED_FILL = """
import sys
from flowers_tl.reader import Reader
reader = Reader([sys.argv[1]] * int(sys.argv[2]), [0] * int(sys.argv[2]), batch_size=4,
                image_size=224, num_threads=1, cache=sys.argv[3])
next(reader)
print("filled", flush=True)
"""


def test_a_killed_fill_leaves_no_cache_that_looks_complete(tmp_path, capfd):
    # One 800x800 photo listed 150 times: a fill of ~1 s on one thread (decoded at 1/2 scale,
    # resized to the 320 px cap), killed (SIGKILL: no destructor, no cleanup) as soon as its
    # temporary file appears.
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode_jpeg(smooth_rgb(800, 800, seed=2), kind="444"))
    folder = tmp_path / "cache"
    folder.mkdir()
    child = subprocess.Popen([sys.executable, "-c", KILLED_FILL, str(photo), "150", str(folder)],
                             env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(".tmp-" in name for name in os.listdir(folder)):
        assert child.poll() is None and time.monotonic() < deadline, "no fill started"
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.stdout.read() == b""  # killed before the fill ended
    left = os.listdir(folder)
    assert cache_files(folder) == [] and len(left) == 1 and ".tmp-" in left[0]

    # The next reader finds no cache, builds one, and removes the dead fill's temporary file.
    files, labels = [str(photo)] * 8, [0] * 8
    options = dict(batch_size=4, image_size=64, num_threads=2, num_epochs=1, cache=str(folder))
    _, summary = read_all(files, labels, **options)
    assert summary.images_decoded == 8 and messages(capfd)[0].startswith("reader: building")
    assert os.listdir(folder) == cache_files(folder)
    path = folder / cache_files(folder)[0]

    # A complete file cut short, or with its end marker damaged: rebuilt, never trusted.
    complete = path.read_bytes()
    for damaged in (complete[:-1], complete[:-20] + bytes(20), complete[:5000]):
        path.write_bytes(damaged)
        _, summary = read_all(files, labels, **options)
        said = messages(capfd)
        assert summary.images_decoded == 8 and not summary.cache_reused
        assert said == [f"reader: rebuilding the decoded-image cache of 8 images (shorter side "
                        f"at most 92 px, 0.2 MiB) in {path}: it is incomplete or damaged (no "
                        f"matching end marker)"], said
    path.write_bytes(b"\0" * 5000)
    _, summary = read_all(files, labels, **options)
    assert summary.images_decoded == 8 and messages(capfd)[0].endswith("it is not a complete cache file")


def test_over_the_budget_the_reader_says_so_and_streams(small_dataset, capfd):
    files, labels = small_dataset
    options = dict(batch_size=8, image_size=32, num_threads=2, num_epochs=1, seed=2)
    streamed, _ = read_all(files, labels, **options)
    capfd.readouterr()
    fallback, summary = read_all(files, labels, cache="memory", cache_max_bytes=1000, **options)
    said = messages(capfd)
    assert len(said) == 1 and re.fullmatch(
        r"reader: the decoded-image cache of 40 images \(shorter side at most 47 px, [0-9.]+ MiB\) "
        r"is over its budget of 0\.0 MiB \(cache_max_bytes\): streaming instead", said[0]), said
    assert summary.cache == "streaming" and summary.images_from_cache == 0
    assert summary.images_decoded == len(files)
    for (a, _), (b, _) in zip(streamed, fallback):
        np.testing.assert_array_equal(a, b)
    # The default budget: a share of what /proc/meminfo (or the cgroup) says is available.
    budget = ReaderConfig(batch_size=1, cache="memory").resolved().cache_max_bytes
    assert budget == pytest.approx(CACHE_MEMORY_FRACTION * available_memory_bytes(), rel=0.2)
    with open("/proc/meminfo") as handle:
        total = int(next(line for line in handle if line.startswith("MemTotal:")).split()[1])
    assert 0 < budget < total * 1024


def test_the_default_cap_serves_the_eval_resize_and_whole_image_crops():
    for image_size in (32, 64, 224, 299):
        cap = geometry.cache_short_side(image_size)
        assert cap >= geometry.eval_resize_size(image_size) * geometry.CACHE_SHORT_SIDE_MARGIN
        assert cap > geometry.eval_resize_size(image_size) > image_size
    assert geometry.cache_short_side(224) == 320
    assert ReaderConfig(batch_size=1, image_size=64, cache="memory").resolved().cache_short_side == 92
    assert ReaderConfig(batch_size=1, image_size=64).resolved().cache_short_side is None


def test_bad_files_in_the_cache_are_counted_like_streaming(tmp_path):
    dataset, bad = salted_folder(tmp_path / "salted")
    fifos = [path for path in bad if path.endswith("named_pipe.jpg")]
    timer, released = watchdog_for_fifos(fifos)
    options = dict(batch_size=SALTED_BATCH, image_size=16, num_threads=2, num_epochs=3, seed=5)
    streamed, streaming = read_all(dataset.files, dataset.labels, **options)
    cached, summary = read_all(dataset.files, dataset.labels, cache="memory", **options)
    timer.cancel()
    assert not released.is_set(), "a reader thread blocked opening a FIFO"
    for images, labels in cached:  # every slot holds a good image with its own label
        assert colour_label(images, dataset.class_names) == labels.tolist()
    # Every bad file fails in every epoch here: the cache's full decode reaches a truncated
    # file's cut, where streaming fails only for the crops that do.
    assert summary.bad_files == len(bad) and summary.failed_reads == 3 * len(bad)
    good = len(dataset.files) - len(bad)
    assert summary.images_decoded == good and summary.images_from_cache == 3 * good
    reasons, streaming_reasons = dict(summary.first_bad_files), dict(streaming.first_bad_files)
    assert set(reasons) == set(bad)
    for path, expected in bad.items():
        assert re.search(expected, reasons[path]), (path, reasons[path])
        if not any(path.endswith(f"bad_{case}.jpg") for case in CROP_DEPENDENT):
            assert reasons[path] == streaming_reasons[path]
    always_bad = [path for path in bad if not any(path.endswith(f"bad_{case}.jpg")
                                                  for case in CROP_DEPENDENT)]
    crop_dependent_failures = streaming.failed_reads - 3 * len(always_bad)
    assert 0 <= crop_dependent_failures <= 3 * len(CROP_DEPENDENT)

    # Evaluation (bad slots: zeros and label -1): the same slots as streaming.
    eval_options = dict(options, training=False, num_epochs=1, fill_bad_slots=False)
    cut = {dataset.files.index(path) for path in bad if path not in always_bad}
    def eval_labels(**cache):
        batches, _ = read_all(dataset.files, dataset.labels, **eval_options, **cache)
        return np.concatenate([batch_labels for _, batch_labels in batches])

    streamed_labels, cached_labels = eval_labels(), eval_labels(cache="memory")
    keep = [i for i in range(len(dataset.files)) if i not in cut]
    np.testing.assert_array_equal(streamed_labels[keep], cached_labels[keep])
    assert (cached_labels == -1).sum() == len(bad)

    # skip_bad_files=False: the fill stops at the first bad file, named with its reason.
    with pytest.raises(RuntimeError, match=r"Error in thread \d+: .*\.jpg: "):
        with Reader(dataset.files[:40], dataset.labels[:40], batch_size=4, image_size=16,
                    cache="memory", skip_bad_files=False) as reader:
            next(reader)
