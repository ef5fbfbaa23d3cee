"""Run configuration: defaults, the CPU preset, config files, flags, and the one-line errors."""
import json
import subprocess
import sys

import pytest

from flowers_tl import config as config_lib
from flowers_tl.config import (ConfigError, RunConfig, learning_rate_at, parse_lr_schedule,
                               parse_value, resolve, with_overrides)
from flowers_tl.presets import CPU_DEFAULT, PRESETS


def test_built_in_run_on_a_cpu_gets_the_cpu_preset_and_says_so():
    config = resolve({}, gpus_available=0)
    assert config.reader.image_size == CPU_DEFAULT.overrides["image_size"] == 64
    assert config.train.batch_size == 32 and config.model.batch_norm_momentum == 0.9
    assert config.model.data_format == "NHWC" and config.train.num_gpus == 0
    assert config.run.note.startswith("CPU-sized built-in run (no GPU, no --data_url): "
                                      "image_size=64, batch_size=32")
    assert "image_size" not in resolve({"image_size": 96}, gpus_available=0).run.note


def test_named_dataset_gets_the_recipe_defaults(tmp_path):
    checkpoint = tmp_path / "resnet_v1_50.ckpt"
    checkpoint.write_bytes(b"")  # fine-tuning (an empty folder: no step count, no BN rule)
    config = resolve({"data_url": str(tmp_path), "checkpoint_url": str(checkpoint)},
                     gpus_available=0)
    assert (config.reader.image_size, config.train.batch_size, config.train.epochs) == \
        (224, 64, 20)
    assert config.train.lr_schedule == "10:0.01,20:0.001" and config.run.note == ""
    assert config.train.target_metric == "val"  # the clock runs on held-out accuracy
    gpu = resolve({"data_url": str(tmp_path), "checkpoint_url": str(checkpoint),
                   "batch_size": 16}, gpus_available=4)
    assert gpu.train.num_gpus == 4 and gpu.model.data_format == "NCHW"
    assert gpu.train.lr_schedule == "10:0.01,20:0.001"  # global batch 64: the recipe's own


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"batch_size": 16, "precision": "fp16", "xla": True}))
    config = resolve({"batch_size": 8}, str(path), gpus_available=0)
    assert (config.train.batch_size, config.model.precision, config.model.xla) == \
        (8, "fp16", True)
    assert config.train.loss_scale == "dynamic"  # fp16's default
    own = tmp_path / "config.json"  # a run's own config.json is accepted too
    own.write_text(json.dumps({"config": {"train": {"seed": 3}}, "model": {}}))
    assert resolve({}, str(own), gpus_available=0).train.seed == 3


def test_nested_dotted_and_flat_keys_name_the_same_knob(tmp_path):
    nested, dotted, flat = (tmp_path / f"{name}.json" for name in ("nested", "dotted", "flat"))
    nested.write_text(json.dumps({"train": {"batch_size": 8}, "model": {"precision": "bf16"}}))
    dotted.write_text(json.dumps({"train.batch_size": 8, "model.precision": "bf16"}))
    flat.write_text(json.dumps({"batch_size": 8, "precision": "bf16"}))
    configs = [resolve({}, str(path), gpus_available=0) for path in (nested, dotted, flat)]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].train.batch_size == 8 and configs[0].model.precision == "bf16"
    assert resolve({"train.batch_size": "8"}, gpus_available=0) == \
        resolve({"batch_size": 8}, gpus_available=0)
    with pytest.raises(ConfigError) as error:
        resolve({"model.batch_size": 8}, gpus_available=0)
    assert str(error.value) == "flag: unknown key 'model.batch_size'"


def test_a_saved_configuration_round_trips(tmp_path):
    config = resolve({"precision": "fp16", "loss_scale": "1024", "xla": True}, gpus_available=0)
    path = tmp_path / "saved.json"
    path.write_text(config_lib.to_json(config))
    assert resolve({}, str(path), gpus_available=0) == config
    assert with_overrides(RunConfig(), config_lib.flat_dict(config)) == config


