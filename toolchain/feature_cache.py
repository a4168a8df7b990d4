"""The small set's activations at every node of the model, so that A of a masked model is recomputed only
from the first layer the mask changed.

The controller measures A(M without candidate) hundreds of times per sweep; a candidate in the last blocks
leaves the whole front of the network as it was. `HeadInputCache` traces the model with torch.fx, keeps
every node's output for the small set, and on a query recomputes only the nodes downstream of the changed
modules. A model torch.fx cannot trace gets the plain full forward (same answers, no saving).
"""

from __future__ import annotations

import functools

import torch
from torch import fx, nn

from .head import head_features


class HeadInputCache:
    """What the model's head reads for `images`, for the model as it is or with some modules changed."""

    def __init__(self, model: nn.Module, images: torch.Tensor, head_name: str):
        self.model, self.images, self.head_name = model, images, head_name
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
        self.values: dict[fx.Node, torch.Tensor] = {}
        self.refresh()

    def refresh(self, changed: set[nn.Module] | None = None) -> None:
        """Store the activations of the model as it is now: after a commit changed `changed` for good
        (None: recompute everything)."""
        if self.nodes is not None:
            dirty = set(self.nodes) if changed is None else self._downstream(changed)
            self.values = self._run(dirty, self.values)

    def __call__(self, changed: set[nn.Module] = frozenset()) -> torch.Tensor:
        """The head's inputs with the model's modules as they are now, where only `changed` (modules whose
        weights a mask altered since the last refresh) differ from the cached state."""
        if self.nodes is None:
            return head_features(self.model, self.images, self.head_name)
        dirty = self._downstream(changed)
        if self.head_input not in dirty:
            return self.values[self.head_input]
        return self._run(dirty, self.values)[self.head_input]

    def _downstream(self, changed: set[nn.Module]) -> set:
        """The nodes that call a module of `changed`, and every node that reads one of those, transitively."""
        dirty = set()
        for node in self.nodes:
            if (node.op == "call_module" and self.modules[node.target] in changed) or any(
                    a in dirty for a in node.all_input_nodes):
                dirty.add(node)
        return dirty

    @torch.no_grad()
    def _run(self, nodes: set, cached: dict) -> dict:
        was_training = self.model.training
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
                    values[node] = self.modules[node.target](*args, **kwargs)
                elif node.op == "call_method":
                    values[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
                elif node.op == "get_attr":
                    values[node] = functools.reduce(getattr, node.target.split("."), self.model)
                else:
                    values[node] = node.target(*args, **kwargs)
        finally:
            self.model.train(was_training)
        return values
