"""What machine and software a result was measured on, attached to every result row.

Throughput figures move with the CPU, its vector units, the core count, the libjpeg-turbo build,
the commit and whatever else runs on the machine, so each row carries them. Everything in
describe_environment is best effort: a missing tool or package becomes None and nothing raises.
Versions come from installed-package metadata unless the module is already imported, so
describing the environment never pays TensorFlow's import time (`import flowers_tl.env` loads no
TensorFlow; only measure_peak_gflops imports it, inside the function).

    python -m flowers_tl.env            # this machine, as a result row would record it
    python -m flowers_tl.env --gflops   # and the measured GEMM ceiling, fp32 and bf16
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

# The folder above the package: a git checkout's root for an editable install, site-packages
# for an ordinary one (which has no git state of its own to report).
SOURCE_ROOT = Path(__file__).resolve().parent.parent

# /proc/cpuinfo flags that decide which kernels oneDNN and XLA pick (x86), and their ARM kin.
CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
                "amx_fp16", "asimd", "asimdhp", "sve", "bf16")
X86_FEATURES = ("sse4_2", "avx", "avx2")  # any of these: an x86 CPU; "asimd": an Arm one
# The flags that mean the CPU has arithmetic units for a reduced precision, per architecture.
REDUCED_PRECISION_UNITS = {
    ("x86", "bf16"): ("avx512_bf16", "amx_bf16"), ("x86", "fp16"): ("avx512_fp16", "amx_fp16"),
    ("arm", "bf16"): ("bf16",), ("arm", "fp16"): ("asimdhp",)}
# x86 core microarchitecture by (vendor, family) and model range, for a CPU whose model name a
# hypervisor shortens to "AMD EPYC" or "Intel(R) Xeon(R) Processor": a Zen 4 and a Zen 5 host then
# look alike, yet run libjpeg-turbo, the reader's AVX2 code and TensorFlow's AVX-512 kernels at
# different relative speeds. Numbers from AMD's Processor Programming References and Intel's SDM
# (CPUID family/model); a pair not listed gives None, never a guess.
MICROARCHITECTURES = {
    ("AuthenticAMD", 0x17): ((0x00, 0x2F, "Zen/Zen+"), (0x30, 0xFF, "Zen 2")),
    ("AuthenticAMD", 0x19): ((0x00, 0x0F, "Zen 3"), (0x10, 0x1F, "Zen 4"), (0x20, 0x2F, "Zen 3"),
                             (0x40, 0x4F, "Zen 3+"), (0x50, 0x5F, "Zen 3"), (0x60, 0x7F, "Zen 4"),
                             (0xA0, 0xAF, "Zen 4")),
    ("AuthenticAMD", 0x1A): ((0x00, 0x4F, "Zen 5"),),
    ("GenuineIntel", 6): ((0x3F, 0x3F, "Haswell"), (0x4F, 0x4F, "Broadwell"),
                          (0x55, 0x55, "Skylake-SP/Cascade Lake/Cooper Lake"),
                          (0x6A, 0x6A, "Ice Lake-SP"),
                          (0x6C, 0x6C, "Ice Lake-SP"), (0x8F, 0x8F, "Sapphire Rapids"),
                          (0xCF, 0xCF, "Emerald Rapids"), (0xAD, 0xAD, "Granite Rapids"),
                          (0xAF, 0xAF, "Sierra Forest")),
}
UNIT_NAMES = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "avx512_fp16": "AVX512-FP16",
              "amx_fp16": "AMX-FP16", "bf16": "the Arm BF16 extension",
              "asimdhp": "Arm half-precision SIMD (asimdhp)"}


def describe_environment() -> dict[str, Any]:
    """A flat dict of versions, hardware, load and source revision; missing things are None."""
    build_info = _safe(_reader_build_info) or {}
    git_commit, git_dirty = _safe(_git_state) or (None, None)
    cpu_id = _safe(_cpu_id) or {}
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": _safe(socket.gethostname),
        "python_version": platform.python_version(),
        "platform": _safe(platform.platform),
        "cpu_model": _safe(_cpu_model),
        # The model name alone may not say which CPU it is (see MICROARCHITECTURES).
        "cpu_signature": cpu_id.get("signature"),
        "cpu_microarchitecture": cpu_id.get("microarchitecture"),
        "cpu_caches": _safe(_cpu_caches),
        "cpu_features": _safe(cpu_features),
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_affinity": _safe(_usable_cores),
        # Other work on the machine (a compile, a second benchmark) shows up here, not in stderr.
        "load_average_1min": _safe(lambda: os.getloadavg()[0]),
        "tensorflow_version": _safe(
            lambda: _module_version("tensorflow", ["tensorflow", "tensorflow-cpu", "tf-nightly"])
        ),
        "numpy_version": _safe(lambda: _module_version("numpy", ["numpy"])),
        "opencv_version": _safe(
            lambda: _module_version(
                "cv2", ["opencv-python-headless", "opencv-python", "opencv-contrib-python"]
            )
        ),
        "opencv_jpeg": _safe(_opencv_jpeg),
        "dali_version": _safe(
            lambda: _module_version(
                "nvidia.dali",
                ["nvidia-dali-cuda120", "nvidia-dali-cuda130", "nvidia-dali-cuda110"],
            )
        ),
        "compiler": _safe(lambda: _first_of(build_info, "compiler") or _cxx_version()),
        "libjpeg_turbo_version": _safe(
            lambda: _first_of(build_info, "turbo")
            or _dpkg_version("libjpeg62-turbo", "libjpeg-turbo8")
        ),
        "reader_build_info": build_info or None,
        "git_commit": git_commit,
        "git_dirty": git_dirty,
        "gpus": _safe(_gpu_names),
    }


def gpu_count() -> int:
    """GPUs this process may use: nvidia-smi's list, narrowed by CUDA_VISIBLE_DEVICES (no TF)."""
    names = _gpu_names() or []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return len(names)
    # CUDA's rule: entries are indices or UUID prefixes; the list ends at the first invalid one.
    chosen: set[int] = set()
    for entry in (part.strip() for part in visible.split(",")):
        if entry.isdigit() and int(entry) < len(names):
            index = int(entry)
        else:
            matches = [i for i, name in enumerate(names)
                       if entry and f"(UUID: {entry}" in name]
            if len(matches) != 1:
                break
            index = matches[0]
        chosen.add(index)
    return len(chosen)


