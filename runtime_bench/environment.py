"""What machine a benchmark ran on, and warnings about conditions that make latencies unreliable.

Every probe is best-effort: a missing file or tool gives null, never an error. All file reads go
through `root` (default "/") and all external commands through `runner`, so tests can describe a
Jetson with a fake sysfs tree and canned command output.

What `capture()` records (keys of the returned dict):

- python, python_implementation, numpy, onnxruntime, platform, machine, executable
- cpu_model, logical_cores, usable_cores, load_average ([1, 5, 15] minutes)
- cpu_int8: the CPU's int8 dot-product instructions named in /proc/cpuinfo (x86 avx512_vnni, avx_vnni, amx_int8;
  ARM asimddp, i8mm), what ONNX Runtime's int8 kernels are fast with; [] when it lists none, null off Linux
- cpu_governor: cpu0's cpufreq governor (null where there is no cpufreq, e.g. most containers)
- cpu_freq: {source "sysfs"|"cpuinfo", cpus, cur_mhz_min, cur_mhz_max, scaling_min_mhz,
  scaling_max_mhz, hw_max_mhz, governors, locked (every CPU's scaling_min == scaling_max)} or null
- thread_env: the thread-count environment variables that were set (OMP_NUM_THREADS, ...)
- thermal: [{zone, type, temp_c}] from /sys/class/thermal, or null
- jetson: null unless /etc/nv_tegra_release exists, else {l4t_release, model, nvpmodel {name, id,
  source}, clocks {source, cpu_locked, gpu_locked, emc_locked, locked}, power_rails [{rail,
  voltage_mv, current_ma, power_mw}], jtop (only when jetson-stats is importable)}
- nvidia_gpus: names from nvidia-smi, or null
- warnings: list of one-line strings (see `environment_warnings`)
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from typing import Any, Callable, Optional, Sequence

import numpy as np

from runtime_bench.errors import first_line

GOVERNOR_PATH = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
CPU_SYSFS = "/sys/devices/system/cpu"
TEGRA_RELEASE_PATH = "/etc/nv_tegra_release"
DEVICE_TREE_MODEL_PATH = "/proc/device-tree/model"
CPUINFO_PATH = "/proc/cpuinfo"
LOADAVG_PATH = "/proc/loadavg"
THERMAL_GLOB = "/sys/class/thermal/thermal_zone*"
DEVFREQ_GLOB = "/sys/class/devfreq/*"
HWMON_GLOBS = ("/sys/class/hwmon/hwmon*", "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*")
INA3221_IIO_GLOB = "/sys/bus/i2c/drivers/ina3221x/*/iio:device*"
NVPMODEL_STATUS_PATH = "/var/lib/nvpmodel/status"
NVPMODEL_CONF_PATH = "/etc/nvpmodel.conf"

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")
HOT_CELSIUS = 80.0
DRIFT_THRESHOLD = 0.10
COMMAND_TIMEOUT_S = 5.0
# Sensors that report a fixed placeholder instead of a temperature (Jetson's PMIC-Die sits at 100 C).
_PLACEHOLDER_ZONES = ("pmic",)
# devfreq device names of Jetson GPUs (Nano/TX2 "57000000.gpu", Xavier "gv11b", Orin "ga10b").
_GPU_DEVFREQ = re.compile(r"gpu|gv11b|ga10b|gp10b|gm20b|gb10b", re.IGNORECASE)

Runner = Callable[[Sequence[str]], Optional[str]]


# ---------------------------------------------------------------- low-level readers


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            # device-tree strings end in NUL bytes.
            return handle.read().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    if not text:
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def _index(path: str) -> int:
    """Trailing number of a sysfs name (cpu12, thermal_zone3, hwmon0) for numeric sorting."""
    match = re.search(r"(\d+)$", os.path.basename(path.rstrip("/")))
    return int(match.group(1)) if match else -1


def _sorted_glob(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern), key=lambda p: (_index(p), p))


def run_command(args: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> str | None:
    """stdout of `args` if the program exists and exits 0 within `timeout` seconds, else None."""
    binary = shutil.which(args[0])
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, *args[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def _safe(probe: Callable[[], Any]) -> Any:
    """A probe's value, or None if it raised: capturing the environment must never fail a benchmark."""
    try:
        return probe()
    except Exception:
        return None


