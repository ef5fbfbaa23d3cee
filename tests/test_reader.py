"""The threaded batch reader: epochs, determinism, shards, bad files, threads and signals;
the options object across the C++ boundary and where its defaults live."""
import dataclasses
import gc
import math
import signal
import struct
import threading
import time

import numpy as np
import pytest

from conftest import encode_jpeg, smooth_rgb
from flowers_tl import _reader, geometry
from flowers_tl.reader import Reader, ReaderConfig, build_identity

COLOURS = 40


def solid_dataset(root, count=COLOURS):
    """File i is a flat colour that identifies it in any crop, flip or resize."""
    root.mkdir(parents=True, exist_ok=True)
    files, labels = [], []
    for index in range(count):
        colour = np.array([6 * index + 10, 250 - 6 * index, (37 * index) % 200 + 20], np.uint8)
        image = np.broadcast_to(colour, (30 + index % 7 * 9, 40 + index % 5 * 11, 3)).copy()
        path = root / f"img_{index:03d}.jpg"
        path.write_bytes(encode_jpeg(image, quality=95, kind="444"))
        files.append(str(path))
        labels.append(index % 3)
    return files, labels


def identify(images):
    """File index of each image of a batch from its mean colour."""
    red = images.reshape(len(images), -1, 3).mean(1)[:, 0]
    return np.rint((red - 10) / 6).astype(int).tolist()


def take_epochs(reader, epochs):
    per_epoch = {}
    for images, labels in reader:
        per_epoch.setdefault(reader.epoch, []).append((identify(images), labels.tolist()))
        if len(per_epoch) > epochs:
            break
    return per_epoch


@pytest.fixture
def solid(tmp_path):
    return solid_dataset(tmp_path / "solid")


def test_every_image_once_per_epoch_with_matching_labels(solid):
    files, labels = solid
    with Reader(files, labels, batch_size=7, image_size=16, num_threads=2, num_epochs=3) as reader:
        assert reader.steps_per_epoch == 6  # 40 images: 5 full batches and one of 5
        epochs = take_epochs(reader, 3)
    assert sorted(epochs) == [0, 1, 2]
    orders = []
    for batches in epochs.values():
        ids = [i for batch_ids, _ in batches for i in batch_ids]
        assert sorted(ids) == list(range(COLOURS))
        assert [len(batch_ids) for batch_ids, _ in batches] == [7] * 5 + [5]
        for batch_ids, batch_labels in batches:
            assert batch_labels == [labels[i] for i in batch_ids]
        orders.append(ids)
    assert orders[0] != orders[1] != orders[2]  # reshuffled every epoch


def test_eval_reader_keeps_file_order_and_stops(solid):
    files, labels = solid
    with Reader(files, labels, batch_size=16, image_size=16, training=False,
                num_epochs=1) as reader:
        batches = [identify(images) for images, _ in reader]
    assert [i for batch in batches for i in batch] == list(range(COLOURS))


def test_drop_remainder_gives_full_batches_only(solid):
    files, labels = solid
    with Reader(files, labels, batch_size=16, image_size=16, num_epochs=2,
                drop_remainder=True) as reader:
        sizes = [len(images) for images, _ in reader]
    assert sizes == [16, 16] * 2


def test_shards_are_disjoint_and_cover_the_epoch(solid):
    files, labels = solid
    seen = []
    for shard in range(3):
        with Reader(files, labels, batch_size=5, image_size=16, num_epochs=1, seed=4,
                    shard_index=shard, num_shards=3) as reader:
            seen.append([i for images, _ in reader for i in identify(images)])
    assert sorted(i for shard in seen for i in shard) == list(range(COLOURS))
    assert [len(shard) for shard in seen] == [14, 13, 13]
    # drop_remainder: every shard the same number of steps, so multi-worker steps line up
    steps = {Reader(files, labels, batch_size=4, image_size=16, shard_index=s, num_shards=3,
                    drop_remainder=True).steps_per_epoch for s in range(3)}
    assert steps == {3}


