"""Every stage in order, what `edgeprune deploy` and `make deploy` run; callable from Python:

    report = deploy(PruneConfig(...), DeploySettings(), "artifacts/deploy")

Finished stages are reused when their inputs are unchanged (keyed by hashes), so a rerun after an
interruption or a changed bench setting does not prune or export again. Writes OUT/config.resolved.yaml once
the prune stage succeeded (bad input leaves nothing in OUT), then the bundle and OUT/report.{json,md,png}.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time

from runtime_bench.errors import InputError

from ..config import INT8_MAX_DROP, DeploySettings, PruneConfig


def output_folder(path) -> pathlib.Path:
    """OUT as a Path, with what a killed run left under temporary names removed; an error if it is a file."""
    from runtime_bench.atomic import remove_stale_temp_files

    out = pathlib.Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    for folder in (out, out / "bundle"):
        remove_stale_temp_files(folder)
    return out


def _reused(what: str) -> None:
    print(f"reusing {what}", file=sys.stderr)


def deploy(config: PruneConfig, settings: DeploySettings | None = None, out="artifacts/deploy",
           progress: bool = True) -> dict:
    """Prune, export, INT8 (with `export.precision` int8), TensorRT (with a tensorrt section), bundle, bench,
    report; returns the report (also OUT/report.json)."""
    import yaml

    from runtime_bench.atomic import write_text_atomic

    from ..artifact import MANIFEST
    from ..assets import prepare_default_assets
    from .bench import bench_models
    from .bundle import make_bundle
    from .engines import tensorrt_stage
    from .export import export_models, reusable_export
    from .precision import INT8_MODEL, int8_stage, int8_summary, reusable_int8
    from .prepare import test_arrays
    from .prune import reusable_manifest, run_prune
    from .report import build_report, write_report

    settings = settings or DeploySettings()
    config = dataclasses.replace(config)
    config.check()
    out = output_folder(out)
    timings = {}
    started = time.perf_counter()
    if settings.assets:
        prepare_default_assets(pathlib.Path(settings.assets))
        timings["assets"] = time.perf_counter() - started
    resolved = dict(config.to_dict(), **settings.to_dict())

    t = time.perf_counter()
    manifest = reusable_manifest(out, config)
    if manifest is None:
        manifest = run_prune(config, out, progress)
    else:
        _reused(f"{out / MANIFEST}: same config hash {manifest['config_hash'][:12]}")
    timings["prune"] = time.perf_counter() - t
    write_text_atomic(yaml.safe_dump(resolved, sort_keys=False), out / "config.resolved.yaml")

    t = time.perf_counter()
    export = reusable_export(out, settings.export)
    if export is None:
        export = export_models(out, settings.export, progress)
    else:
        _reused(f"{out / 'dense.onnx'} and {out / 'model.onnx'}: same pruned weights")
    timings["export"] = time.perf_counter() - t

    int8 = None
    if settings.export.precision == "int8":
        t = time.perf_counter()
        budget = config.max_drop if config.max_drop is not None else INT8_MAX_DROP
        int8 = reusable_int8(out, budget)
        if int8 is None:
            int8 = int8_stage(out, budget, progress)
        else:
            _reused(f"{out / 'model.int8.onnx'}: same model.onnx")
        print(int8_summary(int8), file=sys.stderr)
        timings["int8"] = time.perf_counter() - t

    t = time.perf_counter()
    images, labels = test_arrays(manifest, progress=progress)
    classes = len(manifest["classes"])
    t_engines = time.perf_counter()
    engines = tensorrt_stage(out, settings.tensorrt, manifest, images, labels, settings.bench, progress)
    engine_seconds = time.perf_counter() - t_engines
    make_bundle(out, images, labels, manifest, engines["engines"] if engines else None,
                extra_models={"pruned-int8": out / INT8_MODEL} if int8 is not None else None)
    bench = bench_models({"dense": str(out / "dense.onnx"), "pruned": str(out / "model.onnx")}, images, labels,
                         classes, settings.bench, progress)
    if engines is not None:
        timings["tensorrt"] = engine_seconds
    if int8 is not None:
        int8_model = str(out / INT8_MODEL)
        vs = {label: bench_models({label: str(out / name), "pruned-int8": int8_model}, images, labels, classes,
                                  settings.bench, progress)
              for label, name in (("pruned", "model.onnx"), ("dense", "dense.onnx"))}
        int8 = {"record": int8, "vs_pruned": vs["pruned"]["comparison"], "vs_dense": vs["dense"]["comparison"],
                "p50_ms": vs["dense"]["models"]["pruned-int8"]["latency"]["p50_ms"]}
    timings["bench"] = time.perf_counter() - t - engine_seconds

    report = build_report(out, export, bench, resolved)
    if int8 is not None:
        report["int8"] = int8
    if engines is not None:
        report["tensorrt"] = engines
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    write_report(out, report)
    return report
