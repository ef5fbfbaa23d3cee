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
from flowers_tl.results import check_step_row

pytestmark = pytest.mark.e2e  # every test here trains, in a subprocess but the last

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("tiny") / "flowers", classes=3, per_class=12,
                          seed=0, max_side=96)


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory):
    """Three classes of noisy flat colours: learnable from scratch in a dozen tiny epochs (the
    flowers-like set needs a pretrained start, which a unit test cannot afford)."""
    import cv2

    root = tmp_path_factory.mktemp("easy")
    rng = np.random.default_rng(0)
    for name, bgr in (("blue", (200, 60, 40)), ("green", (40, 180, 40)), ("red", (40, 40, 200))):
        os.makedirs(root / name)
        for index in range(12):
            noise = rng.normal(0, 30, (64, 80, 3))
            image = np.clip(np.array(bgr)[None, None, :] + noise, 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{index}.jpg"), image)
    return root


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
    from flowers_tl.checkpoint import read_weights

    return read_weights(os.path.join(train_url, "checkpoints"))[1]


def test_tiny_run_learns_logs_checkpoints_and_exports(easy_data, tmp_path):
    url = tmp_path / "run"
    # From scratch with 8-image batches the accuracy of single epochs jumps around; the run must
    # reach the target at some epoch (it does by epoch 6-10 with seed 0).
    code, output = run(train_command(easy_data, url, "--epochs", "16", "--lr_schedule",
                                     "16:0.003", "--val_fraction", "0.2",
                                     "--target_accuracy", "0.9", "--export", "true",
                                     "--target_metric", "train", "--eval_every_epochs", "4"))
    assert code == 0, output[-3000:]
    epochs = metrics(url, "epoch")
    assert len(epochs) == 16 and max(row["train_accuracy"] for row in epochs) >= 0.9, epochs
    evaluated = [row["epoch"] for row in epochs if row["val_accuracy"] is not None]
    assert evaluated == [4, 8, 12, 16]  # --eval_every_epochs 4
    waits = [row["eval_seconds"] for row in epochs]
    assert waits == sorted(waits) and waits[3] > 0 and waits[2] == 0  # evaluation time, summed
    steps = metrics(url, "step")
    for row in steps:  # the per-step schema the sweep reads (flowers_tl.results)
        check_step_row(row)
        assert row["images"] == 8 and 0 <= row["data_wait_seconds"] <= row["step_seconds"]
    assert [row["step"] for row in steps] == list(range(1, len(steps) + 1))
    assert [row["warmup"] for row in steps[:2]] == [True, False]
    target = metrics(url, "target")[0]
    assert target["split"] == "train" and target["seed"] == 0
    assert 0 < target["seconds_from_first_step"] < target["seconds_from_process_start"]
    result = json.load(open(url / "result.json"))
    assert result["stop_reason"] == "finished" and result["export"].endswith("export/1")
    # The last evaluation by class: all held-out files, the mistakes file one row per miss.
    heldout = result["heldout"]
    assert heldout["step"] == steps[-1]["step"] and heldout["images"] == result["val_images"]
    assert sum(row["images"] for row in heldout["per_class"].values()) == heldout["images"]
    assert heldout["correct"] / heldout["images"] == pytest.approx(epochs[-1]["val_accuracy"])
    with open(url / heldout["mistakes_file"]) as handle:
        assert len(handle.readlines()) == 1 + heldout["images"] - heldout["correct"]
    from flowers_tl.data import list_folder, split
    assert result["eval_seconds"] == pytest.approx(waits[-1], abs=1e-3)
    assert result["val_images"] == len(split(list_folder(easy_data), 0.2, 0)[1]) > 0
    assert result["warnings"] == []  # the clock ran on train accuracy
    timed = [row for row in steps if not row["warmup"]]
    assert result["images_per_sec"] == pytest.approx(
        8 * len(timed) / sum(row["step_seconds"] for row in timed))
    config = json.load(open(url / "config.json"))
    assert config["config"]["reader"]["image_size"] == 32
    assert config["class_names"] == ["blue", "green", "red"] and config["num_classes"] == 3
    loaded = tf.saved_model.load(str(url / "export" / "1"))
    assert set(loaded.signatures) >= {"serving_default", "predict_jpeg"}
    assert os.listdir(url / "tensorboard")


def test_two_logical_devices_match_one_device_at_the_same_global_batch(tiny_data, tmp_path):
    # Frozen BN: per-replica batch statistics over 4 images differ from those over 8 (as in any
    # non-synchronised data-parallel BN); with BN in inference mode the updates must agree.
    # Frozen BN needs real moving statistics: start from a calibrated checkpoint.
    from conftest import calibrate_batch_norm, smooth_rgb
    from flowers_tl.model import resnet_v1_50

    pretrained = resnet_v1_50(3, seed=1)
    calibrate_batch_norm(pretrained, np.stack([smooth_rgb(32, 32, i) for i in range(8)]))
    for name, variable in pretrained.variables_by_name.items():
        if "conv3/BatchNorm/gamma" in name or "conv3/BatchNorm/beta" in name:
            variable.assign(variable * 0.2)  # small residual branches: a stable network
    tf.train.Checkpoint(model=pretrained).save(str(tmp_path / "pretrained" / "ckpt"))
    initial = {name: v.numpy() for name, v in pretrained.variables_by_name.items()}
    common = ["--max_steps", "2", "--freeze_batch_norm", "true", "--val_fraction", "0",
              "--checkpoint_url", tmp_path / "pretrained", "--lr_schedule", "1:0.001"]
    one, two = tmp_path / "one", tmp_path / "two"
    code, output = run(train_command(tiny_data, one, *common))
    assert code == 0, output[-3000:]
    code, output = run(train_command(tiny_data, two, *common, "--cpu_devices", "2",
                                     "--batch_size", "4"))
    assert code == 0, output[-3000:]
    assert "2 replica(s)" in output and "global batch 8" in output
    a, b = variables(one), variables(two)
    assert a.keys() == b.keys() == initial.keys()
    moved = 0
    for name in a:
        if "logits" in name:  # freshly initialised (same seed in both runs): compare directly
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6)
            continue
        # Two summation orders of the same float32 gradients: the updates agree within 1e-3
        # of their size (plus float32 rounding of the weights themselves).
        update_a, update_b = a[name] - initial[name], b[name] - initial[name]
        bound = 1e-3 * np.abs(update_a).max() + 1e-6 * np.abs(initial[name]).max()
        assert np.abs(update_a - update_b).max() <= bound, name
        moved += bool(np.abs(update_a).max() > 0)
    assert moved > 100  # the weights really were updated


