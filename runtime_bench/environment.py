"""What machine a benchmark ran on, and warnings about conditions that make latencies unreliable.

Every probe is best-effort: a missing file or tool gives null, never an error.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any

import numpy as np

GOVERNOR_PATH = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
TEGRA_RELEASE_PATH = "/etc/nv_tegra_release"
DEVICE_TREE_MODEL_PATH = "/proc/device-tree/model"
CPUINFO_PATH = "/proc/cpuinfo"


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            # device-tree strings end in NUL bytes.
            return handle.read().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def _cpu_model() -> str | None:
    text = _read_text(CPUINFO_PATH)
    if text:
        # x86 has "model name"; many ARM kernels only have "Hardware" or "Model".
        for key in ("model name", "Hardware", "Model", "Processor", "cpu model"):
            match = re.search(r"^" + re.escape(key) + r"\s*:\s*(.+)$", text, re.MULTILINE)
            if match:
                return match.group(1).strip()
    return platform.processor() or platform.machine() or None


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except Exception:  # not installed, or a broken install: the report just says null
        return None
    return getattr(onnxruntime, "__version__", None)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _jetson() -> dict[str, str | None] | None:
    if not os.path.exists(TEGRA_RELEASE_PATH):
        return None
    text = _read_text(TEGRA_RELEASE_PATH) or ""
    first = text.splitlines()[0] if text else ""
    # "# R35 (release), REVISION: 4.1, GCID: ..." -> "R35.4.1"
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
    return {
        "l4t_release": f"R{match.group(1)}.{match.group(2)}" if match else (first or None),
        "model": _read_text(DEVICE_TREE_MODEL_PATH),
    }


def _nvidia_gpus() -> list[str] | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, "--query-gpu=name", "--format=csv,noheader"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def environment_warnings(env: dict[str, Any]) -> list[str]:
    """Conditions that make latency numbers noisy or not comparable."""
    warnings = []
    governor = env.get("cpu_governor")
    if governor is not None and governor != "performance":
        warnings.append(
            f"CPU frequency governor is '{governor}', not 'performance': latencies may vary with clock scaling"
        )
    load = env.get("load_average")
    cores = env.get("logical_cores")
    if load and cores and load[0] > 0.5 * cores:
        warnings.append(f"machine looks busy: 1-minute load average {load[0]} > 0.5 x {cores} cores")
    return warnings


def capture() -> dict[str, Any]:
    """Describe this machine and runtime for a benchmark report (JSON-serializable)."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "onnxruntime": _onnxruntime_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "cpu_governor": _read_text(GOVERNOR_PATH),
        "load_average": _load_average(),
        "jetson": _jetson(),
        "nvidia_gpus": _nvidia_gpus(),
        "executable": sys.executable,
    }
    env["warnings"] = environment_warnings(env)
    return env
