"""The pruned-model artifact, without pickle: `pruned.json` (manifest) + `pruned.safetensors` (weights).

The manifest holds where the model came from (with hashes), the resolved config, the preprocessing,
the class names, every shrunk layer's shape and the plan (original channels each conv keeps). The
model is rebuilt from its original factory, reshaped from the manifest, then loaded strictly.
"""

from __future__ import annotations

import json
import pathlib

import torch
from safetensors.torch import load_file, save
from torch import nn

from runtime_bench.atomic import atomic_output
from runtime_bench.errors import InputError

from .models import ModelSource, build_model, is_weights_file, sha256_file

MANIFEST = "pruned.json"
WEIGHTS = "pruned.safetensors"
HEAD = "head.safetensors"  # the fitted head of the DENSE model, so that dense.onnx is the true baseline
FORMAT_VERSION = 1


def layer_shapes(model: nn.Module) -> dict[str, dict]:
    """Every prunable layer's shape, plus the shape of each parameter that a module holds outside such
    layers (ConvNeXt's layer scale, pruned with its channels), keyed `module.parameter`."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = {"type": "BatchNorm2d", "features": m.num_features}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"type": "Linear", "in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.LayerNorm):  # and subclasses such as ConvNeXt's LayerNorm2d
            shapes[name] = {"type": type(m).__name__, "shape": list(m.normalized_shape)}
        elif isinstance(m, nn.GroupNorm):
            shapes[name] = {"type": "GroupNorm", "channels": m.num_channels, "groups": m.num_groups}
        else:
            for attr, param in m.named_parameters(recurse=False):
                shapes[f"{name}.{attr}" if name else attr] = {"type": "Parameter", "shape": list(param.shape)}
    return shapes


def apply_shapes(model: nn.Module, shapes: dict[str, dict]) -> None:
    """Resize layers in place to the manifest's shapes (values come from the weights file next)."""
    modules = dict(model.named_modules())
    for name, spec in shapes.items():
        if spec["type"] == "Parameter":
            owner_name, _, attr = name.rpartition(".")
            owner = modules.get(owner_name)
            if owner is None or not isinstance(getattr(owner, attr, None), nn.Parameter):
                raise InputError(f"{MANIFEST}: parameter {name} does not exist in the rebuilt model")
            setattr(owner, attr, nn.Parameter(torch.empty(spec["shape"])))
            continue
        m = modules.get(name)
        if m is None or type(m).__name__ != spec["type"]:
            raise InputError(f"{MANIFEST}: layer {name} ({spec['type']}) does not exist in the rebuilt model")
        if isinstance(m, nn.Conv2d):
            m.in_channels, m.out_channels, m.groups = spec["in"], spec["out"], spec["groups"]
            m.weight = nn.Parameter(torch.empty(spec["out"], spec["in"] // spec["groups"], *m.kernel_size))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(spec["out"]))
        elif isinstance(m, nn.BatchNorm2d):
            n = spec["features"]
            m.num_features = n
            if m.affine:
                m.weight, m.bias = nn.Parameter(torch.empty(n)), nn.Parameter(torch.empty(n))
            if m.track_running_stats:
                m.running_mean, m.running_var = torch.empty(n), torch.empty(n)
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = spec["in"], spec["out"]
            m.weight = nn.Parameter(torch.empty(spec["out"], spec["in"]))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(spec["out"]))
        elif isinstance(m, nn.LayerNorm):
            m.normalized_shape = tuple(spec["shape"])
            if m.weight is not None:
                m.weight = nn.Parameter(torch.empty(spec["shape"]))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(spec["shape"]))
        elif isinstance(m, nn.GroupNorm):
            m.num_channels, m.num_groups = spec["channels"], spec["groups"]
            if m.affine:
                m.weight, m.bias = nn.Parameter(torch.empty(m.num_channels)), nn.Parameter(torch.empty(m.num_channels))


def source_hashes(source: ModelSource) -> dict[str, str]:
    hashes = dict(source.hashes)
    if is_weights_file(source.weights) and "weights" not in hashes:
        hashes["weights"] = sha256_file(source.weights)
    return hashes


def save_pruned(out: pathlib.Path, model: nn.Module, head: nn.Module, manifest: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest, format_version=FORMAT_VERSION, layers=layer_shapes(model))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    head_state = {"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()}
    # An old manifest must never vouch for new weights, should this run stop half-way.
    (out / MANIFEST).unlink(missing_ok=True)
    # Serialised here, written by Python: safetensors' own writer reports a full disk as its own error type.
    # The manifest goes last: its presence means the artifact is complete.
    files = ((WEIGHTS, save(state)), (HEAD, save(head_state)), (MANIFEST, json.dumps(manifest, indent=2).encode()))
    written = []
    try:
        for name, data in files:
            with atomic_output(out / name) as tmp:
                tmp.write_bytes(data)
            written.append(out / name)
    except BaseException:
        for path in written:  # a weights file without its manifest is no artifact
            path.unlink(missing_ok=True)
        raise


def read_manifest(out: pathlib.Path) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: no such file (run 'edgeprune prune ... --out {out}' first)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable manifest ({str(exc).splitlines()[0]})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return manifest


def _source(manifest: dict, path: pathlib.Path) -> ModelSource:
    src = manifest["source"]
    source = ModelSource(model=src["model"], weights=src.get("weights"), output=src.get("output"))
    rebuilt = build_model(source)
    current = source_hashes(source)
    for key, expected in src.get("hashes", {}).items():
        if current.get(key) != expected:
            raise InputError(
                f"{path}: the source model's {key} file changed since pruning "
                f"(sha256 {str(current.get(key))[:12]} != {expected[:12]}); prune again"
            )
    return rebuilt


def _head_module(weight: torch.Tensor) -> nn.Module:
    """A Linear head, or a conv classifier (SqueezeNet) for a 4-D weight."""
    if weight.ndim == 4:
        return nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]))
    return nn.Linear(weight.shape[1], weight.shape[0])


def load_dense_and_pruned(out: pathlib.Path) -> tuple[dict, nn.Module, nn.Module]:
    """Rebuild (manifest, dense model with its fitted head, pruned model) from an artifact folder."""
    manifest = read_manifest(out)
    path = out / MANIFEST
    head_name = manifest["head"]["name"]

    dense = _source(manifest, path)
    head_state = load_file(str(out / HEAD))
    head = _head_module(head_state["weight"])
    head.load_state_dict(head_state)
    from .models import replace_module

    replace_module(dense, head_name, head)

    pruned = _source(manifest, path)
    apply_shapes(pruned, manifest["layers"])
    try:
        pruned.load_state_dict(load_file(str(out / WEIGHTS)), strict=True)
    except Exception as exc:
        raise InputError(f"{out / WEIGHTS}: does not match {MANIFEST} ({str(exc).splitlines()[0]})") from None
    return manifest, dense.eval(), pruned.eval()
