"""The benchmark report: a versioned JSON document, written atomically, and a Markdown rendering."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from runtime_bench.atomic import atomic_output

# Bump when a key is renamed or removed; adding keys keeps the version.
SCHEMA_VERSION = "1"


def bench_report(
    models: dict[str, dict[str, Any]],
    comparison: dict[str, Any] | None,
    settings: dict[str, Any],
    environment: dict[str, Any],
) -> dict[str, Any]:
    """Assemble the report. `models`: label -> {path, backend, latency, accuracy}."""
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": settings,
        "environment": environment,
        "models": models,
        "comparison": comparison,
    }


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays sneak in from stats; JSON wants plain Python values.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_json_atomic(obj: Any, path: Any) -> None:
    """Write `obj` as JSON so that readers see either the old file or the complete new one."""
    # Serialize first: a non-serializable value must not leave anything behind.
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n"
    write_text_atomic(text, path)


def write_text_atomic(text: str, path: Any) -> None:
    """Write `text` so that readers see either the old file or the complete new one."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
        lines.append("")

    models = report.get("models") or {}
    lines += [
        "## Latency (ms)",
        "",
        "| model | p50 | p90 | p99 | mean ± std | runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, entry in models.items():
        lat = entry.get("latency") or {}
        lines.append(
            f"| {label} | {_fmt(lat.get('p50_ms'))} | {_fmt(lat.get('p90_ms'))} | {_fmt(lat.get('p99_ms'))} | "
            f"{_fmt(lat.get('mean_ms'))} ± {_fmt(lat.get('std_ms'))} | {_fmt(lat.get('count'))} |"
        )
    lines += ["", "## Accuracy", "", "| model | accuracy | harmonic mean | images |", "|---|---:|---:|---:|"]
    for label, entry in models.items():
        acc = entry.get("accuracy") or {}
        lines.append(
            f"| {label} | {_fmt(acc.get('accuracy'), 4)} | {_fmt(acc.get('harmonic_mean'), 4)} | {_fmt(acc.get('count'))} |"
        )

    comparison = report.get("comparison")
    if comparison:
        lines += [
            "",
            "## Speedup",
            "",
            f"`{comparison['candidate']}` vs `{comparison['baseline']}`: "
            f"**{comparison['speedup_p50']:.2f}x** at p50 "
            f"(bootstrap 5-95%: {comparison['low']:.2f}x to {comparison['high']:.2f}x)",
        ]
        if comparison.get("top1_agreement") is not None:
            lines.append(f"Top-1 agreement between the two: {comparison['top1_agreement']:.4f}")

    warnings = (report.get("environment") or {}).get("warnings") or []
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"
