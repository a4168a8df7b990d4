"""Compare two benchmark reports: the same models (matched by label) measured on two machines, two
runtimes or two days.

    python -m runtime_bench compare A.json B.json [--md OUT.md]

Prints a Markdown table: p50 and p90 of each model in A and in B with the ratio B / A (below 1: B is
faster), accuracy in both and the difference B - A, then the differences between the two setups
that change latencies (CPU, cores, runtime version, backend, threads, batch size, mode, Jetson
power mode and clocks) and the warnings either report carries. When the reports share no label but
each has exactly one model, those two are compared.
"""

from __future__ import annotations

from typing import Any

from runtime_bench.report import load_report


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _runtime_versions(report: dict[str, Any]) -> str | None:
    found = []
    for entry in (report.get("models") or {}).values():
        info = entry.get("backend") or {}
        text = " ".join(str(x) for x in (info.get("runtime"), info.get("version")) if x)
        if text and text not in found:
            found.append(text)
    return ", ".join(found) if found else None


def _threads(report: dict[str, Any]) -> str:
    threads = _get(report, "settings", "threads")
    text = "runtime default" if threads is None else str(threads)
    thread_env = _get(report, "settings", "thread_env") or _get(report, "environment", "thread_env") or {}
    if thread_env:
        text += " (" + ", ".join(f"{k}={v}" for k, v in sorted(thread_env.items())) + ")"
    return text


def _nvpmodel(report: dict[str, Any]) -> Any:
    mode = _get(report, "environment", "jetson", "nvpmodel") or {}
    return mode.get("name") or mode.get("id")


# (title, getter) for the setup facts worth flagging when they differ.
SETUP_FACTS = (
    ("CPU", lambda r: _get(r, "environment", "cpu_model")),
    ("logical cores", lambda r: _get(r, "environment", "logical_cores")),
    ("machine", lambda r: _get(r, "environment", "machine")),
    ("runtime", _runtime_versions),
    ("onnxruntime", lambda r: _get(r, "environment", "onnxruntime")),
    ("backend", lambda r: _get(r, "settings", "backend")),
    ("threads", _threads),
    ("batch size", lambda r: _get(r, "settings", "batch_size")),
    ("mode", lambda r: _get(r, "settings", "mode") or "quick (schema 1)"),
    ("CPU governor", lambda r: _get(r, "environment", "cpu_governor")),
    ("Jetson", lambda r: _get(r, "environment", "jetson", "model")),
    ("L4T", lambda r: _get(r, "environment", "jetson", "l4t_release")),
    ("nvpmodel", _nvpmodel),
    ("clocks locked", lambda r: _get(r, "environment", "jetson", "clocks", "locked")),
)