def cpu_features() -> dict[str, bool]:
    """Which of CPU_FEATURES /proc/cpuinfo lists for this CPU ({} where it cannot be read).
    Flags named in $FLOWERS_TL_IGNORE_CPU_FLAGS (comma-separated, e.g. `amx_bf16`) count as
    absent: to run, and test, what a CPU without them would get."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        return {}
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            flags.update(value.split())
    flags -= set(os.environ.get("FLOWERS_TL_IGNORE_CPU_FLAGS", "").replace(",", " ").split())
    return {feature: feature in flags for feature in CPU_FEATURES} if flags else {}


def arithmetic_note(precision: str, features: dict[str, bool] | None, gpus: int = 0
                    ) -> str | None:
    """Why a reduced-precision run on this CPU is expected to be slower than fp32, or None.

    Only where the CPU's flags (cpu_features(), or a result row's environment) are known and
    lack every unit for the precision: bf16 without AVX512-BF16 / AMX-BF16 (Arm: BF16), fp16
    without AVX512-FP16 / AMX-FP16 (Arm: asimdhp). There every reduced-precision op converts its
    operands to fp32 and back, so the mixed-precision cell pays the casts and gains nothing. On
    GPUs, in fp32, or with unknown flags: None (nothing detected, nothing claimed)."""
    if gpus or precision not in ("bf16", "fp16") or not features:
        return None
    architecture = "x86" if any(features.get(flag) for flag in X86_FEATURES) else \
        "arm" if features.get("asimd") else None
    if architecture is None:
        return None
    units = REDUCED_PRECISION_UNITS[(architecture, precision)]
    if any(features.get(flag) for flag in units):
        return None
    names = " or ".join(UNIT_NAMES[flag] for flag in units)
    return (f"{precision} on a CPU without {names}: no {precision} arithmetic units, so every "
            f"{precision} op (oneDNN's or Eigen's) converts to fp32 and back; expected slower "
            f"than fp32")


def cpu_slug() -> str:
    """The CPU model, its microarchitecture where known, and the usable cores as a folder-name
    part, e.g. "amd-epyc-zen-5-2c" or "intel-xeon-processor-2c"."""
    model = _safe(_cpu_model) or platform.machine() or "unknown-cpu"
    model = re.sub(r"\((r|tm)\)", "", model.lower())
    model = model.split("@")[0]  # "... CPU @ 2.20GHz": the clock is not the model
    slug = re.sub(r"[^a-z0-9]+", "-", model).strip("-") or "unknown-cpu"
    microarchitecture = (_safe(_cpu_id) or {}).get("microarchitecture")
    if microarchitecture:
        part = re.sub(r"[^a-z0-9]+", "-", microarchitecture.lower()).strip("-")
        if part not in slug:
            slug = f"{slug}-{part}"
    return f"{slug}-{_safe(_usable_cores) or os.cpu_count() or 0}c"


def cpu_label(environment: dict[str, Any]) -> str:
    """A result row's CPU in words: its model name, with the microarchitecture where the row
    has one ("AMD EPYC, Zen 5"); rows recorded before it was detected keep their model name."""
    model = environment.get("cpu_model") or "an unknown CPU"
    microarchitecture = environment.get("cpu_microarchitecture")
    if not microarchitecture or microarchitecture.lower() in model.lower():
        return model
    return f"{model}, {microarchitecture}"


def parse_cpu_id(cpuinfo: str) -> dict[str, Any] | None:
    """The first x86 processor's vendor, family, model and stepping in /proc/cpuinfo text, its
    signature in words and its microarchitecture (MICROARCHITECTURES; None where unlisted).
    None for a CPU that reports no x86 family (Arm)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block only
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        vendor, family = fields["vendor_id"], int(fields["cpu family"])
        model, stepping = int(fields["model"]), int(fields.get("stepping", "-1"))
    except (KeyError, ValueError):
        return None
    ranges = MICROARCHITECTURES.get((vendor, family), ())
    microarchitecture = next((name for first, last, name in ranges if first <= model <= last),
                             None)
    return {"vendor": vendor, "family": family, "model": model, "stepping": stepping,
            "signature": f"{vendor} family {family} model {model} stepping {stepping}",
            "microarchitecture": microarchitecture}


