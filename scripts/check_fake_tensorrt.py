"""Check the test double against the real thing: every attribute that tests/fake_tensorrt.py provides must
exist in the real `tensorrt` module (and the CUDA runtime bindings) with the same kind, so that code which
passes over the fake cannot call what TensorRT does not have.

    python scripts/check_fake_tensorrt.py     (on a machine where `import tensorrt` works; else it says so)

Compared: the module's attributes (for the fake of the installed TensorRT's generation), the public methods
and properties of each object the fake hands out against the real class it stands for, the member names
of every enum, and FakeCudaRuntime against cuda.bindings.runtime. Kinds: enum, class, property, callable,
value. Exit 0 when everything matches, 1 with one line per mismatch, 0 with a note when there is no tensorrt.
"""

from __future__ import annotations

import enum
import inspect
import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The fake's own helpers, which no real module has (state of the fake, or what tests read from it).
FAKE_ONLY = {"FakeTensorRT": {"generation", "cudart", "logger", "keep_first_logger"},
             "_Engine": {"layer_names", "session"},
             "FakeCudaRuntime": {"live_allocations", "device_region_ok"}}
# Fake class -> the names of the real class it stands for (the first one the real module has is used).
REAL_CLASSES = {"_Builder": ("Builder",), "_Network": ("INetworkDefinition",), "_OnnxParser": ("OnnxParser",),
                "_ParserError": ("IParserError", "ParserError"), "_OptimizationProfile": ("IOptimizationProfile",),
                "_TimingCache": ("ITimingCache",), "_Config": ("IBuilderConfig",), "_Config10": ("IBuilderConfig",),
                "_Config11": ("IBuilderConfig",), "_Engine": ("ICudaEngine",), "_Context": ("IExecutionContext",),
                "_Runtime": ("Runtime",), "HostMemory": ("IHostMemory",), "Logger": ("Logger",),
                "ILogger": ("ILogger",), "IProfiler": ("IProfiler",),
                "IInt8EntropyCalibrator2": ("IInt8EntropyCalibrator2",),
                "IInt8MinMaxCalibrator": ("IInt8MinMaxCalibrator",)}


def kind(value: Any) -> str:
    if isinstance(value, property) or type(value).__name__ in ("property", "getset_descriptor"):
        return "property"
    if isinstance(value, type):
        return "enum" if hasattr(value, "__members__") else "class"
    if isinstance(value, (enum.Enum, int, float, str)):
        return "value"
    return "callable" if callable(value) else "value"


def _members(value: Any) -> set:
    return set(getattr(value, "__members__", {}))


def compare(fake_names: dict, real: Any, where: str) -> list:
    """Mismatches of `fake_names` (name -> the fake's attribute, looked up statically) against `real`."""
    problems = []
    for name, fake_value in sorted(fake_names.items()):
        if not hasattr(real, name):
            problems.append(f"{where}.{name}: the fake has it ({kind(fake_value)}), the real one does not")
            continue
        real_value = inspect.getattr_static(real, name, getattr(real, name))
        fake_kind, real_kind = kind(fake_value), kind(real_value)
        if {fake_kind, real_kind} == {"class", "callable"}:
            continue  # a factory the fake writes as a method (trt.Builder(logger)) is a class in the real module
        if fake_kind != real_kind:
            problems.append(f"{where}.{name}: {fake_kind} in the fake, {real_kind} in the real one")
        elif fake_kind == "enum":
            missing = sorted(_members(fake_value) - _members(real_value))
            if missing:
                problems.append(f"{where}.{name}: members {', '.join(missing)} are only in the fake")
    return problems


def public(obj: Any, skip: set) -> dict:
    names = set(vars(obj)) | (set(vars(type(obj))) if not isinstance(obj, type) else set())
    return {n: inspect.getattr_static(obj, n) for n in names if not n.startswith("_") and n not in skip}


def check(trt: Any, cudart: Any, fake: Any) -> list:
    """Every mismatch of the fake module `fake` (tests/fake_tensorrt.py) against `trt` and `cudart`."""
    generation = int(str(trt.__version__).split(".")[0])
    fake_trt = fake.FakeTensorRT(generation=generation if generation in fake.FAKE_VERSIONS else 10)
    problems = compare(public(fake_trt, FAKE_ONLY["FakeTensorRT"]), trt, "tensorrt")
    for fake_name, real_names in REAL_CLASSES.items():
        if fake_name in ("_Config10", "_Config11") and fake_name != f"_Config{generation}":
            continue
        real_name = next((n for n in real_names if hasattr(trt, n)), None)
        if real_name is None:
            problems.append(f"tensorrt: none of {', '.join(real_names)} (what {fake_name} stands for) exists")
            continue
        fake_class = getattr(fake, fake_name)
        problems += compare(public(fake_class, FAKE_ONLY.get(fake_name, set())), getattr(trt, real_name),
                            f"tensorrt.{real_name}")
    if cudart is not None:
        problems += compare(public(fake.FakeCudaRuntime, FAKE_ONLY["FakeCudaRuntime"]), cudart, "cudart")
    return problems


def main() -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import tensorrt as trt
    except ImportError as exc:
        print(f"tensorrt is not importable here ({exc}); nothing to check (run this where TensorRT is installed)")
        return 0
    from runtime_bench.tensorrt_backend import TensorRTUnavailable, import_cuda_runtime

    try:
        cudart = import_cuda_runtime()
    except TensorRTUnavailable as exc:
        print(f"note: the CUDA runtime bindings are not importable ({exc}); checked TensorRT only")
        cudart = None
    import fake_tensorrt

    problems = check(trt, cudart, fake_tensorrt)
    for line in problems:
        print(line)
    print(f"TensorRT {trt.__version__}: {len(problems)} mismatch(es) between tests/fake_tensorrt.py and the real API")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
