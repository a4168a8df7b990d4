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
from runtime_bench.bundle import sha256_file
from runtime_bench.errors import InputError, first_line

from .models import ModelSource, build_model, is_weights_file

MANIFEST = "pruned.json"
WEIGHTS = "pruned.safetensors"
HEAD = "head.safetensors"  # the fitted head of the DENSE model, so that dense.onnx is the true baseline
FORMAT_VERSION = 2  # 2: every module's own tensors, whatever its class


# Shape attributes of the module kinds pruning resizes (torch-pruning's own pruners change these), by base
# class so that subclasses (TF-"same" convs, norm + activation layers) are covered too.
SHAPE_ATTRIBUTES: tuple[tuple[type, tuple[str, ...]], ...] = (
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.modules.batchnorm._BatchNorm, ("num_features",)),
    (nn.Linear, ("in_features", "out_features")),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.GroupNorm, ("num_channels", "num_groups")),
    (nn.PReLU, ("num_parameters",)),
)


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    tensors = dict(module.named_parameters(recurse=False))
    tensors.update((k, v) for k, v in module.named_buffers(recurse=False) if v is not None)
    return tensors


def layer_shapes(model: nn.Module) -> dict[str, dict]:
    """Per module that holds tensors: its class, the shape attributes of its kind (SHAPE_ATTRIBUTES) and the
    shape of every parameter and buffer it holds itself. Whatever the class (a subclass, a custom block with
    a parameter of its own), the rebuilt model is reshaped from this alone."""
    shapes = {}
    for name, m in model.named_modules():
        tensors = _own_tensors(m)
        if not tensors:
            continue
        spec: dict = {"type": type(m).__name__}
        for kind, attributes in SHAPE_ATTRIBUTES:
            if isinstance(m, kind):
                spec.update({a: list(v) if isinstance(v := getattr(m, a), tuple) else v for a in attributes})
        spec["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
        shapes[name] = spec
    return shapes


def apply_shapes(model: nn.Module, shapes: dict[str, dict]) -> None:
    """Resize modules in place to the manifest's shapes (values come from the weights file next)."""
    modules = dict(model.named_modules())
    for name, spec in shapes.items():
        m = modules.get(name)
        if m is None or type(m).__name__ != spec.get("type"):
            raise InputError(f"{MANIFEST}: layer {name} ({spec.get('type')}) does not exist in the rebuilt model")
        for kind, attributes in SHAPE_ATTRIBUTES:
            if isinstance(m, kind):
                for a in attributes:
                    if a in spec:
                        setattr(m, a, tuple(spec[a]) if isinstance(spec[a], list) else spec[a])
        own = _own_tensors(m)
        for attr, shape in spec.get("tensors", {}).items():
            if attr not in own:
                raise InputError(f"{MANIFEST}: {name}.{attr} does not exist in the rebuilt model")
            if list(own[attr].shape) == shape:
                continue
            empty = torch.empty(shape, dtype=own[attr].dtype)
            if isinstance(own[attr], nn.Parameter):
                setattr(m, attr, nn.Parameter(empty, requires_grad=own[attr].requires_grad))
            else:
                m.register_buffer(attr, empty, persistent=attr not in m._non_persistent_buffers_set)


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
        raise InputError(f"{path}: not a readable manifest ({first_line(exc)})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION} "
                         "(written by another edgeprune version; prune again)")
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
        raise InputError(f"{out / WEIGHTS}: does not match {MANIFEST} ({first_line(exc)})") from None
    return manifest, dense.eval(), pruned.eval()