def test_one_value_parser_for_flags_files_and_the_sweep():
    assert [parse_value("xla", text) for text in ("true", "on", "1", "False", "no")] == \
        [True, True, True, False, False]
    assert parse_value("batch_size", "64") == 64 and parse_value("epochs", 3) == 3.0
    assert parse_value("reader_threads", "none") is None
    assert parse_value("checkpoint_url", "none") == "none"  # from scratch, not unset
    assert parse_value("loss_scale", 1024) == "1024"  # a JSON number for a text knob
    for name, value, message in (("xla", "maybe", "--xla 'maybe': expected true or false"),
                                 ("batch_size", 8.5, "--batch_size 8.5: expected int"),
                                 ("batch_size", True, "--batch_size True: expected int"),
                                 ("batch_size", None, "--batch_size: needs a value (int)")):
        with pytest.raises(ConfigError) as error:
            parse_value(name, value)
        assert str(error.value) == message


def test_every_knob_has_one_name_one_section_and_a_help_line():
    names = [name for name in config_lib.KNOBS]
    assert len(names) == len(set(names))
    for name, (section, field) in config_lib.KNOBS.items():
        assert section in config_lib.SECTIONS and field.metadata["help"]
    help_text = config_lib.build_parser().format_help()
    assert "--batch_norm_fused" in help_text and "--fused_batch_norm" not in help_text


def test_presets_are_one_registry_and_their_keys_are_knobs():
    assert {"cpu-default", "builtin-source", "smoke", "cpu", "gpu"} <= set(PRESETS)
    for preset in PRESETS.values():
        for key in preset.overrides:
            config_lib.knob_name(key)  # raises for a key that is not a knob
        assert preset.doc and "img/s" not in preset.doc  # runbooks, not pasted figures