# ---------------------------------------------------------------- general probes


def _cpu_model(root: str = "/") -> str | None:
    text = _read_text(_under(root, CPUINFO_PATH))
    if text:
        # x86 has "model name"; many ARM kernels only have "Hardware" or "Model".
        for key in ("model name", "Hardware", "Model", "Processor", "cpu model"):
            match = re.search(r"^" + re.escape(key) + r"\s*:\s*(.+)$", text, re.MULTILINE)
            if match:
                return match.group(1).strip()
    return platform.processor() or platform.machine() or None


INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_int8(root: str = "/") -> list[str] | None:
    """The int8 dot-product instructions /proc/cpuinfo lists (x86 "flags", ARM "Features")."""
    text = _read_text(_under(root, CPUINFO_PATH))
    if text is None:
        return None
    listed = set()
    for match in re.finditer(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE):
        listed.update(match.group(1).split())
    return [flag for flag in INT8_CPU_FLAGS if flag in listed]


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except Exception:  # not installed, or a broken install: the report just says null
        return None
    return getattr(onnxruntime, "__version__", None)


def _load_average(root: str = "/") -> list[float] | None:
    text = _read_text(_under(root, LOADAVG_PATH))
    if text:
        try:
            return [round(float(x), 2) for x in text.split()[:3]]
        except ValueError:
            pass
    if root != "/":
        return None
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _thread_env() -> dict[str, str]:
    return {name: os.environ[name] for name in THREAD_ENV_VARS if name in os.environ}


def _mhz(khz: int | None) -> float | None:
    return None if khz is None else round(khz / 1000.0, 1)


def cpu_frequency(root: str = "/") -> dict[str, Any] | None:
    """CPU clocks from cpufreq sysfs (kHz there, MHz here), else the "cpu MHz" lines of /proc/cpuinfo."""
    cpus = []
    for folder in _sorted_glob(_under(root, CPU_SYSFS) + "/cpu[0-9]*"):
        freq = os.path.join(folder, "cpufreq")
        if not os.path.isdir(freq):
            continue
        cur = _read_int(os.path.join(freq, "scaling_cur_freq"))
        if cur is None:
            cur = _read_int(os.path.join(freq, "cpuinfo_cur_freq"))
        cpus.append(
            {
                "cur": cur,
                "min": _read_int(os.path.join(freq, "scaling_min_freq")),
                "max": _read_int(os.path.join(freq, "scaling_max_freq")),
                "hw_max": _read_int(os.path.join(freq, "cpuinfo_max_freq")),
                "governor": _read_text(os.path.join(freq, "scaling_governor")),
            }
        )
    if cpus:

        def values(key: str) -> list[int]:
            return [c[key] for c in cpus if c[key] is not None]

        cur, mins, maxs, hw = values("cur"), values("min"), values("max"), values("hw_max")
        bounded = [c for c in cpus if c["min"] is not None and c["max"] is not None]
        return {
            "source": "sysfs",
            "cpus": len(cpus),
            "cur_mhz_min": _mhz(min(cur)) if cur else None,
            "cur_mhz_max": _mhz(max(cur)) if cur else None,
            "scaling_min_mhz": _mhz(min(mins)) if mins else None,
            "scaling_max_mhz": _mhz(max(maxs)) if maxs else None,
            "hw_max_mhz": _mhz(max(hw)) if hw else None,
            "governors": sorted({c["governor"] for c in cpus if c["governor"]}),
            "locked": all(c["min"] == c["max"] for c in bounded) if bounded else None,
        }
    text = _read_text(_under(root, CPUINFO_PATH)) or ""
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE)]
    if not mhz:
        return None
    return {
        "source": "cpuinfo",
        "cpus": len(mhz),
        "cur_mhz_min": round(min(mhz), 1),
        "cur_mhz_max": round(max(mhz), 1),
        "scaling_min_mhz": None,
        "scaling_max_mhz": None,
        "hw_max_mhz": None,
        "governors": [],
        "locked": None,
    }


def thermal_zones(root: str = "/") -> list[dict[str, Any]] | None:
    """[{zone, type, temp_c}] for every readable thermal zone (sysfs gives millidegrees C)."""
    zones = []
    for folder in _sorted_glob(_under(root, THERMAL_GLOB)):
        milli = _read_int(os.path.join(folder, "temp"))
        if milli is None:
            continue
        zones.append(
            {
                "zone": os.path.basename(folder),
                "type": _read_text(os.path.join(folder, "type")),
                "temp_c": round(milli / 1000.0, 1),
            }
        )
    return zones or None


