"""The budget's estimate, cross-validated over the whole procedure (`--holdout-folds K`).

Everything a pruning step does is fitted on the small set: the head, the compensation, and the choice of
channels itself (the ones the small set's relevance says to keep). The leave-one-out estimate holds out
only the head, so deep in the pruning it judges each image through a backbone selected and compensated
on it: on VGG16-HED it ran 3 to 13 points over the test, also with the compensation held out, and a
one-point budget let through models that had lost 6.

Here K shadow copies of the model each repeat the procedure on the images of the other K - 1 folds only:
their own relevance ranking, channel selection (the same number of filters per step as the model), head
re-fit and compensation. An image of fold k is judged by shadow k, through ridge heads fitted on shadow
k's features of the other folds: no part of what judges an image was fitted on it. The estimate at a step
is the procedure's at that pruning rate, not the shipped model's own, and it leans pessimistic (each
shadow has fewer images than the model a user ships); the dense model's estimate, which the budget is
measured from, is taken the same way.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from runtime_bench.errors import InputError

from ..head import refit_linear, ridge_solve
from ..surgery import PruningGraph, select_channels
from ..surgery.costs import ChannelCosts
from .compensation import Compensation
from .feature_cache import HeadInputCache
from .signals import REFIT_ALPHA_FACTORS, Estimate, stratified_folds

# (model, images, labels) -> filter scores of the model on those images
Scorer = Callable[[nn.Module, torch.Tensor, torch.Tensor], "dict[str, torch.Tensor]"]


def apply_selection(graph: PruningGraph, cache: HeadInputCache, compensation: Compensation | None,
                    selection: dict[str, list[int]]) -> None:
    """Remove `selection` from the graph's model, refresh its activations and compensate the layers that
    read the removed channels (the model itself and every shadow go through this one path)."""
    readers = [consumer for consumer, _ in graph.readers(selection)] if compensation else []
    for root, channels in selection.items():
        graph.prune(root, channels)
    cache.refresh(graph.take_pruned_modules())
    if readers:
        compensation(readers, {m: graph.kept[graph.names[m]] for m in readers if graph.names[m] in graph.kept})


class _Shadow:
    def __init__(self, model: nn.Module, graph: PruningGraph, head_name: str, images: torch.Tensor,
                 fit: torch.Tensor, compensate: bool, dense: dict[str, torch.Tensor],
                 costs: Callable[[PruningGraph], ChannelCosts | None]):
        self.model = copy.deepcopy(model)
        self.head = self.model.get_submodule(head_name)
        self.graph = PruningGraph(self.model, graph.example_input, protected=[self.head], verify=False)
        self.graph.unprunable = graph.unprunable  # verified on the model itself: the same structure
        self.cache = HeadInputCache(self.model, images, head_name)
        self.fit = fit
        self.compensation = Compensation(self.cache, skip={self.head}, fit_images=fit, dense=dense) \
            if compensate else None
        self.costs = costs(self.graph)


class HeldOutEstimate(Estimate):
    def __init__(self, model: nn.Module, graph: PruningGraph, head_name: str, images: torch.Tensor,
                 labels: torch.Tensor, num_classes: int, folds: int, head_solver: str, alpha: float,
                 compensation: Compensation | None, costs: Callable[[PruningGraph], ChannelCosts | None]):
        self.labels, self.num_classes, self.head_solver, self.alpha = labels, num_classes, head_solver, alpha
        self.images = images
        self.fold, folds = stratified_folds(labels, num_classes, folds)
        if folds < 2:
            raise InputError(f"--holdout-folds: needs at least 2 images per class, a class has {folds}")
        dense = compensation.dense_outputs() if compensation else {}  # shared by every shadow, not copied
        self.shadows = [_Shadow(model, graph, head_name, images, torch.nonzero(self.fold != k).flatten(),
                                compensation is not None, dense, costs) for k in range(folds)]
        for shadow in self.shadows:  # the model's head saw every image: each shadow fits its own
            self._refit_head(shadow)

    def _refit_head(self, shadow: _Shadow) -> None:
        refit_linear(shadow.head, shadow.cache()[shadow.fit], self.labels[shadow.fit], self.num_classes,
                     self.head_solver, self.alpha)

    def step(self, removed: int, scorer: Scorer, round_to: int) -> None:
        """One pruning step of every shadow, up to `removed` filters removed in all (like the model's step),
        the channels chosen on its own images."""
        for shadow in self.shadows:
            goal = removed - (shadow.graph.original_filters - shadow.graph.filters)
            if goal <= 0:
                continue
            scores = scorer(shadow.model, self.images[shadow.fit], self.labels[shadow.fit])
            groups = shadow.graph.groups()
            selection = select_channels(groups, scores, goal, round_to, shadow.costs(groups) if shadow.costs else None)
            if selection:
                apply_selection(shadow.graph, shadow.cache, shadow.compensation, selection)
                self._refit_head(shadow)

    @torch.no_grad()
    def per_class(self) -> list[float]:
        correct = torch.zeros(len(self.labels))
        for k, shadow in enumerate(self.shadows):
            features = shadow.cache().flatten(1)
            held = self.fold == k
            for factor in REFIT_ALPHA_FACTORS:  # averaged as in the `refit` signal: see signals.py
                head = ridge_solve(features[shadow.fit], self.labels[shadow.fit], self.num_classes,
                                   self.alpha * factor)
                predicted = (features[held] @ head.weight.T + head.bias).argmax(1)
                correct[held] += (predicted == self.labels[held]).float() / len(REFIT_ALPHA_FACTORS)
        return [float(correct[self.labels == c].mean()) for c in range(self.num_classes)]
