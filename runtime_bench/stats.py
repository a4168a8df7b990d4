"""Latency statistics: percentile summaries, drift across consecutive blocks, and a ratio of
percentiles with a bootstrap spread."""

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


DEFAULT_BLOCKS = 5


def summarize(
    latencies_s: Sequence[float], batch_size: int = 1, blocks: int = DEFAULT_BLOCKS
) -> dict[str, Any]:
    """Summary of per-call latencies (seconds in, milliseconds out); throughput in items/s.

    `blocks` is the drift check: see `block_spread` (key "blocks" of the result).
    """
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
        "blocks": block_spread(samples, blocks),
    }


def check_blocks(blocks: Any) -> int:
    if isinstance(blocks, bool) or not isinstance(blocks, (int, np.integer)) or blocks < 1:
        raise InputError(f"blocks={blocks!r}: must be a positive integer")
    return int(blocks)


def block_spread(latencies_s: Sequence[float], blocks: int = DEFAULT_BLOCKS) -> dict[str, Any]:
    """Run-to-run spread: split the samples, in timing order, into `blocks` consecutive blocks.

    Returns the p50 of each block (ms), their min and max, and `relative_range` =
    (max - min) / min of the block p50s: 0.12 means the slowest block's median was 12% above the
    fastest one's. A steady machine gives a few percent; drift (thermal throttling, a background
    job starting) shows up as a large range or a trend in `p50_ms`. With fewer samples than
    blocks, every sample is its own block.
    """
    check_blocks(blocks)
    samples = _as_samples(latencies_s, "block_spread")
    count = min(int(blocks), samples.size)
    # array_split keeps timing order; block sizes differ by at most one sample.
    p50s = [float(np.median(part)) * 1000.0 for part in np.array_split(samples, count)]
    low, high = min(p50s), max(p50s)
    return {
        "count": count,
        "p50_ms": p50s,
        "min_ms": low,
        "max_ms": high,
        "relative_range": (high - low) / low if low > 0 else 0.0,
    }


def ratio_with_spread(
    a_samples: Sequence[float],
    b_samples: Sequence[float],
    resamples: int = 200,
    seed: int = 0,
    low_pct: float = 5.0,
    high_pct: float = 95.0,
    percentile: float = 50.0,
) -> dict[str, float]:
    """Ratio pX(a) / pX(b) (X = `percentile`, default the median), with the `low_pct`..`high_pct`
    bootstrap percentiles of that ratio.

    With a = baseline and b = candidate latencies, the ratio is the speedup. The fixed seed makes
    the spread reproducible for the same samples.
    """
    if not 0.0 <= percentile <= 100.0:
        raise InputError(f"percentile={percentile}: must be in [0, 100]")
    a = _as_samples(a_samples, "ratio_with_spread (first)")
    b = _as_samples(b_samples, "ratio_with_spread (second)")
    b_px = float(np.percentile(b, percentile))
    if b_px <= 0:
        raise InputError(
            f"ratio_with_spread: the second set has a p{percentile:g} latency of 0; the ratio is undefined"
        )
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples, dtype=np.float64)
    # One resample at a time: a (resamples x n) index matrix gets large for fast models with many runs.
    for i in range(resamples):
        a_px = np.percentile(a[rng.integers(0, a.size, a.size)], percentile)
        b_rx = np.percentile(b[rng.integers(0, b.size, b.size)], percentile)
        ratios[i] = a_px / b_rx if b_rx > 0 else np.inf
    low, high = np.percentile(ratios, [low_pct, high_pct])  # linear interpolation (numpy default)
    return {"ratio": float(np.percentile(a, percentile)) / b_px, "low": float(low), "high": float(high)}
