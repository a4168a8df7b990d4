"""Score, prune and shrink pretrained CNNs: scoring, surgery, control, the deploy stages, and a thin CLI.

What a notebook imports (each name is loaded on first use, so `import toolchain` stays instant):

    import toolchain
    config = toolchain.PruneConfig(model="mobilenet_v2", data="my_images/", max_drop=0.01, compensate=True)
    manifest = toolchain.run_prune(config, "out")           # out/pruned.json, pruned.safetensors, head.safetensors
    toolchain.export_models("out")                         # out/dense.onnx, out/model.onnx, parity-gated
    report = toolchain.bench_folder("out", toolchain.BenchSettings(min_runs=100))   # dense vs pruned, ORT CPU
    report = toolchain.deploy(config, toolchain.DeploySettings(), "out")            # all of it, as `make deploy`

Layout: scoring/ (relevance: SCORERS), surgery/ (the pruning graph: the only torch_pruning importer),
control/ (the accuracy-aware controller and the prune loops), stages/ (prepare -> prune -> export ->
precision -> engines -> bundle -> bench -> report; deploy runs them all), cli.py (argparse and printing).
"""

from __future__ import annotations

import importlib

_API = {
    "PruneConfig": "toolchain.config",
    "DeploySettings": "toolchain.config",
    "ExportSettings": "toolchain.config",
    "TensorRTSettings": "toolchain.config",
    "read_config_file": "toolchain.config",
    "BenchSettings": "runtime_bench.settings",
    "SCORERS": "toolchain.scoring",
    "prepare_default_assets": "toolchain.assets",
    "load_dense_and_pruned": "toolchain.artifact",
    "run_prune": "toolchain.stages.prune",
    "export_models": "toolchain.stages.export",
    "export_int8": "toolchain.stages.precision",
    "build_engines": "toolchain.stages.engines",
    "bench_models": "toolchain.stages.bench",
    "bench_folder": "toolchain.stages.bench",
    "deploy": "toolchain.stages.deploy",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'toolchain' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
