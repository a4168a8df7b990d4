"""TensorRT engines of an output folder: dense and pruned, per precision, and how they compare.

    build_engines(out, settings, manifest)   -> OUT/dense.<precision>.engine, OUT/model.<precision>.engine,
                                                OUT/tensorrt.json (what was built, how, from what)
    evaluate_engines(out, built, ...)        -> accuracy of every engine next to its FP32 ONNX model (top-1
                                                agreement, accuracy delta) and dense vs pruned latency per
                                                precision, timed alternately like the ONNX benchmark

The `tensorrt:` section of a deploy config (all keys optional):

    tensorrt:
      precisions: [fp16, int8]    # fp32, fp16, int8 (default [fp16])
      batch_sizes: [1, 1, 8]      # min, opt, max of the engines' dynamic batch
      cache_dir: ~/.cache/edgeprune/tensorrt   # engine and timing caches
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Any

from runtime_bench.errors import InputError

ENGINE_RECORD = "tensorrt.json"
MODELS = (("dense", "dense.onnx"), ("pruned", "model.onnx"))
SECTION_KEYS = ("precisions", "batch_sizes", "cache_dir")
DEFAULT_PRECISIONS = ("fp16",)


def skip_line(reason: str) -> str:
    return f"skipped TensorRT engine: {reason}"


def tensorrt_settings(section: Any, where: str) -> dict | None:
    """The deploy config's `tensorrt:` section, checked and with defaults; None when there is none."""
    from exporters.tensorrt import DEFAULT_BATCH_SIZES, check_batch_sizes, check_precision, default_cache_dir

    if section is None:
        return None
    if not isinstance(section, dict):
        raise InputError(f"{where}: tensorrt: expected a mapping with {', '.join(SECTION_KEYS)}")
    unknown = sorted(set(section) - set(SECTION_KEYS))
    if unknown:
        raise InputError(f"{where}: tensorrt: unknown option(s) {', '.join(unknown)}")
    precisions = section.get("precisions", list(DEFAULT_PRECISIONS))
    if isinstance(precisions, str):
        precisions = [precisions]
    if not isinstance(precisions, list) or not precisions:
        raise InputError(f"{where}: tensorrt: precisions must be a list such as [fp16, int8]")
    try:
        for precision in precisions:
            check_precision(precision)
        batch_sizes = check_batch_sizes(section.get("batch_sizes", list(DEFAULT_BATCH_SIZES)))
    except InputError as exc:
        raise InputError(f"{where}: tensorrt: {exc}") from None
    cache_dir = section.get("cache_dir")
    return {"precisions": list(dict.fromkeys(precisions)), "batch_sizes": list(batch_sizes),
            "cache_dir": os.path.expanduser(cache_dir) if cache_dir else str(default_cache_dir())}


def engine_file(onnx_name: str, precision: str) -> str:
    return f"{pathlib.Path(onnx_name).stem}.{precision}.engine"


def build_engines(out: pathlib.Path, settings: dict, manifest: dict, progress: bool = True, trt: Any = None,
                  cudart: Any = None) -> dict:
    """Build every (model, precision) engine; label -> build record. TensorRTUnavailable before any work
    when TensorRT, the CUDA bindings or a GPU is missing."""
    from exporters.tensorrt import build_engine, detect
    from runtime_bench.report import write_json_atomic

    from .prepare import small_arrays

    detect(trt, cudart)
    calibration = None
    if "int8" in settings["precisions"]:
        calibration, _ = small_arrays(manifest, progress=progress)
    built = {}
    for precision in settings["precisions"]:
        for label, onnx_name in MODELS:
            target = out / engine_file(onnx_name, precision)
            if progress:
                print(f"building the {precision} TensorRT engine of {out / onnx_name}", file=sys.stderr)
            built[f"{label}-{precision}"] = build_engine(
                out / onnx_name, target, precision, calibration_images=calibration, cache_dir=settings["cache_dir"],
                batch_sizes=settings["batch_sizes"], trt=trt, cudart=cudart)
    write_json_atomic({"settings": settings, "engines": built}, out / ENGINE_RECORD)
    return built


def evaluate_engines(built: dict, images: Any, labels: Any, num_classes: int, bench: dict, progress: bool = True,
                     trt: Any = None, cudart: Any = None) -> dict:
    """Accuracy of each engine next to its FP32 ONNX model, and dense vs pruned latency per precision.

    `bench`: batch_size, warmup_runs, min_runs, min_seconds (the deploy's resolved bench settings).
    """
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
        latency[precision] = run_benchmark(pair, images, labels, num_classes, backend="tensorrt",
                                           batch_size=bench["batch_size"], warmup_runs=bench["warmup_runs"],
                                           min_runs=bench["min_runs"], min_s=bench["min_seconds"], progress=progress)
    for backend in opened.values():
        backend.close()
    return {"engines": built, "accuracy": accuracy, "benchmarks": latency}
