"""Load a user's model: a torchvision name with a weights enum, or `file.py:factory` with a weights file.

Weights files are read without unpickling code (`weights_only=True`, or safetensors) and loaded
strictly; a mismatch is reported as one line listing the first missing/unexpected keys and shapes.
"""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
from dataclasses import dataclass, field

import torch
from torch import nn

from runtime_bench.bundle import sha256_file
from runtime_bench.errors import InputError, first_line

from .outputs import SelectOutput

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass
class ModelSource:
    """Where a model came from: enough to rebuild it, and to check that a manifest matches it."""

    model: str  # torchvision name or path/to/file.py:factory
    weights: str | None = None  # enum member name (e.g. IMAGENET1K_V1) or a weights file path
    output: str | None = None  # index or key picking the logits from a tuple/dict output
    hashes: dict[str, str] = field(default_factory=dict)  # sha256 of the factory file / weights file

    def to_dict(self) -> dict:
        return {"model": self.model, "weights": self.weights, "output": self.output, "hashes": self.hashes}


def is_weights_file(weights: str | None) -> bool:
    return weights is not None and (
        pathlib.Path(weights).suffix.lower() in WEIGHT_SUFFIXES or pathlib.Path(weights).exists()
    )


def check_torchvision_name(name: str) -> None:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise InputError(f"--model {name}: not a torchvision classification model{hint}")


def torchvision_weights(name: str, weights: str | None):
    """The weights enum member for a torchvision model (None for random init)."""
    import torchvision

    check_torchvision_name(name)
    if weights is None:
        weights = "DEFAULT"  # a torchvision name alone means its pretrained weights: the point of the tool
    if weights.lower() == "none":
        return None
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except KeyError:
        choices = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise InputError(f"--weights {weights}: not a weights name of {name}; choose from {choices}") from None


def build_model(source: ModelSource) -> nn.Module:
    """Build the model (and load its weights); returns it in eval mode."""
    if ":" in source.model and source.model.split(":", 1)[0].endswith(".py"):
        model = _from_factory(source)
    else:
        model = _from_torchvision(source)
    if source.output is not None:
        key: int | str = int(source.output) if source.output.lstrip("-").isdigit() else source.output
        model = SelectOutput(model, key)
    return model.eval()


def _from_torchvision(source: ModelSource) -> nn.Module:
    import torchvision

    check_torchvision_name(source.model)
    if is_weights_file(source.weights):
        model = torchvision.models.get_model(source.model, weights=None)
        load_weights_file(model, source.weights, source)
        return model
    enum = torchvision_weights(source.model, source.weights)
    try:
        return torchvision.models.get_model(source.model, weights=enum)
    except (OSError, RuntimeError) as exc:  # download refused offline, or a corrupt cached file
        raise InputError(
            f"--model {source.model}: could not load weights {enum} ({first_line(exc)}); "
            "run 'edgeprune assets' or put the file in the torch hub cache"
        ) from None


def _from_factory(source: ModelSource) -> nn.Module:
    file, _, factory = source.model.partition(":")
    path = pathlib.Path(file)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    source.hashes["factory"] = sha256_file(path)
    spec = importlib.util.spec_from_file_location(f"edgeprune_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a user's file: any error is theirs to read, in one line
        raise InputError(f"{path}: importing it raised {first_line(exc, typed=True)}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise InputError(f"{path}: has no callable '{factory}'")
    try:
        model = fn()
    except Exception as exc:
        raise InputError(f"{path}: {factory}() raised {first_line(exc, typed=True)}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"{path}: {factory}() returned {type(model).__name__}, not a torch.nn.Module")
    if source.weights is not None:
        load_weights_file(model, source.weights, source)
    return model


def read_state_dict(path: str | pathlib.Path) -> dict[str, torch.Tensor]:
    """Read a state dict without executing pickled code."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise InputError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        # "Unsupported operand": not a pickle at all (corrupt or random bytes), so nothing to refuse.
        pickled_objects = "Weights only load failed" in text or "weights_only" in text and "Unsupported" in text
        if pickled_objects and "Unsupported operand" not in text:
            raise InputError(
                f"{path}: refused: it holds pickled objects that only load with weights_only=False, which "
                "can run arbitrary code; save model.state_dict() or a .safetensors file instead"
            ) from None
        operand = [line.strip() for line in text.splitlines() if "Unsupported operand" in line]
        reason = f"not a pickle: {operand[0]}" if operand else first_line(exc)
        raise InputError(f"{path}: not a readable weights file ({reason})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def load_weights_file(model: nn.Module, path: str, source: ModelSource | None = None) -> None:
    state = read_state_dict(path)
    if source is not None:
        source.hashes["weights"] = sha256_file(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (first: {', '.join(shapes[:2])})")
        raise InputError(f"{path}: weights do not match the model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


OUTPUT_NORMALISERS = (nn.Softmax, nn.LogSoftmax, nn.Sigmoid)  # probabilities: the logits are their input


def output_layer(model: nn.Module, example: torch.Tensor) -> str | None:
    """The leaf layer whose output IS the model's logits (the classifier of a multi-output model picked with
    --output; the layer before a Softmax, LogSoftmax or Sigmoid at the output), or None when the output is
    computed after the last layer."""
    produced: list[tuple[str, nn.Module, tuple, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda module, inputs, output, name=n: produced.append((name, module, inputs,
                                                                                             output)))
             for n, m in model.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    last = next(((name, module, inputs) for name, module, inputs, tensor in produced if tensor is out), None)
    if last is not None and isinstance(last[1], OUTPUT_NORMALISERS) and last[2]:
        out = last[2][0]
        last = next(((name, module, inputs) for name, module, inputs, tensor in produced if tensor is out), None)
    return None if last is None else last[0]


def find_head(model: nn.Module, example: torch.Tensor | None = None) -> tuple[str, nn.Module]:
    """The classifier head: the layer producing the logits when `example` shows it, else
    families.classifier_layer (the last Linear, or the last conv of a model without one)."""
    from .families import classifier_layer

    name = output_layer(model, example) if example is not None else None
    if name is not None:
        return name, model.get_submodule(name)
    return classifier_layer(model)


def linear_head(model: nn.Module, name: str) -> nn.Linear:
    layer = model.get_submodule(name)
    if not isinstance(layer, nn.Linear):
        raise InputError(
            f"{name}: the classifier is a {type(layer).__name__}, not nn.Linear; --head fit needs a linear "
            "head, use --head keep"
        )
    return layer


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def check_logits(model: nn.Module, example: torch.Tensor, name: str) -> int:
    """Run one batch; the output must be a (batch, classes) tensor. Returns the class count.

    `name` is the model as the user gave it (--model), named in the errors."""
    try:
        with torch.no_grad():
            out = model(example)
    except InputError:
        raise
    except Exception as exc:  # the user's forward on our input: their error to read, in one line
        raise InputError(f"--model {name}: a batch of shape {tuple(example.shape)} makes it raise "
                         f"{first_line(exc, typed=True)} (check --image-size)") from None
    if not isinstance(out, torch.Tensor):
        raise InputError(f"--model {name}: returns {type(out).__name__}, not a tensor of class logits; "
                         "pick one with --output INDEX|KEY")
    if out.ndim != 2 or out.shape[0] != example.shape[0]:
        raise InputError(f"--model {name}: output has shape {tuple(out.shape)}, not (batch, classes) class logits")
    return int(out.shape[1])
