"""The controller's signal A(M): the harmonic mean over classes, measured on the small labelled set.

- `small-accuracy` (METHOD.md as specified): per-class accuracy of the model's own head. That head was
  fitted on these very images, so A stays saturated at 1.0 until the test accuracy has already
  fallen (measured: A = 1.0 at every step to 10% on MobileNetV2 while test accuracy went 0.68 -> 0.66).
- `crossfit-accuracy`: each image is classified by a head fitted on the OTHER folds of the small set
  (on the dense model's features, fitted once), so A reflects how the features generalise.
- `crossfit-probability`: the same heads, but the per-class mean probability of the true class: a
  smooth A that moves before any prediction flips.

Cross-fitted heads read the same features as the model's head. When channels feeding the head are
masked or removed, the matching columns of the fold heads are dropped too (`drop_inputs`).
"""

from __future__ import annotations

import torch
from torch import nn

from runtime_bench.accuracy import harmonic_mean
from runtime_bench.errors import InputError

from .feature_cache import HeadInputCache, Zeroed
from .head import fit_linear

SIGNALS = ("small-accuracy", "crossfit-accuracy", "crossfit-probability")


def _per_class_mean(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    return [float(values[labels == c].mean()) for c in range(num_classes)]


class ControlSignal:
    def __init__(self, kind: str, model: nn.Module, head_name: str, images: torch.Tensor, labels: torch.Tensor,
                 num_classes: int, folds: int = 5):
        if kind not in SIGNALS:
            raise InputError(f"--signal {kind}: choose from {', '.join(SIGNALS)}")
        self.kind, self.images, self.labels, self.num_classes = kind, images, labels, num_classes
        self.head = model.get_submodule(head_name)
        self.head_inputs = HeadInputCache(model, images, head_name)
        if kind == "small-accuracy":
            return
        shots = int(torch.bincount(labels, minlength=num_classes).min())
        folds = min(folds, shots)
        if folds < 2:
            raise InputError(f"--signal {kind}: needs at least 2 images per class to cross-fit, a class has {shots}")
        # Stratified folds: the i-th image of each class goes to fold i % folds.
        self.fold = torch.empty_like(labels)
        for c in range(num_classes):
            where = torch.nonzero(labels == c).flatten()
            self.fold[where] = torch.arange(len(where)) % folds
        features = self.head_inputs()
        heads = [fit_linear(features[self.fold != k], labels[self.fold != k], num_classes) for k in range(folds)]
        self.weight = torch.stack([h.weight.detach() for h in heads])  # (folds, classes, features)
        self.bias = torch.stack([h.bias.detach() for h in heads])
        self.kept = torch.arange(features.shape[1])  # original head-input columns still present

    def drop_inputs(self, positions: list[int]) -> None:
        """Forget head-input columns (current positions) that were removed for good."""
        if self.kind != "small-accuracy" and positions:
            keep = torch.ones(len(self.kept), dtype=torch.bool)
            keep[positions] = False
            self.kept = self.kept[keep]

    def refresh(self, changed: set[nn.Module] | None = None) -> None:
        """After a commit changed the modules `changed` for good (None: any of them)."""
        self.head_inputs.refresh(changed)

    def __call__(self, masked_inputs: list[int] = (), changed: set[nn.Module] = frozenset(),
                 zeroed: Zeroed | None = None) -> float:
        """A of the model; `masked_inputs` are the head-input positions a candidate hides, and the rest of
        it is either `changed` (modules whose weights a mask currently alters) or `zeroed` (input channels
        of the layers reading it, see HeadInputCache)."""
        return harmonic_mean(self.per_class(masked_inputs, changed, zeroed))

    @torch.no_grad()
    def per_class(self, masked_inputs: list[int] = (), changed: set[nn.Module] = frozenset(),
                  zeroed: Zeroed | None = None) -> list[float]:
        """The per-class values whose harmonic mean is A."""
        features = self.head_inputs(changed, zeroed)
        if len(masked_inputs):
            features = features.clone()
            features[:, list(masked_inputs)] = 0.0
        if self.kind == "small-accuracy":
            correct = (self.head(features).argmax(1) == self.labels).float()
            return _per_class_mean(correct, self.labels, self.num_classes)
        weight = self.weight[:, :, self.kept]
        logits = torch.einsum("nf,ncf->nc", features, weight[self.fold]) + self.bias[self.fold]
        if self.kind == "crossfit-accuracy":
            values = (logits.argmax(1) == self.labels).float()
        else:
            values = logits.softmax(1)[torch.arange(len(self.labels)), self.labels]
        return _per_class_mean(values, self.labels, self.num_classes)

    def sample_weights(self, floor: float = 0.05) -> torch.Tensor:
        """METHOD.md's class-weighted variant: each sample's starting relevance 1 / (its class's value),
        so that filters the weakest classes rely on rank higher; scaled to mean 1 (the total is unchanged)."""
        inverse = 1.0 / torch.tensor(self.per_class(), dtype=torch.float64).clamp(min=floor)
        weights = inverse[self.labels]
        return (weights / weights.mean()).float()
