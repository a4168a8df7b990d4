"""The whole benchmark in one call: accuracy of each model, then interleaved latency, then a report."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import numpy as np

from runtime_bench import environment
from runtime_bench.accuracy import check_images, check_labels, evaluate, top1_agreement
from runtime_bench.backends import Backend, open_backend
from runtime_bench.errors import InputError
from runtime_bench.report import bench_report
from runtime_bench.settings import BenchSettings
from runtime_bench.stats import DEFAULT_BLOCKS, check_blocks, ratio_with_spread, summarize
from runtime_bench.timing import compare_alternating, timing_limits

ACCURACY_BATCH_SIZE = 32


class _Progress:
    """Short progress lines on stderr; a tqdm bar for the accuracy pass when tqdm is installed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def line(self, message: str) -> None:
        if self.enabled:
            print(f"[runtime_bench] {message}", file=sys.stderr, flush=True)

    def images(self, label: str, total: int) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
        """(callback per batch, close) for counting evaluated images."""
        if not self.enabled:
            return None, lambda: None
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is None or not sys.stderr.isatty():  # bars only garble logs
            self.line(f"{label}: accuracy on {total} images")
            return None, lambda: None
        bar = tqdm(total=total, desc=f"{label} accuracy", unit="img", file=sys.stderr, leave=False)
        return bar.update, bar.close


def _fixed_dim(dim: Any) -> int | None:
    return int(dim) if isinstance(dim, (int, np.integer)) and dim > 0 else None


def _check_input_shape(backend: Backend, where: str, image_shape: tuple[int, ...], batch_size: int) -> None:
    """Fail early with a clear message instead of a runtime's multi-line shape error."""
    shape = list(backend.input_shape or [])
    if not shape:
        return
    if len(shape) != 1 + len(image_shape):
        raise InputError(
            f"{where}: model input has rank {len(shape)} but the images have shape (N, {', '.join(map(str, image_shape))})"
        )
    for model_dim, image_dim in zip(shape[1:], image_shape):
        fixed = _fixed_dim(model_dim)
        if fixed is not None and fixed != image_dim:
            wanted = ", ".join(str(d) for d in shape[1:])
            got = ", ".join(str(d) for d in image_shape)
            raise InputError(f"{where}: model expects images of shape ({wanted}) but the data has ({got})")
    fixed_batch = _fixed_dim(shape[0])
    if fixed_batch is not None and fixed_batch != batch_size:
        raise InputError(
            f"{where}: model has a fixed batch size of {fixed_batch}; use batch_size={fixed_batch}"
        )


