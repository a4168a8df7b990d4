"""The baselines LRP is measured against: `l1` (L1 norm of each filter's weights), `random` and `taylor`
(first-order Taylor, Molchanov et al.)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..surgery import filter_layers, out_channels


def l1_filter_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """L1 norm of each filter's weights (the magnitude baseline)."""
    return {n: m.weight.detach().abs().flatten(1).sum(1).to(torch.float64) for n, m in filter_layers(model).items()}


def random_filter_scores(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        n: torch.rand(out_channels(m), generator=generator, dtype=torch.float64)
        for n, m in filter_layers(model).items()
    }


def taylor_filter_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 32,
                         progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """First-order Taylor baseline (Molchanov et al.): per filter, |sum over positions of activation x
    d(cross-entropy on the true class)/d(activation)|, summed over images. Plain autograd, no LRP rules."""
    layers = filter_layers(model)
    totals = {n: torch.zeros(out_channels(m), dtype=torch.float64) for n, m in layers.items()}
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    captured: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(module, inputs, output):
            captured[name] = output

        return hook

    handles = [m.register_forward_hook(capture(n)) for n, m in layers.items()]
    try:
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            with torch.enable_grad():
                # The input carries the graph (not the first layer's output made a leaf): an in-place ReLU
                # right after a conv (VGG) may not modify a leaf. Such a ReLU leaves the product unchanged.
                x = images[start:stop].detach().requires_grad_(True)
                loss = F.cross_entropy(model(x), labels[start:stop], reduction="sum")
                names = list(captured)
                grads = torch.autograd.grad(loss, [captured[n] for n in names])
            for name, grad in zip(names, grads):
                product = captured[name].detach() * grad
                channel_dim = product.ndim - 1 if isinstance(layers[name], nn.Linear) else 1
                spatial = tuple(d for d in range(1, product.ndim) if d != channel_dim)
                per_sample = product.sum(dim=spatial) if spatial else product
                totals[name] += per_sample.abs().sum(0).to(torch.float64)
            captured.clear()
            if progress is not None:
                progress(stop - start if stop <= len(images) else len(images) - start)
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return totals
