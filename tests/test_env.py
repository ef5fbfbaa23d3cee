"""flowers_tl.env: what a row says about the machine, checked against the system's own tools."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowers_tl import env

PACKAGE_ROOT = Path(env.__file__).resolve().parent.parent


def _python(code: str, cwd: Path | None = None) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=cwd, env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_importing_env_and_results_and_describing_loads_no_tensorflow():
    out = _python("import sys, json, flowers_tl.env as e, flowers_tl.results\n"
                  "e.describe_environment(); e.cpu_slug(); e.gpu_count()\n"
                  "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
                  "('tensorflow', 'keras', 'bench'))))")
    assert json.loads(out) == []


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_is_the_packages_checkout_never_the_callers_folder(tmp_path):
    caller = tmp_path / "caller"
    caller.mkdir()
    _git("init", "-q", cwd=caller)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x",
         cwd=caller)
    out = json.loads(_python("import json, flowers_tl.env as e\n"
                             "print(json.dumps(e.describe_environment()))", cwd=caller))
    if (PACKAGE_ROOT / ".git").exists():
        assert out["git_commit"] == _git("rev-parse", "HEAD", cwd=PACKAGE_ROOT)
        assert isinstance(out["git_dirty"], bool)
    else:  # an installed copy: no git state at all
        assert out["git_commit"] is None and out["git_dirty"] is None
    assert out["git_commit"] != _git("rev-parse", "HEAD", cwd=caller)
    # An installed package inside some repository (a venv in a project) is not that project.
    site_packages = caller / "venv" / "lib" / "site-packages"
    site_packages.mkdir(parents=True)
    assert env._git_state(site_packages) == (None, None)
    assert env._git_state(tmp_path) == (None, None)  # not a checkout at all
    assert env._git_state(caller)[0] == _git("rev-parse", "HEAD", cwd=caller)


def test_describe_environment_is_flat_and_best_effort(monkeypatch):
    description = env.describe_environment()
    for key in ("time_utc", "cpu_model", "cpu_features", "cpu_count_affinity",
                "load_average_1min", "tensorflow_version", "numpy_version", "git_commit", "gpus"):
        assert key in description
    assert description["cpu_count_affinity"] == len(os.sched_getaffinity(0))
    assert description["load_average_1min"] == pytest.approx(os.getloadavg()[0], abs=2.0)
    json.dumps(description)  # a row must serialise
    # No tools, no /proc: every probe fails, nothing raises.
    monkeypatch.setattr(env, "_run", lambda command: None)
    monkeypatch.setattr(env, "_cpu_model", lambda: 1 / 0)
    broken = env.describe_environment()
    assert broken["cpu_model"] is None and broken["git_commit"] is None and broken["gpus"] is None


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="needs lscpu")
def test_cpu_features_and_model_agree_with_lscpu(monkeypatch):
    monkeypatch.delenv("FLOWERS_TL_IGNORE_CPU_FLAGS")
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
    fields = dict(line.split(":", 1) for line in lscpu.stdout.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    if not flags:
        pytest.skip("lscpu lists no flags here")
    assert env.cpu_features() == {name: name in flags for name in env.CPU_FEATURES}
    assert env.describe_environment()["cpu_model"] == fields["Model name"].strip()
    present = sorted(name for name in env.CPU_FEATURES if name in flags)
    monkeypatch.setenv("FLOWERS_TL_IGNORE_CPU_FLAGS", ",".join(present[:2]))
    assert env.cpu_features() == {name: name in flags and name not in present[:2]
                                  for name in env.CPU_FEATURES}


def test_cpu_slug_is_a_folder_name_with_the_core_count():
    slug = env.cpu_slug()
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*-[0-9]+c", slug), slug
    assert slug.endswith(f"-{len(os.sched_getaffinity(0))}c")


@pytest.mark.parametrize("model, slug", [
    ("Intel(R) Xeon(R) Processor", "intel-xeon-processor"),
    ("Intel(R) Xeon(R) CPU @ 2.20GHz", "intel-xeon-cpu"),
    ("AMD EPYC 7B13 64-Core Processor", "amd-epyc-7b13-64-core-processor"),
])
def test_cpu_slug_drops_marks_and_clock(monkeypatch, model, slug):
    monkeypatch.setattr(env, "_cpu_model", lambda: model)
    monkeypatch.setattr(env, "_usable_cores", lambda: 2)
    monkeypatch.setattr(env, "_cpu_id", lambda: None)
    assert env.cpu_slug() == f"{slug}-2c"
    # A known microarchitecture is added, once, so a Zen 4 and a Zen 5 "AMD EPYC" differ.
    monkeypatch.setattr(env, "_cpu_id", lambda: {"microarchitecture": "Zen 5"})
    assert env.cpu_slug() == f"{slug}-zen-5-2c"
    monkeypatch.setattr(env, "_cpu_model", lambda: "AMD EPYC Zen 5 Engineering Sample")
    assert env.cpu_slug() == "amd-epyc-zen-5-engineering-sample-2c"


CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model\t\t: {model}
model name\t: {name}
stepping\t: 1

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
"""


