"""The deploy report: report.json (schema below), report.md and PNG plots, from the stages' outputs.

report.json, schema_version "1":
  schema_version, created_utc, config (resolved), source (model, weights, hashes), classes,
  pruning: {method, rate_requested, rate_achieved, filters_before, filters_after, macs_before, macs_after,
            params_before, params_after, macs_reduction, seconds, relevance_passes, plan_layers}
  curve: [{rate, filters, macs, params, accuracy, harmonic_mean, per_class[], small_set_accuracy,
           small_set_harmonic_mean, torch_latency_ms}]  (PyTorch, test set; one point per pruning step)
  export: {dense: {...parity gate}, pruned: {...parity gate}}
  benchmark: runtime_bench report (ONNX Runtime, dense vs pruned timed alternately; accuracy per model)
  summary: {accuracy_dense, accuracy_pruned, harmonic_mean_dense, harmonic_mean_pruned, p50_ms_dense,
            p50_ms_pruned, speedup_p50, speedup_low, speedup_high, macs_reduction, speedup_over_macs,
            worst_class_dense, worst_class_pruned: {class, accuracy} (ONNX Runtime, test set)}
  chosen: pruned.json's `chosen` (the state the run ended on, why, its small-set estimate, its test
          figures in PyTorch, estimate minus test)
  tensorrt (only when engines were built): toolchain.engines.evaluate_engines: {engines: label -> build
            record, accuracy: label -> engine next to its FP32 ONNX model, benchmarks: precision ->
            runtime_bench report of the dense and pruned engines}
"""

from __future__ import annotations

import datetime
import pathlib

from runtime_bench.atomic import atomic_output, write_json_atomic, write_text_atomic
from runtime_bench.errors import InputError

SCHEMA_VERSION = "1"