def test_loading_and_checking_a_configuration_imports_no_tensorflow(tmp_path):
    code = ("import sys, flowers_tl.config as c; c.resolve({'batch_size': 8}, "
            "gpus_available=0); assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


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
    ({"image_size": 16}, "--image_size 16: ResNet-50 needs 32 to 1024 px"),
    ({"image_size": 4096}, "--image_size 4096: ResNet-50 needs 32 to 1024 px"),
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
    with pytest.raises(ConfigError) as error:
        resolve({}, str(path), gpus_available=0)
    assert str(error.value) == f"--config {path}: unknown key 'learning_rate'"


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


# ------------------------------------------------------------------ every check, one line each
# (given flags, GPUs on the machine, the exact error). One case per branch of config.check that
# the table above does not already cover; "{tmp}" is an existing empty folder.
EVERY_CHECK = [
    ({"num_gpus": -1}, 0, "--num_gpus -1: this machine has 0 GPU(s)"),
    ({"cpu_devices": 0}, 0, "--cpu_devices 0: needs >= 1, and only without GPUs"),
    ({"cpu_devices": 2, "num_gpus": 1}, 1, "--cpu_devices 2: needs >= 1, and only without GPUs"),
    ({"data_format": "NHCW"}, 0, "--data_format NHCW: one of ('NHWC', 'NCHW')"),
    ({"variant": "vgg"}, 0, "--variant vgg: one of ('slim', 'keras')"),
    ({"precision": "fp16", "loss_scale": "0"}, 0, "--loss_scale 0: must be a finite number > 0"),
    ({"precision": "fp16", "loss_scale": "-8"}, 0, "--loss_scale -8: must be a finite number > 0"),
    ({"batch_size": 0}, 0, "--batch_size 0: must be >= 1"),
    ({"image_size": 0}, 0, "--image_size 0: must be >= 1"),
    ({"log_every": 0}, 0, "--log_every 0: must be >= 1"),
    ({"epochs": 0.0}, 0, "--epochs 0.0: must be > 0"),
    ({"epochs": float("nan")}, 0, "--epochs nan: must be > 0"),
    ({"lr_schedule": "0:0.1"}, 0, "--lr_schedule '0:0.1': epochs must be positive and increasing"),
    ({"lr_schedule": "10:-0.1"}, 0, "--lr_schedule '10:-0.1': learning rates must be >= 0"),
    ({"momentum": 1.0}, 0, "--momentum 1.0: must be in [0, 1)"),
    ({"momentum": -0.5}, 0, "--momentum -0.5: must be in [0, 1)"),
    ({"batch_norm_momentum": -0.1}, 0, "--batch_norm_momentum -0.1: must be in [0, 1)"),
    ({"crop_area_min": 1.5}, 0, "--crop_area_min 1.5: must be in (0, 1]"),
    ({"weight_decay": -1.0}, 0, "--weight_decay -1.0: must be >= 0"),
    ({"target_accuracy": 0.0}, 0, "--target_accuracy 0.0: must be in (0, 1]"),
    ({"target_accuracy": 1.5}, 0, "--target_accuracy 1.5: must be in (0, 1]"),
    ({"target_metric": "test"}, 0, "--target_metric test: one of ('train', 'val')"),
    ({"val_fraction": 1.0}, 0, "--val_fraction 1.0: must be in [0, 1)"),
    ({"val_fraction": -0.1}, 0, "--val_fraction -0.1: must be in [0, 1)"),
    ({"reader_threads": 0}, 0, "--reader_threads 0: must be >= 1"),
    ({"reader_cache": "memory", "input": "tfdata"}, 0, "--reader_cache memory: only the C++ "
     "reader caches (--input is tfdata); a folder would still serve the held-out evaluation"),
    ({"cache_short_side": 300}, 0, "--cache_short_side 300: needs --reader_cache or --input "
     "cxx-cache"),
    ({"cache_short_side": 100, "input": "cxx-cache", "image_size": 224}, 0,
     "--cache_short_side 100: must be >= --image_size 224 (every crop would be upsampled from "
     "the cache)"),
    ({"max_steps": 0}, 0, "--max_steps 0: must be >= 1"),
    ({"per_class": 1}, 0, "--per_class 1: only for the built-in data, and >= 2"),
    ({"per_class": 10, "data_url": "{tmp}", "checkpoint_url": "none"}, 0,
     "--per_class 10: only for the built-in data, and >= 2"),
]

# Values that once got through config.check and failed later (a NaN rate, a Reader error after
# the model was built) or silently did something else.
LATE_FAILURES = [
    ({"seed": -1}, "--seed"),  # the Reader refuses it after the model is built
    ({"seed": 2 ** 64}, "--seed"),
    ({"checkpoint_every_steps": -1}, "--checkpoint_every_steps"),  # saves every step
    ({"checkpoint_every_minutes": -1.0}, "--checkpoint_every_minutes"),  # saves every step
    ({"warmup_steps": -1}, "--warmup_steps"),
    ({"lr_schedule": "nan:0.1"}, "--lr_schedule"),
    ({"lr_schedule": "10:nan"}, "--lr_schedule"),  # NaN rate: the first step is non-finite
    ({"momentum": float("nan")}, "--momentum"),  # NaN fails every comparison in the check
    ({"weight_decay": float("nan")}, "--weight_decay"),
    ({"warmup_epochs": float("nan")}, "--warmup_epochs"),
    ({"precision": "fp16", "loss_scale": "inf"}, "--loss_scale"),
    ({"checkpoint_exclude_patterns": "("}, "--checkpoint_exclude_patterns"),  # a ValueError
]


@pytest.mark.parametrize("given, gpus, message", EVERY_CHECK,
                         ids=[" ".join(f"{k}={v}" for k, v in g.items()) for g, _, _ in EVERY_CHECK])
def test_every_check_is_one_exact_line(given, gpus, message, tmp_path):
    given = {key: str(tmp_path) if value == "{tmp}" else value for key, value in given.items()}
    with pytest.raises(ConfigError) as error:
        resolve(given, gpus_available=gpus)
    assert str(error.value) == message


def test_a_reader_cache_folder_is_created_or_refused_in_one_line(tmp_path):
    folder = tmp_path / "cache" / "reader"
    config = resolve({"reader_cache": str(folder), "input": "cxx-cache"}, gpus_available=0)
    assert folder.is_dir() and config.reader.reader_cache == str(folder)
    assert resolve({"reader_cache": "none"}, gpus_available=0).reader.reader_cache is None
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError) as error:
        resolve({"reader_cache": str(tmp_path / "file" / "cache")}, gpus_available=0)
    assert str(error.value) == (f"--reader_cache {tmp_path}/file/cache: cannot create the "
                                "folder: Not a directory")


