"""Scoring: how much each conv filter matters, per filter layer, in one comparable unit.

Every scorer has one interface, `scorer(model, images, labels, options) -> {layer name: score per output
channel}` (float64, higher is more important), registered in `SCORERS`:

- `lrp`: the criterion of the method, Layer-wise Relevance Propagation (lrp.py; its rules by op in
  rules.py, the fast pass for plain CNNs in graph_pass.py);
- `taylor`, `l1`, `random`: the baselines (baselines.py).

The accuracy-aware controller (`--method dpx`, toolchain/control) scores with `lrp`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .baselines import l1_filter_scores, random_filter_scores, taylor_filter_scores
from .lrp import HEAD_RULES, lrp_filter_scores, relevance_at, rule_table


@dataclass
class ScoreOptions:
    """What a scorer may use besides the model and the small set; each scorer reads what it needs."""

    batch_size: int = 32
    head_rule: str = "epsilon"  # LRP rule on the head and other linear layers
    allow_fallback: bool = False  # LRP: gradient x input for ops without a rule, instead of an error
    sample_weights: torch.Tensor | None = None  # LRP: each sample's starting relevance (default 1)
    generator: torch.Generator | None = None  # random
    progress: Callable[[int], None] | None = None  # called with the number of images just scored


Scorer = Callable[[nn.Module, torch.Tensor, torch.Tensor, ScoreOptions], "dict[str, torch.Tensor]"]

SCORERS: dict[str, Scorer] = {
    "lrp": lambda model, images, labels, o: lrp_filter_scores(
        model, images, labels, o.batch_size, o.head_rule, o.sample_weights, o.progress, o.allow_fallback),
    "taylor": lambda model, images, labels, o: taylor_filter_scores(model, images, labels, o.batch_size, o.progress),
    "l1": lambda model, images, labels, o: l1_filter_scores(model),
    "random": lambda model, images, labels, o: random_filter_scores(model, o.generator or torch.Generator()),
}

__all__ = ["HEAD_RULES", "SCORERS", "ScoreOptions", "Scorer", "relevance_at", "rule_table", "lrp_filter_scores"]
