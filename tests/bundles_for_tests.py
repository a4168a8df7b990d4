"""Tiny deploy bundles for tests: two (N, 1, 2, 2) -> 3-class ONNX models built with onnx.helper, no torch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import runtime_bench
from runtime_bench.bundle import write_bundle_manifest

LABELS = ["cat", "dog", "fox"]
INPUT = {"shape": [None, 1, 2, 2], "dtype": "float32", "preprocessing": {"scale": 1.0}, "labels": LABELS}


def write_tiny_model(path: Path, seed: int) -> None:
    """(N, 1, 2, 2) -> Flatten -> Gemm -> (N, 3) logits."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "b"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def write_tiny_bundle(folder: Path, with_runtime_bench: bool = False) -> Path:
    """dense.onnx, model.onnx, eval.npz (12 images) and manifest.json in `folder`; with a copy of
    runtime_bench as toolchain/stages/bundle.py makes it, when `with_runtime_bench`."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_model(folder / "dense.onnx", 1)
    write_tiny_model(folder / "model.onnx", 2)
    images = np.random.default_rng(3).standard_normal((12, 1, 2, 2)).astype(np.float32)
    np.savez(folder / "eval.npz", images=images, labels=(np.arange(12) % 3).astype(np.int64))
    if with_runtime_bench:
        shutil.copytree(Path(runtime_bench.__file__).parent, folder / "runtime_bench",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    write_bundle_manifest(folder, {"dense": "dense.onnx", "pruned": "model.onnx"}, INPUT, "eval.npz",
                          extra={"source": "test"})  # fmt: skip
    return folder
