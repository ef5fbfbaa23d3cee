"""Training over salted data: a whole run over a set salted with every bad case completes and
reports each bad file with its reason; evaluation gathers the bad validation files."""
import json
import re
import subprocess
import sys

import pytest

from flowers_tl import reader
from flowers_tl.reader import DecodeError
from hostile_data import CROP_DEPENDENT, ROOT, SALTED_BATCH, salted_folder, watchdog_for_fifos


@pytest.mark.e2e
def test_training_over_a_salted_set_completes_and_reports_the_bad_files(tmp_path):
    # The run lists the folder itself, so the deleted-file case cannot be staged here (the
    # Reader tests in test_bad_files.py cover it).
    dataset, bad = salted_folder(tmp_path / "salted", deleted=False)
    url = tmp_path / "run"
    steps = len(dataset.files) // SALTED_BATCH  # one epoch: every file is read
    timer, released = watchdog_for_fifos([p for p in bad if p.endswith("named_pipe.jpg")], 60)
    result = subprocess.run(
        [sys.executable, "-m", "flowers_tl.train", "--data_url", str(tmp_path / "salted"),
         "--train_url", str(url), "--checkpoint_url", "none", "--image_size", "32",
         "--batch_size", str(SALTED_BATCH), "--epochs", "1", "--val_fraction", "0", "--export", "false",
         "--log_every", "1", "--warmup_steps", "1", "--lr_schedule", "1:0.001"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    timer.cancel()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not released.is_set()
    summary = json.load(open(url / "result.json"))
    assert summary["stop_reason"] == "finished" and summary["steps"] == steps
    report = summary["input"]
    assert report["bad_files"] == len(bad) and report["images_decoded"] >= steps * SALTED_BATCH - len(bad)
    listed = dict(map(tuple, report["first_bad_files"]))
    assert set(listed) == set(bad)
    for path, pattern in bad.items():
        assert re.search(pattern, listed[path]), (path, listed[path])
    assert f"{len(bad)} bad file(s)" in output
    for path in bad:
        assert path in output


def test_evaluation_reports_the_bad_validation_files(tmp_path):
    """The validation half of the training report, in process: evaluate() over a salted set
    gathers each skipped file with its reason, and input_report() merges them in."""
    import tensorflow as tf

    from flowers_tl import config as config_lib
    from flowers_tl.train import evaluate, input_report

    dataset, bad = salted_folder(tmp_path / "salted")
    config = config_lib.with_overrides(config_lib.RunConfig(), {
        "batch_size": SALTED_BATCH, "image_size": 32, "reader_threads": 2})
    blue, red = dataset.class_names.index("blue"), dataset.class_names.index("red")
    predicted = []

    def predict_by_colour(images):
        """An exact classifier of the two flat colours, whatever the crop."""
        predicted.append(int(images.shape[0]))
        mean = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2])
        return tf.where(mean[:, 2] > mean[:, 0], blue, red)

    bad_files, predictions = {}, {}
    accuracy = evaluate(predict_by_colour, dataset.files, dataset.labels, config, bad_files,
                        predictions)
    # The eval crop is fixed: a file fails here iff its crop, decoded alone, fails.
    expected = set(bad)
    for path in bad:
        if any(path.endswith(f"bad_{case}.jpg") for case in CROP_DEPENDENT):
            try:
                reader.augment(open(path, "rb").read(), 32, training=False)
                expected.discard(path)
            except DecodeError:
                pass
    assert len(expected) >= len(bad) - len(CROP_DEPENDENT)
    assert set(bad_files) == expected
    for path in expected:
        assert re.search(bad[path], bad_files[path]), (path, bad_files[path])
    # Each file that decodes is predicted once, with its own label, and the colour classifier
    # gets every one right: exactly 1.0. A bad file's slot counted (as a copy or a blank), a
    # label shifted onto another file's image, or a lost good file would each show here.
    assert sum(predicted) == len(dataset.files) - len(expected)
    assert accuracy == 1.0
    # Every file that decodes, by its index, with its own label (slots map back to files
    # across the bad ones in between).
    good = [index for index, path in enumerate(dataset.files) if path not in expected]
    assert predictions == {index: dataset.labels[index] for index in good}
    report = input_report(None, bad_files)
    assert report["bad_files"] == len(expected)
    assert sorted(map(tuple, report["first_bad_files"])) == sorted(bad_files.items())


