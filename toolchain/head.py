"""A linear classifier head fitted on the frozen backbone's features of the small labelled set.

The backbone never changes (no fine-tuning is possible with ~10 images per class); only this head
is fitted, by L2-regularised multinomial logistic regression (full-batch L-BFGS, deterministic).
"""

from __future__ import annotations

import torch
from torch import nn

from .models import linear_head, replace_module


@torch.no_grad()
def head_features(model: nn.Module, images: torch.Tensor, head_name: str, batch_size: int = 64) -> torch.Tensor:
    """The inputs of the model's linear head for every image."""
    head = linear_head(model, head_name)
    captured = []
    handle = head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].detach()))
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        handle.remove()
    return torch.cat(captured)


def fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 1e-3,
               iterations: int = 200) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(features.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")
    features = features.detach().float()

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(features), labels) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    linear.requires_grad_(False)
    return linear


def fit_head(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, head_name: str,
             l2: float = 1e-3) -> nn.Linear:
    """Replace the model's linear head by one fitted on (images, labels) over the frozen backbone."""
    head = fit_linear(head_features(model, images, head_name), labels, num_classes, l2)
    replace_module(model, head_name, head)
    return head
