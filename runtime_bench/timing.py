"""Timing loops (MLPerf single-stream style): warm up, then time calls until both a minimum
count and a minimum duration are reached. The clock is injectable so tests are deterministic.

Two sets of limits: the quick defaults (QUICK_*: seconds per model, good for development) and
`strict` mode, MLPerf's single-stream minimums (STRICT_*: at least 1024 queries and 600 s, p90 as
the headline latency). A timed callable with a `collect()` method (a TensorRT engine's, which reads its CUDA
events) has it called after each timed call, outside the timed interval. `timing_limits` turns a mode plus optional user values into the limits. When models alternate
(`compare_alternating`), the duration is the wall-clock span of the timed phase, which every model's
samples cover from start to end; each model gets at least `min_runs` queries of its own.
"""

from __future__ import annotations

import time
from typing import Callable

from runtime_bench.errors import InputError

Clock = Callable[[], float]

QUICK_MIN_RUNS = 50
QUICK_MIN_S = 2.0
QUICK_HEADLINE = "p50_ms"
# MLPerf Inference single-stream: min_query_count 1024, min_duration 600 s, 90th percentile latency.
STRICT_MIN_RUNS = 1024
STRICT_MIN_S = 600.0
STRICT_HEADLINE = "p90_ms"


def timing_limits(strict: bool = False, min_runs: int | None = None, min_s: float | None = None) -> dict:
    """{"mode", "min_runs", "min_s", "headline"} for quick or strict mode.

    None takes the mode's default. In strict mode a value below the MLPerf minimum is an error
    (the run would not be MLPerf-conformant); larger values are kept.
    """
    if strict:
        if min_runs is not None and min_runs < STRICT_MIN_RUNS:
            raise InputError(f"min_runs={min_runs} is below the strict-mode minimum of {STRICT_MIN_RUNS}")
        if min_s is not None and min_s < STRICT_MIN_S:
            raise InputError(f"min_s={min_s:g} is below the strict-mode minimum of {STRICT_MIN_S:g} s")
        return {
            "mode": "strict",
            "min_runs": STRICT_MIN_RUNS if min_runs is None else int(min_runs),
            "min_s": STRICT_MIN_S if min_s is None else float(min_s),
            "headline": STRICT_HEADLINE,
        }
    return {
        "mode": "quick",
        "min_runs": QUICK_MIN_RUNS if min_runs is None else int(min_runs),
        "min_s": QUICK_MIN_S if min_s is None else float(min_s),
        "headline": QUICK_HEADLINE,
    }


def check_limits(
    warmup_runs: int, warmup_s: float, min_runs: int, min_s: float, max_runs: int | None
) -> None:
    if warmup_runs < 0 or warmup_s < 0:
        raise InputError(f"warm-up must be >= 0 (got warmup_runs={warmup_runs}, warmup_s={warmup_s})")
    if min_runs < 1:
        raise InputError(f"min_runs={min_runs}: must be >= 1")
    if min_s < 0:
        raise InputError(f"min_s={min_s}: must be >= 0")
    if max_runs is not None and max_runs < min_runs:
        raise InputError(f"max_runs={max_runs}: must be >= min_runs ({min_runs})")


def _collect(fn: Callable[[], object]) -> None:
    collect = getattr(fn, "collect", None)
    if collect is not None:
        collect()


def warm_up(fn: Callable[[], object], runs: int, seconds: float, clock: Clock = time.perf_counter) -> int:
    """Call `fn` until both `runs` calls and `seconds` have passed; return the number of calls."""
    start = clock()
    done = 0
    while done < runs or clock() - start < seconds:
        fn()
        done += 1
    return done


def measure(
    fn: Callable[[], object],
    warmup_runs: int = 10,
    warmup_s: float = 0.5,
    min_runs: int = 50,
    min_s: float = 2.0,
    max_runs: int | None = None,
    clock: Clock = time.perf_counter,
) -> list[float]:
    """Seconds per call of `fn`, after warm-up; stops when both minimums are met (or at `max_runs`)."""
    check_limits(warmup_runs, warmup_s, min_runs, min_s, max_runs)
    warm_up(fn, warmup_runs, warmup_s, clock)
    samples: list[float] = []
    start = clock()
    end = start
    while len(samples) < min_runs or end - start < min_s:
        if max_runs is not None and len(samples) >= max_runs:
            break
        t0 = clock()
        fn()
        end = clock()
        samples.append(end - t0)
        _collect(fn)
    return samples


def compare_alternating(
    fns: dict[str, Callable[[], object]],
    warmup_runs: int = 10,
    warmup_s: float = 0.5,
    min_runs: int = 50,
    min_s: float = 2.0,
    max_runs: int | None = None,
    clock: Clock = time.perf_counter,
) -> dict[str, list[float]]:
    """Time several callables interleaved so that drift (thermals, other load) hits all alike.

    Each is warmed up on its own, then rounds call every function once; the order rotates by one
    each round (A,B then B,A for two) so none always goes first. Stops when every function has
    `min_runs` samples and the timed phase as a whole has lasted `min_s` (or at `max_runs` rounds).
    """
    if not fns:
        raise InputError("compare_alternating: no functions to time")
    check_limits(warmup_runs, warmup_s, min_runs, min_s, max_runs)
    names = list(fns)
    for name in names:
        warm_up(fns[name], warmup_runs, warmup_s, clock)

    samples: dict[str, list[float]] = {name: [] for name in names}
    rounds = 0
    start = clock()
    end = start
    while rounds < min_runs or end - start < min_s:
        if max_runs is not None and rounds >= max_runs:
            break
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            t0 = clock()
            fn()
            end = clock()
            samples[name].append(end - t0)
            _collect(fn)
        rounds += 1
    return samples
