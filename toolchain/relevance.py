"""Filter relevance: the LRP pruning criterion of Yeom et al. (METHOD.md), computed with zennit.

Rules: BatchNorm folded into the conv before it (reversibly), z+ on convs and epsilon (or z+) on linear
layers with biases left out, activations pass relevance through, residual sums and average pooling
split it proportionally, max pooling gives it to the winner. Relevance starts as 1.0 on each sample's
TRUE class logit. With these rules relevance is conserved layer to layer, which is what makes filter
scores of different layers comparable in one global ranking.

A filter's score is the sum over samples and positions of |R| at its conv's output.
Baselines: `l1` (L1 norm of the filter's weights) and `random`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
from zennit.composites import LayerMapComposite
from zennit.core import BasicHook, ParamMod
from zennit.layer import Sum
from zennit.rules import ClampMod, Epsilon, Norm, Pass, ZPlus
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, BatchNorm, Convolution
from zennit.types import Linear as LinearType

from runtime_bench.errors import InputError

HEAD_RULES = ("epsilon", "zplus")


class InvertedResidualCanonizer(AttributeCanonizer):
    """MobileNetV2-style blocks (`x + self.conv(x)`): route the add through a zennit Sum module.

    Without it the add passes the plain gradient to both branches and relevance is no longer conserved
    (measured: 1.0 at the head, 0.02 to 0.09 per sample behind the first residual block).
    """

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if getattr(module, "use_res_connect", False) and isinstance(getattr(module, "conv", None), nn.Module):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))


class ZPlusFlatFallback(BasicHook):
    """z+ (alpha1-beta0) with biases left out; an output that no input drove positively passes its
    relevance flat (uniformly) to its receptive field instead of dropping it.

    Why: with BatchNorm folded, some outputs are positive only because of the folded bias (common in
    depthwise convs, whose 3x3 window of one ReLU'd channel is often all zero). Plain z+ without the
    bias has a zero denominator there and silently loses that relevance; MobileNetV2 then keeps 1.0 at
    the head but about 0.04 behind the last depthwise conv. With the fallback each layer conserves.
    """

    def __init__(self, stabilizer: float = 1e-12):
        def gradient_mapper(out_grad, outputs):
            positive, negative, flat = outputs
            denominator = positive + negative
            driven = denominator.abs() > stabilizer
            safe = torch.where(driven, denominator, torch.ones_like(denominator))
            main = torch.where(driven, out_grad / safe, torch.zeros_like(out_grad))
            fallback = torch.where(driven, torch.zeros_like(out_grad), out_grad / flat.clamp(min=1.0))
            return [main, main, fallback]

        super().__init__(
            input_modifiers=[
                lambda input: input.clamp(min=0),
                lambda input: input.clamp(max=0),
                torch.ones_like,
            ],
            param_modifiers=[
                ClampMod(min=0.0, zero_params="bias"),
                ClampMod(max=0.0, zero_params="bias"),
                ParamMod(lambda param, name: torch.ones_like(param), zero_params="bias"),
            ],
            output_modifiers=[lambda output: output] * 3,
            gradient_mapper=gradient_mapper,
            reducer=lambda inputs, gradients: sum(i * g for i, g in zip(inputs, gradients)),
        )

    def copy(self):
        return self.__class__()


def canonizers_for(model: nn.Module) -> list:
    """BatchNorm folding for every model, plus the residual canonizer its blocks need."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in model.modules()):
        return [ResNetCanonizer()]  # includes SequentialMergeBatchNorm
    return [SequentialMergeBatchNorm(), InvertedResidualCanonizer()]


def lrp_composite(model: nn.Module, head_rule: str = "epsilon", epsilon: float = 1e-6) -> LayerMapComposite:
    if head_rule not in HEAD_RULES:
        raise InputError(f"head rule '{head_rule}': choose from {', '.join(HEAD_RULES)}")
    head = Epsilon(epsilon=epsilon, zero_params="bias") if head_rule == "epsilon" else ZPlus(zero_params="bias")
    layer_map = [
        (Activation, Pass()),
        (Sum, Norm(stabilizer=epsilon)),
        (AvgPool, Norm(stabilizer=epsilon)),
        (BatchNorm, Pass()),  # folded into the conv before it: identity here
        (Convolution, ZPlusFlatFallback()),
        (LinearType, head),
    ]
    return LayerMapComposite(layer_map=layer_map, canonizers=canonizers_for(model))


def conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def relevance_at(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    watch: dict[str, nn.Module],
    head_rule: str = "epsilon",
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Signed LRP relevance at the output of each watched module, for one batch (dict name -> tensor).

    `weights` scales each sample's starting relevance (default 1.0 on its true class logit).
    Parameters get no gradients: only the relevance is propagated.
    """
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    captured: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(module, inputs, output):
            if not output.requires_grad:  # the first layer: start the graph here, its own rule is not needed
                output = output.detach().requires_grad_(True)
            captured[name] = output
            return output

        return hook

    composite = lrp_composite(model, head_rule)
    try:
        with composite.context(model) as modified:
            handles = [m.register_forward_hook(capture(n)) for n, m in watch.items()]
            try:
                with torch.enable_grad():
                    logits = modified(images)
                    start = torch.zeros_like(logits)
                    scale = torch.ones(len(labels)) if weights is None else weights
                    start[torch.arange(len(labels)), labels] = scale.to(logits.dtype)
                    names = list(captured)
                    grads = torch.autograd.grad(logits, [captured[n] for n in names], grad_outputs=start)
            finally:
                for h in handles:
                    h.remove()
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return dict(zip(names, grads))


def lrp_filter_scores(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 32,
    head_rule: str = "epsilon",
    sample_weights: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Per conv name, the summed |R| of each output channel over all images (the Yeom criterion)."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    totals = {n: torch.zeros(m.out_channels, dtype=torch.float64) for n, m in convs.items()}
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        weights = None if sample_weights is None else sample_weights[start:stop]
        relevance = relevance_at(model, images[start:stop], labels[start:stop], convs, head_rule, weights)
        for name, r in relevance.items():
            totals[name] += r.abs().sum(dim=(0, 2, 3)).to(torch.float64)
        if progress is not None:
            progress(min(stop, len(images)) - start)
    return totals


def l1_filter_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """L1 norm of each filter's weights (the magnitude baseline)."""
    return {
        n: m.weight.detach().abs().flatten(1).sum(1).to(torch.float64)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }


def random_filter_scores(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        n: torch.rand(m.out_channels, generator=generator, dtype=torch.float64)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }
