"""README block `gpu`: TensorRT engines of dense and pruned models, from benchmarks/gpu_engines.py results.

    python scripts/gpu_table.py [benchmarks/results/gpu_<card>.json ...] [--readme README.md]

Without result files (none found under benchmarks/results/), the block says that nothing was measured yet.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from readme_blocks import update_readme

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOT_MEASURED = ("Not measured yet: no GPU has been lent to this project's sessions. On a machine "
                "with TensorRT 10 or 11, cuda-python and a GPU: `python benchmarks/gpu_engines.py`, then "
                "`python scripts/gpu_table.py`.")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def table(result: dict) -> str:
    """Markdown for one gpu_<card>.json: per model and precision, accuracy next to FP32 ONNX and latency."""
    timing = result["timing"]
    lines = [
        f"Command: `{result['command'].strip()}`; {result['gpu']}, TensorRT {result['tensorrt_version']}, batch "
        f"{timing['batch_size']}, dense and pruned timed alternately, at least {timing['min_runs']} runs and "
        f"{timing['min_s']:g} s each. Latency as trtexec defines it: H2D + GPU compute + D2H, each timed with CUDA "
        "events; wall clock: the same calls timed on the host (the speedup is of the wall clock). Accuracy on the "
        "test set; Δ is the engine minus its FP32 ONNX model (ONNX Runtime CPU), agreement is top-1 agreement with it.",
        "",
        "| model | precision | dense accuracy (Δ, agreement) | pruned accuracy (Δ, agreement) | dense latency p50 / p99 "
        "ms | pruned latency p50 / p99 ms | wall clock p50 ms dense / pruned | speedup p50 (5-95%) | GPU compute p50 ms "
        "dense / pruned |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    for name, entry in result["models"].items():
        if "error" in entry:
            notes.append(f"{name}: not measured ({entry['error']})")
            continue
        for precision, m in entry["precisions"].items():
            acc = {label: f"{_pct(a['accuracy'])} ({100 * a['accuracy_delta']:+.1f} pt, {a['top1_agreement']:.3f})"
                   for label, a in m["accuracy"].items()}
            lat = {label: f"{v['p50_ms']:.3f} / {v['p99_ms']:.3f}" for label, v in m["latency"].items()}
            wall, compute = m["wall_clock"], m["compute"]
            lines.append(f"| {name} | {precision} | {acc['dense']} | {acc['pruned']} | {lat['dense']} | "
                         f"{lat['pruned']} | {wall['dense']['p50_ms']:.3f} / {wall['pruned']['p50_ms']:.3f} | "
                         f"{m['speedup_p50']:.2f}x ({m['speedup_low']:.2f}-{m['speedup_high']:.2f}) | "
                         f"{compute['dense']['p50_ms']:.3f} / {compute['pruned']['p50_ms']:.3f} |")
        p = entry["pruning"]
        notes.append(f"{name}: {_pct(p['rate'])} of conv filters pruned, MACs {p['macs_dense'] / 1e6:.1f} M -> "
                     f"{p['macs_pruned'] / 1e6:.1f} M, {p['image_size']} px, {p['test_images']} test images, INT8 "
                     f"calibrated on {p['calibration_images']} images.")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes])


def main(argv: list) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", help="default: every benchmarks/results/gpu_*.json")
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args(argv)
    paths = [pathlib.Path(p) for p in args.results] or sorted((ROOT / "benchmarks" / "results").glob("gpu_*.json"))
    text = "\n\n".join(table(json.loads(p.read_text())) for p in paths) if paths else NOT_MEASURED
    return update_readme(args.readme, "gpu", text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
