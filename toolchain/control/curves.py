"""Accuracy-vs-pruning-rate curves on a fixed grid, and the class-averaged AUC of docs/method.md.

Runs are compared on the same grid (0, 0.05, ..., p_max) whatever steps their controller took: at a
grid rate we use the model state the run had reached at that rate (`state_at_rates`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence, TypeVar

from runtime_bench.errors import InputError

State = TypeVar("State")

# Rates come from float arithmetic (1 - kept / original, i * step): compare them with this slack.
RATE_TOLERANCE = 1e-9


def rate_grid(p_max: float = 0.9, step: float = 0.05) -> list[float]:
    """0, step, 2 * step, ..., p_max; p_max must be a multiple of step."""
    if not 0 < p_max <= 1:
        raise InputError(f"--p-max {p_max}: must be in (0, 1]")
    if not 0 < step <= p_max:
        raise InputError(f"grid step {step}: must be in (0, p_max={p_max}]")
    count = round(p_max / step)
    if abs(count * step - p_max) > RATE_TOLERANCE:
        raise InputError(f"--p-max {p_max}: must be a multiple of the grid step {step}")
    # Rounding keeps 3 * 0.05 at 0.15 rather than 0.15000000000000002, so grids compare equal.
    return [round(i * step, 10) for i in range(count + 1)]


def step_ends(step: float, original: int, target: int) -> list[int]:
    """The filters removed when step k = 1, 2, ... of the grid ends: round(k x step x original), capped at
    `target`. Whole chunks overshoot a step's end a little; ending every step here, rather than a step past
    where the last one ended, keeps the overshoots from adding up (by 45% a whole step off the grid)."""
    per_step = step * original
    count = math.ceil(target / per_step - RATE_TOLERANCE)
    return [end for end in (min(target, round(k * per_step)) for k in range(1, count + 1)) if end > 0]


def trapezoid(values: Sequence[float], grid: Sequence[float]) -> float:
    return sum((grid[i + 1] - grid[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(grid) - 1))


def class_averaged_auc(grid: list[float], per_class: list[list[float]], p_max: float) -> dict[str, Any]:
    """AUC_c = trapezoid(acc_c over the grid) / p_max for every class c, and their mean.

    per_class[i][c] is the accuracy of class c at rate grid[i]. Returns {"per_class": [...], "mean": ...}.
    """
    if len(grid) < 2:
        raise InputError(f"class_averaged_auc: need at least 2 grid rates, got {len(grid)}")
    if abs(grid[0]) > RATE_TOLERANCE:
        raise InputError(f"class_averaged_auc: the grid must start at 0, starts at {grid[0]}")
    if abs(grid[-1] - p_max) > RATE_TOLERANCE:
        raise InputError(f"class_averaged_auc: the grid must end at p_max={p_max}, ends at {grid[-1]}")
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise InputError(f"class_averaged_auc: grid rates must increase strictly, got {grid}")
    if len(per_class) != len(grid):
        raise InputError(f"class_averaged_auc: {len(per_class)} rows of accuracies for {len(grid)} grid rates")
    num_classes = len(per_class[0])
    if num_classes == 0:
        raise InputError("class_averaged_auc: no classes in the accuracy rows")
    for rate, row in zip(grid, per_class):
        if len(row) != num_classes:
            raise InputError(
                f"class_averaged_auc: {len(row)} classes at rate {rate}, {num_classes} at rate {grid[0]}"
            )
        if not all(math.isfinite(a) and 0 <= a <= 1 for a in row):
            raise InputError(f"class_averaged_auc: accuracies at rate {rate} must be in [0, 1], got {list(row)}")
    aucs = [trapezoid([row[c] for row in per_class], grid) / p_max for c in range(num_classes)]
    return {"per_class": aucs, "mean": sum(aucs) / num_classes}


def relative_gain(auc_new: float, auc_base: float) -> float:
    """(auc_new - auc_base) / auc_base: docs/method.md's headline number (about +0.15 for VGG16)."""
    if not auc_base > 0:
        raise InputError(f"relative_gain: the baseline AUC must be > 0, got {auc_base}")
    return (auc_new - auc_base) / auc_base


def state_at_rates(points: list[tuple[float, State]], grid: list[float]) -> list[State]:
    """For each grid rate, the state of the LAST point whose rate <= that grid rate.

    `points` are the controller's committed (rate, state) pairs in order, starting at rate 0. A grid
    rate past the last point (a run that stopped early) gets the last state: the log says why.
    """
    if not points:
        raise InputError("state_at_rates: no (rate, state) points")
    rates = [rate for rate, _ in points]
    if rates[0] > RATE_TOLERANCE:
        raise InputError(f"state_at_rates: the first point must be at rate 0, is at {rates[0]}")
    if any(b < a for a, b in zip(rates, rates[1:])):
        raise InputError(f"state_at_rates: point rates must not decrease, got {rates}")
    if any(b < a for a, b in zip(grid, grid[1:])):
        raise InputError(f"state_at_rates: grid rates must not decrease, got {grid}")
    states = []
    index = 0
    for target in grid:
        while index + 1 < len(points) and rates[index + 1] <= target + RATE_TOLERANCE:
            index += 1
        states.append(points[index][1])
    return states
