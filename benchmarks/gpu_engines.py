"""Dense and pruned TensorRT engines on a GPU: FP32, FP16 and INT8 of MobileNetV2 and ResNet18.

    python benchmarks/gpu_engines.py                    # on a machine with TensorRT, cuda-python and a GPU
    python scripts/gpu_table.py benchmarks/results/gpu_<card>.json    # the README table from its result

For each model: prune it on the default task (configs/default.yaml: Fashion-MNIST, 10 shots, LRP, 10%) unless
WORK/<model>/pruned.json is already there for the same config, export dense.onnx and model.onnx through the
parity gate, then for each precision build the dense and pruned engines (the small labelled set calibrates
INT8) and record: the accuracy of each engine on the test set next to its FP32 ONNX model (top-1 agreement,
accuracy delta); at batch 1 with dense and pruned timed alternately, the latency as trtexec defines it (H2D +
GPU compute + D2H, each from CUDA events) and the wall clock of the same calls on the host, p50/p90/p99, the
speedup and its bootstrap spread; per-layer times (TensorRT profiler) of both engines.
With onnxruntime-gpu, the FP32 ONNX models are also timed on ONNX Runtime's CUDA and TensorRT providers.
Writes benchmarks/results/gpu_<card>.json.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from exporters.tensorrt import PRECISIONS, build_engine, detect  # noqa: E402
from runtime_bench import environment  # noqa: E402
from runtime_bench.accuracy import compare_with_reference  # noqa: E402
from runtime_bench.atomic import write_json_atomic  # noqa: E402
from runtime_bench.backends import OrtCpuBackend, open_backend  # noqa: E402
from runtime_bench.bench import run_benchmark  # noqa: E402
from runtime_bench.errors import EdgePruneError  # noqa: E402
from runtime_bench.tensorrt_backend import TensorRTBackend  # noqa: E402

FORMAT = "edgeprune-gpu-engines/1"
MODELS = {"mobilenet_v2": "IMAGENET1K_V1", "resnet18": "IMAGENET1K_V1"}


def card_slug(gpu: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "gpu"


def _latency(summary: dict) -> dict:
    return {k: summary[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "count")}


def measure_pair(onnx: dict, precisions: list, calibration: Any, images: Any, labels: Any, num_classes: int,
                 work: pathlib.Path, timing: dict, cache_dir: pathlib.Path, layer_runs: int = 20,
                 trt: Any = None, cudart: Any = None) -> dict:
    """Every measurement of one model's dense and pruned ONNX files (`onnx`: {"dense": path, "pruned": path})
    per precision. `timing`: warmup_runs, min_runs, min_s of the alternating latency run."""
    results = {}
    for precision in precisions:
        built, engines, accuracy = {}, {}, {}
        for label, path in onnx.items():
            built[label] = build_engine(path, work / f"{label}.{precision}.engine", precision,
                                        calibration_images=calibration, cache_dir=cache_dir, trt=trt, cudart=cudart)
            engines[label] = TensorRTBackend(built[label]["engine"], trt=trt, cudart=cudart)
            accuracy[label] = compare_with_reference(OrtCpuBackend(path), engines[label], images, labels,
                                                     num_classes)
        report = run_benchmark(engines, images, labels, num_classes, backend="tensorrt", batch_size=1,
                               warmup_s=0.5, progress=False, **timing)
        events = {label: report["models"][label]["gpu_events"] for label in engines}
        layers = {label: engine.layer_times(images[:1], runs=layer_runs) for label, engine in engines.items()}
        for engine in engines.values():
            engine.close()
        comparison = report["comparison"]
        results[precision] = {
            "build": built,
            "accuracy": accuracy,
            # trtexec's latency (CUDA events) and, of the same calls, the wall clock on the host
            "latency": {label: _latency(e["latency"]) for label, e in events.items()},
            "wall_clock": {label: _latency(report["models"][label]["latency"]) for label in engines},
            "speedup_p50": comparison["speedup_p50"], "speedup_low": comparison["low"],  # of the wall clock
            "speedup_high": comparison["high"],
            "speedup_p50_events": events["dense"]["latency"]["p50_ms"] / events["pruned"]["latency"]["p50_ms"],
            **{part: {label: _latency(e[part]) for label, e in events.items()} for part in ("h2d", "compute", "d2h")},
            "layers": layers,
        }
    return results


def onnxruntime_gpu(onnx: dict, images: Any, labels: Any, num_classes: int, timing: dict) -> dict:
    """The FP32 ONNX models on ONNX Runtime's GPU providers, where onnxruntime-gpu is installed."""
    results = {}
    for backend in ("ort-cuda", "ort-trt"):
        try:
            opened = {label: open_backend(backend, path) for label, path in onnx.items()}
        except EdgePruneError as exc:
            results[backend] = {"skipped": str(exc)}
            continue
        report = run_benchmark(opened, images, labels, num_classes, backend=backend, batch_size=1, progress=False,
                               **timing)
        results[backend] = {"latency": {label: _latency(report["models"][label]["latency"]) for label in opened},
                            "speedup_p50": report["comparison"]["speedup_p50"]}
    return results


