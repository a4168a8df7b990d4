"""The controller's signal A(M): the harmonic mean over classes, measured on the small labelled set.

- `small-accuracy` (docs/method.md as specified): per-class accuracy of the model's own head. That head was
  fitted on these very images, so A stays saturated at 1.0 until the test accuracy has already
  fallen (measured: A = 1.0 at every step to 10% on MobileNetV2 while test accuracy went 0.68 -> 0.66).
- `crossfit-accuracy`: each image is classified by a head fitted on the OTHER folds of the small set
  (on the dense model's features, fitted once), so A reflects how the features generalise.
- `crossfit-probability`: the same heads, but the per-class mean probability of the true class: a
  smooth A that moves before any prediction flips.
- `refit`: each image classified by a ridge head re-fitted on the state's OWN features without that image
  (leave-one-out, closed form: toolchain/head.py). What the head a user ships would do, since with
  `--refit-head` the head is re-fitted after every step; the accuracy budget (`--max-drop`) reads it.

Cross-fitted heads read the same features as the model's head. When channels feeding the head are
masked or removed, the matching columns of the fold heads are dropped too (`drop_inputs`).
"""

from __future__ import annotations

import torch
from torch import nn

from runtime_bench.accuracy import harmonic_mean
from runtime_bench.errors import InputError

from ..head import fit_linear, ridge_solve
from .feature_cache import HeadInputCache, Zeroed

