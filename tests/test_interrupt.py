"""Interruptions: kill -9 at random moments (three times in a row, then a clean finish), a full
disk during a checkpoint or an export, an unwritable run folder. Nothing half-written may be
visible where a reader looks (the `checkpoint` state file and the integer export folders), and
nothing saved before may be lost.

Concurrent exports getting distinct versions that both load: test_export.py::
test_two_cli_exports_started_together_get_different_versions. Resume after SIGTERM / one kill:
test_train.py::test_resume_after_sigterm_and_kill_9.
"""
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from flowers_tl import synth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_STEPS = 6
KILL_SEED = 6  # fixes the kill moments


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("interrupt") / "flowers", classes=3,
                          per_class=8, seed=0, max_side=64)


def train_command(data_url, train_url, *extra):
    return [sys.executable, "-m", "flowers_tl.train", "--data_url", str(data_url),
            "--train_url", str(train_url), "--checkpoint_url", "none", "--image_size", "32",
            "--batch_size", "4", "--val_fraction", "0", "--log_every", "1",
            "--warmup_steps", "1", "--lr_schedule", "1:0.001", *map(str, extra)]


def step_rows(train_url):
    path = os.path.join(train_url, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        # A kill can cut the last line short; such a line is not a finished step.
        rows = []
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return [row for row in rows if row["kind"] == "step"]


# --------------------------------------------------------------- what a reader would pick up
def visible_state_problems(train_url) -> list[str]:
    """What a process resuming from, or serving, train_url would see, checked for
    completeness: the latest checkpoint the state file names is whole and holds its step, no
    listed checkpoint has an index without its data, and every integer export folder is a
    whole SavedModel. (An older listed checkpoint may be missing: TensorFlow's manager records
    the new state before deleting the oldest files and again after, so a kill in between leaves
    a name whose files are gone; nothing restores from it, and the next save drops it.)"""
    problems = []
    checkpoint_dir = os.path.join(train_url, "checkpoints")
    state = tf.train.get_checkpoint_state(checkpoint_dir)
    if state is not None:
        for prefix in state.all_model_checkpoint_paths:
            if os.path.exists(prefix + ".index") and \
                    not os.path.exists(prefix + ".data-00000-of-00001"):
                problems.append(f"{prefix}.index without its data")
        latest = state.model_checkpoint_path
        if not os.path.exists(latest + ".index"):
            problems.append(f"the latest checkpoint {latest} is missing")
        else:
            step = tf.train.load_checkpoint(latest).get_tensor(
                "global_step/.ATTRIBUTES/VARIABLE_VALUE")
            if f"ckpt-{int(step)}" != os.path.basename(latest):
                problems.append(f"{latest} holds global_step {int(step)}")
    export_root = os.path.join(train_url, "export")
    if os.path.isdir(export_root):
        for name in os.listdir(export_root):
            folder = os.path.join(export_root, name)
            if name.isdigit() and not (
                    os.path.exists(os.path.join(folder, "saved_model.pb"))
                    and os.path.exists(os.path.join(folder, "variables", "variables.index"))
                    and os.path.exists(os.path.join(folder, "assets", "labels.txt"))):
                problems.append(f"export folder {folder} is incomplete: {os.listdir(folder)}")
            elif not name.isdigit() and not name.startswith(".tmp-export-"):
                problems.append(f"unexpected entry {folder} in the export root")
    return problems


class Watcher(threading.Thread):
    """Polls the visible state while a run is alive (between the kills' frozen snapshots)."""

    def __init__(self, train_url):
        super().__init__(daemon=True)
        self.train_url, self.problems, self.polls = train_url, [], 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.problems += visible_state_problems(self.train_url)
            except (tf.errors.NotFoundError, FileNotFoundError):
                pass  # a checkpoint max_to_keep deleted between listing and opening: not visible
            except Exception as error:  # e.g. a half-written index: a problem, not a dead thread
                self.problems.append(f"watcher: {type(error).__name__}: {error}")
            self.polls += 1
            time.sleep(0.2)


def wait_until(condition, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run exited early: {process.communicate()[0][-3000:]}")
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the run")


def latest_step(train_url):
    latest = tf.train.latest_checkpoint(os.path.join(train_url, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


# -------------------------------------------------------------------- kill -9, three times
@pytest.fixture(scope="module")
def killed_three_times(data, tmp_path_factory):
    """Kills a run with SIGKILL at a random moment after it makes progress, twice; a third
    time while it writes its final checkpoint or export; then lets the same command finish.
    Returns (train_url, per-run records, final output)."""
    url = tmp_path_factory.mktemp("killed") / "run"
    command = train_command(data, url, "--max_steps", MAX_STEPS, "--checkpoint_every_steps", 1,
                            "--export", "true")
    rng = random.Random(KILL_SEED)
    records = []
    watcher = Watcher(url)
    watcher.start()
    for attempt in range(3):
        resumed_at = latest_step(url)
        rows_before = len(step_rows(url))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, cwd=ROOT)
        if attempt < 2:  # somewhere in the loop: mid-step, mid-save or between
            wait_until(lambda: len(step_rows(url)) > rows_before, process)
            delay = rng.uniform(0.0, 1.5)
        else:  # after the last step: the final save, the export and its verification
            wait_until(lambda: any(r["step"] == MAX_STEPS for r in step_rows(url)[rows_before:]),
                       process)
            delay = rng.uniform(0.5, 5.0)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        output = process.communicate(timeout=60)[0]
        assert process.returncode == -signal.SIGKILL, output[-3000:]
        records.append(dict(resumed_at=resumed_at, delay=delay, output=output,
                            saved=latest_step(url), problems=visible_state_problems(url)))
    code_output = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    watcher.stop.set()
    watcher.join()
    return url, records, code_output, watcher


@pytest.mark.slow
@pytest.mark.e2e
def test_three_kills_then_the_same_command_finishes_with_a_valid_export(killed_three_times):
    url, records, final, watcher = killed_three_times
    for index, record in enumerate(records):
        assert record["problems"] == [], (index, record["problems"])
        # Each restart resumed from the checkpoint the previous kill left (none if the kill
        # came before the first save finished).
        saved = records[index - 1]["saved"] if index else 0
        assert (f"resumed from {url}/checkpoints/ckpt-{saved} at step {saved}" if saved else
                "training from scratch") in record["output"], record["output"][-2000:]
    assert [r["saved"] for r in records] == sorted(r["saved"] for r in records)  # never back
    assert records[2]["saved"] >= MAX_STEPS - 1  # the third run got to its last step
    output = final.stdout + final.stderr
    assert final.returncode == 0, output[-3000:]
    assert f"resumed from {url}/checkpoints/ckpt-{records[2]['saved']}" in output
    assert watcher.polls > 50 and watcher.problems == [], watcher.problems[:5]
    assert visible_state_problems(url) == []

    # The same final step as an uninterrupted run (max_steps), every step logged at least once.
    result = json.load(open(url / "result.json"))
    assert result["stop_reason"] == "finished"
    assert result["steps"] == result["total_steps"] == MAX_STEPS
    assert {row["step"] for row in step_rows(url)} == set(range(1, MAX_STEPS + 1))
    assert latest_step(url) == MAX_STEPS

    # A valid export of the final weights: published whole, loads, serves.
    export_dir = result["export"]
    assert re.fullmatch(rf"{re.escape(str(url))}/export/\d+", export_dir)
    served = tf.saved_model.load(export_dir).signatures["serving_default"]
    logits = served(images=tf.zeros([2, 32, 32, 3]))["logits"].numpy()
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
    # A killed export leaves only its hidden temporary folder, never an integer one.
    versions = [name for name in os.listdir(url / "export") if name.isdigit()]
    assert versions == [os.path.basename(export_dir)]


# ---------------------------------------------------------------------------- a full disk
def limit_file_size(max_bytes):
    """For preexec_fn: writes past max_bytes fail with EFBIG (Python ignores SIGXFSZ)."""
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


@pytest.mark.slow
@pytest.mark.e2e
def test_full_disk_at_a_checkpoint_stops_in_one_line_and_keeps_the_earlier_ones(
        data, killed_three_times):
    # The finished run of the fixture, continued for two more steps with files capped at 16 MB
    # (a checkpoint is ~190 MB): the first save fails like a full disk would.
    url = killed_three_times[0]
    before = tf.train.get_checkpoint_state(url / "checkpoints").all_model_checkpoint_paths
    result = subprocess.run(
        train_command(data, url, "--max_steps", MAX_STEPS + 2, "--checkpoint_every_steps", 1,
                      "--export", "false"),
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        preexec_fn=limit_file_size(16 << 20))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("flowers_tl.train: error:")]
    assert errors == [
        f"flowers_tl.train: error: cannot save the checkpoint of step {MAX_STEPS + 1} in "
        f"{url}/checkpoints: " + errors[0].split(f"{url}/checkpoints: ", 1)[1]], errors
    assert "File too large" in errors[0]
    assert errors[0].endswith(f"earlier checkpoints are intact (latest: "
                              f"{url}/checkpoints/ckpt-{MAX_STEPS})")
    assert "Traceback" not in result.stderr
    state = tf.train.get_checkpoint_state(url / "checkpoints")
    assert list(state.all_model_checkpoint_paths) == list(before)
    assert visible_state_problems(url) == []


@pytest.mark.slow
@pytest.mark.e2e
def test_full_disk_during_an_export_publishes_nothing_and_says_so(killed_three_times):
    url = killed_three_times[0]
    versions = sorted(os.listdir(url / "export"))
    result = subprocess.run(
        [sys.executable, "-m", "flowers_tl.export", "--train_url", str(url), "--no_verify"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        preexec_fn=limit_file_size(16 << 20))
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: writing the SavedModel into {re.escape(str(url))}/export "
                        r"failed, nothing published: .*File too large.*", last), last
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(url / "export")) == versions  # its temporary folder is gone too


# ------------------------------------------------------------------- an unwritable run folder
@pytest.mark.parametrize("kind", ["file", "under_a_file", "read_only"])
def test_unwritable_train_url_is_one_line_before_any_work(data, tmp_path, capsys, kind):
    from flowers_tl import train

    if kind == "read_only" and os.geteuid() == 0:
        pytest.skip("running as root: a read-only folder does not stop root writing (the "
                    "file and under-a-file cases cover the cannot-write path)")
    target = tmp_path / "runs"
    if kind == "file":
        target.write_text("not a folder")
    elif kind == "under_a_file":
        (tmp_path / "blocker").write_text("a file where a folder should be")
        target = tmp_path / "blocker" / "run"
    else:
        target.mkdir()
        os.chmod(target, 0o555)
    start = time.time()
    code = train.main(train_command(data, target)[3:])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    reason = {"file": "File exists", "under_a_file": "Not a directory",
              "read_only": "Permission denied"}[kind]
    assert error == f"flowers_tl.train: error: --train_url {target}: cannot write there: {reason}"
    assert time.time() - start < 10  # before the model is built (that alone takes ~10 s)
