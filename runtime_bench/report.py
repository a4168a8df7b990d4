"""The benchmark report: a versioned JSON document, written atomically, and a Markdown rendering.

Schema, version "2" (every key of version "1" is still there with the same meaning; version 2 added
the keys marked +, which readers such as `runtime_bench.compare` rely on):

    schema_version   "2"
    created_utc      "YYYY-MM-DDTHH:MM:SSZ"
    settings         backend, threads (intra-op; null = runtime default), batch_size (images per timed
                     call), accuracy_batch_size, warmup_runs, warmup_s, min_runs, min_s, timing,
                     num_images, num_classes; optional data (the .npz), class_names, bundle;
                     + mode ("quick" | "strict": MLPerf single-stream minimums), + headline
                     ("p50_ms" | "p90_ms"), + blocks (drift blocks), + inter_op_threads,
                     + thread_env (OMP_NUM_THREADS etc. as set)
    environment      see runtime_bench.environment.capture: python, numpy, onnxruntime, cpu_model,
                     logical_cores, cpu_governor, load_average, jetson, nvidia_gpus, warnings, ...;
                     + cpu_freq, + thermal, + thread_env, + jetson.{nvpmodel, clocks, power_rails},
                     + after_timing {cpu_freq, thermal, load_average} (taken when timing ended);
                     warnings also holds the post-run ones (heat after timing, drift > 10%)
    models           label -> {
                       path      the model file (null for an in-memory backend)
                       backend   runtime_bench.backends info(): backend, runtime, version, providers,
                                 threads, ...
                       latency   count, mean_ms, std_ms (ddof=1), min_ms, max_ms, p50_ms, p90_ms,
                                 p99_ms, throughput (images/s = batch_size / mean), + headline_ms
                                 (= the settings.headline percentile), + blocks {count, p50_ms
                                 [per block, in timing order], min_ms, max_ms, relative_range
                                 ((max - min) / min of the block p50s)}
                       accuracy  accuracy, per_class, harmonic_mean, count
                       + sha256  the model file's hash (bundle runs only)
                     }
    comparison       null with one model, else the first of `comparisons`: baseline, candidate,
                     speedup_p50 (p50 baseline / p50 candidate), low, high (bootstrap 5-95% of that ratio),
                     top1_agreement; + speedup_p90, low_p90, high_p90, + headline
    comparisons      (optional) every model after the first against the first, each like `comparison`
                     (a bundle with an INT8 model: pruned vs dense, then pruned-int8 vs dense)
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from runtime_bench.errors import InputError, first_line

# Bump when a key is renamed or removed, or when readers start to rely on added keys (see above).
SCHEMA_VERSION = "2"
# Versions `load_report` accepts: version 1 reports lack only the keys marked + above.
READABLE_SCHEMA_VERSIONS = ("1", "2")


def bench_report(
    models: dict[str, dict[str, Any]],
    comparisons: list[dict[str, Any]],
    settings: dict[str, Any],
    environment: dict[str, Any],
) -> dict[str, Any]:
    """Assemble the report. `models`: label -> {path, backend, latency, accuracy}; `comparisons`: each later
    model against the first."""
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": settings,
        "environment": environment,
        "models": models,
        "comparison": comparisons[0] if comparisons else None,
        "comparisons": comparisons,
    }


def load_report(path: Any) -> dict[str, Any]:
    """Read a runtime_bench report JSON; InputError (one line) if missing or not such a report."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a file")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, ValueError) as exc:
        reason = first_line(exc)
        raise InputError(f"{path}: not a runtime_bench report (not valid JSON: {reason})") from None
    return parse_report(text, path)