def _ratio(b: Any, a: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0:
        return float(b) / float(a)
    return None


def _delta(b: Any, a: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(b) - float(a)
    return None


def _pairs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(shown label, label in A, label in B) for the models to compare."""
    common = [label for label in a if label in b]
    if not common and len(a) == 1 and len(b) == 1:
        (la,), (lb,) = list(a), list(b)
        return [(f"{la} vs {lb}", la, lb)]
    return [(label, label, label) for label in common]


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per-model ratios and deltas, unmatched labels, and setup differences (B relative to A)."""
    models_a, models_b = a.get("models") or {}, b.get("models") or {}
    rows = []
    for shown, la, lb in _pairs(models_a, models_b):
        lat_a, lat_b = models_a[la].get("latency") or {}, models_b[lb].get("latency") or {}
        acc_a, acc_b = models_a[la].get("accuracy") or {}, models_b[lb].get("accuracy") or {}
        rows.append(
            {
                "label": shown,
                "p50_ms": [lat_a.get("p50_ms"), lat_b.get("p50_ms")],
                "p90_ms": [lat_a.get("p90_ms"), lat_b.get("p90_ms")],
                "p50_ratio": _ratio(lat_b.get("p50_ms"), lat_a.get("p50_ms")),
                "p90_ratio": _ratio(lat_b.get("p90_ms"), lat_a.get("p90_ms")),
                "accuracy": [acc_a.get("accuracy"), acc_b.get("accuracy")],
                "accuracy_delta": _delta(acc_b.get("accuracy"), acc_a.get("accuracy")),
                "harmonic_mean_delta": _delta(acc_b.get("harmonic_mean"), acc_a.get("harmonic_mean")),
                "block_spread": [
                    _get(lat_a, "blocks", "relative_range"),
                    _get(lat_b, "blocks", "relative_range"),
                ],
            }
        )
    matched_a = {la for _, la, _ in _pairs(models_a, models_b)}
    matched_b = {lb for _, _, lb in _pairs(models_a, models_b)}
    differences = []
    for title, getter in SETUP_FACTS:
        value_a, value_b = getter(a), getter(b)
        if value_a != value_b:
            differences.append({"what": title, "a": value_a, "b": value_b})
    return {
        "models": rows,
        "only_in_a": [label for label in models_a if label not in matched_a],
        "only_in_b": [label for label in models_b if label not in matched_b],
        "differences": differences,
        "warnings": {
            "a": list(_get(a, "environment", "warnings") or []),
            "b": list(_get(b, "environment", "warnings") or []),
        },
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "/")


def _signed(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def _describe(report: dict[str, Any]) -> str:
    settings = report.get("settings") or {}
    return (
        f"schema {report.get('schema_version')}, {report.get('created_utc') or 'no date'}, "
        f"{settings.get('mode') or 'quick'} mode"
    )


def to_markdown(
    result: dict[str, Any], a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str
) -> str:
    lines = [
        "# Benchmark comparison",
        "",
        f"- A: `{name_a}` ({_describe(a)})",
        f"- B: `{name_b}` ({_describe(b)})",
        "",
    ]
    if result["models"]:
        lines += [
            "| model | p50 A (ms) | p50 B (ms) | p50 B/A | p90 A (ms) | p90 B (ms) | p90 B/A "
            "| accuracy A | accuracy B | accuracy B-A |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in result["models"]:
            lines.append(
                f"| {row['label']} | {_fmt(row['p50_ms'][0])} | {_fmt(row['p50_ms'][1])} | "
                f"{_fmt(row['p50_ratio'])} | {_fmt(row['p90_ms'][0])} | {_fmt(row['p90_ms'][1])} | "
                f"{_fmt(row['p90_ratio'])} | {_fmt(row['accuracy'][0], 4)} | {_fmt(row['accuracy'][1], 4)} | "
                f"{_signed(row['accuracy_delta'])} |"
            )
        lines += ["", "Latency ratios are B / A: below 1 means B is faster."]
    else:
        lines.append("No model labels in common: nothing to compare side by side.")
    for key, name in (("only_in_a", "A"), ("only_in_b", "B")):
        if result[key]:
            lines.append(f"Only in {name}: {', '.join(result[key])}.")
    lines += ["", "## Setup differences", ""]
    if result["differences"]:
        lines += ["| what | A | B |", "|---|---|---|"]
        lines += [f"| {d['what']} | {_fmt(d['a'])} | {_fmt(d['b'])} |" for d in result["differences"]]
    else:
        lines.append(
            "None in CPU, cores, runtime, backend, threads, batch size, mode, governor or Jetson state."
        )
    warnings = result["warnings"]
    if warnings["a"] or warnings["b"]:
        lines += ["", "## Warnings", ""]
        lines += [f"- A: {w}" for w in warnings["a"]] + [f"- B: {w}" for w in warnings["b"]]
    return "\n".join(lines) + "\n"


def compare_files(path_a: Any, path_b: Any) -> tuple[dict[str, Any], str]:
    """Load both reports (InputError if either is missing or not a report); (result, Markdown)."""
    a, b = load_report(path_a), load_report(path_b)
    result = compare_reports(a, b)
    return result, to_markdown(result, a, b, str(path_a), str(path_b))
