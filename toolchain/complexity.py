"""What a model costs to run: multiply-adds and parameters, counted from the ops that actually run.

`torch.utils.flop_counter` counts at the operator level (convolutions, matrix products, attention), so it
sees Conv2d subclasses with their own forward, functional calls and custom blocks alike, where a counter
keyed on module classes misses or miscounts them (a third-party net of ~89 M multiply-adds was reported as
4.8 M). One multiply-add is 2 of its FLOPs. Element-wise work (activations, norms, adds) is not counted:
MACs here means the multiply-adds of the convolutions and matrix products.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(multiply-adds of one forward pass on one image of `example`'s size, parameters of the model)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example[:1])
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return int(counter.get_total_flops()) // 2, int(params)