def build_report(out: pathlib.Path, export: dict, bench: dict, config: dict) -> dict:
    from ..artifact import read_manifest  # imports torch: not needed to plot a bench report

    manifest = read_manifest(out)
    curve = manifest["curve"]
    first, last = curve[0], curve[-1]
    models = bench["models"]
    comparison = bench.get("comparison") or {}
    macs_reduction = first["macs"] / last["macs"]
    speedup = comparison.get("speedup_p50")
    summary = {
        "accuracy_dense": models["dense"]["accuracy"]["accuracy"],
        "accuracy_pruned": models["pruned"]["accuracy"]["accuracy"],
        "harmonic_mean_dense": models["dense"]["accuracy"]["harmonic_mean"],
        "harmonic_mean_pruned": models["pruned"]["accuracy"]["harmonic_mean"],
        "p50_ms_dense": models["dense"]["latency"]["p50_ms"],
        "p50_ms_pruned": models["pruned"]["latency"]["p50_ms"],
        "speedup_p50": speedup,
        "speedup_low": comparison.get("low"),
        "speedup_high": comparison.get("high"),
        "macs_reduction": macs_reduction,
        "speedup_over_macs": None if speedup is None else speedup / macs_reduction,
        **{f"worst_class_{label}": _worst(models[label]["accuracy"]["per_class"], manifest["classes"])
           for label in ("dense", "pruned")},
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "source": manifest["source"],
        "classes": manifest["classes"],
        "pruning": {
            "method": manifest["config"]["method"],
            "rate_requested": manifest["config"]["rate"],
            "rate_achieved": last["rate"],
            "filters_before": first["filters"],
            "filters_after": last["filters"],
            "macs_before": first["macs"],
            "macs_after": last["macs"],
            "params_before": first["params"],
            "params_after": last["params"],
            "macs_reduction": macs_reduction,
            "seconds": manifest["cost"]["seconds"],
            "relevance_passes": manifest["cost"]["relevance_passes"],
            "plan_layers": len(manifest["plan"]),
        },
        "chosen": manifest.get("chosen"),
        "curve": curve,
        "export": export,
        "benchmark": bench,
        "summary": summary,
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _worst(per_class: list[float], classes: list[str]) -> dict:
    c = min(range(len(classes)), key=lambda k: per_class[k])
    return {"class": classes[c], "accuracy": per_class[c]}


def _what_was_fitted(config: dict) -> str:
    if config.get("compensate"):
        return ("No fine-tuning (no gradient step): the linear head was re-fitted after every step and the layers "
                "reading removed channels were compensated, both in closed form on the small set.")
    if config.get("refit_head"):
        return "No fine-tuning: only the linear head was fitted, and re-fitted after every step."
    return "No fine-tuning: only the linear head was fitted."


def _estimate(estimate: dict | None) -> str:
    return "" if not estimate else f"{estimate['accuracy']:.3f} / {estimate['harmonic_mean']:.3f}"


def headline(report: dict) -> str:
    """The one line a user reads first."""
    s = report["summary"]
    wd, wp = s["worst_class_dense"], s["worst_class_pruned"]
    return (f"**{s['macs_reduction']:.2f}x fewer MACs, {s['speedup_p50']:.2f}x faster** (ONNX Runtime CPU p50); "
            f"accuracy {s['accuracy_dense']:.3f} -> {s['accuracy_pruned']:.3f}, harmonic mean of class accuracies "
            f"{s['harmonic_mean_dense']:.3f} -> {s['harmonic_mean_pruned']:.3f}, worst class {wd['class']} "
            f"{wd['accuracy']:.3f} -> {wp['class']} {wp['accuracy']:.3f}.")


def chosen_lines(chosen: dict | None) -> list:
    """Markdown: which state was kept and why, what the small set said of it and what the test set says."""
    if not chosen:
        return []
    e, t, de, dt = chosen["estimate"], chosen["test"], chosen["dense_estimate"], chosen["dense_test"]
    gap = chosen["estimate_minus_test"]
    budget = chosen["budget"]
    asked = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in budget.items() if k != "dense_estimate" and v is not None)
    return [
        "## The chosen state", "",
        f"{_pct(chosen['rate'])} of conv filters removed, {chosen['macs_reduction']:.2f}x fewer MACs"
        f"{f' (budget {asked})' if asked else ''}: {chosen['why']}. The small-set estimate decided; the test set "
        "only reports.", "",
        "| | small-set estimate (accuracy / harmonic mean) | test (accuracy / harmonic mean) |",
        "| --- | --- | --- |",
        f"| dense | {de['accuracy']:.3f} / {de['harmonic_mean']:.3f} | {dt['accuracy']:.3f} / {dt['harmonic_mean']:.3f} |",
        f"| chosen | {e['accuracy']:.3f} / {e['harmonic_mean']:.3f} | {t['accuracy']:.3f} / {t['harmonic_mean']:.3f} |",
        "",
        f"Estimate minus test at the chosen state: accuracy {100 * gap['accuracy']:+.1f} pt, harmonic mean "
        f"{100 * gap['harmonic_mean']:+.1f} pt.", "",
    ]


