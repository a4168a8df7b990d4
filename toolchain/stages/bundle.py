"""The deploy bundle `OUT/bundle/`: everything a device needs, and nothing that needs torch.

model.onnx and dense.onnx (and model.int8.onnx when deploy made one), manifest.json (hashes, input spec, preprocessing, labels), an evaluation
subset as eval.npz, and a copy of runtime_bench. On the device (numpy + onnxruntime only):

    cd bundle && python -m runtime_bench .

When TensorRT engines were built they are in the bundle too (`engines` in the manifest), benchmarked with
`python -m runtime_bench . --backend tensorrt` on a machine with the same TensorRT version and GPU model.
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np

import runtime_bench
from runtime_bench.atomic import atomic_output, disk_full, is_disk_full, temp_name
from runtime_bench.bundle import write_bundle_manifest

EVAL_IMAGES = 200  # enough for a per-class accuracy check on the device, small enough to copy


def make_bundle(out: pathlib.Path, images: np.ndarray, labels: np.ndarray, manifest: dict,
                engines: dict | None = None, eval_images: int = EVAL_IMAGES,
                extra_models: dict | None = None) -> pathlib.Path:
    """`engines`: label -> build record (exporters.tensorrt.build_engine) of engines to include;
    `extra_models`: label -> ONNX file timed after dense and pruned (e.g. {"pruned-int8": OUT/model.int8.onnx})."""
    bundle = out / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    engines = engines or {}
    engine_names = {label: pathlib.Path(r["engine"]).name for label, r in engines.items()}
    models = {"dense": out / "dense.onnx", "pruned": out / "model.onnx"}
    models.update({label: pathlib.Path(path) for label, path in (extra_models or {}).items()})
    for source in list(models.values()) + [pathlib.Path(r["engine"]) for r in engines.values()]:
        with atomic_output(bundle / source.name) as tmp:
            shutil.copyfile(source, tmp)
    # A balanced subset: every class keeps its share, in the test set's order.
    picked = np.concatenate([np.flatnonzero(labels == c)[: max(1, eval_images // len(manifest["classes"]))]
                             for c in range(len(manifest["classes"]))])
    with atomic_output(bundle / "eval.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images[picked], labels=labels[picked].astype(np.int64),
                     class_names=np.array(manifest["classes"]))
    # Copied under a temporary name and renamed, so that a stopped run never leaves half a package.
    package, building = bundle / "runtime_bench", bundle / temp_name("runtime_bench")
    source = pathlib.Path(runtime_bench.__file__).parent
    try:
        # File by file rather than shutil.copytree, which turns a full disk into an error without its errno.
        for file in sorted(source.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                target = building / file.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target)
        shutil.rmtree(package, ignore_errors=True)
        building.rename(package)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(package) from None
        raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    write_bundle_manifest(
        bundle, {label: path.name for label, path in models.items()},
        {"shape": [None, *images.shape[1:]], "dtype": "float32", "preprocessing": manifest["preprocessing"],
         "labels": list(manifest["classes"])},
        eval_file="eval.npz",
        extra={"source": manifest["source"], "pruned_rate": manifest["curve"][-1]["rate"]},
        engines={label: {"file": engine_names[label], "precision": r["precision"],
                         "tensorrt_version": r["tensorrt_version"], "gpu": r["gpu"]} for label, r in engines.items()},
    )
    return bundle
