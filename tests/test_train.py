"""Training end to end, in subprocesses (TensorFlow's device setup and signals are per process):
tiny generated data, 32 px images, a handful of steps."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from flowers_tl import synth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("tiny") / "flowers", classes=3, per_class=12,
                          seed=0, max_side=96)


def train_command(data, train_url, *extra):
    return [sys.executable, "-m", "flowers_tl.train", "--data_url", str(data), "--train_url",
            str(train_url), "--checkpoint_url", "none", "--image_size", "32", "--batch_size", "8",
            "--log_every", "1", "--export", "false", "--warmup_steps", "1", *map(str, extra)]


def run(command, timeout=600):
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return result.returncode, result.stdout + result.stderr


def metrics(train_url, kind):
    with open(os.path.join(train_url, "metrics.jsonl")) as handle:
        return [row for row in map(json.loads, handle) if row["kind"] == kind]


def variables(train_url):
    reader = tf.train.load_checkpoint(os.path.join(train_url, "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("model/") and "moving" not in name}


def test_tiny_run_learns_logs_checkpoints_and_exports(tiny_data, tmp_path):
    url = tmp_path / "run"
    code, output = run(train_command(tiny_data, url, "--epochs", "12", "--lr_schedule",
                                     "8:0.02,12:0.002", "--val_fraction", "0.2",
                                     "--target_accuracy", "0.9", "--export", "true"))
    assert code == 0, output[-3000:]
    epochs = metrics(url, "epoch")
    assert len(epochs) == 12 and epochs[-1]["train_accuracy"] >= 0.9, epochs
    steps = metrics(url, "step")
    assert all({"loss", "accuracy", "learning_rate"} <= set(row) for row in steps)
    assert "images_per_sec" in steps[-1] and 0 <= steps[-1]["data_wait_fraction"] <= 1
    target = metrics(url, "target")[0]
    assert target["split"] == "train" and target["seed"] == 0
    assert 0 < target["seconds_from_first_step"] < target["seconds_from_process_start"]
    result = json.load(open(url / "result.json"))
    assert result["stop_reason"] == "finished" and result["export"].endswith("export/1")
    config = json.load(open(url / "config.json"))
    assert config["config"]["image_size"] == 32 and config["class_names"] == ["daisy", "dandelion", "roses"]
    loaded = tf.saved_model.load(str(url / "export" / "1"))
    assert set(loaded.signatures) >= {"serving_default", "predict_jpeg"}
    assert os.listdir(url / "tensorboard")


def test_two_logical_devices_match_one_device_at_the_same_global_batch(tiny_data, tmp_path):
    # Frozen BN: per-replica batch statistics over 4 images differ from those over 8 (as in any
    # non-synchronised data-parallel BN); with BN in inference mode the updates must agree.
    common = ["--max_steps", "2", "--freeze_batch_norm", "true", "--val_fraction", "0"]
    one, two = tmp_path / "one", tmp_path / "two"
    code, output = run(train_command(tiny_data, one, *common))
    assert code == 0, output[-3000:]
    code, output = run(train_command(tiny_data, two, *common, "--cpu_devices", "2",
                                     "--batch_size", "4"))
    assert code == 0, output[-3000:]
    assert "2 replica(s)" in output and "global batch 8" in output
    a, b = variables(one), variables(two)
    assert a.keys() == b.keys()
    for name in a:  # two summation orders of the same float32 gradients: relative 1e-4
        assert np.abs(a[name] - b[name]).max() <= 1e-4 * max(np.abs(a[name]).max(), 1e-3), name


def test_static_loss_scale_overflow_stops_and_dynamic_trains_on(tiny_data, tmp_path):
    code, output = run(train_command(tiny_data, tmp_path / "static", "--precision", "fp16",
                                     "--loss_scale", "1e30", "--max_steps", "3"))
    assert code == 1
    assert "step 0: non-finite gradients" in output and "--loss_scale dynamic" in output
    code, output = run(train_command(tiny_data, tmp_path / "dynamic", "--precision", "fp16",
                                     "--loss_scale", "dynamic", "--max_steps", "6"))
    assert code == 0, output[-3000:]
    rows = metrics(tmp_path / "dynamic", "step")
    assert rows[-1]["step"] == 6 and rows[-1]["skipped_steps"] >= 1  # starts at 2^15
    assert rows[-1]["loss_scale"] < 2 ** 15


def wait_for_step(url, step, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()[0][-3000:]
        path = os.path.join(url, "metrics.jsonl")
        if os.path.exists(path) and any(row["step"] >= step for row in metrics(url, "step")):
            return
        time.sleep(0.5)
    raise AssertionError(f"step {step} not reached")


@pytest.mark.parametrize("kill_signal", [signal.SIGTERM, signal.SIGKILL])
def test_resume_after_sigterm_and_kill_9(tiny_data, tmp_path, kill_signal):
    url = tmp_path / "run"
    command = train_command(tiny_data, url, "--max_steps", "8", "--checkpoint_every_steps", "1",
                            "--val_fraction", "0")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT)
    wait_for_step(url, 3, process)
    process.send_signal(kill_signal)
    output = process.communicate(timeout=120)[0]
    if kill_signal == signal.SIGTERM:
        assert process.returncode == 0, output[-3000:]
        assert "interrupted by SIGTERM" in output and "rerun the same command to resume" in output
    else:
        assert process.returncode == -signal.SIGKILL
    saved = int(tf.train.latest_checkpoint(url / "checkpoints").rsplit("-", 1)[1])
    logged = max(row["step"] for row in metrics(url, "step"))
    assert saved >= logged - 1  # at most one checkpoint interval (1 step) lost
    code, output = run(command)
    assert code == 0, output[-3000:]
    assert f"resumed from" in output and f"at step {saved}" in output
    assert max(row["step"] for row in metrics(url, "step")) == 8


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_worker_processes_on_localhost(tiny_data, tmp_path):
    url = tmp_path / "multi"
    workers = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    processes = []
    for index in range(2):
        environment = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            train_command(tiny_data, url, "--max_steps", "3", "--batch_size", "4",
                          "--val_fraction", "0"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env=environment))
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert "2 replica(s) on 2 worker(s)" in outputs[0] and "global batch 8" in outputs[0]
    assert max(row["step"] for row in metrics(url, "step")) == 3
    assert tf.train.latest_checkpoint(url / "checkpoints").endswith("-3")
