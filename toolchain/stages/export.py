"""Export stage: OUT/dense.onnx and OUT/model.onnx, each through the parity gate against PyTorch.

    export_models(out, ExportSettings())   -> {"dense": record, "pruned": record}; OUT/export.json says what
                                              they were made from, so that `reusable_export` can skip a rerun
"""

from __future__ import annotations

import json
import pathlib
import sys

from runtime_bench.atomic import write_json_atomic
from runtime_bench.bundle import sha256_file

from ..artifact import WEIGHTS
from ..config import ExportSettings

EXPORT_RECORD = "export.json"
ONNX_FILES = (("dense", "dense.onnx"), ("pruned", "model.onnx"))


def _settings_record(settings: ExportSettings) -> dict:
    return {"exporter": settings.exporter, "simplifier": settings.simplifier}


def reusable_export(out: pathlib.Path, settings: ExportSettings) -> dict | None:
    """The export records when OUT's ONNX files were made from the pruned weights there now, the same way."""
    record_path = out / EXPORT_RECORD
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        fresh = (record["pruned_sha256"] == sha256_file(out / WEIGHTS)
                 and record["settings"] == _settings_record(settings)
                 and all(sha256_file(r["path"]) == r["sha256"] for r in record["results"].values()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record["results"] if fresh else None


def export_models(out: pathlib.Path, settings: ExportSettings | None = None, progress: bool = True) -> dict:
    """OUT/dense.onnx and OUT/model.onnx, each through the parity gate on the test images."""
    import torch

    from exporters.onnx import export_verified

    from ..artifact import load_dense_and_pruned
    from .prepare import test_arrays

    settings = settings or ExportSettings()
    out = pathlib.Path(out)
    manifest, dense, pruned = load_dense_and_pruned(out)
    images, _ = test_arrays(manifest, progress=progress)
    results = {}
    with torch.no_grad():
        for (label, name), model in zip(ONNX_FILES, (dense, pruned)):
            if progress:
                print(f"exporting {label} model to {out / name} and checking it against PyTorch", file=sys.stderr)
            results[label] = export_verified(model, images, out / name, exporter=settings.exporter,
                                             simplifier=settings.simplifier)
    write_json_atomic({"pruned_sha256": sha256_file(out / WEIGHTS), "settings": _settings_record(settings),
                       "results": results}, out / EXPORT_RECORD)
    return results


def parity_line(record: dict) -> str:
    return (f"{record['path']}: parity passed (top-1 agreement {record['top1_agreement']:.4f}, max |diff| "
            f"{record['max_abs_diff']:.2g} <= {record['tolerance']:.2g}), {record['file_bytes'] / 1e6:.1f} MB")