def test_static_loss_scale_overflow_stops_and_dynamic_trains_on(tiny_data, tmp_path):
    # Residual branches as initialised (not zeroed, as from scratch would by default): their
    # fp16 gradients overflow 2^15, so the dynamic scale has something to do.
    code, output = run(train_command(tiny_data, tmp_path / "static", "--precision", "fp16",
                                     "--loss_scale", "1e30", "--max_steps", "3",
                                     "--zero_init_residual", "false"))
    assert code == 1
    assert "step 0: non-finite gradients" in output and "--loss_scale dynamic" in output
    code, output = run(train_command(tiny_data, tmp_path / "dynamic", "--precision", "fp16",
                                     "--loss_scale", "dynamic", "--max_steps", "6",
                                     "--zero_init_residual", "false"))
    assert code == 0, output[-3000:]
    rows = metrics(tmp_path / "dynamic", "step")
    assert rows[-1]["step"] == 6 and rows[-1]["skipped_steps"] >= 1  # starts at 2^15
    assert rows[-1]["loss_scale"] < 2 ** 15


def test_on_resume_a_static_loss_scale_given_again_wins_over_the_checkpoints(tiny_data,
                                                                           tmp_path):
    url = tmp_path / "run"
    common = ["--precision", "fp16", "--val_fraction", "0", "--checkpoint_every_steps", "1"]
    code, output = run(train_command(tiny_data, url, *common, "--loss_scale", "128",
                                     "--max_steps", "2"))
    assert code == 0, output[-3000:]
    code, output = run(train_command(tiny_data, url, *common, "--loss_scale", "256",
                                     "--max_steps", "3"))
    assert code == 0, output[-3000:]
    assert "resumed from" in output
    assert "loss scale: --loss_scale 256 replaces the checkpoint's 128" in output
    assert [row["loss_scale"] for row in metrics(url, "step")] == [128.0, 128.0, 256.0]


def test_the_latest_checkpoint_is_never_written_twice(tiny_data, tmp_path):
    # TensorFlow writes a checkpoint's index in place: saving the step the loop just saved (or
    # the step a finished run resumed at) again would leave the only checkpoint the state file
    # names half-written meanwhile (a CI run's watcher read "file is too short to be an
    # sstable"). Neither the end of a run nor a rerun of a finished one rewrites it.
    url = tmp_path / "run"
    command = train_command(tiny_data, url, "--max_steps", "2", "--checkpoint_every_steps", "1",
                            "--val_fraction", "0")
    code, output = run(command)
    assert code == 0, output[-3000:]
    index = url / "checkpoints" / "ckpt-2.index"
    written = os.stat(index).st_mtime_ns, os.stat(index).st_ino
    assert tf.train.latest_checkpoint(url / "checkpoints").endswith("ckpt-2")
    code, output = run(command)
    assert code == 0, output[-3000:]
    assert "resumed from" in output and "at step 2" in output
    assert (os.stat(index).st_mtime_ns, os.stat(index).st_ino) == written


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
    assert "resumed from" in output and f"at step {saved}" in output
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


