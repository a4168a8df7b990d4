"""The small set's activations at every node of the model, so that A of a masked model is recomputed only
from the first layer the mask changed.

The controller measures A(M without candidate) thousands of times per sweep; a candidate in the last blocks
leaves the whole front of the network as it was. `HeadInputCache` traces the model with torch.fx, keeps
every node's output for the small set, and on a query recomputes only the nodes downstream of the changed
modules. A candidate is given as the input channels to zero per reading layer (`PruningGraph.zeroed_inputs`):
the first reading layer, whose input is still the cached one, costs only the removed channels' share of
it (its cached output minus what those channels contributed; a layer is linear in its input). A model
torch.fx cannot trace gets the plain full forward (same answers, no saving).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Dict, Iterator, List

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..head import head_features
from ..surgery import is_depthwise

Zeroed = Dict[nn.Module, List[int]]  # reading layer -> its input channels to zero (conv: dim 1, linear: last)


def _zero_channels(module: nn.Module, x: torch.Tensor, channels: list[int]) -> torch.Tensor:
    x = x.clone()
    x[(..., channels) if isinstance(module, nn.Linear) else (slice(None), channels)] = 0.0
    return x


def _contribution(module: nn.Module, x: torch.Tensor, channels: list[int]) -> torch.Tensor | None:
    """What input `channels` add to the layer's output (no bias), or None where the layer is not an
    ungrouped conv or a linear layer."""
    if isinstance(module, nn.Linear):
        return F.linear(x[..., channels], module.weight[:, channels])
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
        return F.conv2d(x[:, channels], module.weight[:, channels], None, module.stride, module.padding,
                        module.dilation)
    return None


@contextlib.contextmanager
def _zeroing_hooks(zeroed: Zeroed) -> Iterator[None]:
    handles = [module.register_forward_pre_hook(
        lambda m, args, channels=channels: (_zero_channels(m, args[0], channels), *args[1:]))
        for module, channels in zeroed.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class HeadInputCache:
    """What the model's head reads for `images`, for the model as it is or with some inputs zeroed."""

    def __init__(self, model: nn.Module, images: torch.Tensor, head_name: str):
        self.model, self.head_name = model, head_name
        # Channels-last activations where the model has depthwise convs: oneDNN runs those several times
        # faster on them (MobileNetV2, 100 images at 96 px: a forward 2.1x faster). Not for dense convs: with
        # their weights in the default layout each call would reorder them (VGG16 at 32 px: 2x slower).
        depthwise = any(is_depthwise(m) for m in model.modules())
        self.images = images.contiguous(memory_format=torch.channels_last) if depthwise and images.ndim == 4 \
            else images
        self.head = model.get_submodule(head_name)
        try:
            traced = fx.symbolic_trace(model)
        except Exception:  # noqa: BLE001 - any trace failure just means: no cache, full forwards
            traced = None
        self.modules = dict(traced.named_modules()) if traced is not None else {}
        heads = [n for n in traced.graph.nodes if n.op == "call_module" and self.modules[n.target] is self.head] \
            if traced is not None else []
        # The nodes up to the head's only call, in topological order; its input is what we return.
        self.nodes = list(traced.graph.nodes)[: list(traced.graph.nodes).index(heads[0])] if len(heads) == 1 else None
        self.head_input = heads[0].args[0] if self.nodes is not None else None
        # Nodes whose stored output a functional in-place op overwrites: their cached value is not their own.
        # (In-place modules, ReLU(inplace=True) and the like, are given a copy in `_run` instead.)
        self.overwritten = {node.args[0] for node in self.nodes or () if node.op != "call_module" and node.args
                            and (node.kwargs.get("inplace") or getattr(node.target, "__name__", str(node.target)).endswith("_"))}
        # The outputs `_zeroed_call` may subtract from: of convs and linear layers.
        self.subtractable = {node for node in self.nodes or () if node.op == "call_module"
                             and isinstance(self.modules[node.target], (nn.Conv2d, nn.Linear))}
        self.values: dict[fx.Node, torch.Tensor] = {}
        self.refresh()

    def refresh(self, changed: set[nn.Module] | None = None) -> None:
        """Store the activations of the model as it is now: after a commit changed `changed` for good
        (None: recompute everything)."""
        if self.nodes is not None:
            dirty = set(self.nodes) if changed is None else self._downstream(changed)
            self.values = self._run(dirty, self.values)

    def __call__(self, changed: set[nn.Module] = frozenset(), zeroed: Zeroed | None = None) -> torch.Tensor:
        """The head's inputs with the model's modules as they are now, where only `changed` (modules whose
        weights a mask altered since the last refresh) differ from the cached state, and with the input
        channels `zeroed` of their reading layers set to zero."""
        zeroed = {m: c for m, c in (zeroed or {}).items() if m is not self.head}  # the head: the caller's part
        if self.nodes is None:
            with _zeroing_hooks(zeroed):
                return head_features(self.model, self.images, self.head_name)
        dirty = self._downstream(set(changed) | set(zeroed))
        if self.head_input not in dirty:
            return self.values[self.head_input]
        return self._run(dirty, self.values, zeroed)[self.head_input]

    def _downstream(self, changed: set[nn.Module]) -> set:
        """The nodes that call a module of `changed`, and every node that reads one of those, transitively."""
        dirty = set()
        for node in self.nodes:
            if (node.op == "call_module" and self.modules[node.target] in changed) or any(
                    a in dirty for a in node.all_input_nodes):
                dirty.add(node)
        return dirty

    @torch.no_grad()
    def _run(self, nodes: set, cached: dict, zeroed: Zeroed | None = None) -> dict:
        zeroed = zeroed or {}
        was_training = self.model.training
        if was_training:  # eval() walks every module: thousands of queries per sweep would pay for it
            self.model.eval()
        values = dict(cached)
        try:
            for node in self.nodes:
                if node not in nodes:
                    continue
                if node.op == "placeholder":
                    values[node] = self.images
                    continue
                args = fx.node.map_arg(node.args, lambda n: values[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
                if node.op == "call_module":
                    module = self.modules[node.target]
                    if module in zeroed:
                        values[node] = self._zeroed_call(node, module, args, kwargs, nodes, cached, zeroed[module])
                        continue
                    if getattr(module, "inplace", False) and node.args[0] in self.subtractable:
                        args = (args[0].clone(), *args[1:])  # _zeroed_call needs that layer's own output
                    values[node] = module(*args, **kwargs)
                elif node.op == "call_method":
                    values[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
                elif node.op == "get_attr":
                    values[node] = functools.reduce(getattr, node.target.split("."), self.model)
                else:
                    values[node] = node.target(*args, **kwargs)
        finally:
            if was_training:
                self.model.train()
        return values

    def _zeroed_call(self, node, module, args, kwargs, dirty, cached, channels):
        """The layer's output with input `channels` zeroed; where its input is the cached one, its cached
        output minus those channels' contribution: a small fraction of the layer's cost."""
        source = node.args[0]
        if len(args) == 1 and not kwargs and source not in dirty and node in cached \
                and not {node, source} & self.overwritten:
            contribution = _contribution(module, args[0], channels)
            if contribution is not None:
                return cached[node] - contribution
        return module(_zero_channels(module, args[0], channels), *args[1:], **kwargs)
