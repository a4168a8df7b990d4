"""Bench stage: ONNX models timed alternately on one runtime with the harness (runtime_bench), plus accuracy.

    bench_models({"dense": A.onnx, "pruned": B.onnx}, images, labels, classes, BenchSettings())  -> report
    bench_folder(out, BenchSettings())         dense vs pruned of a deploy folder on its test images
    bench_data(path, models, ...)              test images as arrays: an .npz, or an image folder
"""

from __future__ import annotations

import json
import pathlib

from runtime_bench.errors import InputError
from runtime_bench.settings import BenchSettings


def bench_models(models: dict, images, labels, num_classes: int, settings: BenchSettings | None = None,
                 progress: bool = True) -> dict:
    from runtime_bench.bench import run_benchmark

    settings = settings or BenchSettings()
    return run_benchmark(models, images, labels, num_classes, progress=progress, **settings.run_kwargs())


def bench_folder(out: pathlib.Path, settings: BenchSettings | None = None, test_images: int | None = None,
                 progress: bool = True) -> dict:
    """OUT/dense.onnx against OUT/model.onnx on (at most `test_images` of) the manifest's test images."""
    from ..artifact import read_manifest
    from .prepare import test_arrays

    out = pathlib.Path(out)
    manifest = read_manifest(out)
    images, labels = test_arrays(manifest, limit=test_images, progress=progress)
    return bench_models({"dense": str(out / "dense.onnx"), "pruned": str(out / "model.onnx")}, images, labels,
                        len(manifest["classes"]), settings, progress)


def bench_data(data: str, models: list, image_size: int | None = None, mean=None, std=None, progress: bool = True):
    """(images, labels, number of classes) from an .npz, or an image folder preprocessed like the pruning run
    (the manifest beside the first model) or as given (`image_size`, `mean`, `std`)."""
    path = pathlib.Path(data)
    if path.suffix == ".npz":
        from runtime_bench.evaldata import load_eval_npz

        images, labels, num_classes, _ = load_eval_npz(str(path))
        return images, labels, num_classes
    from ..artifact import MANIFEST
    from ..config import IMAGENET_MEAN, IMAGENET_STD
    from ..data import Preprocessing, load_images, scan_image_folder

    manifest_path = pathlib.Path(models[0]).parent / MANIFEST
    if image_size:
        prep = Preprocessing(image_size, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD))
    elif manifest_path.is_file():
        prep = Preprocessing.from_dict(json.loads(manifest_path.read_text())["preprocessing"])
    else:
        raise InputError(f"{models[0]}: no {MANIFEST} beside it to take preprocessing from; give --image-size")
    index = scan_image_folder(path)
    images, labels, _ = load_images(index.samples, prep, progress=progress)
    return images, labels, len(index.classes)
