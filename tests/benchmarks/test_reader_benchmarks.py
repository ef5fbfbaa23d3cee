"""Reader benchmarks: full decode, decode-and-augment of one image, and batch throughput.

    pytest tests/benchmarks --benchmark-enable --benchmark-json=reader.json

Check, then time: each benchmark first compares its output with a reference, then measures.
Images/sec goes into extra_info. In the normal test run (--benchmark-disable) each body runs
once, as a test. The data are tf_flowers-like generated photos (240-500 px, some to ~1000).
"""
import os

import numpy as np
import pytest

from conftest import reference_decode
from flowers_tl import synth
from flowers_tl.data import list_folder
from flowers_tl.reader import Reader, augment, available_cores, decode_jpeg

PER_CLASS = int(os.environ.get("FLOWERS_TL_BENCH_PER_CLASS", "8"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_photos")
    synth.generate(root, classes=5, per_class=PER_CLASS, seed=0)
    dataset = list_folder(root)
    return dataset, [open(path, "rb").read() for path in dataset.files]


def test_full_decode(benchmark, photos):
    dataset, encoded = photos
    for data in encoded[:5]:
        np.testing.assert_array_equal(decode_jpeg(data), reference_decode(data))

    def decode_all():
        for data in encoded:
            decode_jpeg(data)

    benchmark(decode_all)
    seconds = benchmark.stats.stats.mean if benchmark.stats else None
    benchmark.extra_info.update(images=len(encoded), threads=1,
                                images_per_sec=len(encoded) / seconds if seconds else None,
                                config=dict(operation="full decode", threads=1,
                                            images=len(encoded), per_class=PER_CLASS))


def test_decode_and_augment_one_thread(benchmark, photos):
    dataset, encoded = photos
    for data in encoded[:5]:
        image = augment(data, 224, seed=1)
        assert image.shape == (224, 224, 3) and 20 < image.mean() < 235

    def augment_all():
        for index, data in enumerate(encoded):
            augment(data, 224, seed=index)

    benchmark(augment_all)
    seconds = benchmark.stats.stats.mean if benchmark.stats else None
    benchmark.extra_info.update(images=len(encoded), threads=1, image_size=224,
                                images_per_sec=len(encoded) / seconds if seconds else None,
                                config=dict(operation="decode + random-resized-crop + flip",
                                            threads=1, image_size=224, images=len(encoded),
                                            per_class=PER_CLASS))


@pytest.mark.parametrize("num_threads", sorted({1, 2, available_cores()}))
def test_batch_throughput(benchmark, photos, num_threads):
    dataset, _ = photos
    batch_size, batches = 32, 4
    reader = Reader(dataset.files, dataset.labels, batch_size=batch_size, image_size=224,
                    num_threads=num_threads, seed=0)
    images, labels = next(reader)  # check first: shape, labels, content
    assert images.shape == (batch_size, 224, 224, 3) and images.std() > 10
    assert set(labels.tolist()) <= set(range(len(dataset.class_names)))

    def read_batches():
        for _ in range(batches):
            next(reader)

    try:
        benchmark.pedantic(read_batches, rounds=5, warmup_rounds=1)
    finally:
        reader.close()
    seconds = benchmark.stats.stats.mean if benchmark.stats else None
    benchmark.extra_info.update(batch_size=batch_size, image_size=224, threads=num_threads,
                                images_per_sec=batch_size * batches / seconds if seconds else None,
                                config=dict(operation="Reader batches", batch_size=batch_size,
                                            image_size=224, threads=num_threads, training=True,
                                            batches_per_round=batches, per_class=PER_CLASS))