def test_same_seed_same_batches_whatever_the_thread_count(small_dataset):
    files, labels = small_dataset

    def batches(num_threads, seed, prefetch=None):
        with Reader(files, labels, batch_size=6, image_size=32, num_threads=num_threads, seed=seed,
                    num_epochs=2, prefetch=prefetch) as reader:
            return [(images.copy(), labels.copy()) for images, labels in reader]

    one = batches(1, seed=3)
    four = batches(4, seed=3, prefetch=5)
    assert len(one) == len(four) == 14
    for (images_a, labels_a), (images_b, labels_b) in zip(one, four):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)
    other = batches(2, seed=4)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(one, other))


def test_nchw_batches_are_transposes_of_nhwc(small_dataset):
    files, labels = small_dataset
    kwargs = dict(batch_size=8, image_size=24, seed=1, num_epochs=1)
    with Reader(files, labels, **kwargs) as nhwc, Reader(files, labels, layout="NCHW", **kwargs) as nchw:
        for (a, _), (b, _) in zip(nhwc, nchw):
            assert b.shape == (len(a), 3, 24, 24)
            np.testing.assert_array_equal(b, a.transpose(0, 3, 1, 2))


def test_batches_are_numpy_views_of_the_cxx_buffer_and_survive_the_reader(solid):
    files, labels = solid
    reader = Reader(files, labels, batch_size=8, image_size=16, num_threads=2)
    images, batch_labels = next(reader)
    assert not images.flags.owndata and images.base is not None  # no copy was made
    assert images.dtype == np.uint8 and batch_labels.dtype == np.int32
    kept = images.copy()
    for _ in range(10):  # recycle buffers: the held batch must not be overwritten
        next(reader)
    np.testing.assert_array_equal(images, kept)
    reader.close()
    del reader
    gc.collect()
    np.testing.assert_array_equal(images, kept)


