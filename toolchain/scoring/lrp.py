"""Filter relevance: the LRP pruning criterion of Yeom et al. (docs/method.md).

Relevance starts as 1.0 on each sample's TRUE class logit and is conserved layer to layer, which is what
makes filter scores of different layers comparable in one global ranking. A filter's score is the sum over
samples and positions of |R| at its layer's output.

Two implementations of the same rules: `graph_pass.GraphLrp`, a fast explicit pass for the plain CNNs it
covers (VGG, ResNet, MobileNetV2), and `rules.RelevanceMode` for any model, which picks each op's rule
from what the op computes (the rules are listed there). BatchNorms right after a conv or linear layer
(found by dataflow, not by module order) are folded into it first, reversibly. The baselines are in
baselines.py.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn
from zennit.canonizers import NamedMergeBatchNorm
from zennit.types import BatchNorm

from runtime_bench.errors import InputError, first_line

from ..families import classifier_layer
from ..surgery import filter_layers, out_channels
from .rules import RelevanceMode, channel_totals

HEAD_RULES = ("epsilon", "zplus")
# The model run with its rules must compute what the model computes, relative to its largest logit (folding
# BatchNorm only changes rounding).
OUTPUT_TOLERANCE = 1e-3
FOLD_CHECK_TOLERANCE = 1e-4


class ExactMergeBatchNorm(NamedMergeBatchNorm):
    """zennit's BatchNorm folding for named (conv, BatchNorm) pairs, with the BatchNorm left as the EXACT
    identity: zennit sets its variance to 1, so it still divides by sqrt(1 + eps); with eps = 1e-3
    (MobileNetV3, EfficientNet, GoogLeNet) that shrinks every layer by 0.05% and shifted MobileNetV3's
    logits by 10%."""

    @staticmethod
    def merge_batch_norm(modules, batch_norm):
        NamedMergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1.0 - batch_norm.eps)


PLAIN_FORWARDS = (nn.Conv1d.forward, nn.Conv2d.forward, nn.Linear.forward)


def _scales_with_its_weight(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether doubling the layer's weight doubles its output less bias, which folding a BatchNorm into the
    weight relies on. A subclass with its own forward may not (weight standardisation undoes any scale)."""
    with torch.no_grad():
        y = layer(x)
        saved = layer.weight.data.clone()
        layer.weight.data.mul_(2.0)
        try:
            doubled = layer(x)
        finally:
            layer.weight.data.copy_(saved)
    bias = 0.0 if layer.bias is None else layer.bias.detach().view(1, -1, *([1] * (y.ndim - 2)))
    scale = float(y.abs().max()) + 1e-12
    return float((doubled - bias - 2 * (y - bias)).abs().max()) <= FOLD_CHECK_TOLERANCE * scale


def conv_batchnorm_pairs(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """(conv or linear, BatchNorm) name pairs where the BatchNorm's input IS that layer's output and folding
    is exact, found by running the model once on `example`; also returns the model's output (what the
    model run with its rules must reproduce).

    Why not module order (zennit's SequentialMergeBatchNorm): in DenseNet a dense layer's last conv is
    followed, in module order, by the next layer's BatchNorm, which reads the concat of all features.
    """
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> (layer, output kept alive)
    inputs_of: dict[str, tuple[nn.Module, torch.Tensor]] = {}  # layers with their own forward: to check
    pairs: list[tuple[str, str]] = []

    def after_linear(name):
        def hook(module, inputs, output):
            produced[id(output)] = (name, output)
            if type(module).forward not in PLAIN_FORWARDS:
                inputs_of[name] = (module, inputs[0])

        return hook

    def before_norm(name):
        def hook(module, inputs):
            source = produced.get(id(inputs[0]))
            if source is not None and source[1] is inputs[0]:
                pairs.append((source[0], name))

        return hook

    handles = []
    was_training = model.training
    model.eval()  # a train-mode pass would update the BatchNorm statistics
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(after_linear(name)))
        elif isinstance(module, BatchNorm):
            handles.append(module.register_forward_pre_hook(before_norm(name)))
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    pairs = [(layer, norm) for layer, norm in pairs
             if layer not in inputs_of or _scales_with_its_weight(*inputs_of[layer])]
    return pairs, output


