"""A task: a model with its head fitted, and the small labelled set and test set it is pruned and judged on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .data import Preprocessing
from .models import ModelSource


@dataclass
class Task:
    """A model with its head fitted and the data it is pruned and judged on."""

    model: nn.Module
    source: ModelSource
    preprocessing: Preprocessing
    classes: list[str]
    head_name: str
    small_x: torch.Tensor
    small_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    skipped: list[str] = field(default_factory=list)
    head_solver: str = "ridge"
    head_alpha: float | None = None  # the ridge head's strength, chosen on the dense model (leave-one-out)