@pytest.mark.parametrize("vendor, family, model, microarchitecture", [
    ("AuthenticAMD", 26, 2, "Zen 5"), ("AuthenticAMD", 25, 0x11, "Zen 4"),
    ("AuthenticAMD", 25, 0x01, "Zen 3"), ("AuthenticAMD", 25, 0xA0, "Zen 4"),
    ("AuthenticAMD", 23, 0x31, "Zen 2"), ("GenuineIntel", 6, 0x8F, "Sapphire Rapids"),
    ("GenuineIntel", 6, 0xCF, "Emerald Rapids"), ("GenuineIntel", 6, 0x99, None),
    ("AuthenticAMD", 27, 0, None),
])
def test_cpu_id_names_the_microarchitecture_from_family_and_model(vendor, family, model,
                                                                  microarchitecture):
    text = CPUINFO.format(vendor=vendor, family=family, model=model, name="generic")
    assert env.parse_cpu_id(text) == {
        "vendor": vendor, "family": family, "model": model, "stepping": 1,
        "signature": f"{vendor} family {family} model {model} stepping 1",
        "microarchitecture": microarchitecture}
    assert env.parse_cpu_id("processor\t: 0\nFeatures\t: fp asimd\nCPU part\t: 0xd0c\n") is None
    assert env.cpu_label({"cpu_model": "AMD EPYC", "cpu_microarchitecture": microarchitecture}) \
        == ("AMD EPYC" + (f", {microarchitecture}" if microarchitecture else ""))
    assert env.cpu_label({"cpu_model": "AMD EPYC Zen 5 9B45", "cpu_microarchitecture": "Zen 5"}) \
        == "AMD EPYC Zen 5 9B45"


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="needs lscpu")
def test_cpu_signature_agrees_with_lscpu():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
    fields = {key.strip(): value.strip() for key, _, value in
              (line.partition(":") for line in lscpu.stdout.splitlines())}
    if "CPU family" not in fields or "Vendor ID" not in fields:
        pytest.skip("lscpu gives no x86 family here")
    stepping = fields.get("Stepping", "-1")
    assert env.describe_environment()["cpu_signature"] == (
        f"{fields['Vendor ID']} family {fields['CPU family']} model {fields['Model']} "
        f"stepping {stepping}")


GPUS = ["GPU 0: NVIDIA H200 (UUID: GPU-aaaa-1111)", "GPU 1: NVIDIA H200 (UUID: GPU-bbbb-2222)"]


@pytest.mark.parametrize("visible, count", [
    (None, 2), ("", 0), ("-1", 0), ("1", 1), ("0,1", 2), ("1,0,1", 2),
    ("0,7,1", 1),  # CUDA stops at the first invalid entry
    ("GPU-bbbb", 1), ("GPU-", 0),  # a UUID prefix must name one GPU
])
def test_gpu_count_follows_cuda_visible_devices(monkeypatch, visible, count):
    monkeypatch.setattr(env, "_gpu_names", lambda: GPUS)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert env.gpu_count() == count