SIGNALS = ("small-accuracy", "crossfit-accuracy", "crossfit-probability", "refit")
# `refit` averages the leave-one-out accuracy of heads a little weaker and stronger than the chosen one:
# with 100 images one flipped prediction moves a plain estimate by a whole point, so a budget of one point
# would stop at the first step's noise; the average moves in fifths of that and follows the trend.
REFIT_ALPHA_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _per_class_mean(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    return [float(values[labels == c].mean()) for c in range(num_classes)]


def stratified_folds(labels: torch.Tensor, num_classes: int, folds: int) -> tuple[torch.Tensor, int]:
    """Each image's fold (the i-th image of each class goes to fold i % folds), and the folds used: at
    most the smallest class's count."""
    folds = min(folds, int(torch.bincount(labels, minlength=num_classes).min()))
    fold = torch.empty_like(labels)
    for c in range(num_classes):
        where = torch.nonzero(labels == c).flatten()
        fold[where] = torch.arange(len(where)) % max(folds, 1)
    return fold, folds


class Estimate:
    """Per-class values on the small set (`per_class`), read as accuracy and harmonic mean."""

    labels: torch.Tensor
    num_classes: int

    def per_class(self) -> list[float]:
        raise NotImplementedError

    def estimate(self, per_class: list[float] | None = None) -> dict:
        """Accuracy and harmonic mean of class accuracies, from `per_class` (default: the model as it is)."""
        per_class = self.per_class() if per_class is None else per_class
        return {"accuracy": self.accuracy(per_class), "harmonic_mean": harmonic_mean(per_class)}

    def accuracy(self, per_class: list[float]) -> float:
        """The overall accuracy that per-class values of this kind stand for (images per class weigh)."""
        counts = torch.bincount(self.labels, minlength=self.num_classes).double()
        return float((torch.tensor(per_class, dtype=torch.float64) * counts).sum() / counts.sum())


class ControlSignal(Estimate):
    def __init__(self, kind: str, model: nn.Module, head_name: str, images: torch.Tensor, labels: torch.Tensor,
                 num_classes: int, folds: int = 5, alpha: float | None = None,
                 head_inputs: HeadInputCache | None = None):
        """`alpha`: the ridge strength of `refit`; `head_inputs`: a cache to share with another signal."""
        if kind not in SIGNALS:
            raise InputError(f"--signal {kind}: choose from {', '.join(SIGNALS)}")
        self.kind, self.images, self.labels, self.num_classes = kind, images, labels, num_classes
        self.head = model.get_submodule(head_name)
        self.head_inputs = head_inputs or HeadInputCache(model, images, head_name)
        self.alpha = alpha
        if kind in ("small-accuracy", "refit"):
            if kind == "refit" and alpha is None:
                raise InputError("--signal refit: needs the ridge head's alpha (use --head-solver ridge)")
            return
        self.fold, folds = stratified_folds(labels, num_classes, folds)
        if folds < 2:
            raise InputError(f"--signal {kind}: needs at least 2 images per class to cross-fit, a class has {folds}")
        features = self.head_inputs()
        heads = [fit_linear(features[self.fold != k], labels[self.fold != k], num_classes) for k in range(folds)]
        self.weight = torch.stack([h.weight.detach() for h in heads])  # (folds, classes, features)
        self.bias = torch.stack([h.bias.detach() for h in heads])
        self.kept = torch.arange(features.shape[1])  # original head-input columns still present

    def drop_inputs(self, positions: list[int]) -> None:
        """Forget head-input columns (current positions) that were removed for good."""
        if self.kind.startswith("crossfit") and positions:
            keep = torch.ones(len(self.kept), dtype=torch.bool)
            keep[positions] = False
            self.kept = self.kept[keep]

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
        if self.kind == "refit":  # a masked column is a zero column: the same as a head fitted without it
            correct = torch.stack([(ridge_solve(features, self.labels, self.num_classes, self.alpha * f).loo.argmax(1)
                                    == self.labels).float() for f in REFIT_ALPHA_FACTORS]).mean(0)
            return _per_class_mean(correct, self.labels, self.num_classes)
        weight = self.weight[:, :, self.kept]
        logits = torch.einsum("nf,ncf->nc", features, weight[self.fold]) + self.bias[self.fold]
        if self.kind == "crossfit-accuracy":
            values = (logits.argmax(1) == self.labels).float()
        else:
            values = logits.softmax(1)[torch.arange(len(self.labels)), self.labels]
        return _per_class_mean(values, self.labels, self.num_classes)

    def sample_weights(self, floor: float = 0.05) -> torch.Tensor:
        """docs/method.md's class-weighted variant: each sample's starting relevance 1 / (its class's value),
        so that filters the weakest classes rely on rank higher; scaled to mean 1 (the total is unchanged)."""
        inverse = 1.0 / torch.tensor(self.per_class(), dtype=torch.float64).clamp(min=floor)
        weights = inverse[self.labels]
        return (weights / weights.mean()).float()


class AccuracyBudget:
    """`--max-drop D`: a state is within budget while its small-set estimates of accuracy AND of the harmonic
    mean of class accuracies are each at least the dense model's estimate minus D.

    The estimate is `estimator`'s (never the test set): cross-validated over the whole procedure (holdout.py,
    --holdout-folds), leave-one-out with a re-fitted head (`refit`), heads cross-fitted on the dense features (`crossfit-accuracy`, the head not re-fitted), or the kept
    head's own accuracy (`small-accuracy` with --head keep: that head never saw these images).
    """

    def __init__(self, estimator: Estimate, max_drop: float, classes: list[str]):
        self.estimator, self.max_drop = estimator, max_drop
        self.dense = self.estimate(estimator.per_class())
        if self.dense["harmonic_mean"] <= 0:
            worst = min(range(len(classes)), key=lambda c: self.dense["per_class"][c])
            raise InputError(
                f"--max-drop {max_drop}: the dense model itself cannot meet it: its small-set estimate has class "
                f"{classes[worst]} at 0, so the harmonic mean is 0 before any pruning (more --shots, or --max-macs)")

    def estimate(self, per_class: list[float]) -> dict:
        return dict(self.estimator.estimate(per_class), per_class=list(per_class))

    def slack(self, per_class: list[float]) -> float:
        """>= 0 while within budget: the smaller margin of the two estimates over their floors."""
        e = self.estimate(per_class)
        return min(e["accuracy"] - (self.dense["accuracy"] - self.max_drop),
                   e["harmonic_mean"] - (self.dense["harmonic_mean"] - self.max_drop)) + 1e-9