@pytest.mark.parametrize("given, flag", [
    pytest.param(given, flag, id=" ".join(f"{k}={v}" for k, v in given.items()))
    for given, flag in LATE_FAILURES])
def test_values_that_used_to_fail_late_are_refused_up_front(given, flag):
    with pytest.raises(ConfigError, match=f"^{flag} ") as error:
        resolve(given, gpus_available=0)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    (None, "cannot read: No such file or directory"),
    ("{not json", "not JSON: Expecting property name enclosed in double quotes: line 1 column 2 "
                  "(char 1)"),
    ("[1, 2]", "expected a JSON object of training options"),
])
def test_bad_config_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "tuned.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as error:
        resolve({}, str(path), gpus_available=0)
    assert str(error.value) == f"--config {path}: {message}"


@pytest.mark.parametrize("flags, message", [
    (["--config", "{tmp}/missing.json"],
     "--config {tmp}/missing.json: cannot read: No such file or directory"),
    (["--crop_area_min", "0"], "--crop_area_min 0.0: must be in (0, 1]"),
    (["--xla", "maybe"], "--xla 'maybe': expected true or false"),
])
def test_cli_config_errors_exit_2_before_any_work(tmp_path, capsys, flags, message):
    """The CLI entry point in process (test_cli_errors_are_one_line_with_status_2 shows the
    SystemExit becomes the process status): status 2, one line, no run folder made."""
    from flowers_tl import train

    url = tmp_path / "run"
    flags = [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--train_url", str(url), *flags])
    assert exit_info.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[-1].endswith(message.replace("{tmp}", str(tmp_path)))
    assert errors[-1].startswith(("flowers_tl.train: error: ",
                                  "python -m flowers_tl.train: error: "))  # argparse's prog
    assert not url.exists()


def test_a_batch_larger_than_the_data_is_one_line_before_the_model_is_built(tmp_path, capsys):
    """A combination only the data can refute: caught after listing it, before any model."""
    import time

    import numpy as np
    from PIL import Image

    from flowers_tl import train

    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(
                tmp_path / "data" / name / f"{index}.jpg")
    start = time.time()
    code = train.main(["--data_url", str(tmp_path / "data"), "--train_url", str(tmp_path / "run"),
                       "--checkpoint_url", "none", "--batch_size", "8", "--val_fraction", "0"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "flowers_tl.train: error: 6 training images are less than one global batch of 8")
    assert time.time() - start < 10  # building ResNet-50 alone takes longer


def test_the_cli_refuses_a_bad_command_line_before_importing_tensorflow():
    code = ("import runpy, sys\n"
            "sys.argv = ['flowers_tl.train', '--batch_size', 'eight']\n"
            "try:\n"
            "    runpy.run_module('flowers_tl.train', run_name='__main__')\n"
            "except SystemExit as stop:\n"
            "    print(stop.code, 'tensorflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert result.stderr.strip() == "flowers_tl.train: error: --batch_size 'eight': expected int"
