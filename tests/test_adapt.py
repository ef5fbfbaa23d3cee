"""Defaults that fit the run (flowers_tl.adapt): each rule's chosen value and printed reason,
and that a value the user or a preset gave always wins. Configuration only: no TensorFlow."""
import pytest

from flowers_tl.config import ConfigError, resolve
from flowers_tl.evaluation import split_warnings


def folder_of(root, classes=10, per_class=180):
    """A class-per-folder tree of empty .jpg files: listing and splitting need no pixels."""
    for label in range(classes):
        (root / f"c{label}").mkdir(parents=True)
        for index in range(per_class):
            (root / f"c{label}" / f"{index:04d}.jpg").write_bytes(b"")
    return str(root)


def checkpoint(root):
    """A pretrained checkpoint's path (fine-tuning); its contents do not matter here."""
    path = root / "resnet_v1_50.ckpt"
    path.write_bytes(b"")
    return str(path)


def reasons(config):
    return {part.split(":", 1)[0].split("=")[0]: part for part in config.run.note.split("; ")}


def test_from_scratch_starts_residual_branches_at_zero_and_warms_up(tmp_path):
    config = resolve({"data_url": folder_of(tmp_path / "d"), "checkpoint_url": "none",
                      "epochs": 8}, gpus_available=0)
    assert config.model.zero_init_residual and config.train.warmup_epochs == 1.0
    said = reasons(config)
    assert said["zero_init_residual"].startswith("zero_init_residual=True: from scratch")
    assert said["warmup_epochs"] == ("warmup_epochs=1.0: from scratch, the rate ramps up from "
                                     "0 first")
    given = resolve({"data_url": folder_of(tmp_path / "e"), "checkpoint_url": "none",
                     "zero_init_residual": False, "warmup_epochs": 0.0}, gpus_available=0)
    assert not given.model.zero_init_residual and given.train.warmup_epochs == 0.0
    assert "zero_init_residual" not in reasons(given) and "warmup_epochs" not in reasons(given)


def test_from_scratch_without_a_schedule_gets_the_from_scratch_schedule_and_milder_crops(
        tmp_path):
    config = resolve({"data_url": folder_of(tmp_path / "d"), "checkpoint_url": "none",
                      "epochs": 8}, gpus_available=0)
    assert (config.train.lr_schedule, config.train.lr_schedule_shape) == ("8:0.1", "cosine")
    assert config.reader.crop_area_min == 0.8
    said = reasons(config)
    assert said["lr_schedule"] == ("lr_schedule=8:0.1: from scratch, 0.1 per 64 images over "
                                   "the run, not the fine-tuning recipe's rates")
    assert said["lr_schedule_shape"].startswith("lr_schedule_shape=cosine: from scratch")
    assert said["crop_area_min"].startswith("crop_area_min=0.8: from scratch in under 30")
    half = resolve({"data_url": config.data.data_url, "checkpoint_url": "none", "epochs": 8,
                    "batch_size": 32}, gpus_available=0)
    assert half.train.lr_schedule == "8:0.05"  # linear scaling applies to it too
    long = resolve({"data_url": config.data.data_url, "checkpoint_url": "none", "epochs": 40},
                   gpus_available=0)
    assert long.reader.crop_area_min == 0.08  # 40 epochs: the recipe's crops
    given = resolve({"data_url": config.data.data_url, "checkpoint_url": "none", "epochs": 8,
                     "lr_schedule": "4:0.01,8:0.001", "lr_schedule_shape": "step",
                     "crop_area_min": 0.08}, gpus_available=0)
    assert (given.train.lr_schedule, given.train.lr_schedule_shape,
            given.reader.crop_area_min) == ("4:0.01,8:0.001", "step", 0.08)


