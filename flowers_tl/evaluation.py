"""Evaluation on the held-out split: accuracy over the files that decode, and whether the split
can resolve the target at all."""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from flowers_tl import config as config_lib


def evaluate(predict, files, labels, config: config_lib.RunConfig,
             bad_files: dict | None = None, predictions: dict | None = None) -> float | None:
    """Accuracy over the files that decode (None if none does); the reader's skipped files
    and reasons go into bad_files, and with `predictions` each decoded file's index in `files`
    maps to its predicted label (for heldout_report). An evaluation batch whose files are all
    bad is skipped and reported, not fatal. Batches come at the evaluation size
    (--eval_image_size, else --image_size)."""
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
        first = 0  # unshuffled: slot i of a batch is file first + i, a bad one labelled -1
        file_labels = np.asarray(labels)
        for images, batch_labels in reader:
            good = batch_labels >= 0
            if good.any():
                predicted = predict(tf.constant(images[good])).numpy()
                correct += int((predicted == batch_labels[good]).sum())
                counted += int(good.sum())
                if predictions is not None:
                    indices = first + np.flatnonzero(good)
                    if not np.array_equal(file_labels[indices], batch_labels[good]):
                        raise RuntimeError("evaluation batches are not in file order")
                    predictions.update(zip(indices.tolist(), predicted.tolist()))
            first += len(batch_labels)
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


def heldout_report(val_set, predictions: dict, step: int, top: int = 5) -> dict:
    """One evaluation by class, as a practitioner reads it: per class the images that decoded,
    how many were right and that share (the class's recall); the confusion matrix (rows: true
    class, columns: predicted, in class order); the `top` most frequent mistakes; and every
    wrong file (path relative to the data root, true and predicted class). `val_set`: the
    FolderDataset that was evaluated; `predictions`: evaluate()'s {file index: label}."""
    names = list(val_set.class_names)
    confusion = np.zeros((len(names), len(names)), np.int64)
    paths = val_set.relative_paths()
    mistakes = []
    for index, predicted in sorted(predictions.items()):
        true = val_set.labels[index]
        confusion[true, predicted] += 1
        if predicted != true:
            mistakes.append({"file": paths[index], "label": names[true],
                             "predicted": names[predicted]})
    per_class = {}
    for label, name in enumerate(names):
        images, right = int(confusion[label].sum()), int(confusion[label, label])
        per_class[name] = {"images": images, "correct": right,
                           "accuracy": right / images if images else None}
    pairs = sorted(((int(confusion[t, p]), t, p) for t in range(len(names))
                    for p in range(len(names)) if t != p and confusion[t, p]),
                   key=lambda item: (-item[0], item[1], item[2]))
    return {"step": step, "images": int(confusion.sum()),
            "correct": int(np.trace(confusion)), "per_class": per_class,
            "confusion": {"classes": names, "counts": confusion.tolist()},
            "most_confused": [{"label": names[t], "predicted": names[p], "images": count}
                              for count, t, p in pairs[:top]],
            "mistakes": mistakes}


def heldout_lines(report: dict) -> list[str]:
    """heldout_report's summary for the console: accuracy by class, the commonest mistakes."""
    by_class = ", ".join(
        f"{name} {row['correct']}/{row['images']}" +
        (f" ({row['accuracy']:.1%})" if row["images"] else "")
        for name, row in report["per_class"].items())
    lines = [f"held-out by class (evaluation at step {report['step']}): {by_class}"]
    if report["most_confused"]:
        lines.append("most confused: " + ", ".join(
            f"{row['label']} taken for {row['predicted']} {row['images']}x"
            for row in report["most_confused"]))
    return lines