def prepare_model(name: str, weights: str, work: pathlib.Path, rate: float) -> tuple:
    """(manifest, {"dense": onnx, "pruned": onnx}) of `name` pruned on the default task, reusing finished stages."""
    from toolchain.assets import prepare_default_assets
    from toolchain.config import DeploySettings, PruneConfig, read_config_file
    from toolchain.stages.export import export_models, reusable_export
    from toolchain.stages.prune import reusable_manifest, run_prune

    config_file = ROOT / "configs" / "default.yaml"
    data, sections = read_config_file(config_file)
    settings = DeploySettings.from_sections(sections, str(config_file))
    if settings.assets and not pathlib.Path(data["data"]).is_dir():
        prepare_default_assets(pathlib.Path(settings.assets))
    config = PruneConfig(**data)
    config.model, config.weights, config.rate = name, weights, rate
    config.check()
    work.mkdir(parents=True, exist_ok=True)
    manifest = reusable_manifest(work, config) or run_prune(config, work, progress=True)
    if reusable_export(work, settings.export) is None:
        export_models(work, settings.export, progress=True)
    return manifest, {"dense": work / "dense.onnx", "pruned": work / "model.onnx"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="torchvision names (default: %(default)s)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--rate", type=float, default=0.1, help="fraction of conv filters pruned (default 0.1)")
    parser.add_argument("--work", default="artifacts/gpu", help="pruned models, ONNX files and engines go here")
    parser.add_argument("--min-runs", type=int, default=500)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--json", help="default: benchmarks/results/gpu_<card>.json")
    args = parser.parse_args()

    from toolchain.stages.prepare import small_arrays, test_arrays

    try:
        env = detect()
    except EdgePruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = pathlib.Path(args.json or ROOT / "benchmarks" / "results" / f"gpu_{card_slug(env['gpu'])}.json")
    timing = {"warmup_runs": 50, "min_runs": args.min_runs, "min_s": args.min_seconds}
    result = {"format": FORMAT, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python benchmarks/gpu_engines.py " + " ".join(sys.argv[1:]), "gpu": env["gpu"],
              "tensorrt_version": env["version"], "timing": dict(timing, batch_size=1),
              "environment": environment.capture(), "models": {}}
    work = pathlib.Path(args.work)
    for name in args.models:
        started = time.perf_counter()
        try:
            manifest, onnx = prepare_model(name, MODELS.get(name, "DEFAULT"), work / name, args.rate)
            images, labels = test_arrays(manifest, progress=False)
            calibration, _ = small_arrays(manifest, progress=False)
            num_classes = len(manifest["classes"])
            curve = manifest["curve"]
            entry = {"pruning": {"rate": curve[-1]["rate"], "macs_dense": curve[0]["macs"],
                                 "macs_pruned": curve[-1]["macs"], "params_dense": curve[0]["params"],
                                 "params_pruned": curve[-1]["params"], "test_images": int(len(labels)),
                                 "calibration_images": int(len(calibration)),
                                 "image_size": manifest["preprocessing"]["image_size"]},
                     "precisions": measure_pair(onnx, args.precisions, calibration, images, labels, num_classes,
                                                work / name, timing, work / "cache"),
                     "onnxruntime_gpu": onnxruntime_gpu(onnx, images, labels, num_classes, timing)}
        except EdgePruneError as exc:
            entry = {"error": str(exc)}
            print(f"{name}: {exc}", file=sys.stderr)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        result["models"][name] = entry
        write_json_atomic(result, target)  # after every model: an interrupted run keeps what it measured
    print(f"wrote {target}; README table: python scripts/gpu_table.py {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