def measure_peak_gflops(dtype: str = "float32", seconds: float = 2.0, size: int = 2048) -> float:
    """Achieved GFLOP/s of TensorFlow's matmul on size x size `dtype` operands, on this machine.

    The ceiling a model's achieved FLOP rate is held against (napkin math next to a figure),
    measured instead of looked up: two untimed products first (oneDNN picks and caches its
    kernel, pages fault in), then products for about `seconds`, counted as 2 * size^3 FLOPs each
    over their total wall time. It counts what TensorFlow achieves with the threads it is given,
    not the datasheet's peak; on a loaded machine it is lower, so rows carry the load average.
    """
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype {dtype!r} is not one of float32, bfloat16, float16")
    if seconds <= 0 or size < 1:
        raise ValueError(f"seconds ({seconds}) must be > 0 and size ({size}) >= 1")
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    left = tf.cast(tf.constant(rng.standard_normal((size, size), np.float32)), dtype)
    right = tf.cast(tf.constant(rng.standard_normal((size, size), np.float32)), dtype)

    def product() -> None:
        # Reading one element back waits for the product, whatever the executor's mode.
        tf.linalg.matmul(left, right)[0, 0].numpy()

    for _ in range(2):
        product()
    count, start = 0, time.perf_counter()
    while True:
        product()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2.0 * size**3 * count / elapsed / 1e9