def run_benchmark(
    models: dict[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    backend: str = BenchSettings.backend,
    threads: int | None = BenchSettings.threads,
    batch_size: int | None = BenchSettings.batch_size,
    warmup_runs: int = BenchSettings.warmup_runs,
    warmup_s: float = BenchSettings.warmup_seconds,
    min_runs: int | None = BenchSettings.min_runs,
    min_s: float | None = BenchSettings.min_seconds,
    progress: bool = True,
    strict: bool = BenchSettings.strict,
    blocks: int = BenchSettings.blocks,
) -> dict[str, Any]:
    """Benchmark `models` (label -> ONNX path, or an already opened Backend) and return the report.

    The first model is the baseline (e.g. "dense"); every other one is a candidate, timed interleaved with
    it. The report's `comparisons` hold each candidate against the baseline (p50 and p90 speedup with
    their spread, top-1 agreement); `comparison` is the first of them (e.g. "pruned" vs "dense").

    `min_runs`/`min_s` None take the mode's defaults: quick (50 runs, 2 s, p50 headline) or, with
    `strict`, MLPerf single-stream (1024 runs, 600 s, p90 headline; lower values are an error).
    `blocks`: the timed runs are split into this many consecutive blocks to report drift.
    """
    if not models:
        raise InputError("no models to benchmark")
    limits = timing_limits(strict, min_runs, min_s)
    min_runs, min_s = limits["min_runs"], limits["min_s"]
    blocks = check_blocks(blocks)
    images = check_images(images)
    labels = check_labels(labels, num_classes, count=images.shape[0])
    batch_size = 1 if batch_size is None else batch_size
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}: must be >= 1")
    if batch_size > images.shape[0]:
        raise InputError(f"batch_size={batch_size} is larger than the number of images ({images.shape[0]})")
    report_progress = _Progress(progress)

    # Open every model first, so a bad second path fails before minutes of measuring the first,
    # and silently, so that a bad input gives exactly one error line.
    opened: dict[str, Backend] = {}
    paths: dict[str, str | None] = {}
    for label, model in models.items():
        if isinstance(model, Backend):
            opened[label], paths[label] = model, getattr(model, "model_path", None)
        else:
            opened[label], paths[label] = open_backend(backend, model, threads=threads), os.fspath(model)
        _check_input_shape(opened[label], paths[label] or label, images.shape[1:], batch_size)
    for label, model in opened.items():
        report_progress.line(f"{label}: {paths[label] or 'in-memory backend'} on {model.name}")

    # Capture before our own measuring load shows up in the load average.
    env = environment.capture()
    for warning in env["warnings"]:
        report_progress.line(f"warning: {warning}")

    accuracy: dict[str, dict[str, Any]] = {}
    logits: dict[str, np.ndarray] = {}
    want_logits = len(opened) >= 2
    for label, model in opened.items():
        on_batch, close = report_progress.images(label, images.shape[0])
        try:
            result = evaluate(model, images, labels, num_classes, ACCURACY_BATCH_SIZE, want_logits, on_batch)
        finally:
            close()
        if want_logits:
            logits[label] = result.pop("logits")
        accuracy[label] = result
        report_progress.line(
            f"{label}: accuracy {result['accuracy']:.4f}, harmonic mean {result['harmonic_mean']:.4f}"
        )

    # Same fixed input for every model, prepared before timing starts.
    batch = np.ascontiguousarray(images[:batch_size])
    for model in opened.values():
        model.run(batch)  # surfaces runtime errors here, outside the timed loop
    timed = {label: model.prepare(batch) for label, model in opened.items()}
    report_progress.line(
        f"latency ({limits['mode']} mode): {', '.join(opened)} interleaved, batch {batch_size}, "
        f"at least {min_runs} runs and {min_s:g} s"
    )
    samples = compare_alternating(
        timed, warmup_runs=warmup_runs, warmup_s=warmup_s, min_runs=min_runs, min_s=min_s
    )
    # Conditions at the end of timing: a chip that heated up during the run shows it here.
    env["after_timing"] = environment.snapshot()

    entries: dict[str, dict[str, Any]] = {}
    for label, model in opened.items():
        latency = summarize(samples[label], batch_size=batch_size, blocks=blocks)
        latency["headline_ms"] = latency[limits["headline"]]
        entries[label] = {
            "path": paths[label],
            "backend": model.info(),
            "latency": latency,
            "accuracy": accuracy[label],
        }
        device_times = getattr(timed[label], "device_times", None)
        if device_times:
            entries[label]["gpu_events"] = gpu_event_summary(device_times, batch_size, blocks)
        report_progress.line(
            f"{label}: p50 {latency['p50_ms']:.3f} ms, p90 {latency['p90_ms']:.3f} ms over {latency['count']} runs "
            f"(block p50 spread {latency['blocks']['relative_range']:.1%})"
        )
        if "gpu_events" in entries[label]:
            events = {name: v["p50_ms"] for name, v in entries[label]["gpu_events"].items()}
            report_progress.line(
                f"{label}: CUDA events p50: H2D + compute + D2H {events['latency']:.3f} ms (H2D {events['h2d']:.3f}, "
                f"compute {events['compute']:.3f}, D2H {events['d2h']:.3f})"
            )
    late = environment.temperature_warnings(env["after_timing"].get("thermal"), when="after timing")
    late += environment.drift_warnings({label: entry["latency"] for label, entry in entries.items()})
    for warning in late:
        report_progress.line(f"warning: {warning}")
    env["warnings"] = list(env["warnings"]) + late

    comparisons = []
    baseline, *candidates = list(opened)
    for candidate in candidates:
        spread = ratio_with_spread(samples[baseline], samples[candidate])
        spread90 = ratio_with_spread(samples[baseline], samples[candidate], percentile=90.0)
        comparisons.append({
            "baseline": baseline,
            "candidate": candidate,
            "speedup_p50": spread["ratio"],
            "low": spread["low"],
            "high": spread["high"],
            "speedup_p90": spread90["ratio"],
            "low_p90": spread90["low"],
            "high_p90": spread90["high"],
            "headline": limits["headline"],
            "top1_agreement": top1_agreement(logits[baseline], logits[candidate]),
        })
        report_progress.line(
            f"speedup {candidate} vs {baseline}: {spread['ratio']:.2f}x (5-95%: {spread['low']:.2f}-{spread['high']:.2f})"
        )

    settings = {
        "backend": backend,
        "threads": threads,
        "inter_op_threads": 1 if backend.startswith("ort-") else None,
        "thread_env": env.get("thread_env"),
        "batch_size": batch_size,
        "accuracy_batch_size": ACCURACY_BATCH_SIZE,
        "mode": limits["mode"],
        "headline": limits["headline"],
        "warmup_runs": warmup_runs,
        "warmup_s": warmup_s,
        "min_runs": min_runs,
        "min_s": min_s,
        "blocks": blocks,
        "timing": "interleaved, order rotated each round",
        "num_images": int(images.shape[0]),
        "num_classes": int(num_classes),
    }
    return bench_report(entries, comparisons, settings, env)


def gpu_event_summary(device_times: dict[str, list[float]], batch_size: int = 1, blocks: int = DEFAULT_BLOCKS) -> dict:
    """Summaries of a GPU backend's event intervals (ms per timed call: "h2d_ms", "compute_ms", "d2h_ms"),
    and of their sum under "latency": the latency as trtexec defines it (H2D + GPU compute + D2H)."""
    seconds = {name[: -len("_ms")] if name.endswith("_ms") else name: np.asarray(values, dtype=np.float64) / 1000.0
               for name, values in device_times.items()}
    summary = {"latency": summarize(sum(seconds.values()), batch_size=batch_size, blocks=blocks)}
    summary.update({name: summarize(values, batch_size=batch_size, blocks=blocks) for name, values in seconds.items()})
    return summary


def model_labels(paths: list[str]) -> list[str]:
    """Report labels from file names ("dense.onnx" -> "dense"), made unique if two names clash."""
    stems = [os.path.splitext(os.path.basename(p))[0] or f"model{i + 1}" for i, p in enumerate(paths)]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{stem}#{i + 1}" for i, stem in enumerate(stems)]