def test_no_nvidia_smi_is_no_gpus(monkeypatch):
    monkeypatch.setattr(env, "_run", lambda command: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert env.gpu_count() == 0


def test_gemm_probe_rejects_bad_arguments_before_importing_tensorflow():
    with pytest.raises(ValueError, match="dtype 'int8'"):
        env.measure_peak_gflops("int8")
    with pytest.raises(ValueError, match="seconds"):
        env.measure_peak_gflops(seconds=0)


@pytest.mark.slow
def test_gemm_probe_runs_for_its_time_and_gives_a_plausible_rate():
    import numpy as np

    start = time.perf_counter()
    gflops = env.measure_peak_gflops("float32", seconds=0.5, size=512)
    assert time.perf_counter() - start >= 0.5
    # Independent reference: numpy's BLAS on the same product. Both are one machine's fp32 GEMM;
    # a factor of 20 either way allows other load and the two libraries' threading.
    a = np.random.default_rng(0).standard_normal((512, 512), np.float32)
    a @ a
    count, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < 0.5:
        a @ a
        count += 1
    numpy_gflops = 2 * 512**3 * count / (time.perf_counter() - begin) / 1e9
    assert numpy_gflops / 20 < gflops < numpy_gflops * 20
    assert env.measure_peak_gflops("bfloat16", seconds=0.2, size=256) > 0


X86_AVX2 = {"sse4_2": True, "avx": True, "avx2": True, "fma": True, "avx512f": False,
            "avx512_bf16": False, "avx512_fp16": False, "amx_bf16": False, "amx_fp16": False}


@pytest.mark.parametrize("features, precision, expected", [
    (X86_AVX2, "bf16", "bf16 on a CPU without AVX512-BF16 or AMX-BF16: no bf16 arithmetic units"),
    (X86_AVX2, "fp16", "fp16 on a CPU without AVX512-FP16 or AMX-FP16: no fp16 arithmetic units"),
    (dict(X86_AVX2, avx512f=True), "bf16", "bf16 on a CPU without AVX512-BF16 or AMX-BF16"),
    (dict(X86_AVX2, avx512_bf16=True), "bf16", None),  # Cooper Lake: AVX512-BF16 alone
    (dict(X86_AVX2, amx_bf16=True), "bf16", None),
    (dict(X86_AVX2, avx512_fp16=True), "fp16", None),
    (dict(X86_AVX2, avx512_fp16=True), "bf16", "bf16 on a CPU without AVX512-BF16"),
    ({"asimd": True, "bf16": False}, "bf16", "bf16 on a CPU without the Arm BF16 extension"),
    ({"asimd": True, "bf16": True}, "bf16", None),  # e.g. Graviton3
    (X86_AVX2, "fp32", None),
    ({}, "bf16", None),  # /proc/cpuinfo unreadable: nothing detected, nothing claimed
    (None, "bf16", None),
])
def test_arithmetic_note_from_fake_cpu_features(features, precision, expected):
    note = env.arithmetic_note(precision, features)
    if expected is None:
        assert note is None
    else:
        assert note.startswith(expected) and note.endswith("expected slower than fp32")
        assert "converts to fp32 and back" in note


def test_arithmetic_note_is_silent_on_gpus_and_follows_lscpu_on_this_cpu(monkeypatch):
    monkeypatch.delenv("FLOWERS_TL_IGNORE_CPU_FLAGS")
    assert env.arithmetic_note("bf16", X86_AVX2, gpus=1) is None
    output = subprocess.run(["lscpu"], capture_output=True, text=True).stdout \
        if shutil.which("lscpu") else ""
    flags = {flag for line in output.splitlines() if line.startswith("Flags:")
             for flag in line.split(":", 1)[1].split()}
    if not flags:
        pytest.skip("lscpu lists no flags here")
    note = env.arithmetic_note("bf16", env.cpu_features())
    assert (note is None) == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
