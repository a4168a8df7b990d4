"""Latency statistics: percentile summaries and a ratio of medians with a bootstrap spread."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from runtime_bench.errors import InputError


def _as_samples(latencies_s: Sequence[float], what: str) -> np.ndarray:
    samples = np.asarray(latencies_s, dtype=np.float64).reshape(-1)
    if samples.size == 0:
        raise InputError(f"{what}: no latency samples")
    if not np.all(np.isfinite(samples)) or np.any(samples < 0):
        raise InputError(f"{what}: latency samples must be finite and >= 0")
    return samples


def summarize(latencies_s: Sequence[float], batch_size: int = 1) -> dict[str, Any]:
    """Summary of per-call latencies (seconds in, milliseconds out); throughput in items/s."""
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}: must be >= 1")
    samples = _as_samples(latencies_s, "summarize")
    ms = samples * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])  # linear interpolation (numpy default)
    mean_s = float(samples.mean())
    return {
        "count": int(samples.size),
        "mean_ms": float(ms.mean()),
        # Sample std (ddof=1); a single run has no spread, report 0 rather than NaN (JSON has no NaN).
        "std_ms": float(ms.std(ddof=1)) if samples.size > 1 else 0.0,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "throughput": float(batch_size / mean_s) if mean_s > 0 else None,  # None: JSON has no inf
    }


def ratio_with_spread(
    a_samples: Sequence[float],
    b_samples: Sequence[float],
    resamples: int = 200,
    seed: int = 0,
    low_pct: float = 5.0,
    high_pct: float = 95.0,
) -> dict[str, float]:
    """Ratio p50(a) / p50(b), with the `low_pct`..`high_pct` bootstrap percentiles of that ratio.

    With a = baseline and b = candidate latencies, the ratio is the speedup. The fixed seed makes
    the spread reproducible for the same samples.
    """
    a = _as_samples(a_samples, "ratio_with_spread (first)")
    b = _as_samples(b_samples, "ratio_with_spread (second)")
    b_p50 = float(np.median(b))
    if b_p50 <= 0:
        raise InputError(
            "ratio_with_spread: the second set has a median latency of 0; the ratio is undefined"
        )
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples, dtype=np.float64)
    # One resample at a time: a (resamples x n) index matrix gets large for fast models with many runs.
    for i in range(resamples):
        a_med = np.median(a[rng.integers(0, a.size, a.size)])
        b_med = np.median(b[rng.integers(0, b.size, b.size)])
        ratios[i] = a_med / b_med if b_med > 0 else np.inf
    low, high = np.percentile(ratios, [low_pct, high_pct])  # linear interpolation (numpy default)
    return {"ratio": float(np.median(a)) / b_p50, "low": float(low), "high": float(high)}