def test_epochs_without_a_schedule_stretch_the_schedule(tmp_path):
    config = resolve({"data_url": folder_of(tmp_path / "d"),
                      "checkpoint_url": checkpoint(tmp_path), "epochs": 8}, gpus_available=0)
    assert config.train.lr_schedule == "4:0.01,8:0.001"
    assert reasons(config)["lr_schedule"] == ("lr_schedule=4:0.01,8:0.001: the schedule "
                                              "stretched from 20 to the run's 8 epochs, so it "
                                              "still decays")
    given = resolve({"data_url": folder_of(tmp_path / "e"),
                     "checkpoint_url": checkpoint(tmp_path), "epochs": 8,
                     "lr_schedule": "10:0.1"}, gpus_available=0)
    assert given.train.lr_schedule == "10:0.1"  # as given, even if it outlasts the run


def test_rates_follow_the_global_batch_by_the_linear_scaling_rule(tmp_path):
    data, pretrained = folder_of(tmp_path / "d"), checkpoint(tmp_path)
    small = resolve({"data_url": data, "checkpoint_url": pretrained, "batch_size": 32},
                    gpus_available=0)
    assert small.train.lr_schedule == "10:0.005,20:0.0005"
    assert reasons(small)["lr_schedule"].endswith("rates scaled x0.5 from global batch 64 to 32 "
                                                  "(linear scaling rule)")
    four = resolve({"data_url": data, "checkpoint_url": pretrained, "batch_size": 32,
                    "cpu_devices": 4}, gpus_available=0)  # global batch 128
    assert four.train.lr_schedule == "10:0.02,20:0.002"
    assert four.train.warmup_epochs == 2.0  # larger rate: a warm-up of epochs / 10
    assert reasons(four)["warmup_epochs"] == ("warmup_epochs=2.0: a larger scaled rate starts "
                                             "after a linear warm-up")
    reference = resolve({"data_url": data, "checkpoint_url": pretrained, "batch_size": 32,
                         "lr_reference_batch": 32}, gpus_available=0)
    assert reference.train.lr_schedule == "10:0.01,20:0.001"


