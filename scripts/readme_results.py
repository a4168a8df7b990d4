"""Regenerate README.md's result tables (never typed by hand).

    python scripts/readme_results.py artifacts/deploy/report.json [README.md]     the deploy results
    python scripts/readme_results.py --cascade PAPER/pruned.json REFIT/pruned.json [README.md]   the cascade
    python scripts/readme_results.py --int8 artifacts/deploy-int8/report.json [README.md]   INT8 of a deploy
"""

from __future__ import annotations

import json
import pathlib
import sys

from readme_blocks import update_readme

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from toolchain.stages.report import headline, int8_lines  # noqa: E402


def table(report: dict) -> str:
    s, p, cfg = report["summary"], report["pruning"], report["config"]
    env = report["benchmark"]["environment"]
    rows = [
        headline(report),
        "",
        f"Command: `make deploy` (config `configs/default.yaml`: {cfg['model']} {cfg['weights']}, {cfg['shots']} "
        f"images per class, {cfg['image_size']} px, method {p['method']}, "
        + (f"max-drop {cfg['max_drop']}" if cfg.get("max_drop") is not None else f"rate {p['rate_requested']}")
        + f", cost {cfg.get('cost', 'filters')}, head {'re-fitted after every step' if cfg.get('refit_head') else 'fitted once'}"
        + (", compensation" if cfg.get("compensate") else "") + ", "
        f"round-to {cfg['round_to']}); {len(report['classes'])} classes, {report['benchmark']['settings']['num_images']} test images; "
        f"measured on {env.get('cpu_model')}, {env.get('logical_cores')} cores, onnxruntime {env.get('onnxruntime')}.",
        "",
        "| model | conv filters | MACs | params | accuracy | harmonic mean of class accuracies | ORT CPU p50 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| dense | {p['filters_before']} | {p['macs_before'] / 1e6:.1f} M | {p['params_before'] / 1e6:.2f} M | "
        f"{s['accuracy_dense']:.3f} | {s['harmonic_mean_dense']:.3f} | {s['p50_ms_dense']:.2f} ms |",
        f"| pruned | {p['filters_after']} | {p['macs_after'] / 1e6:.1f} M | {p['params_after'] / 1e6:.2f} M | "
        f"{s['accuracy_pruned']:.3f} | {s['harmonic_mean_pruned']:.3f} | {s['p50_ms_pruned']:.2f} ms |",
        *int8_rows(report),
        "",
        f"Speedup {s['speedup_p50']:.2f}x (p50, dense and pruned timed alternately; 5-95% bootstrap "
        f"{s['speedup_low']:.2f}-{s['speedup_high']:.2f}) for a {s['macs_reduction']:.2f}x MACs reduction: "
        f"speedup / MACs reduction = {s['speedup_over_macs']:.2f}. Pruning took {p['seconds']:.0f} s "
        f"({p['relevance_passes']} relevance passes); this run's stages (a finished one is reused): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report.get("timings_s", {}).items()) + ".",
    ]
    if report.get("int8"):
        i = report["int8"]
        rows.append(f"\nPruned INT8 (`export: precision: int8`, gated per class on the small set): "
                    f"{i['vs_pruned']['speedup_p50']:.2f}x faster than pruned FP32 and {i['vs_dense']['speedup_p50']:.2f}x "
                    f"faster than dense FP32 (p50, timed alternately with each); the CPU's int8 instructions: "
                    f"{', '.join(env.get('cpu_int8') or []) or 'none listed'}.")
    return "\n".join(rows)


def int8_rows(report: dict) -> list:
    if not report.get("int8"):
        return []
    i, t = report["int8"], report["int8"]["record"]["test"]
    return [f"| pruned INT8 | | | | {t['int8']['accuracy']:.3f} | {t['int8']['harmonic_mean']:.3f} | "
            f"{i['p50_ms']:.2f} ms |"]


CASCADE_FLAGS = "--max-drop none --cost filters --no-compensate --rate 0.3"


def curve_table(paper: dict, refit: dict) -> str:
    """Plain LRP pruning step by step, with the dense model's head and with the head re-fitted after every step."""
    cfg = paper["config"]
    columns = [p["rate"] for p in paper["curve"]]
    rows = [
        f"Command: `edgeprune prune --config configs/default.yaml {CASCADE_FLAGS} --no-refit-head --out OUT`, and the "
        f"same with `--refit-head` (method {cfg['method']}, {cfg['model']}, seed {cfg['seed']}); columns are the "
        "pruning steps, figures on the test set.",
        "",
        "| filters removed | " + " | ".join(f"{100 * r:.0f}%" for r in columns) + " |",
        "| --- " * (len(columns) + 1) + "|",
    ]
    for label, manifest in (("head fitted on the dense model", paper), ("head re-fitted after every step", refit)):
        curve = manifest["curve"]
        rows += [
            f"| test accuracy, {label} | " + " | ".join(f"{p['accuracy']:.3f}" for p in curve) + " |",
            f"| harmonic mean of class accuracies, {label} | "
            + " | ".join(f"{p['harmonic_mean']:.3f}" for p in curve) + " |",
            f"| worst class accuracy, {label} | " + " | ".join(f"{min(p['per_class']):.3f}" for p in curve) + " |",
        ]
    rows.append("| MACs (M) | " + " | ".join(f"{p['macs'] / 1e6:.1f}" for p in paper["curve"]) + " |")
    return "\n".join(rows)


def main(argv) -> int:
    if len(argv) > 1 and argv[1] == "--cascade":
        paper, refit = (json.loads(pathlib.Path(path).read_text()) for path in argv[2:4])
        return update_readme(argv[4] if len(argv) > 4 else "README.md", "cascade", curve_table(paper, refit))
    if len(argv) > 1 and argv[1] == "--int8":
        report = json.loads(pathlib.Path(argv[2]).read_text())
        lines = int8_lines(report["int8"], report["classes"], report["benchmark"]["environment"])[2:]  # no heading
        command = "`make deploy-int8` (`edgeprune deploy --precision int8`, the default config otherwise)"
        return update_readme(argv[3] if len(argv) > 3 else "README.md", "int8-deploy",
                             "\n".join([f"Command: {command}; {headline(report)}", "", *lines]))
    data = json.loads(pathlib.Path(argv[1]).read_text())
    return update_readme(argv[2] if len(argv) > 2 else "README.md", "results", table(data))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
