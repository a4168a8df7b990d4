"""What removing one channel of a channel group saves: the cost side of cost-aware ranking (`--cost`).

Global relevance ranking removes the cheapest channels first (measured on MobileNetV2: 35% of the filters
is only 1.45x of the MACs), because the many channels of the wide, low-resolution layers each carry
little relevance and cost little. Dividing a channel's relevance by what its removal saves sends the
expensive, irrelevant channels first.

- `filters`: every channel costs 1 (relevance alone, Yeom's criterion).
- `macs`: the multiply-adds of the layers that produce the channel (its filters) plus those of the layers
  that read it (one input channel of each consumer), at the model's input size.
- `latency`: the same split of each layer's MEASURED time on a runtime (a per-layer profile, see
  exporters/profile.py) instead of its multiply-adds.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from runtime_bench.errors import InputError

from .graph import ChannelGroup, PruningGraph, is_depthwise, out_channels

COSTS = ("filters", "macs", "latency")


def output_positions(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    """Per conv and linear layer, the output positions per image (H x W for a conv; 1 for a linear
    layer on flat features); stable while channels are pruned, so measured once."""
    positions: dict[nn.Module, int] = {}

    def hook(module, inputs, output):
        positions[module] = int(output[0].numel() // out_channels(module))

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model.eval()
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return positions


def layer_macs(module: nn.Module, positions: int) -> float:
    """Multiply-adds of one conv or linear layer per image, at its current shape."""
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return float(module.out_channels * (module.in_channels // module.groups) * kernel * positions)
    return float(module.out_features * module.in_features * positions)


class ChannelCosts:
    """Cost of one channel per group, recomputed from the layers' current shapes on every call.

    `layer_cost(module)` is a layer's whole cost now (MACs, or measured time scaled by its MACs' change
    since it was profiled); a layer's cost is split evenly over its output channels for the filters that
    produce a channel, and over its input channels for the layers that read it. A depthwise conv is
    counted once, as a producer (it loses input and output channels together).
    """

    def __init__(self, graph: PruningGraph, layer_cost: Callable[[nn.Module], float]):
        self.graph, self.layer_cost = graph, layer_cost

    def __call__(self, groups: list[ChannelGroup]) -> dict[str, float]:
        costs = {}
        for group in groups:
            total, seen = 0.0, set()
            for dep, _ in self.graph.group_of(group.root, [0]):
                module = dep.target.module
                if not isinstance(module, (nn.Conv2d, nn.Linear)) or module in seen:
                    continue
                producer = self.graph.graph.is_out_channel_pruning_fn(dep.handler)
                if is_depthwise(module) or producer:
                    seen.add(module)
                    total += self.layer_cost(module) / out_channels(module)
                else:
                    seen.add(module)
                    inputs = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
                    total += self.layer_cost(module) / inputs
            costs[group.root] = max(total, 1e-12)
        return costs


def channel_costs(kind: str, graph: PruningGraph, example: torch.Tensor,
                  profile: dict[str, float] | None = None) -> ChannelCosts | None:
    """The cost model of `--cost kind`; None for `filters` (plain relevance). `profile`: layer name -> ms,
    measured on the dense model (required for `latency`)."""
    if kind not in COSTS:
        raise InputError(f"--cost {kind}: choose from {', '.join(COSTS)}")
    if kind == "filters":
        return None
    positions = output_positions(graph.model, example)

    def macs(module: nn.Module) -> float:
        return layer_macs(module, positions.get(module, 1))

    if kind == "macs":
        return ChannelCosts(graph, macs)
    if not profile:
        raise InputError("--cost latency: needs a per-layer latency profile (give --profile-backend)")
    # A layer's time scales with its MACs as it shrinks; layers the profile does not name cost their MACs
    # at the profile's overall time per multiply-add.
    dense_macs = {graph.modules[name]: macs(graph.modules[name]) for name in profile if name in graph.modules}
    named = {graph.modules[name]: ms for name, ms in profile.items() if name in graph.modules}
    per_mac = sum(named.values()) / max(sum(dense_macs[m] for m in named), 1.0)

    def latency(module: nn.Module) -> float:
        if module in named and dense_macs[module] > 0:
            return named[module] * macs(module) / dense_macs[module]
        return per_mac * macs(module)

    return ChannelCosts(graph, latency)