def test_an_evaluation_batch_of_only_bad_files_is_skipped_and_reported(tmp_path):
    """Batch 2 of 3 holds nothing that decodes: evaluation goes on, counts the 8 good files
    and names the 4 bad ones (the reader used to stop at such a batch)."""
    import numpy as np
    import tensorflow as tf

    from conftest import encode_jpeg
    from flowers_tl import config as config_lib
    from flowers_tl.train import evaluate

    files, labels = [], []
    for index in range(12):
        path = tmp_path / f"{index:02d}.jpg"
        if 4 <= index < 8:
            path.write_bytes(b"not a jpeg at all" * (index + 1))
        else:
            path.write_bytes(encode_jpeg(np.full((40, 48, 3), (30, 60, 200), np.uint8)))
        files.append(str(path))
        labels.append(index % 2)  # the classifier below says 0 for everything
    config = config_lib.with_overrides(config_lib.RunConfig(), {
        "batch_size": 4, "image_size": 32, "reader_threads": 2})
    seen = []

    def predict_zero(images):
        seen.append(int(images.shape[0]))
        return tf.zeros([tf.shape(images)[0]], tf.int32)

    bad_files, predictions = {}, {}
    accuracy = evaluate(predict_zero, files, labels, config, bad_files, predictions)
    assert seen == [4, 4]  # the all-bad batch never reaches the model
    assert accuracy == 0.5  # 4 of the 8 good files have label 0
    assert sorted(bad_files) == files[4:8]
    assert predictions == {index: 0 for index in (0, 1, 2, 3, 8, 9, 10, 11)}


def test_the_heldout_report_counts_by_class_and_lists_every_wrong_file(tmp_path):
    """heldout_report against counts written out by hand: 3 classes, 9 files, one that did not
    decode (absent from the predictions)."""
    from flowers_tl.data import FolderDataset
    from flowers_tl.evaluation import heldout_lines, heldout_report

    names = ("daisy", "roses", "tulips")
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    files = [str(tmp_path / names[label] / f"{index}.jpg") for index, label in enumerate(labels)]
    val_set = FolderDataset(root=str(tmp_path), files=tuple(files), labels=tuple(labels),
                            class_names=names, ignored_files=())
    # daisy 3/3; roses: one right, two taken for tulips; tulips: one for roses, file 8 bad.
    predictions = {0: 0, 1: 0, 2: 0, 3: 1, 4: 2, 5: 2, 6: 2, 7: 1}
    report = heldout_report(val_set, predictions, step=40)
    assert report["step"] == 40 and report["images"] == 8 and report["correct"] == 5
    assert report["per_class"] == {
        "daisy": {"images": 3, "correct": 3, "accuracy": 1.0},
        "roses": {"images": 3, "correct": 1, "accuracy": 1 / 3},
        "tulips": {"images": 2, "correct": 1, "accuracy": 0.5}}
    assert report["confusion"] == {"classes": list(names),
                                   "counts": [[3, 0, 0], [0, 1, 2], [0, 1, 1]]}
    assert report["most_confused"] == [{"label": "roses", "predicted": "tulips", "images": 2},
                                       {"label": "tulips", "predicted": "roses", "images": 1}]
    assert report["mistakes"] == [
        {"file": "roses/4.jpg", "label": "roses", "predicted": "tulips"},
        {"file": "roses/5.jpg", "label": "roses", "predicted": "tulips"},
        {"file": "tulips/7.jpg", "label": "tulips", "predicted": "roses"}]
    assert heldout_lines(report) == [
        "held-out by class (evaluation at step 40): daisy 3/3 (100.0%), roses 1/3 (33.3%), "
        "tulips 1/2 (50.0%)",
        "most confused: roses taken for tulips 2x, tulips taken for roses 1x"]
