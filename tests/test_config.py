"""Run configuration: defaults, the CPU preset, config files, flags, and the one-line errors."""
import json
import subprocess
import sys

import pytest

from flowers_tl.config import (CPU_DEFAULT, ConfigError, learning_rate_at, parse_lr_schedule,
                               resolve)


def test_built_in_run_on_a_cpu_gets_the_cpu_preset_and_says_so():
    config = resolve({}, gpus_available=0)
    assert config.image_size == CPU_DEFAULT["image_size"] and config.data_format == "NHWC"
    assert "CPU-sized" in config.note and config.num_gpus == 0


def test_named_dataset_gets_the_recipe_defaults(tmp_path):
    config = resolve({"data_url": str(tmp_path), "checkpoint_url": "none"}, gpus_available=0)
    assert (config.image_size, config.batch_size, config.epochs) == (224, 64, 20)
    assert config.lr_schedule == "10:0.01,20:0.001" and config.note == ""
    gpu = resolve({"data_url": str(tmp_path), "checkpoint_url": "none"}, gpus_available=4)
    assert gpu.num_gpus == 4 and gpu.data_format == "NCHW"


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"batch_size": 16, "precision": "fp16", "xla": True}))
    config = resolve({"batch_size": 8}, str(path), gpus_available=0)
    assert (config.batch_size, config.precision, config.xla) == (8, "fp16", True)
    assert config.loss_scale == "dynamic"  # fp16's default
    own = tmp_path / "config.json"  # a run's own config.json is accepted too
    own.write_text(json.dumps({"config": {"seed": 3}, "model": {}}))
    assert resolve({}, str(own), gpus_available=0).seed == 3


def test_warmup_ramps_the_rate_linearly_up_to_the_schedule():
    from flowers_tl.train import learning_rate_at_step
    schedule = parse_lr_schedule("10:0.02,20:0.002")
    rates = [learning_rate_at_step(schedule, step, 10, warmup_epochs=2) for step in range(25)]
    assert rates[:20] == pytest.approx([0.02 * (step + 1) / 20 for step in range(20)])
    assert rates[20:] == pytest.approx([0.02] * 5)
    assert learning_rate_at_step(schedule, 150, 10, warmup_epochs=2) == 0.002


def test_learning_rate_schedule_is_piecewise_by_epoch():
    schedule = parse_lr_schedule("10:0.01,20:0.001")
    assert [learning_rate_at(schedule, e) for e in (0, 9.99, 10, 19.5, 25)] == [
        0.01, 0.01, 0.001, 0.001, 0.001]


@pytest.mark.parametrize("given, message", [
    ({"precision": "fp32", "loss_scale": "1024"}, "--loss_scale 1024: only fp16"),
    ({"precision": "fp16", "loss_scale": "lots"}, "--loss_scale lots: a number"),
    ({"data_format": "NCHW"}, "--data_format NCHW on a CPU needs --xla true"),
    ({"num_gpus": 2}, "--num_gpus 2: this machine has 0 GPU(s)"),
    ({"lr_schedule": "10:0.01,5:0.1"}, "increasing"),
    ({"lr_schedule": "ten"}, "epoch:lr pairs"),
    ({"target_metric": "val", "val_fraction": 0.0}, "--target_metric val needs"),
    ({"data_url": "/no/such/folder"}, "--data_url /no/such/folder: no such folder"),
    ({"checkpoint_url": "/no/such.ckpt"}, "--checkpoint_url /no/such.ckpt: no such"),
    ({"precision": "fp64"}, "--precision fp64"),
    ({"image_size": 16}, "at least 32 px"),
    ({"input": "pil"}, "--input pil"),
    ({"crop_area_min": 0.0}, "--crop_area_min 0.0: must be in"),
    ({"batch_norm_momentum": 1.0}, "--batch_norm_momentum 1.0: must be in"),
    ({"warmup_epochs": -1.0}, "--warmup_epochs -1.0: must be >= 0"),
])
def test_impossible_settings_are_one_line_errors(given, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        resolve(given, gpus_available=0)
    assert "\n" not in str(error.value)


def test_named_dataset_without_a_checkpoint_asks_for_one(tmp_path):
    with pytest.raises(ConfigError, match="--checkpoint_url: name the pretrained checkpoint"):
        resolve({"data_url": str(tmp_path)}, gpus_available=0)


def test_unknown_config_file_keys_are_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"batch_size": 8, "learning_rate": 0.1}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        resolve({}, str(path), gpus_available=0)


def test_cli_errors_are_one_line_with_status_2():
    result = subprocess.run([sys.executable, "-m", "flowers_tl.train", "--precision", "fp32",
                             "--loss_scale", "1024"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("flowers_tl.train")]
    assert errors == ["flowers_tl.train: error: --loss_scale 1024: only fp16 needs a loss scale "
                      "(precision is fp32)"]
    result = subprocess.run([sys.executable, "-m", "flowers_tl.train", "--no_such_flag", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unrecognized arguments: --no_such_flag" in result.stderr