def truncated(data):
    return data[: len(data) // 3]


def huge_header(data, width=20000, height=20000):
    """Patches the SOF0 marker of a baseline JPEG to claim another size."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9:]


def salted_dataset(root):
    files, labels = solid_dataset(root, count=24)
    good = (root / "img_000.jpg").read_bytes()
    bad = {
        "truncated.jpg": truncated(encode_jpeg(smooth_rgb(200, 200), kind="420")),
        "empty.jpg": b"",
        "png.jpg": b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
        "text.jpg": b"this is not a picture\n",
        "huge.jpg": huge_header(good),
    }
    for name, data in bad.items():
        (root / name).write_bytes(data)
    bad_paths = [str(root / name) for name in bad] + [str(root / "missing.jpg")]
    return files + bad_paths, labels + [9] * len(bad_paths), bad_paths


def test_bad_files_are_skipped_counted_and_reported(tmp_path):
    files, labels, bad_paths = salted_dataset(tmp_path / "salted")
    with Reader(files, labels, batch_size=6, image_size=16, num_threads=2, num_epochs=2) as reader:
        batches = list(reader)
        summary = reader.summary()
    assert all(len(images) == 6 for images, _ in batches)  # 30 files: batches stay full
    for images, batch_labels in batches:
        assert 9 not in batch_labels.tolist()  # every slot holds a good image and its label
        for index, label in zip(identify(images), batch_labels.tolist()):
            assert label == index % 3
    assert summary.bad_files == 6 and summary.failed_reads == 12  # each bad file once an epoch
    assert summary.images_decoded == 2 * 24
    reasons = dict(summary.first_bad_files)
    assert set(reasons) == set(bad_paths)
    assert "Premature end" in reasons[bad_paths[0]]
    assert "empty" in reasons[bad_paths[1]]
    assert "Not a JPEG file" in reasons[bad_paths[2]] and "Not a JPEG file" in reasons[bad_paths[3]]
    assert "over the limit" in reasons[bad_paths[4]]
    assert "No such file" in reasons[bad_paths[5]]


def test_fail_fast_names_the_file_and_the_reason(tmp_path):
    files, labels, bad_paths = salted_dataset(tmp_path / "salted")
    with Reader(files, labels, batch_size=6, image_size=16, skip_bad_files=False) as reader:
        with pytest.raises(RuntimeError, match=r"Error in thread \d+: .*\.jpg: "):
            for _ in reader:
                pass


def test_pixel_limit_is_configurable(tmp_path):
    files, labels = solid_dataset(tmp_path / "solid", count=4)  # 30..57 x 40..84 px
    with Reader(files, labels, batch_size=4, image_size=8, max_pixels=30 * 40,
                skip_bad_files=False) as reader:
        with pytest.raises(RuntimeError, match="over the limit of 1200"):
            next(reader)


def test_all_bad_batch_is_an_error(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"nope")
    with Reader([str(path)] * 3, [0] * 3, batch_size=3, image_size=8) as reader:
        with pytest.raises(RuntimeError, match="every image of batch 0 of epoch 0 failed"):
            next(reader)


@pytest.fixture
def slow_files(tmp_path):
    """One big JPEG listed many times: a batch takes seconds to decode on one thread."""
    path = tmp_path / "big.jpg"
    path.write_bytes(encode_jpeg(smooth_rgb(1600, 1600), quality=95, kind="444"))
    return [str(path)] * 64


def test_python_threads_run_while_next_waits(slow_files):
    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    # The whole list in one batch: ~0.4 s on one thread of a 2024 Xeon (16 images were 0.09 s,
    # too close to the 0.1 s this test needs).
    with Reader(slow_files, [0] * 64, batch_size=64, image_size=224, num_threads=1,
                use_dct_scaling=False) as reader:
        spinner = threading.Thread(target=spin)
        spinner.start()
        start = time.perf_counter()
        next(reader)
        end = time.perf_counter()
        stop.set()
        spinner.join()
    during = [t for t in ticks if start < t < end]
    assert end - start > 0.1
    assert len(during) >= 20  # the spinner kept ticking (it would be stuck if we held the GIL)


@pytest.fixture
def python_ctrl_c():
    """Python's own SIGINT handler for the test: something earlier in the same pytest process
    (once seen in the full suite, not reproduced alone) can leave another one installed, and
    then SIGINT raises nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_interrupts_a_waiting_next(slow_files, python_ctrl_c):
    main = threading.get_ident()
    timer = threading.Timer(0.3, lambda: signal.pthread_kill(main, signal.SIGINT))
    # 256 images in one batch: 1.2 s on one thread of a 2026 Xeon with AMX, whose 64 took 0.30 s
    # and so sometimes finished before the signal, which then hit pytest itself.
    files = slow_files * 4
    with Reader(files, [0] * len(files), batch_size=len(files), image_size=224, num_threads=1,
                use_dct_scaling=False) as reader:
        start = time.perf_counter()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            next(reader)
        interrupted_after = time.perf_counter() - start
        close_start = time.perf_counter()
    timer.join()
    assert interrupted_after < 2.0  # a whole batch takes several seconds
    assert time.perf_counter() - close_start < 2.0  # closing does not wait for the batch


@pytest.mark.slow
def test_close_and_delete_never_hang(slow_files):
    for _ in range(3):
        reader = Reader(slow_files, [0] * 64, batch_size=64, image_size=224, num_threads=2)
        start = time.perf_counter()
        del reader
        gc.collect()
        assert time.perf_counter() - start < 2.0
    reader = Reader(slow_files, [0] * 64, batch_size=8, image_size=224, num_threads=2)
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        next(reader)


def test_bad_arguments_name_the_option(solid):
    files, labels = solid
    with pytest.raises(ValueError, match="batch_size"):
        Reader(files, labels, batch_size=0)
    with pytest.raises(ValueError, match="layout"):
        Reader(files, labels, batch_size=2, layout="HWCN")
    with pytest.raises(ValueError, match="shard_index"):
        Reader(files, labels, batch_size=2, shard_index=3, num_shards=3)
    with pytest.raises(ValueError, match="area_range"):
        Reader(files, labels, batch_size=2, area_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="labels"):
        Reader(files, labels[:-1], batch_size=2)
    with pytest.raises(TypeError, match="unknown option"):
        Reader(files, labels, batch_size=2, shuffel=True)
    with pytest.raises(ValueError, match="drop_remainder leaves no batch"):
        Reader(files, labels, batch_size=64, drop_remainder=True)


def test_tf_data_bridge_gives_shapes_and_dtypes(small_dataset):
    import tensorflow as tf

    files, labels = small_dataset
    with Reader(files, labels, batch_size=8, image_size=24, num_epochs=1) as reader:
        dataset = reader.to_tf_dataset()
        batches = list(dataset)
    assert len(batches) == 5
    images, batch_labels = batches[0]
    assert images.dtype == tf.uint8 and images.shape == (8, 24, 24, 3)
    assert batch_labels.dtype == tf.int32 and batch_labels.shape == (8,)
    assert dataset.element_spec[0].shape.as_list() == [None, 24, 24, 3]


def test_start_batch_resumes_the_exact_stream(small_dataset):
    files, labels = small_dataset
    kwargs = dict(batch_size=6, image_size=24, seed=5, num_threads=2)
    with Reader(files, labels, **kwargs) as reader:
        full = [next(reader)[0].copy() for _ in range(12)]  # crosses an epoch boundary (7/epoch)
    with Reader(files, labels, start_batch=5, **kwargs) as reader:
        resumed = [next(reader)[0].copy() for _ in range(7)]
        assert (reader.epoch, reader.step) == (1, 4)
    for a, b in zip(full[5:], resumed):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- options object
def flat_options(options, prefix=""):
    """{"image.crop.area_min": 0.08, ...} over every bound field, nested ones included."""
    out = {}
    for name in type(options)._fields:
        value = getattr(options, name)
        if hasattr(type(value), "_fields"):
            out.update(flat_options(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


GEOMETRY_FIELDS = {
    "image.crop.area_min": geometry.TRAIN_AREA_RANGE[0],
    "image.crop.area_max": geometry.TRAIN_AREA_RANGE[1],
    "image.crop.aspect_min": geometry.TRAIN_ASPECT_RANGE[0],
    "image.crop.aspect_max": geometry.TRAIN_ASPECT_RANGE[1],
    "image.crop.max_attempts": geometry.TRAIN_CROP_MAX_ATTEMPTS,
    "image.eval_resize_ratio": geometry.EVAL_RESIZE_RATIO,
}


def test_python_defaults_are_the_cxx_defaults_and_the_geometry_is_geometry_py():
    cxx = flat_options(_reader.ReaderOptions())
    ours = flat_options(ReaderConfig(batch_size=cxx["batch_size"], num_threads=cxx["num_threads"],
                                     prefetch=cxx["prefetch"]).resolved().to_options())
    assert set(ours) == set(cxx)
    for name, value in GEOMETRY_FIELDS.items():
        # C++ leaves the geometry unset (NaN / 0: refused), so there is no second copy of it.
        assert ours.pop(name) == value, name
        assert math.isnan(cxx.pop(name)) if isinstance(value, float) else cxx.pop(name) == 0
    # The build's identity (a cache file's key) is Python's to compute; C++ leaves it empty.
    assert ours.pop("cache.version") == build_identity() and cxx.pop("cache.version") == ""
    # The IDCT is chosen per mode in Python (next test); C++'s own default is the accurate one.
    assert ours.pop("decoder.fast_idct") is True and cxx.pop("decoder.fast_idct") is False
    assert ours == cxx


def test_the_idct_is_tfs_fast_one_for_training_and_the_accurate_one_for_evaluation():
    # Evaluation decodes as the exported model does (INTEGER_ACCURATE); training crops as
    # tf.data's default does (INTEGER_FAST). A given value always wins.
    def chosen(**fields):
        return ReaderConfig(batch_size=2, **fields).resolved().fast_idct

    assert chosen(training=True) is True and chosen(training=False) is False
    assert chosen(training=True, fast_idct=False) is False
    assert chosen(training=False, fast_idct=True) is True


# ReaderConfig field -> (a non-default value, {C++ field: what it must become}).
FIELD_CHANGES = {
    "batch_size": (5, {"batch_size": 5}),
    "image_size": (32, {"image.image_size": 32}),
    # Evaluation also switches to the accurate IDCT (fast_idct=None resolves per mode).
    "training": (False, {"image.training": False, "decoder.fast_idct": False}),
    "shuffle": (False, {"shuffle": False}),
    "num_threads": (3, {"num_threads": 3}),
    "layout": ("NCHW", {"image.layout": "NCHW"}),
    "seed": (7, {"seed": 7}),
    "prefetch": (5, {"prefetch": 5}),
    "shard_index": (2, {"shard_index": 2}),
    "num_shards": (4, {"num_shards": 4}),
    "drop_remainder": (True, {"drop_remainder": True}),
    "num_epochs": (3, {"num_epochs": 3}),
    "start_batch": (9, {"start_batch": 9}),
    "area_range": ((0.5, 0.9), {"image.crop.area_min": 0.5, "image.crop.area_max": 0.9}),
    "aspect_range": ((0.9, 1.1), {"image.crop.aspect_min": 0.9, "image.crop.aspect_max": 1.1}),
    "random_flip": (False, {"image.random_flip": False}),
    "eval_resize_ratio": (1.25, {"image.eval_resize_ratio": 1.25}),
    "use_dct_scaling": (False, {"image.use_dct_scaling": False}),
    "dct_scales": ((8,), {"decoder.dct_scales": [8]}),
    "fast_idct": (False, {"decoder.fast_idct": False}),  # training resolves None to True
    "fancy_upsampling": (False, {"decoder.fancy_upsampling": False}),
    "skip_rows_below_crop": (False, {"decoder.skip_rows_below_crop": False}),
    "max_pixels": (1000, {"decoder.max_pixels": 1000}),
    "skip_bad_files": (False, {"skip_bad_files": False}),
    "fill_bad_slots": (False, {"fill_bad_slots": False}),
    "cache": ("memory", {"cache.location": "memory"}),
    "cache_short_side": (200, {"cache.short_side": 200}),
    "cache_max_bytes": (5, {"cache.max_bytes": 5}),
}


def test_every_config_field_reaches_its_cxx_field_and_only_that():
    assert set(FIELD_CHANGES) == {field.name for field in dataclasses.fields(ReaderConfig)}
    base_config = dict(batch_size=4, num_threads=2, prefetch=3, shuffle=True, num_shards=3,
                       cache_short_side=100, cache_max_bytes=10**9)
    base = flat_options(ReaderConfig(**base_config).resolved().to_options())
    for field, (value, expected) in FIELD_CHANGES.items():
        changed = flat_options(ReaderConfig(**{**base_config, field: value}).resolved().to_options())
        differ = {name: changed[name] for name in base if changed[name] != base[name]}
        assert differ == expected, field


def test_a_misnamed_or_wrongly_typed_option_is_an_error(solid):
    with pytest.raises(TypeError, match="ReaderOptions: unknown option 'shufle'"):
        _reader.ReaderOptions(shufle=True)
    with pytest.raises(TypeError, match="batch_size='8' has the wrong type: expected int"):
        _reader.ReaderOptions(batch_size="8")
    with pytest.raises(TypeError, match="max_pixels=1.5 has the wrong type"):
        _reader.DecoderOptions(max_pixels=1.5)
    with pytest.raises(TypeError, match="training='no' has the wrong type: expected bool"):
        _reader.ImageOptions(training="no")
    with pytest.raises(TypeError, match="crop=.* has the wrong type: expected CropOptions"):
        _reader.ImageOptions(crop={"area_min": 0.5})
    with pytest.raises(TypeError):  # keyword only: two swapped positional flags cannot happen
        _reader.DecoderOptions(True, False)
    with pytest.raises(AttributeError):
        _reader.ReaderOptions().shufle = True
    with pytest.raises(ValueError, match="dct_scales must be a non-empty subset of 1..8"):
        _reader.DecoderOptions(dct_scales=[0, 4])
    with pytest.raises(ValueError, match="layout must be 'NHWC' or 'NCHW'"):
        _reader.ImageOptions(layout="HWCN")
    # Through the Python front end: the config's own checks name the field first.
    files, labels = solid
    with pytest.raises(ValueError, match="shuffle='yes'"):
        Reader(files, labels, batch_size=2, shuffle="yes")
    with pytest.raises(ValueError, match="image_size=24.0"):
        Reader(files, labels, batch_size=2, image_size=24.0)
    # Options straight to the C++ reader with the geometry left unset: refused, not defaulted.
    with pytest.raises(ValueError, match="area range .* flowers_tl.geometry"):
        _reader.BatchReader(files, labels, _reader.ReaderOptions(batch_size=2))


def test_options_repr_names_every_field():
    options = ReaderConfig(batch_size=3, num_threads=1).resolved().to_options()
    text = repr(options)
    assert text.startswith("ReaderOptions(batch_size=3, ")
    for name, value in flat_options(options).items():
        assert f"{name.rpartition('.')[2]}={value!r}" in text, name
    assert options == ReaderConfig(batch_size=3, num_threads=1).resolved().to_options()
    assert options != _reader.ReaderOptions(batch_size=3)
