"""Train-step benchmarks: the trainer's step vs Keras' ResNet50 train_on_batch (the anchor).

    pytest tests/benchmarks/test_step_benchmarks.py --benchmark-enable --benchmark-json=step.json

64 px, batch 8, fp32, NHWC, no XLA, one fixed random batch. `ours` is flowers_tl.step's
make_train_step built as flowers_tl.train builds it (make_strategy(0), its scope, the global
batch, distribute_batch each step), the step bench.step times too. Check, then time: the first
step (tracing included) must give a finite loss and change the weights; then the step is timed.
Images/sec and the FLOPs per image go into extra_info. In the normal test run
(--benchmark-disable) each body runs once, as a test (~10 s each, most of it tracing).
`python -m bench.step` is the full sweep, with the FLOP ceiling measured on the machine.
"""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from bench.step import train_gflop_per_image  # noqa: E402
from flowers_tl.config import ModelConfig  # noqa: E402
from flowers_tl.model import ResNet50  # noqa: E402
from flowers_tl.step import MomentumSGD, distribute_batch, make_strategy, make_train_step  # noqa: E402

pytestmark = pytest.mark.slow

IMAGE_SIZE, BATCH_SIZE, NUM_CLASSES = 64, 8, 5
FORWARD_GFLOP_224 = 8.2  # ResNet-50: 4.1 G multiply-adds at 224 px


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, BATCH_SIZE, dtype=np.int32)
    return images, labels


def _check_then_time(benchmark, run_step, read_weights, config):
    before = np.array(read_weights())
    assert np.isfinite(run_step())  # first step: traces, and must train
    assert not np.array_equal(np.array(read_weights()), before)
    benchmark.pedantic(run_step, rounds=5, warmup_rounds=1)
    seconds = benchmark.stats.stats.mean if benchmark.stats else None
    gflop = train_gflop_per_image(IMAGE_SIZE, FORWARD_GFLOP_224)
    rate = BATCH_SIZE / seconds if seconds else None
    benchmark.extra_info.update(
        batch_size=BATCH_SIZE, image_size=IMAGE_SIZE, precision="fp32",
        images_per_sec=rate, train_gflop_per_image=gflop,
        achieved_gflops=rate * gflop if rate else None,
        config=dict(config, batch_size=BATCH_SIZE, image_size=IMAGE_SIZE,
                    num_classes=NUM_CLASSES, precision="fp32", xla=False))


def test_our_train_step(benchmark, batch):
    strategy = make_strategy(0)  # as flowers_tl.train on a machine without GPUs
    model_config = ModelConfig(data_format="NHWC", batch_norm_fused=True)
    with strategy.scope():
        model = ResNet50(model_config, num_classes=NUM_CLASSES)
        step = make_train_step(model, MomentumSGD(0.01, momentum=0.9), strategy, BATCH_SIZE)
    weights = model.variables_by_name["resnet_v1_50/conv1/weights"]

    def run_step():  # float(): reading the loss back waits for the step to finish
        return float(step(*distribute_batch(strategy, *batch, BATCH_SIZE))["loss"])

    _check_then_time(benchmark, run_step, weights.numpy,
                     dict(model="ours", data_format="NHWC", batch_norm_fused=True))


def test_keras_train_on_batch(benchmark, batch):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, classes=NUM_CLASSES,
                                        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    kernel = model.get_layer("conv1_conv").kernel
    images, labels = (tf.constant(value) for value in batch)
    _check_then_time(benchmark, lambda: float(model.train_on_batch(images, labels)), kernel.numpy,
                     dict(model="keras", api="train_on_batch"))
