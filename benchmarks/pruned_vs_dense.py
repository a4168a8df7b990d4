"""Pruned vs dense on ONNX Runtime CPU, timed alternately in one process: speedup against MACs reduction.

    python benchmarks/pruned_vs_dense.py --out artifacts/deploy   (what `make bench` runs)

Prints both p50s, the speedup with its bootstrap spread, the MACs reduction from the pruning manifest and
the ratio speedup / MACs reduction (target >= 0.9); writes benchmarks/results/pruned_vs_dense.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from runtime_bench.atomic import write_json_atomic
from runtime_bench.settings import BenchSettings
from toolchain.artifact import read_manifest
from toolchain.stages.bench import bench_folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="artifacts/deploy", help="a folder written by edgeprune deploy")
    parser.add_argument("--min-runs", type=int, default=500)
    parser.add_argument("--min-seconds", type=float, default=20.0)
    parser.add_argument("--images", type=int, default=200, help="test images for the accuracy check")
    parser.add_argument("--json", default="benchmarks/results/pruned_vs_dense.json")
    args = parser.parse_args()

    out = pathlib.Path(args.out)
    manifest = read_manifest(out)
    report = bench_folder(out, BenchSettings(min_runs=args.min_runs, min_seconds=args.min_seconds, warmup_runs=50),
                          test_images=args.images)
    curve = manifest["curve"]
    macs_reduction = curve[0]["macs"] / curve[-1]["macs"]
    c = report["comparison"]
    ratio = c["speedup_p50"] / macs_reduction
    report["macs_reduction"] = macs_reduction
    report["speedup_over_macs"] = ratio
    report["pruned_rate"] = curve[-1]["rate"]
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report, args.json)

    d, p = report["models"]["dense"]["latency"], report["models"]["pruned"]["latency"]
    print(f"model: {manifest['source']['model']}, {curve[-1]['rate']:.1%} of conv filters removed, round-to "
          f"{manifest['config']['round_to']}")
    print(f"dense  p50 {d['p50_ms']:.3f} ms  p90 {d['p90_ms']:.3f}  p99 {d['p99_ms']:.3f}  ({d['count']} runs)")
    print(f"pruned p50 {p['p50_ms']:.3f} ms  p90 {p['p90_ms']:.3f}  p99 {p['p99_ms']:.3f}  ({p['count']} runs)")
    print(f"speedup p50 {c['speedup_p50']:.3f}x (5-95% {c['low']:.3f}-{c['high']:.3f}); "
          f"MACs reduction {macs_reduction:.3f}x; speedup / MACs reduction = {ratio:.3f} (target >= 0.9)")
    print(json.dumps({"speedup_over_macs": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