def parse_report(text: str, path: str) -> dict[str, Any]:
    """`load_report` for JSON text already read (e.g. fetched from a device); `path` names it in errors."""
    try:
        report = json.loads(text)
    except ValueError as exc:
        reason = first_line(exc)
        raise InputError(f"{path}: not a runtime_bench report (not valid JSON: {reason})") from None
    if not isinstance(report, dict) or "schema_version" not in report:
        raise InputError(f"{path}: not a runtime_bench report (no schema_version)")
    version = report["schema_version"]
    if version not in READABLE_SCHEMA_VERSIONS:
        raise InputError(
            f"{path}: schema_version {version!r} is not a runtime_bench report version this tool reads "
            f"({', '.join(READABLE_SCHEMA_VERSIONS)})"
        )
    if not isinstance(report.get("models"), dict) or not isinstance(report.get("settings"), dict):
        raise InputError(f"{path}: not a runtime_bench report (no 'models' and 'settings' objects)")
    return report


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(report: dict[str, Any]) -> str:
    """Human-readable summary: latency table, accuracy table, speedup with spread."""
    lines = ["# Benchmark report", ""]
    settings = report.get("settings") or {}
    if settings:
        lines.append(
            f"Backend `{settings.get('backend')}`, threads {settings.get('threads') or 'default'}, "
            f"batch size {settings.get('batch_size')}, {settings.get('num_images')} evaluation images."
        )
        if settings.get("mode"):
            lines.append(
                f"Mode {settings['mode']}: at least {settings.get('min_runs')} runs and {settings.get('min_s'):g} s "
                f"after warm-up; headline latency {str(settings.get('headline', 'p50_ms')).replace('_ms', '')}."
            )
        lines.append("")

    env = report.get("environment") or {}
    described = _describe_environment(env)
    if described:
        lines += [described, ""]

    models = report.get("models") or {}
    lines += [
        "## Latency (ms)",
        "",
        "| model | p50 | p90 | p99 | mean ± std | min | max | throughput (img/s) | block p50 spread | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, entry in models.items():
        lat = entry.get("latency") or {}
        blocks = lat.get("blocks") or {}
        spread = blocks.get("relative_range")
        spread_text = "-" if spread is None else f"{spread:.1%} ({blocks.get('count')} blocks)"
        lines.append(
            f"| {label} | {_fmt(lat.get('p50_ms'))} | {_fmt(lat.get('p90_ms'))} | {_fmt(lat.get('p99_ms'))} | "
            f"{_fmt(lat.get('mean_ms'))} ± {_fmt(lat.get('std_ms'))} | {_fmt(lat.get('min_ms'))} | "
            f"{_fmt(lat.get('max_ms'))} | {_fmt(lat.get('throughput'), 1)} | "
            f"{spread_text} | "
            f"{_fmt(lat.get('count'))} |"
        )
    timed_on_gpu = {label: entry["gpu_events"] for label, entry in models.items() if entry.get("gpu_events")}
    if timed_on_gpu:
        lines += ["", "## GPU latency from CUDA events (ms, p50)", "",
                  "The same timed calls as above (whose latency is the host's wall clock); latency as trtexec defines "
                  "it is H2D + GPU compute + D2H.", "",
                  "| model | latency | H2D | GPU compute | D2H | latency p99 |", "|---|---:|---:|---:|---:|---:|"]
        for label, events in timed_on_gpu.items():
            lines.append(f"| {label} | {_fmt(events['latency']['p50_ms'])} | {_fmt(events['h2d']['p50_ms'])} | "
                         f"{_fmt(events['compute']['p50_ms'])} | {_fmt(events['d2h']['p50_ms'])} | "
                         f"{_fmt(events['latency']['p99_ms'])} |")
    lines += ["", "## Accuracy", "", "| model | accuracy | harmonic mean | images |", "|---|---:|---:|---:|"]
    for label, entry in models.items():
        acc = entry.get("accuracy") or {}
        lines.append(
            f"| {label} | {_fmt(acc.get('accuracy'), 4)} | {_fmt(acc.get('harmonic_mean'), 4)} | {_fmt(acc.get('count'))} |"
        )

    comparisons = report.get("comparisons") or ([report["comparison"]] if report.get("comparison") else [])
    if comparisons:
        lines += ["", "## Speedup"]
    for comparison in comparisons:
        lines += [
            "",
            f"`{comparison['candidate']}` vs `{comparison['baseline']}`: "
            f"**{comparison['speedup_p50']:.2f}x** at p50 "
            f"(bootstrap 5-95%: {comparison['low']:.2f}x to {comparison['high']:.2f}x)",
        ]
        if comparison.get("speedup_p90") is not None:
            lines.append(
                f"At p90: **{comparison['speedup_p90']:.2f}x** "
                f"(bootstrap 5-95%: {comparison['low_p90']:.2f}x to {comparison['high_p90']:.2f}x)"
            )
        if comparison.get("top1_agreement") is not None:
            lines.append(f"Top-1 agreement between the two: {comparison['top1_agreement']:.4f}")

    warnings = env.get("warnings") or []
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _describe_environment(env: dict[str, Any]) -> str:
    """One line: CPU, cores, runtime version, clocks, and the Jetson state when there is one."""
    if not env:
        return ""
    parts = [f"Measured on {env.get('cpu_model') or 'an unknown CPU'} ({env.get('logical_cores')} cores)"]
    if env.get("onnxruntime"):
        parts.append(f"onnxruntime {env['onnxruntime']}")
    freq = env.get("cpu_freq") or {}
    if freq.get("cur_mhz_max") is not None:
        parts.append(f"CPU {_fmt(freq.get('cur_mhz_min'), 0)}-{_fmt(freq.get('cur_mhz_max'), 0)} MHz")
    governors = freq.get("governors") or ([env["cpu_governor"]] if env.get("cpu_governor") else [])
    if governors:
        parts.append(f"governor {'/'.join(governors)}")
    jetson = env.get("jetson") or {}
    if jetson:
        parts.append(f"{jetson.get('model') or 'Jetson'} L4T {jetson.get('l4t_release')}")
        nvp = jetson.get("nvpmodel") or {}
        if nvp:
            parts.append(f"nvpmodel {nvp.get('name') or nvp.get('id')}")
        clocks = jetson.get("clocks") or {}
        if clocks.get("locked") is not None:
            parts.append("clocks locked" if clocks["locked"] else "clocks NOT locked")
    zones = [z for z in env.get("thermal") or [] if z.get("temp_c") is not None]
    if zones:
        hottest = max(zones, key=lambda z: z["temp_c"])
        parts.append(f"hottest zone {hottest.get('type') or hottest.get('zone')} {hottest['temp_c']:.1f} C")
    return ", ".join(parts) + "."
