"""flowers_tl.builtin: the source task's configuration does not depend on the target run's
recipe (its checkpoint is cached by network and resolution only)."""
from flowers_tl import builtin
from flowers_tl.config import flat_dict, resolve
from flowers_tl.presets import BUILTIN_SOURCE


def test_source_recipe_is_pinned_whatever_the_target_run_sets(tmp_path):
    plain = resolve({}, gpus_available=0)
    busy = resolve({"label_smoothing": 0.2, "lr_schedule_shape": "linear", "ema_decay": 0.99,
                    "classifier_lr_multiplier": 10.0, "progressive_min_size": 48,
                    "eval_image_size": 80, "input": "synthetic", "momentum": 0.8,
                    "crop_area_min": 0.9}, gpus_available=0)
    made = [flat_dict(builtin.source_config(config, str(tmp_path / "src"), str(tmp_path / "out")))
            for config in (plain, busy)]
    assert made[0] == made[1]
    for name, value in BUILTIN_SOURCE.overrides.items():
        assert made[0][name] == value, name
    assert made[0]["image_size"] == plain.reader.image_size  # shared with the run


def test_source_folder_names_the_generator_version():
    from flowers_tl import synth

    folder = builtin.source_folder(resolve({}, gpus_available=0))
    assert folder.endswith(f"source-v3-synth{synth.GENERATOR_VERSION}-slim-64px")