def _nvidia_gpus(runner: Runner) -> list[str] | None:
    out = runner(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if out is None:
        return None
    return [line.strip() for line in out.splitlines() if line.strip()]


# ---------------------------------------------------------------- Jetson


def _l4t_release(text: str) -> str | None:
    first = text.splitlines()[0] if text else ""
    # "# R35 (release), REVISION: 4.1, GCID: ..." -> "R35.4.1"
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
    return f"R{match.group(1)}.{match.group(2)}" if match else (first or None)


def _nvpmodel_names(root: str) -> dict[int, str]:
    """Mode id -> name from /etc/nvpmodel.conf lines like `< POWER_MODEL ID=0 NAME=MAXN >`."""
    text = _read_text(_under(root, NVPMODEL_CONF_PATH)) or ""
    names = {}
    for match in re.finditer(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)", text):
        names[int(match.group(1))] = match.group(2)
    return names


def parse_nvpmodel_query(text: str) -> dict[str, Any] | None:
    """`nvpmodel -q` prints "NV Power Mode: MAXN" then the mode id (after any warning lines)."""
    match = re.search(r"NV Power Mode:\s*(\S.*?)\s*$", text, re.MULTILINE)
    if not match:
        return None
    mode_id = None
    rest = text[match.end() :].split()
    if rest and rest[0].isdigit():
        mode_id = int(rest[0])
    return {"name": match.group(1), "id": mode_id, "source": "nvpmodel -q"}


def _nvpmodel(root: str, runner: Runner) -> dict[str, Any] | None:
    out = runner(["nvpmodel", "-q"])
    parsed = parse_nvpmodel_query(out) if out else None
    if parsed is not None:
        return parsed
    # Without the tool (or without permission): the mode nvpmodel last set, e.g. "pmode:0002 fmode:quiet".
    status = _read_text(_under(root, NVPMODEL_STATUS_PATH)) or ""
    match = re.search(r"pmode:\s*(\d+)", status)
    if not match:
        return None
    mode_id = int(match.group(1))
    return {"name": _nvpmodel_names(root).get(mode_id), "id": mode_id, "source": NVPMODEL_STATUS_PATH}


def parse_jetson_clocks_show(text: str) -> dict[str, Any] | None:
    """Lock state from `jetson_clocks --show`.

    CPUs are locked when every online core has MinFreq == MaxFreq, the GPU when MinFreq == MaxFreq,
    the EMC (memory clock) when FreqOverride=1 or it runs at MaxFreq.
    """
    cpu_locked: list[bool] = []
    gpu_locked = emc_locked = None
    for line in text.splitlines():
        match = re.match(r"\s*(cpu\d+|GPU|EMC)\b", line)
        if not match:
            continue
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        low, high, cur = fields.get("MinFreq"), fields.get("MaxFreq"), fields.get("CurrentFreq")
        name = match.group(1)
        if name.startswith("cpu"):
            if fields.get("Online", "1") != "0" and low is not None and high is not None:
                cpu_locked.append(low == high)
        elif name == "GPU" and low is not None and high is not None:
            gpu_locked = low == high
        elif name == "EMC":
            emc_locked = fields.get("FreqOverride") == "1" or (cur is not None and cur == high)
    if not cpu_locked and gpu_locked is None and emc_locked is None:
        return None
    return _clocks("jetson_clocks --show", all(cpu_locked) if cpu_locked else None, gpu_locked, emc_locked)


def _clocks(source: str, cpu: bool | None, gpu: bool | None, emc: bool | None) -> dict[str, Any]:
    known = [v for v in (cpu, gpu, emc) if v is not None]
    return {
        "source": source,
        "cpu_locked": cpu,
        "gpu_locked": gpu,
        "emc_locked": emc,
        "locked": all(known) if known else None,
    }


def _sysfs_clocks(root: str) -> dict[str, Any] | None:
    freq = cpu_frequency(root)
    cpu = freq.get("locked") if freq and freq.get("source") == "sysfs" else None
    gpu = None
    for folder in _sorted_glob(_under(root, DEVFREQ_GLOB)):
        if not _GPU_DEVFREQ.search(os.path.basename(folder)):
            continue
        low, high = _read_int(os.path.join(folder, "min_freq")), _read_int(os.path.join(folder, "max_freq"))
        if low is not None and high is not None:
            gpu = (gpu is not False) and low == high
    if cpu is None and gpu is None:
        return None
    return _clocks("sysfs", cpu, gpu, None)  # the EMC clock is only visible through debugfs


def _jetson_clocks(root: str, runner: Runner) -> dict[str, Any] | None:
    out = runner(["jetson_clocks", "--show"])  # needs root; without it we fall back to sysfs
    parsed = parse_jetson_clocks_show(out) if out else None
    return parsed if parsed is not None else _sysfs_clocks(root)


def power_rails(root: str = "/") -> list[dict[str, Any]] | None:
    """Jetson INA3221 rails: hwmon (JetPack 5/6: mV and mA) or iio (JetPack 4: mW)."""
    rails = []
    seen = set()
    for pattern in HWMON_GLOBS:
        for folder in _sorted_glob(_under(root, pattern)):
            real = os.path.realpath(folder)
            if real in seen or not (_read_text(os.path.join(folder, "name")) or "").startswith("ina3221"):
                continue
            seen.add(real)
            for label_path in sorted(glob.glob(os.path.join(folder, "in*_label")), key=_label_index):
                n = _label_index(label_path)
                mv = _read_int(os.path.join(folder, f"in{n}_input"))
                ma = _read_int(os.path.join(folder, f"curr{n}_input"))
                rails.append(
                    {
                        "rail": _read_text(label_path),
                        "voltage_mv": mv,
                        "current_ma": ma,
                        "power_mw": round(mv * ma / 1000.0, 1) if mv is not None and ma is not None else None,
                    }
                )
    for folder in _sorted_glob(_under(root, INA3221_IIO_GLOB)):
        for name_path in sorted(glob.glob(os.path.join(folder, "rail_name_*")), key=_index):
            n = _index(name_path)
            rails.append(
                {
                    "rail": _read_text(name_path),
                    "voltage_mv": _read_int(os.path.join(folder, f"in_voltage{n}_input")),
                    "current_ma": _read_int(os.path.join(folder, f"in_current{n}_input")),
                    "power_mw": _read_int(os.path.join(folder, f"in_power{n}_input")),
                }
            )
    return rails or None


def _label_index(path: str) -> int:
    match = re.search(r"in(\d+)_label$", path)
    return int(match.group(1)) if match else -1


def _json_safe(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def _jtop_snapshot(timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any] | None:
    """jetson-stats' view (only if `jtop` is importable; its service may not run: then an error note)."""
    try:
        import jtop
    except Exception:
        return None
    result: dict[str, Any] = {"version": getattr(jtop, "__version__", None)}

    def read() -> None:
        try:
            with jtop.jtop() as jetson:
                if jetson.ok():
                    result["stats"] = _json_safe(dict(jetson.stats))
                    result["nvpmodel"] = _json_safe(getattr(jetson, "nvpmodel", None))
                    result["jetson_clocks"] = _json_safe(getattr(jetson, "jetson_clocks", None))
        except Exception as exc:  # e.g. the jtop service is not running
            result["error"] = first_line(exc, typed=True)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        result["error"] = f"no answer from the jtop service within {timeout:g} s"
    return result


def jetson_info(root: str = "/", runner: Runner | None = None) -> dict[str, Any] | None:
    """None on anything that is not a Jetson (no /etc/nv_tegra_release)."""
    runner = runner or run_command
    release = _under(root, TEGRA_RELEASE_PATH)
    if not os.path.exists(release):
        return None
    info = {
        "l4t_release": _safe(lambda: _l4t_release(_read_text(release) or "")),
        "model": _read_text(_under(root, DEVICE_TREE_MODEL_PATH)),
        "nvpmodel": _safe(lambda: _nvpmodel(root, runner)),
        "clocks": _safe(lambda: _jetson_clocks(root, runner)),
        "power_rails": _safe(lambda: power_rails(root)),
    }
    if root == "/":  # jtop describes this machine, never a fake root
        jtop_view = _safe(_jtop_snapshot)
        if jtop_view is not None:
            info["jtop"] = jtop_view
    return info


# ---------------------------------------------------------------- warnings


def temperature_warnings(zones: list[dict[str, Any]] | None, when: str = "") -> list[str]:
    """One warning naming the hottest zones above HOT_CELSIUS (placeholder sensors left out)."""
    hot = []
    for zone in zones or []:
        temp, kind = zone.get("temp_c"), str(zone.get("type") or zone.get("zone") or "?")
        if temp is None or any(p in kind.lower() for p in _PLACEHOLDER_ZONES) or not -40 <= temp <= 150:
            continue
        if temp > HOT_CELSIUS:
            hot.append((temp, kind))
    if not hot:
        return []
    hot.sort(reverse=True)
    listed = ", ".join(f"{kind} {temp:.1f} C" for temp, kind in hot[:3])
    suffix = f" {when}" if when else ""
    return [f"high temperature{suffix} ({listed} > {HOT_CELSIUS:g} C): the chip may be throttling"]


def environment_warnings(env: dict[str, Any]) -> list[str]:
    """Conditions that make latency numbers noisy or not comparable."""
    warnings = []
    governors = list((env.get("cpu_freq") or {}).get("governors") or [])
    if not governors and env.get("cpu_governor"):
        governors = [env["cpu_governor"]]
    slow = [g for g in governors if g != "performance"]
    if slow:
        warnings.append(
            f"CPU frequency governor is '{'/'.join(slow)}', not 'performance': latencies may vary with clock scaling"
        )
    load = env.get("load_average")
    cores = env.get("logical_cores")
    if load and cores and load[0] > 0.5 * cores:
        warnings.append(f"machine looks busy: 1-minute load average {load[0]} > 0.5 x {cores} cores")
    warnings += temperature_warnings(env.get("thermal"))
    jetson = env.get("jetson") or {}
    clocks = jetson.get("clocks") or {}
    if clocks.get("locked") is False:
        loose = [name for name in ("cpu", "gpu", "emc") if clocks.get(f"{name}_locked") is False]
        warnings.append(
            f"Jetson clocks are not locked ({', '.join(loose).upper()} scaling; run sudo jetson_clocks): "
            "latencies include frequency ramp-up"
        )
    return warnings


def drift_warnings(latencies: dict[str, dict[str, Any]], threshold: float = DRIFT_THRESHOLD) -> list[str]:
    """Warn per model whose block-p50 spread (stats.block_spread) exceeds `threshold`."""
    warnings = []
    for label, latency in latencies.items():
        blocks = (latency or {}).get("blocks") or {}
        spread = blocks.get("relative_range")
        if spread is not None and spread > threshold:
            warnings.append(
                f"{label}: p50 drifted {spread:.0%} across {blocks.get('count')} consecutive blocks of runs "
                f"(> {threshold:.0%}): the machine was noisy or throttling; rerun or lock the clocks"
            )
    return warnings


# ---------------------------------------------------------------- entry points


def capture(root: str = "/", runner: Runner | None = None) -> dict[str, Any]:
    """Describe this machine and runtime for a benchmark report (JSON-serializable, never raises).

    `root` and `runner` (args -> stdout or None) exist for tests; the defaults read this machine.
    """
    runner = runner or run_command
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "onnxruntime": _safe(_onnxruntime_version),
        "platform": _safe(platform.platform),
        "machine": platform.machine(),
        "cpu_model": _safe(lambda: _cpu_model(root)),
        "cpu_int8": _safe(lambda: cpu_int8(root)),
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "cpu_governor": _read_text(_under(root, GOVERNOR_PATH)),
        "cpu_freq": _safe(lambda: cpu_frequency(root)),
        "load_average": _safe(lambda: _load_average(root)),
        "thread_env": _thread_env(),
        "thermal": _safe(lambda: thermal_zones(root)),
        "jetson": _safe(lambda: jetson_info(root, runner)),
        "nvidia_gpus": _safe(lambda: _nvidia_gpus(runner)),
        "executable": sys.executable,
    }
    env["warnings"] = _safe(lambda: environment_warnings(env)) or []
    return env


def snapshot(root: str = "/") -> dict[str, Any]:
    """The conditions that change during a run (taken again after timing): clocks, heat, load."""
    return {
        "cpu_freq": _safe(lambda: cpu_frequency(root)),
        "thermal": _safe(lambda: thermal_zones(root)),
        "load_average": _safe(lambda: _load_average(root)),
    }
