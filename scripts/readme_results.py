"""Regenerate README.md's result tables (never typed by hand).

    python scripts/readme_results.py artifacts/deploy/report.json [README.md]     the deploy results
    python scripts/readme_results.py --cascade OUT/pruned.json [README.md]         a pruning curve
"""

from __future__ import annotations

import json
import pathlib
import sys

from readme_blocks import update_readme


def table(report: dict) -> str:
    s, p, cfg = report["summary"], report["pruning"], report["config"]
    env = report["benchmark"]["environment"]
    rows = [
        f"Command: `make deploy` (config `configs/default.yaml`: {cfg['model']} {cfg['weights']}, {cfg['shots']} "
        f"images per class, {cfg['image_size']} px, method {p['method']}, rate {p['rate_requested']}, round-to "
        f"{cfg['round_to']}); {len(report['classes'])} classes, {report['benchmark']['settings']['num_images']} test images; "
        f"measured on {env.get('cpu_model')}, {env.get('logical_cores')} cores, onnxruntime {env.get('onnxruntime')}.",
        "",
        "| model | conv filters | MACs | params | accuracy | harmonic mean of class accuracies | ORT CPU p50 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| dense | {p['filters_before']} | {p['macs_before'] / 1e6:.1f} M | {p['params_before'] / 1e6:.2f} M | "
        f"{s['accuracy_dense']:.3f} | {s['harmonic_mean_dense']:.3f} | {s['p50_ms_dense']:.2f} ms |",
        f"| pruned | {p['filters_after']} | {p['macs_after'] / 1e6:.1f} M | {p['params_after'] / 1e6:.2f} M | "
        f"{s['accuracy_pruned']:.3f} | {s['harmonic_mean_pruned']:.3f} | {s['p50_ms_pruned']:.2f} ms |",
        "",
        f"Speedup {s['speedup_p50']:.2f}x (p50, dense and pruned timed alternately; 5-95% bootstrap "
        f"{s['speedup_low']:.2f}-{s['speedup_high']:.2f}) for a {s['macs_reduction']:.2f}x MACs reduction: "
        f"speedup / MACs reduction = {s['speedup_over_macs']:.2f}. Wall time of the stages: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report.get("timings_s", {}).items()) + ".",
    ]
    return "\n".join(rows)


def curve_table(manifest: dict) -> str:
    """The accuracy curve of one pruning run, a column per step."""
    curve = manifest["curve"]
    cfg = manifest["config"]
    rows = [
        f"Command: `edgeprune prune --config configs/default.yaml --rate {cfg['rate']} --out OUT` (method "
        f"{cfg['method']}, {cfg['model']}, seed {cfg['seed']}); columns are the pruning steps.",
        "",
        "| filters removed | " + " | ".join(f"{100 * p['rate']:.0f}%" for p in curve) + " |",
        "| --- " * (len(curve) + 1) + "|",
        "| test accuracy | " + " | ".join(f"{p['accuracy']:.3f}" for p in curve) + " |",
        "| harmonic mean of class accuracies | " + " | ".join(f"{p['harmonic_mean']:.3f}" for p in curve) + " |",
        "| worst class accuracy | " + " | ".join(f"{min(p['per_class']):.3f}" for p in curve) + " |",
        "| MACs (M) | " + " | ".join(f"{p['macs'] / 1e6:.1f}" for p in curve) + " |",
    ]
    return "\n".join(rows)


def main(argv) -> int:
    cascade = len(argv) > 1 and argv[1] == "--cascade"
    if cascade:
        argv = argv[1:]
    data = json.loads(pathlib.Path(argv[1]).read_text())
    return update_readme(argv[2] if len(argv) > 2 else "README.md", "cascade" if cascade else "results",
                         curve_table(data) if cascade else table(data))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
