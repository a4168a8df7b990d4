"""Picking the class logits out of a model that returns several outputs (`--output KEY`).

Its own module because both ends of the pipeline need it: models.py wraps a factory's model in it, and
toolchain/surgery traces the wrapped model whole (the other outputs' layers read the same channels).
"""

from __future__ import annotations

from torch import nn

from runtime_bench.errors import InputError


class SelectOutput(nn.Module):
    """Picks the class logits out of a model that returns a tuple or a dict."""

    def __init__(self, model: nn.Module, key: int | str):
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x):
        out = self.model(x)
        try:
            return out[self.key]
        except (IndexError, KeyError, TypeError):
            if isinstance(out, dict):
                has = f"dict with keys {', '.join(map(str, out))}"
            elif isinstance(out, (tuple, list)):
                has = f"{type(out).__name__} of {len(out)}"
            else:
                has = type(out).__name__
            raise InputError(f"--output {self.key}: the model returns a {has}; no such entry") from None
