"""Evaluation on the held-out split: accuracy over the files that decode, and whether the split
can resolve the target at all."""
from __future__ import annotations

import math

import tensorflow as tf

from flowers_tl import config as config_lib


def evaluate(predict, files, labels, config: config_lib.RunConfig,
             bad_files: dict | None = None) -> float | None:
    """Accuracy over the files that decode (None if none does); the reader's skipped files
    and reasons go into bad_files. An evaluation batch whose files are all bad is skipped and
    reported, not fatal. Batches come at the evaluation size (--eval_image_size, else
    --image_size)."""
    from flowers_tl.reader import Reader
    correct = counted = 0
    # A cache folder serves every evaluation after the first; a memory cache would be filled
    # again by each (every evaluation opens a new reader), which costs more than streaming.
    cache = config.reader.reader_cache if config.reader.reader_cache != "memory" else None
    with Reader(files, labels, batch_size=config.train.batch_size,
                image_size=config.reader.eval_size, training=False,
                num_threads=config.reader.reader_threads, num_epochs=1,
                fill_bad_slots=False, cache=cache,
                cache_short_side=config.reader.cache_short_side if cache else None) as reader:
        for images, batch_labels in reader:
            good = batch_labels >= 0  # a slot whose file failed has label -1
            if not good.any():
                continue
            predictions = predict(tf.constant(images[good])).numpy()
            correct += int((predictions == batch_labels[good]).sum())
            counted += int(good.sum())
        if bad_files is not None:
            bad_files.update(reader.summary().first_bad_files)
    return correct / counted if counted else None


def split_warnings(config: config_lib.RunConfig, val_images: int) -> list[str]:
    """Where the held-out split cannot resolve the target accuracy, say so (accuracy moves in
    steps of 1/N; ~200 images for 95%, i.e. 10 mistakes)."""
    train_cfg = config.train
    if train_cfg.target_metric != "val" or not val_images:
        return []
    needed = int(math.ceil(10 / max(1 - train_cfg.target_accuracy, 1e-9)))
    if val_images >= needed:
        return []
    return [f"held-out split: {val_images} images, too few to resolve a "
            f"{train_cfg.target_accuracy:.0%} target (accuracy moves in steps of "
            f"{1 / val_images:.1%}; about {needed} images allow 10 mistakes)"]