def to_markdown(report: dict) -> str:
    s, p = report["summary"], report["pruning"]
    env = report["benchmark"]["environment"]
    lines = [
        f"# edgeprune report: {report['source']['model']} ({report['source'].get('weights')})",
        "",
        headline(report),
        "",
        f"Method `{p['method']}`, {_pct(p['rate_achieved'])} of conv filters removed "
        f"({p['filters_before']} -> {p['filters_after']}), {p['seconds']:.0f} s, "
        f"{p['relevance_passes']} relevance passes. " + _what_was_fitted(report["config"]),
        "",
        "| model | accuracy | harmonic mean | MACs | params | ORT p50 (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| dense | {_pct(s['accuracy_dense'])} | {s['harmonic_mean_dense']:.3f} | {p['macs_before'] / 1e6:.1f} M | "
        f"{p['params_before'] / 1e6:.2f} M | {s['p50_ms_dense']:.2f} |",
        f"| pruned | {_pct(s['accuracy_pruned'])} | {s['harmonic_mean_pruned']:.3f} | {p['macs_after'] / 1e6:.1f} M | "
        f"{p['params_after'] / 1e6:.2f} M | {s['p50_ms_pruned']:.2f} |",
        "",
        f"Speedup (ONNX Runtime CPU, p50, alternating runs): **{s['speedup_p50']:.2f}x** "
        f"(5-95% bootstrap {s['speedup_low']:.2f}-{s['speedup_high']:.2f}); MACs reduction {s['macs_reduction']:.2f}x; "
        f"speedup / MACs reduction = {s['speedup_over_macs']:.2f}.",
        "",
        f"Measured on {env.get('cpu_model')} ({env.get('logical_cores')} cores), onnxruntime {env.get('onnxruntime')}.",
    ]
    for warning in env.get("warnings", []):
        lines.append(f"> warning: {warning}")
    lines += ["", *chosen_lines(report.get("chosen")), "## Accuracy along the pruning steps (PyTorch, test set)", "",
              "| rate | MACs (M) | accuracy | harmonic mean | worst class | small-set estimate (accuracy / harmonic mean) | PyTorch ms |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    classes = report["classes"]
    for point in report["curve"]:
        worst = min(range(len(classes)), key=lambda c: point["per_class"][c])
        lines.append(
            f"| {_pct(point['rate'])} | {point['macs'] / 1e6:.1f} | {_pct(point['accuracy'])} | "
            f"{point['harmonic_mean']:.3f} | {classes[worst]} {_pct(point['per_class'][worst])} | "
            f"{_estimate(point.get('estimate'))} | {point['torch_latency_ms']:.2f} |"
        )
    if report.get("int8"):
        lines += ["", *int8_lines(report["int8"], report["classes"], env)]
    if report.get("tensorrt"):
        lines += ["", *tensorrt_table(report["tensorrt"])]
    lines += ["", "Plots: `accuracy_vs_rate.png`, `latency_vs_rate.png`.", ""]
    return "\n".join(lines)


def int8_lines(int8: dict, classes: list, env: dict) -> list:
    """Markdown: the INT8 model per class against its FP32 model (small-set estimate and test), and its speed."""
    record, e, t = int8["record"], int8["record"]["estimate"], int8["record"]["test"]
    kept = record["kept_float"]
    flags = env.get("cpu_int8")
    lines = ["## INT8 (ONNX Runtime CPU)", "",
             f"`{pathlib.Path(record['model']).name}`: calibrated on {record['calibration_images']} small-set images, "
             f"{record['quantized_layers']} layers in int8, {len(kept)} kept in float ({', '.join(kept) or 'none'}); "
             f"kept because its small-set estimate stayed within --max-drop {record['max_drop']:g} of FP32 "
             f"(calibration and head cross-fitted).", "",
             "| | small-set estimate: accuracy / harmonic mean / worst class | test: accuracy / harmonic mean / worst "
             "class |", "| --- | --- | --- |"]
    for label in ("fp32", "int8"):
        lines.append(f"| pruned {label.upper()} | {e[label]['accuracy']:.3f} / {e[label]['harmonic_mean']:.3f} / "
                     f"{e['worst_class'][label]:.2f} | {t[label]['accuracy']:.3f} / {t[label]['harmonic_mean']:.3f} / "
                     f"{t['worst_class'][label]:.2f} |")
    lines += ["", "Per-class change, INT8 minus FP32 (points): " + ", ".join(
        f"{name} {100 * e['per_class_change'][name]:+.0f} / {100 * t['per_class_change'][name]:+.0f}"
        for name in classes) + " (small-set estimate / test).", ""]
    for label, key in (("pruned FP32", "vs_pruned"), ("dense FP32", "vs_dense")):
        c = int8[key]
        lines.append(f"Pruned INT8 against {label} (ONNX Runtime CPU, p50, alternating runs): **{c['speedup_p50']:.2f}x** "
                     f"(5-95% bootstrap {c['low']:.2f}-{c['high']:.2f}).")
    lines.append(f"CPU int8 instructions: {', '.join(flags) if flags else 'none listed'}"
                 + (f"; run in float (no int8 kernel): {', '.join(f'{op} x{n}' for op, n in record['float_ops'].items())}"
                    if record["float_ops"] else "") + ".")
    return lines


def tensorrt_table(engines: dict) -> list:
    """Markdown lines: every engine's accuracy next to its FP32 ONNX model, and its latency."""
    first = next(iter(engines["engines"].values()))
    lines = [f"## TensorRT engines ({first['gpu']}, TensorRT {first['tensorrt_version']})", "",
             "Latency as trtexec defines it: H2D + GPU compute + D2H, timed with CUDA events; wall clock: the same "
             "calls timed on the host.", "",
             "| engine | how | accuracy | vs FP32 ONNX | harmonic mean (vs FP32) | largest class drop | top-1 agreement "
             "| latency p50 / p99 (ms) | GPU compute p50 (ms) | wall clock p50 (ms) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, record in engines["engines"].items():
        accuracy = engines["accuracy"][label]
        model = "dense" if label.startswith("dense-") else "pruned"
        entry = engines["benchmarks"][record["precision"]]["models"][model]
        events, wall = entry["gpu_events"], entry["latency"]
        lines.append(f"| {label} | {record['method']} | {_pct(accuracy['accuracy'])} | "
                     f"{100 * accuracy['accuracy_delta']:+.1f} pt | {accuracy['harmonic_mean']:.3f} "
                     f"({100 * accuracy['harmonic_mean_delta']:+.1f} pt) | "
                     f"{max(0.0, -100 * min(accuracy['per_class_delta'])):.0f} pt | {accuracy['top1_agreement']:.3f} | "
                     f"{events['latency']['p50_ms']:.3f} / {events['latency']['p99_ms']:.3f} | "
                     f"{events['compute']['p50_ms']:.3f} | {wall['p50_ms']:.3f} |")
    return lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(report: dict, out: pathlib.Path) -> list:
    plt = _pyplot()
    curve = report["curve"]
    rates = [100 * c["rate"] for c in curve]
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for c, name in enumerate(report["classes"]):
        ax.plot(rates, [p["per_class"][c] for p in curve], color="0.75", linewidth=0.8,
                label="per class" if c == 0 else None)
    ax.plot(rates, [p["accuracy"] for p in curve], "o-", label="accuracy")
    ax.plot(rates, [p["harmonic_mean"] for p in curve], "s-", label="harmonic mean of class accuracies")
    ax.set_xlabel("conv filters removed (%)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{report['source']['model']}: {report['pruning']['method']} pruning, no fine-tuning")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "accuracy_vs_rate.png"))

    s = report["summary"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(rates, [p["torch_latency_ms"] for p in curve], "o-", label="PyTorch CPU, batch 1 (median)")
    ax.plot([rates[0], rates[-1]], [s["p50_ms_dense"], s["p50_ms_pruned"]], "D--",
            label="ONNX Runtime CPU, batch 1 (p50)")
    ax2 = ax.twinx()
    ax2.plot(rates, [p["macs"] / 1e6 for p in curve], ":", color="0.5", label="MACs (M)")
    ax2.set_ylabel("MACs (M)")
    ax.set_xlabel("conv filters removed (%)")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "latency_vs_rate.png"))
    return paths


