"""What machine and software a result was measured on, attached to every result row.

Throughput figures move with the CPU, the core count, the libjpeg-turbo build and the commit, so
each row carries them. Everything here is best effort: a missing tool or package becomes None,
and nothing in this module raises. Versions come from installed-package metadata unless the
module is already imported, so describing the environment never pays TensorFlow's import time.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent


def describe_environment() -> dict[str, Any]:
    """A flat dict of versions, hardware and source revision; missing things are None."""
    build_info = _safe(_reader_build_info) or {}
    git_commit, git_dirty = _safe(_git_state) or (None, None)
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": _safe(socket.gethostname),
        "python_version": platform.python_version(),
        "platform": _safe(platform.platform),
        "cpu_model": _safe(_cpu_model),
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_affinity": _safe(lambda: len(os.sched_getaffinity(0))),
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
            lambda: _first_of(build_info, "turbo") or _dpkg_version("libjpeg62-turbo", "libjpeg-turbo8")
        ),
        "reader_build_info": build_info or None,
        "git_commit": git_commit,
        "git_dirty": git_dirty,
        "gpus": _safe(_gpu_names),
    }


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
    info = build_info()
    return {str(key): value for key, value in dict(info).items()}


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


def _git_state() -> tuple[str | None, bool | None]:
    git = ["git", "-C", str(REPO_ROOT)]
    commit = _run(git + ["rev-parse", "HEAD"])
    # --no-optional-locks: a status refresh must not take index.lock under someone's git commit.
    status = _run(["git", "--no-optional-locks", "-C", str(REPO_ROOT), "status", "--porcelain"])
    return commit, (None if status is None else bool(status))


def _gpu_names() -> list[str] | None:
    output = _run(["nvidia-smi", "-L"])
    return output.splitlines() if output else None


if __name__ == "__main__":
    import json

    print(json.dumps(describe_environment(), indent=2))
