"""Per-layer latency of a PyTorch model on a runtime: the cost that `--cost latency` weighs relevance by.

The model is exported with the TorchScript tracer, whose ONNX node names carry the module path of the
layer they came from (`/features/features.1/conv/conv.0/conv.0.0/Conv`); ONNX Runtime runs it with its
profiler on (every optimisation, as deployed), and each node's kernel time is charged to the module its
name names or, for a node named after an activation (ONNX Runtime names a fused conv + activation after
the activation's output), to the last conv or linear layer before that module.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from runtime_bench.errors import InputError

PROFILE_BACKENDS = ("ort-cpu",)


def layer_latency_profile(model: nn.Module, example: torch.Tensor, backend: str = "ort-cpu",
                          runs: int = 30) -> dict[str, float]:
    """Mean kernel time per conv/linear layer in ms over `runs` batch-1 runs (the first of which warm up)."""
    if backend not in PROFILE_BACKENDS:
        raise InputError(f"--profile-backend {backend}: choose from {', '.join(PROFILE_BACKENDS)}")
    import onnxruntime as ort

    layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    was_training = model.training
    model.eval()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "profiled.onnx")
        with torch.no_grad():
            torch.onnx.export(model, (example[:1],), path, dynamo=False, input_names=["input"],
                              output_names=["logits"], opset_version=17)
        model.train(was_training)
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "ort_profile")
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {"input": example[:1].numpy().astype(np.float32)}
        for _ in range(runs):
            session.run(None, feed)
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    order = [n for n, _ in model.named_modules()]
    owner_of = {}  # module name -> the conv or linear layer at or before it
    last = None
    for name in order:
        last = name if name in layers else last
        owner_of[name] = last
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        owner = owner_of.get(_module_path(event["name"]))
        if owner is not None:
            totals[owner] += event["dur"] / 1000.0 / runs
    return dict(totals)


def _module_path(node_name: str) -> str:
    """`/features/features.1/conv/conv.1/Conv` -> `features.1.conv.1`: each scope segment names one child,
    written as its parent's attribute plus the child's (`conv.1` is child 1 of `conv`)."""
    parts: list[str] = []
    for segment in node_name.strip("/").split("/")[:-1]:
        if parts and segment.startswith(parts[-1] + "."):
            parts[-1] = segment
        else:
            parts.append(segment)
    return ".".join(parts)
