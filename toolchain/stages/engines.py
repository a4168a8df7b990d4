"""TensorRT engines of an output folder: dense and pruned, per precision, and how they compare.

    build_engines(out, settings, manifest)   -> OUT/dense.<precision>.engine, OUT/model.<precision>.engine,
                                                OUT/tensorrt.json (what was built, how, from what)
    evaluate_engines(out, built, ...)        -> accuracy of every engine next to its FP32 ONNX model (top-1
                                                agreement, accuracy delta) and dense vs pruned latency per
                                                precision, timed alternately like the ONNX benchmark

    tensorrt_stage(out, settings, ...)        -> both, or None after one line on stderr saying why not

The `tensorrt:` section of a deploy config is toolchain.config.TensorRTSettings.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

from runtime_bench.settings import BenchSettings

from ..config import TensorRTSettings

ENGINE_RECORD = "tensorrt.json"
MODELS = (("dense", "dense.onnx"), ("pruned", "model.onnx"))


def skip_line(reason: str) -> str:
    return f"skipped TensorRT engine: {reason}"


def engine_file(onnx_name: str, precision: str) -> str:
    return f"{pathlib.Path(onnx_name).stem}.{precision}.engine"


def build_engines(out: pathlib.Path, settings: TensorRTSettings, manifest: dict, progress: bool = True, trt: Any = None,
                  cudart: Any = None) -> dict:
    """Build every (model, precision) engine; label -> build record. TensorRTUnavailable before any work
    when TensorRT, the CUDA bindings or a GPU is missing."""
    from exporters.tensorrt import build_engine, detect
    from runtime_bench.atomic import write_json_atomic

    from .prepare import small_arrays

    detect(trt, cudart)
    calibration = None
    if "int8" in settings.precisions:
        calibration, _ = small_arrays(manifest, progress=progress)
    built = {}
    for precision in settings.precisions:
        for label, onnx_name in MODELS:
            target = out / engine_file(onnx_name, precision)
            if progress:
                print(f"building the {precision} TensorRT engine of {out / onnx_name}", file=sys.stderr)
            built[f"{label}-{precision}"] = build_engine(
                out / onnx_name, target, precision, calibration_images=calibration, cache_dir=settings.cache_dir,
                batch_sizes=settings.batch_sizes, trt=trt, cudart=cudart)
    write_json_atomic({"settings": settings.to_dict(), "engines": built}, out / ENGINE_RECORD)
    return built


def evaluate_engines(built: dict, images: Any, labels: Any, num_classes: int, bench: BenchSettings,
                     progress: bool = True, trt: Any = None, cudart: Any = None) -> dict:
    """Accuracy of each engine next to its FP32 ONNX model, and dense vs pruned latency per precision,
    timed with the deploy's bench settings (on the TensorRT backend, whatever backend they name)."""
    from runtime_bench.accuracy import compare_with_reference
    from runtime_bench.backends import OrtCpuBackend
    from runtime_bench.bench import run_benchmark
    from runtime_bench.tensorrt_backend import TensorRTBackend

    accuracy = {}
    opened = {}
    for label, record in built.items():
        opened[label] = TensorRTBackend(record["engine"], trt=trt, cudart=cudart)
        accuracy[label] = compare_with_reference(OrtCpuBackend(record["onnx"]), opened[label], images, labels,
                                                 num_classes)
    latency = {}
    for precision in dict.fromkeys(r["precision"] for r in built.values()):
        pair = {"dense": opened[f"dense-{precision}"], "pruned": opened[f"pruned-{precision}"]}
        latency[precision] = run_benchmark(pair, images, labels, num_classes, progress=progress,
                                           **dict(bench.run_kwargs(), backend="tensorrt", threads=None))
    for backend in opened.values():
        backend.close()
    return {"engines": built, "accuracy": accuracy, "benchmarks": latency}


def tensorrt_stage(out: pathlib.Path, settings: TensorRTSettings | None, manifest: dict, images: Any, labels: Any,
                   bench: BenchSettings, progress: bool = True) -> dict | None:
    """Engines and their measurements for deploy, or None after one line on stderr saying why not."""
    from runtime_bench.tensorrt_backend import TensorRTUnavailable

    if settings is None:
        print(skip_line("the config has no tensorrt section"), file=sys.stderr)
        return None
    try:
        built = build_engines(out, settings, manifest, progress)
    except TensorRTUnavailable as exc:
        print(skip_line(str(exc)), file=sys.stderr)
        return None
    return evaluate_engines(built, images, labels, len(manifest["classes"]), bench, progress)
