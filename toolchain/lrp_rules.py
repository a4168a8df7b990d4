"""LRP rules of our own, written for speed: the conv rule is one extra convolution and one transposed
convolution in the common case, instead of zennit's generic modified-forward-then-autograd recipe.

ZPlusFlatFallback: z+ (alpha1-beta0) with biases left out; an output that no input drove positively
passes its relevance flat (uniformly) to its receptive field instead of dropping it.
Why the fallback: with BatchNorm folded, some outputs are positive only because of the folded bias
(common in depthwise convs, whose 3x3 window of one ReLU'd channel is often all zero). Plain z+
without the bias has a zero denominator there and silently loses that relevance; MobileNetV2 then
keeps 1.0 at the head but about 0.04 behind the last depthwise conv. With the fallback every layer
conserves relevance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input
from zennit.core import Hook

STABILIZER = 1e-12


class ZPlusFlatFallback(Hook):
    """z+ for Conv2d with a flat fallback for undriven outputs (see the module docstring)."""

    def forward(self, module, input, output):
        self.stored_tensors["input"] = input

    def copy(self):
        return self.__class__()

    def _window_sizes(self, x, ones, conv) -> torch.Tensor:
        """How many real (not padding) inputs each output reads: the flat rule's denominator; cached."""
        key = (tuple(x.shape[1:]), tuple(ones.shape))
        cached = self.stored_tensors.get("window_sizes")
        if cached is None or cached[0] != key:
            sizes = F.conv2d(torch.ones_like(x[:1]), ones, **conv).clamp(min=1.0)
            cached = (key, sizes)
            self.stored_tensors["window_sizes"] = cached
        return cached[1]

    def backward(self, module, grad_input, grad_output):
        x = self.stored_tensors["input"][0].detach()
        relevance = grad_output[0]
        weight = module.weight.detach()
        conv = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation,
                "groups": module.groups}
        if isinstance(module.padding, str):  # 'same'/'valid' are not accepted by conv2d_input
            return None
        x_pos = x.clamp(min=0)
        w_pos = weight.clamp(min=0)
        z = F.conv2d(x_pos, w_pos, **conv)
        has_negative_inputs = bool((x < 0).any())  # skip the x- w- term after a ReLU (the usual case)
        if has_negative_inputs:
            x_neg, w_neg = x.clamp(max=0), weight.clamp(max=0)
            z = z + F.conv2d(x_neg, w_neg, **conv)
        undriven = z.abs() <= STABILIZER
        # z is never negative without negative inputs (x+ w+), so a clamp replaces a masked division.
        denominator = torch.where(undriven, torch.ones_like(z), z) if has_negative_inputs else z.clamp(min=STABILIZER)
        scaled = relevance / denominator
        undriven_relevance = relevance * undriven
        if has_negative_inputs:
            scaled = scaled * ~undriven
        result = x_pos * conv2d_input(x.shape, w_pos, scaled, **conv)
        if has_negative_inputs:
            result = result + x_neg * conv2d_input(x.shape, w_neg, scaled, **conv)
        if bool(undriven_relevance.any()):
            ones = torch.ones_like(weight)
            result = result + conv2d_input(x.shape, ones, undriven_relevance / self._window_sizes(x, ones, conv), **conv)
        return tuple(result if g is not None and g.shape == result.shape else None for g in grad_input)