def _save(fig, path: pathlib.Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name


# The latency quantiles a runtime_bench report keeps, as (key, fraction of runs at or below it).
BENCH_QUANTILES = (("min_ms", 0.0), ("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99), ("max_ms", 1.0))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bench_models(report: dict, source: str) -> dict:
    """The report's models, each checked to have what the plot shows (InputError naming the gap)."""
    models = report.get("models")
    if not isinstance(models, dict) or not models:
        raise InputError(f"{source}: no models to plot")
    for label, entry in models.items():
        latency = entry.get("latency") if isinstance(entry, dict) else None
        accuracy = entry.get("accuracy") if isinstance(entry, dict) else None
        for key, _ in BENCH_QUANTILES:
            if not isinstance(latency, dict) or not _number(latency.get(key)):
                raise InputError(f"{source}: model {label!r} has no latency {key}; not a complete runtime_bench report")
        if not isinstance(accuracy, dict) or not _number(accuracy.get("accuracy")):
            raise InputError(f"{source}: model {label!r} has no accuracy; not a complete runtime_bench report")
    return models


def plot_bench(report: dict, path: pathlib.Path, source: str = "report") -> str:
    """A runtime_bench report as one PNG: latency quantiles, block medians in timing order, accuracy.

    The report keeps summaries, not per-run latencies, so the first panel shows the quantiles it has
    (min, p50, p90, p99, max) as points of the latency distribution, joined by dotted lines; between
    them nothing is known. Checks the report before drawing, so an incomplete one writes nothing.
    """
    models = _bench_models(report, source)
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, (quantiles, drift, accuracy) = plt.subplots(1, 3, figsize=(14, 4.4))
    has_blocks = False
    for i, (label, entry) in enumerate(models.items()):
        colour, latency = f"C{i}", entry["latency"]
        quantiles.plot([latency[key] for key, _ in BENCH_QUANTILES], [q for _, q in BENCH_QUANTILES], ":o",
                       color=colour, label=f"{label} ({latency.get('count')} runs)")
        for key, q in BENCH_QUANTILES[1:4]:
            quantiles.annotate(f"{key[:3]} {latency[key]:.3g}", (latency[key], q), textcoords="offset points",
                               xytext=(5, -4 - 10 * i), fontsize=7, color=colour)
        blocks = (latency.get("blocks") or {}).get("p50_ms") or []
        if blocks:
            has_blocks = True
            drift.plot(range(1, len(blocks) + 1), blocks, "o-", color=colour, label=label)
        scores = entry["accuracy"]
        accuracy.bar(i - 0.2, scores["accuracy"], width=0.4, color=colour, label="accuracy" if i == 0 else None)
        if _number(scores.get("harmonic_mean")):
            accuracy.bar(i + 0.2, scores["harmonic_mean"], width=0.4, color=colour, alpha=0.45,
                         label="harmonic mean of class accuracies" if i == 0 else None)
        per_class = scores.get("per_class") or []
        accuracy.plot([i - 0.2] * len(per_class), per_class, "_", color="0.2", markersize=14,
                      label="per class" if i == 0 and per_class else None)
    slowest = max(m["latency"]["max_ms"] for m in models.values())
    fastest = min(m["latency"]["p50_ms"] for m in models.values())
    if fastest > 0 and slowest > 10 * fastest:  # a few slow outliers would squash everything else
        quantiles.set_xscale("log")
    quantiles.set_xlabel("latency per call (ms)")
    quantiles.set_ylabel("fraction of timed runs at or below")
    quantiles.set_title("reported quantiles (no per-run samples kept)", fontsize=9)
    quantiles.legend(loc="lower right", fontsize=8)
    drift.set_xlabel("block of consecutive timed runs")
    drift.set_ylabel("block median (ms)")
    drift.set_title("drift: block medians in timing order", fontsize=9)
    drift.xaxis.set_major_locator(MaxNLocator(integer=True))
    if has_blocks:
        drift.legend(fontsize=8)
    else:
        drift.text(0.5, 0.5, "no block medians in this report", ha="center", transform=drift.transAxes)
    accuracy.set_xticks(range(len(models)))
    accuracy.set_xticklabels(list(models))
    accuracy.set_ylim(0, 1)
    accuracy.set_ylabel("accuracy on the evaluation images")
    accuracy.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=7, frameon=False)
    for ax in (quantiles, drift, accuracy):
        ax.grid(alpha=0.3)
    fig.suptitle(_bench_title(report), fontsize=10)
    return _save(fig, pathlib.Path(path))


def _bench_title(report: dict) -> str:
    env, settings = report.get("environment") or {}, report.get("settings") or {}
    title = (f"{env.get('cpu_model') or 'unknown CPU'} ({env.get('logical_cores')} cores), "
             f"{settings.get('backend')}, batch {settings.get('batch_size')}")
    comparison = report.get("comparison")
    if comparison:
        title += (f"; {comparison['candidate']} vs {comparison['baseline']}: {comparison['speedup_p50']:.2f}x at p50 "
                  f"(5-95% {comparison['low']:.2f}-{comparison['high']:.2f})")
    return title


def write_report(out: pathlib.Path, report: dict) -> None:
    plot(report, out)
    write_text_atomic(to_markdown(report), out / "report.md")
    write_json_atomic(report, out / "report.json")
