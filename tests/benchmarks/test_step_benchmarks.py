"""Train-step benchmarks: our ResNet-50 step vs Keras' ResNet50 train_on_batch (the anchor).

    pytest tests/benchmarks/test_step_benchmarks.py --benchmark-enable --benchmark-json=step.json

64 px, batch 8, fp32, NHWC, no XLA, one fixed random batch. Check, then time: the first step
(tracing included) must give a finite loss and change the weights; then the step is timed.
Images/sec goes into extra_info. In the normal test run (--benchmark-disable) each body runs
once, as a test (~10 s each, most of it tracing). `python -m bench.step` is the full sweep.
"""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from flowers_tl.model import resnet_v1_50  # noqa: E402
from flowers_tl.step import MomentumSGD, make_train_step  # noqa: E402

IMAGE_SIZE, BATCH_SIZE, NUM_CLASSES = 64, 8, 5


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, BATCH_SIZE, dtype=np.int32)
    return tf.constant(images), tf.constant(labels)


def _check_then_time(benchmark, run_step, read_weights, config):
    before = np.array(read_weights())
    assert np.isfinite(run_step())  # first step: traces, and must train
    assert not np.array_equal(np.array(read_weights()), before)
    benchmark.pedantic(run_step, rounds=5, warmup_rounds=1)
    seconds = benchmark.stats.stats.mean if benchmark.stats else None
    benchmark.extra_info.update(batch_size=BATCH_SIZE, image_size=IMAGE_SIZE, precision="fp32",
                                images_per_sec=BATCH_SIZE / seconds if seconds else None,
                                config=dict(config, batch_size=BATCH_SIZE, image_size=IMAGE_SIZE,
                                            num_classes=NUM_CLASSES, precision="fp32",
                                            xla=False))


def test_our_train_step(benchmark, batch):
    model = resnet_v1_50(NUM_CLASSES)
    step = make_train_step(model, MomentumSGD(0.01, momentum=0.9))
    weights = model.variables_by_name["resnet_v1_50/conv1/weights"]
    # float(): reading the loss back waits for the step to finish.
    _check_then_time(benchmark, lambda: float(step(*batch)["loss"]), weights.numpy,
                     dict(model="ours", data_format="NHWC", fused_batch_norm=True))


def test_keras_train_on_batch(benchmark, batch):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, classes=NUM_CLASSES,
                                        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    kernel = model.get_layer("conv1_conv").kernel
    _check_then_time(benchmark, lambda: float(model.train_on_batch(*batch)), kernel.numpy,
                     dict(model="keras", api="train_on_batch"))
