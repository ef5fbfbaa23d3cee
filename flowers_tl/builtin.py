"""The built-in task: a generated flowers-like set and a source checkpoint to fine-tune from.

Without --data_url, flowers_tl.train runs on 5 generated flower classes and fine-tunes from a
source checkpoint trained once, from scratch, on 10 *other* generated classes (preset
builtin-source), so the default run is real transfer learning with the logits excluded. Both are
cached in ~/.cache/flowers_tl (or $FLOWERS_TL_CACHE) and made with progress lines.
"""
from __future__ import annotations

import os

from flowers_tl import config as config_lib
from flowers_tl.presets import BUILTIN_SOURCE

TARGET_CLASSES = 5
SOURCE_CLASS_OFFSET = 5  # the source task's classes are the generator's 5..14
SOURCE_CLASSES = 10
SOURCE_PER_CLASS = 100


class SourceNotReady(RuntimeError):
    """The source checkpoint's training stopped before the end (it resumes on the next run)."""


def built_in_data(config: config_lib.RunConfig) -> tuple[str, str]:
    """(data folder, checkpoint) of the built-in run, both made once and cached."""
    from flowers_tl import synth

    per_class = config.data.per_class or synth.DEFAULT_PER_CLASS
    data_url = synth.default_dataset(classes=TARGET_CLASSES, per_class=per_class, seed=0)
    checkpoint_url = config.run.checkpoint_url
    if checkpoint_url is None:
        checkpoint_url = source_checkpoint(config)
    return data_url, checkpoint_url


def source_folder(config: config_lib.RunConfig) -> str:
    from flowers_tl import synth

    # Keyed by the generator's version too: a source trained on older images is not reused.
    return os.path.join(synth.default_cache_dir(),
                        f"source-v3-synth{synth.GENERATOR_VERSION}-{config.model.variant}-"
                        f"{config.reader.image_size}px")


def source_config(config: config_lib.RunConfig, source_data: str,
                  folder: str) -> config_lib.RunConfig:
    """The source task's configuration: the run's network, resolution, batch, arithmetic and
    devices, with every recipe knob from preset builtin-source."""
    return config_lib.with_overrides(config, {
        **BUILTIN_SOURCE.overrides, "data_url": source_data, "train_url": folder,
        "note": BUILTIN_SOURCE.summary})


def source_checkpoint(config: config_lib.RunConfig) -> str:
    """Trains the same network from scratch on the source task, once per (variant, image
    size), and caches its checkpoint; a run interrupted half-way resumes next time."""
    from flowers_tl import synth
    from flowers_tl.train import train

    folder = source_folder(config)
    done = os.path.join(folder, "DONE")
    if os.path.exists(done):
        return os.path.join(folder, "checkpoints")
    source_data = synth.default_dataset(classes=SOURCE_CLASSES, per_class=SOURCE_PER_CLASS,
                                        seed=1, class_offset=SOURCE_CLASS_OFFSET)
    print(f"[source] training the built-in source checkpoint once on {source_data} -> {folder} "
          f"(preset {BUILTIN_SOURCE.name}; cached for later runs)", flush=True)
    summary = train(source_config(config, source_data, folder))
    if summary["stop_reason"] != "finished":
        raise SourceNotReady(f"source checkpoint training {summary['stop_reason']}; rerun to "
                             "resume it")
    with open(done, "w") as handle:
        handle.write("ok\n")
    return os.path.join(folder, "checkpoints")