def _safe(function: Callable[[], Any]) -> Any:
    try:
        return function()
    except Exception:  # noqa: BLE001 - describing the machine must never sink a benchmark
        return None


def _run(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def _cpu_id() -> dict[str, Any] | None:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
        return parse_cpu_id(cpuinfo.read())


def _cpu_caches() -> str | None:
    """CPU 0's caches from sysfs, e.g. "L1d 48K, L1i 32K, L2 1024K, L3 32768K" (per core for
    L1 and L2; L3 shared as the VM sees it)."""
    parts = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level = (index / "level").read_text().strip()
        kind = (index / "type").read_text().strip()
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        parts.append(f"L{level}{suffix} {(index / 'size').read_text().strip()}")
    return ", ".join(parts) or None


def _cpu_model() -> str | None:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
        for line in cpuinfo:
            # x86 says "model name"; some ARM kernels only say "Model" or "CPU part".
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model"):
                return value.strip()
    return platform.processor() or None


def _module_version(module_name: str, distributions: list[str]) -> str | None:
    module = sys.modules.get(module_name)
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _opencv_jpeg() -> str | None:
    # Which libjpeg OpenCV decodes with (its wheel bundles its own libjpeg-turbo).
    if "cv2" not in sys.modules:
        importlib.import_module("cv2")
    for line in sys.modules["cv2"].getBuildInformation().splitlines():
        if line.strip().startswith("JPEG:"):
            return line.split(":", 1)[1].strip()
    return None


def _reader_build_info() -> dict[str, Any] | None:
    # The compiled reader knows its own compiler and libjpeg-turbo; it may not be built yet.
    module = importlib.import_module("flowers_tl._reader")
    build_info = getattr(module, "build_info", None)
    if build_info is None:
        return None
    return {str(key): value for key, value in dict(build_info()).items()}


def _first_of(build_info: dict[str, Any], word: str) -> str | None:
    for key, value in build_info.items():
        if word in key.lower() and value:
            return str(value)
    return None


def _cxx_version() -> str | None:
    output = _run(["c++", "--version"])
    return output.splitlines()[0] if output else None


def _dpkg_version(*packages: str) -> str | None:
    for package in packages:
        version = _run(["dpkg-query", "-W", "-f=${Version}", package])
        if version:
            return f"{package} {version}"
    return None


def _git_state(root: Path = SOURCE_ROOT) -> tuple[str | None, bool | None]:
    """(commit, uncommitted changes) of the checkout the package runs from, else (None, None).

    Only when `root` is itself a checkout's top level: an installed copy in a site-packages that
    sits inside some other repository (a venv in a project folder) must not report that one, and
    the caller's working folder never counts."""
    top_level = _run(["git", "-C", str(root), "rev-parse", "--show-toplevel"])
    if top_level is None or Path(top_level).resolve() != root.resolve():
        return None, None
    commit = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
    # --no-optional-locks: a status refresh must not take index.lock under someone's git commit.
    status = _run(["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain"])
    return commit, (None if status is None else bool(status))


def _gpu_names() -> list[str] | None:
    output = _run(["nvidia-smi", "-L"])
    return [line for line in output.splitlines() if line.startswith("GPU ")] if output else None


if __name__ == "__main__":
    import json

    description = describe_environment()
    description["cpu_slug"] = cpu_slug()
    if "--gflops" in sys.argv[1:]:
        for name in ("float32", "bfloat16"):
            description[f"matmul_gflops_{name}"] = _safe(lambda: measure_peak_gflops(name))
    print(json.dumps(description, indent=2))