def test_batch_norm_momentum_is_chosen_from_the_number_of_steps(tmp_path):
    # 10 classes x 180, 15% held out: 1,530 train images, 47 steps of 32, 8 epochs = 376 steps
    config = resolve({"data_url": folder_of(tmp_path / "d"), "checkpoint_url": "none",
                      "epochs": 8, "batch_size": 32, "val_fraction": 0.15}, gpus_available=0)
    from flowers_tl.data import list_folder, split
    train, _ = split(list_folder(config.data.data_url), 0.15, 0)
    steps = 8 * (len(train) // 32)
    expected = round(1 - 10 / steps, 3)
    assert config.model.batch_norm_momentum == expected
    assert expected ** steps < 1e-4 < 0.2 < 0.997 ** steps  # forgotten vs the checkpoint's
    assert reasons(config)["batch_norm_momentum"].startswith(
        f"batch_norm_momentum={expected}: {steps} steps: the moving averages keep")
    long = resolve({"data_url": config.data.data_url, "checkpoint_url": "none",
                    "epochs": 2000, "batch_size": 32}, gpus_available=0)
    assert long.model.batch_norm_momentum == 0.997  # thousands of steps: the checkpoint's
    given = resolve({"data_url": config.data.data_url, "checkpoint_url": "none",
                     "batch_norm_momentum": 0.5}, gpus_available=0)
    assert given.model.batch_norm_momentum == 0.5


def test_the_clock_runs_on_held_out_accuracy_unless_there_is_none(tmp_path):
    data = folder_of(tmp_path / "d")
    assert resolve({"data_url": data, "checkpoint_url": "none"},
                   gpus_available=0).train.target_metric == "val"
    none = resolve({"data_url": data, "checkpoint_url": "none", "val_fraction": 0.0},
                   gpus_available=0)
    assert none.train.target_metric == "train"
    assert reasons(none)["target_metric"] == ("target_metric=train: no held-out split "
                                              "(--val_fraction 0)")
    with pytest.raises(ConfigError, match="--target_metric val needs --val_fraction > 0"):
        resolve({"data_url": data, "checkpoint_url": "none", "val_fraction": 0.0,
                 "target_metric": "val"}, gpus_available=0)


def test_presets_win_over_the_rules():
    config = resolve({}, gpus_available=0)  # the cpu-default preset sets these itself
    assert config.model.batch_norm_momentum == 0.9
    assert config.train.lr_schedule == "8:0.02"
    assert config.train.lr_schedule_shape == "cosine"
    assert config.train.target_metric == "val"  # its held-out split resolves the target
    assert (config.data.per_class, config.data.val_fraction) == (400, 0.2)


def test_the_cpu_presets_schedule_follows_the_epochs_and_the_batch_given():
    # The preset's schedule is a base, like the recipe's: `--epochs 24` on the built-in run used
    # to keep "8:0.02", so 16 of its 24 epochs ran at a learning rate of 0.
    longer = resolve({"epochs": 24}, gpus_available=0)
    assert longer.train.lr_schedule == "24:0.02"
    assert reasons(longer)["lr_schedule"] == ("lr_schedule=24:0.02: rates scaled x0.5 from "
                                              "global batch 64 to 32 (linear scaling rule)")
    assert "lr_schedule=24:0.04: the schedule stretched from 8 to the run's 24 epochs" in \
        longer.run.note
    assert resolve({"batch_size": 64}, gpus_available=0).train.lr_schedule == "8:0.04"
    assert resolve({"lr_schedule": "8:0.03"}, gpus_available=0).train.lr_schedule == "8:0.03"
    # Every other preset value still wins over the rules (the batch-norm momentum rule would
    # pick another value for 24 epochs).
    assert longer.model.batch_norm_momentum == 0.9 and longer.reader.crop_area_min == 0.5


def test_a_held_out_split_too_small_for_the_target_says_so():
    config = resolve({"checkpoint_url": "none", "target_metric": "val"}, gpus_available=0)
    assert split_warnings(config, 250) == []
    (line,) = split_warnings(config, 46)
    assert line == ("held-out split: 46 images, too few to resolve a 95% target (accuracy "
                    "moves in steps of 2.2%; about 200 images allow 10 mistakes)")
    train_clock = resolve({"checkpoint_url": "none", "target_metric": "train"}, gpus_available=0)
    assert split_warnings(train_clock, 46) == []


@pytest.mark.parametrize("avx512_bf16,amx,expected", [
    (True, True, "precision=bf16: this CPU has AMX-BF16 matrix units and AVX512-BF16 "
                 "instructions and no GPU is used"),
    (True, False, "precision=bf16: this CPU has AVX512-BF16 instructions and no GPU is used"),
    (False, False, None),  # AVX2 / plain AVX-512: fp32
])
def test_bf16_by_default_only_on_a_cpu_with_bf16_units(tmp_path, monkeypatch, avx512_bf16, amx,
                                                       expected):
    import flowers_tl.env
    monkeypatch.setattr(flowers_tl.env, "cpu_features",
                        lambda: {"avx2": True, "avx512f": True, "avx512_bf16": avx512_bf16,
                                 "amx_bf16": amx})
    data = folder_of(tmp_path / "d")
    config = resolve({"data_url": data, "checkpoint_url": "none"}, gpus_available=0)
    assert config.model.precision == ("bf16" if expected else "fp32")
    said = reasons(config)
    if expected:
        assert said["precision"].startswith(expected)
    else:
        assert "precision" not in said
    for given in ({"precision": "fp32"}, {"precision": "fp16"}, {"xla": True},
                  {"precision": "fp16", "loss_scale": "1024"}):
        config = resolve({"data_url": data, "checkpoint_url": "none", **given}, gpus_available=0)
        assert config.model.precision == given.get("precision", "fp32")
        assert "precision" not in reasons(config)
    on_gpu = resolve({"data_url": data, "checkpoint_url": "none", "num_gpus": 1,
                      "data_format": "NHWC"}, gpus_available=1)
    assert on_gpu.model.precision == "fp32"