def test_divergence_without_a_loss_scale_names_the_first_bad_step_and_the_real_fix(tiny_data,
                                                                                 tmp_path):
    # fp32 with an absurd learning rate: the weights blow up within a few steps. The error names
    # the first non-finite step (every earlier one was finite and logged) and, there being no
    # loss scale to change, does not suggest one (--loss_scale is refused with fp32).
    url = tmp_path / "diverge"
    code, output = run(train_command(tiny_data, url, "--lr_schedule", "1:1e6", "--max_steps", "8",
                                     "--val_fraction", "0"))
    assert code == 1
    errors = [line for line in output.splitlines() if line.startswith("flowers_tl.train: error:")]
    rows = metrics(url, "step")
    assert 1 <= len(rows) < 8 and all(np.isfinite(row["loss"]) for row in rows)
    assert len(errors) == 1 and errors[0].startswith(
        f"flowers_tl.train: error: step {len(rows)}: non-finite gradients (loss ")
    assert errors[0].endswith(
        "with fp32: nothing was applied; the run diverged: lower the learning rate")
    assert "Traceback" not in output


def test_train_as_a_library_call_gives_back_the_signal_handlers(tiny_data, tmp_path):
    """In-process (the one test that is): train() installs its save-and-stop handlers only for
    the loop and restores the caller's afterwards, so Ctrl-C raises again."""
    from flowers_tl.config import resolve
    from flowers_tl.train import train

    config = resolve({"data_url": str(tiny_data), "train_url": str(tmp_path / "run"),
                      "checkpoint_url": "none", "image_size": 32, "batch_size": 4,
                      "max_steps": 1, "export": False, "val_fraction": 0.0}, gpus_available=0)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    summary = train(config)
    assert summary["stop_reason"] == "finished"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_reader_cache_folder_serves_training_and_evaluation_and_the_next_run(tiny_data, tmp_path):
    cache = tmp_path / "cache"
    first_code, first = run(train_command(tiny_data, tmp_path / "first", "--max_steps", "3",
                                          "--input", "cxx-cache", "--reader_cache", cache))
    assert first_code == 0, first[-3000:]
    built = [line for line in first.splitlines() if line.startswith("reader: building")]
    assert len(built) == 2, first[-3000:]  # the training split and the held-out split
    assert sorted(name.split("-")[1] for name in os.listdir(cache)) == ["eval", "train"]
    second_code, second = run(train_command(tiny_data, tmp_path / "second", "--max_steps", "3",
                                            "--reader_cache", cache))
    assert second_code == 0, second[-3000:]
    assert "reader: " not in second  # both reused: nothing decoded, nothing said
    with open(tmp_path / "second" / "result.json") as handle:
        report = json.load(handle)["input"]
    assert report["images_decoded"] == 0 and report["cache"]["kind"] == "file"
    assert report["cache"]["reused"] and report["cache"]["images_from_cache"] >= 3 * 8  # + prefetch


def test_bf16_on_a_cpu_without_bf16_units_is_a_header_warning(monkeypatch):
    from flowers_tl import config as config_lib
    from flowers_tl import env
    from flowers_tl.train import run_warnings

    avx2 = {"sse4_2": True, "avx": True, "avx2": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(env, "cpu_features", lambda: avx2)
    bf16 = config_lib.resolve({"precision": "bf16", "target_metric": "train"}, gpus_available=0)
    assert bf16.model.precision == "bf16"  # a warning, not another default
    (line,) = run_warnings(bf16, 0)
    assert line.startswith("precision: bf16 on a CPU without AVX512-BF16 or AMX-BF16: no bf16 "
                           "arithmetic units") and "\n" not in line
    assert run_warnings(config_lib.with_overrides(bf16, {"precision": "fp32"}), 0) == []
    monkeypatch.setattr(env, "cpu_features", lambda: dict(avx2, amx_bf16=True))
    assert run_warnings(bf16, 0) == []


def test_the_main_program_runs_without_loading_keras_which_still_imports_afterwards(tiny_data,
                                                                                    tmp_path):
    """TensorFlow's import loads Keras (and through it scikit-learn, both installed here) unless
    the main program hides it; the run must work without them and leave `import keras` and
    tf.keras working."""
    argv = ["flowers_tl.train"] + train_command(tiny_data, tmp_path / "run", "--max_steps", "2",
                                                "--val_fraction", "0")[3:]
    script = f"""
import json, runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module("flowers_tl.train", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    assert not stop.code, stop.code
loaded = {{name: name in sys.modules for name in ("keras", "sklearn")}}
import keras
import tensorflow as tf
assert tf.keras.layers.Dense is keras.layers.Dense
print("loaded:", json.dumps(loaded))
"""
    code, output = run([sys.executable, "-c", script])
    assert code == 0, output[-3000:]
    line = [line for line in output.splitlines() if line.startswith("loaded: ")][-1]
    assert json.loads(line[len("loaded: "):]) == {"keras": False, "sklearn": False}
    assert metrics(tmp_path / "run", "step")[-1]["step"] == 2
