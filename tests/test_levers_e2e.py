"""The recipe levers in whole training runs (subprocesses, tiny generated data, 32-48 px, a
handful of steps): progressive resizing's step rows and sizes; the weight average under two
mirrored devices, resumed, evaluated and exported, with the evaluation size and the classifier's
rate on."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from flowers_tl import synth
from test_train import metrics, run, train_command

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("tiny") / "flowers", classes=3, per_class=12,
                          seed=0, max_side=96)


def checkpoint_tensors(url, moving_average=False):
    from flowers_tl.checkpoint import read_weights

    return read_weights(os.path.join(url, "checkpoints"), moving_average)[1]


def test_progressive_resizing_trains_at_the_staircase_sizes_and_says_so(tiny_data, tmp_path):
    url = tmp_path / "progressive"
    # 29 training images, batch 8: 3 steps an epoch; 2 epochs, full size from epoch 1
    code, output = run(train_command(tiny_data, url, "--image_size", "48",
                                     "--progressive_min_size", "32", "--progressive_until", "0.5",
                                     "--epochs", "2", "--val_fraction", "0.2",
                                     "--lr_schedule", "2:0.01"))
    assert code == 0, output[-3000:]
    rows = metrics(url, "step")
    assert [row["image_size"] for row in rows] == [32] * 3 + [48] * 3
    # each new size traces the step anew: its first --warmup_steps (1) are warm-up again
    assert [row["warmup"] for row in rows] == [True, False, False, True, False, False]
    assert "progressive resizing: 32 px from step 0, 48 px from step 3" in output
    saved = json.load(open(url / "config.json"))
    assert (saved["config"]["reader"]["progressive_min_size"],
            saved["config"]["reader"]["progressive_until"]) == (32, 0.5)
    assert saved["image_size"] == saved["eval_image_size"] == 48
    assert all(row["val_accuracy"] is not None for row in metrics(url, "epoch"))


def test_weight_average_resumes_evaluates_and_exports_on_two_mirrored_devices(tiny_data,
                                                                             tmp_path):
    """Two logical CPUs (per-replica batch-norm statistics, mirrored shadows), the classifier
    at 10x the rate. One run of 4 steps evaluated and exported at 40 px; another of 2 steps,
    resumed to 4 at the training size. Evaluation changes no training, and a resume continues
    the average: the two end with the same weights and the same shadows."""
    common = ["--ema_decay", "0.9", "--cpu_devices", "2", "--batch_size", "4",
              "--val_fraction", "0.2", "--checkpoint_every_steps", "1", "--lr_schedule", "1:0.01",
              "--classifier_lr_multiplier", "10"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    code, output = run(train_command(tiny_data, whole, *common, "--max_steps", "4",
                                     "--eval_image_size", "40", "--export", "true"))
    assert code == 0, output[-3000:]
    assert "weight average: decay 0.9" in output
    assert "classifier learning rate x10: resnet_v1_50/logits/weights, " \
           "resnet_v1_50/logits/biases" in output
    assert "held-out evaluation and export at 40 px (training at 32 px)" in output
    for steps in (2, 4):
        code, output = run(train_command(tiny_data, resumed, *common, "--max_steps", steps))
        assert code == 0, output[-3000:]
    assert "resumed from" in output

    weights, shadows = checkpoint_tensors(whole), checkpoint_tensors(whole, moving_average=True)
    resumed_weights = checkpoint_tensors(resumed)
    resumed_shadows = checkpoint_tensors(resumed, moving_average=True)
    assert shadows.keys() == weights.keys()
    for name in weights:
        # Same processes' arithmetic on the same batches: equal but for float32 summation
        # order across the two replicas (measured: identical on one machine).
        np.testing.assert_allclose(resumed_weights[name], weights[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        np.testing.assert_allclose(resumed_shadows[name], shadows[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(whole / "checkpoints"))
    assert int(reader.get_tensor("ema/updates/.ATTRIBUTES/VARIABLE_VALUE")) == 4
    assert not np.allclose(shadows["resnet_v1_50/logits/weights"],
                           weights["resnet_v1_50/logits/weights"])

    # the export holds the average, at the evaluation size
    result = json.load(open(whole / "result.json"))
    exported = tf.saved_model.load(result["export"])
    for name, variable in exported.model.variables_by_name.items():
        np.testing.assert_array_equal(variable.numpy(), shadows[name], err_msg=name)
    assert exported.signatures["serving_default"].structured_input_signature[1][
        "images"].shape.as_list() == [None, 40, 40, 3]
    from flowers_tl.export import export_from_train_url
    again = tf.saved_model.load(export_from_train_url(str(whole), verify=False))
    np.testing.assert_array_equal(
        again.model.variables_by_name["resnet_v1_50/logits/weights"].numpy(),
        shadows["resnet_v1_50/logits/weights"])
    info = json.load(open(os.path.join(result["export"], "assets", "export_info.json")))
    assert info["image_size"] == 40

    # the held-out accuracy the run logged is the average's, at 40 px
    from flowers_tl.checkpoint import restore_pretrained
    from flowers_tl.config import load_config_file, resolve
    from flowers_tl.data import list_folder, split
    from flowers_tl.evaluation import evaluate
    from flowers_tl.model import resnet_v1_50

    config = resolve(load_config_file(str(whole / "config.json")), gpus_available=0)
    _, val = split(list_folder(tiny_data), 0.2, 0)
    model = resnet_v1_50(3)
    restore_pretrained(model, whole / "checkpoints", (), moving_average=True)
    accuracy = evaluate(lambda images: tf.argmax(model(images), -1, output_type=tf.int32),
                        list(val.files), list(val.labels), config)
    assert metrics(whole, "epoch")[-1]["val_accuracy"] == accuracy