def _run_with_rules(model: nn.Module, images: torch.Tensor, watch: dict[str, nn.Module], head_rule: str,
                    allow_fallback: bool, reference: torch.Tensor):
    """One forward of `model` under its rules: (where relevance starts, watched outputs, the mode)."""
    head = classifier_layer(model)[1]
    pointwise = {id(m.weight) for m in filter_layers(model).values() if isinstance(m, nn.Linear)}
    mode = RelevanceMode(model, head.weight, pointwise, head_rule, allow_fallback)
    captured: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                captured[name] = output

        return hook

    handles = [m.register_forward_hook(capture(n)) for n, m in watch.items()]
    try:
        with torch.enable_grad(), mode:
            output = model(images.detach().clone().requires_grad_(True))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model the rules cannot run is the user's input
        where = mode.unruled[0][0] if mode.unruled else type(model).__name__
        raise InputError(f"{where}: the model does not run with its LRP rules ({first_line(exc)})") from None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(output, torch.Tensor):
        raise InputError(f"{type(model).__name__}: the model's output is a {type(output).__name__}, not a tensor "
                         "of logits")
    if mode.unruled:
        seen = list(dict.fromkeys(mode.unruled))
        (name, op), more = seen[0], len(seen) - 1
        if not allow_fallback:
            also = f" (and {more} more layers)" if more else ""
            raise InputError(f"{name} ({op}): no LRP rule; pass --allow-fallback to use gradient x input for it{also}")
        for name, op in seen:
            warnings.warn(f"{name} ({op}): no LRP rule; using gradient x input for it", stacklevel=3)
    _check_same_output(model, output[:1].detach(), reference)
    logits, normaliser = mode.logits(output)
    if normaliser is not None:
        warnings.warn(f"{type(model).__name__}: the output is a {normaliser} of the logits, a monotone "
                      "normalisation; relevance starts at its input", stacklevel=3)
    return logits, captured, mode


def relevance_at(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    watch: dict[str, nn.Module],
    head_rule: str = "epsilon",
    weights: torch.Tensor | None = None,
    allow_fallback: bool = False,
) -> dict[str, torch.Tensor]:
    """Signed LRP relevance at the output of each watched module, for one batch (dict name -> tensor).

    `weights` scales each sample's starting relevance (default 1.0 on its true class logit).
    Parameters get no gradients: only the relevance is propagated. An op without an LRP rule raises
    InputError, or with `allow_fallback` gets gradient x input and a warning.
    """
    if head_rule not in HEAD_RULES:
        raise InputError(f"head rule '{head_rule}': choose from {', '.join(HEAD_RULES)}")
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    merges = []
    try:
        pairs, reference = conv_batchnorm_pairs(model, images[:1])
        if pairs:
            merges = ExactMergeBatchNorm([((layer,), norm) for layer, norm in pairs]).apply(model)
        logits, captured, _ = _run_with_rules(model, images, watch, head_rule, allow_fallback, reference)
        start = torch.zeros_like(logits)
        scale = torch.ones(len(labels)) if weights is None else weights
        start[torch.arange(len(labels)), labels] = scale.to(logits.dtype)
        names = [n for n in captured if captured[n].requires_grad]
        grads = torch.autograd.grad(logits, [captured[n] for n in names], grad_outputs=start, allow_unused=True)
    finally:
        for merge in reversed(merges):
            merge.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return {n: torch.zeros_like(captured[n]) if g is None else g for n, g in zip(names, grads)}


def rule_table(model: nn.Module, example: torch.Tensor, head_rule: str = "epsilon") -> dict[str, str]:
    """Op -> the rule it gets, for every op on the relevance path of `model` ('gradient' where the plain
    gradient is the rule, 'NONE' where there is none)."""
    model.eval()
    with torch.no_grad():
        reference = model(example[:1])
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with warnings.catch_warnings():  # the table itself says which ops have no rule
            warnings.simplefilter("ignore")
            _, _, mode = _run_with_rules(model, example[:1], {}, head_rule, True, reference)
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return dict(sorted(mode.rules.items()))


def _check_same_output(model: nn.Module, canonized: torch.Tensor, reference: torch.Tensor) -> None:
    """Folding and the rules must not change what the model computes (a wrong BatchNorm fold, or an op that
    relies on modifying its input in place, would)."""
    scale = float(reference.abs().max())
    gap = float((canonized - reference).abs().max())
    if not gap <= OUTPUT_TOLERANCE * scale + 1e-12:
        raise InputError(f"{type(model).__name__}: the model rewritten for LRP computes other logits than the model "
                         f"(max |diff| {gap:.3g} vs logit scale {scale:.3g}); its structure is not supported")


def lrp_filter_scores(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 32,
    head_rule: str = "epsilon",
    sample_weights: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
    allow_fallback: bool = False,
) -> dict[str, torch.Tensor]:
    """Per filter layer (conv, or pointwise Linear), the summed |R| of each output channel over all images
    (the Yeom criterion)."""
    from .graph_pass import GraphLrp

    layers = filter_layers(model)
    totals = {n: torch.zeros(out_channels(m), dtype=torch.float64) for n, m in layers.items()}
    model.eval()
    fast = GraphLrp.build(model, layers, head_rule)  # None: a node it does not cover; the rules by op do it all
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        weights = None if sample_weights is None else sample_weights[start:stop]
        if fast is not None:
            batch_scores = fast.filter_scores(images[start:stop], labels[start:stop], weights)
        else:
            relevance = relevance_at(model, images[start:stop], labels[start:stop], layers, head_rule, weights,
                                     allow_fallback)
            batch_scores = {name: channel_totals(r, isinstance(layers[name], nn.Linear)) for name, r in relevance.items()}
        for name, score in batch_scores.items():
            totals[name] += score
        if progress is not None:
            progress(min(stop, len(images)) - start)
    return totals
