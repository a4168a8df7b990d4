"""`edgeprune deploy` end to end on tiny data: every output, the device bundle, and stage reuse."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml


@pytest.mark.slow
def test_deploy_writes_everything_and_a_rerun_reuses_finished_stages(image_data, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": "resnet18", "weights": "none", "data": str(image_data.small), "test_data": str(image_data.test),
        "shots": 4, "image_size": 32, "method": "lrp", "rate": 0.2, "round_to": 8,
        "max_drop": 0.05, "cost": "macs", "compensate": True,  # what the default deploy does, at a cap of 20%
        "export": {"exporter": "torchscript", "precision": "int8"},
        "bench": {"min_runs": 5, "min_seconds": 0.2, "warmup_runs": 2},
    }))
    out = tmp_path / "deploy"
    command = [sys.executable, "-m", "toolchain", "--quiet", "deploy", "--config", str(config), "--out", str(out)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    for name in ("dense.onnx", "model.onnx", "pruned.json", "pruned.safetensors", "head.safetensors", "report.json",
                 "report.md", "accuracy_vs_rate.png", "latency_vs_rate.png", "config.resolved.yaml",
                 "bundle/manifest.json", "bundle/eval.npz", "bundle/model.onnx", "bundle/model.int8.onnx",
                 "bundle/runtime_bench/bench.py"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == "1" and 0 < report["pruning"]["rate_achieved"] <= 0.2 + 0.02
    assert report["summary"]["macs_reduction"] > 1.0
    chosen, s = report["chosen"], report["summary"]
    assert chosen["rate"] == report["pruning"]["rate_achieved"] and chosen["why"]
    # report.md opens with the one line a user reads first, and says what the small set chose and how well.
    lines = (out / "report.md").read_text().splitlines()
    assert lines[2].startswith(f"**{s['macs_reduction']:.2f}x fewer MACs, {s['speedup_p50']:.2f}x faster** (ONNX Runtime")
    assert f"worst class {s['worst_class_dense']['class']}" in lines[2]
    assert any(line.startswith("Estimate minus test at the chosen state") for line in lines)
    # INT8 for ONNX Runtime's CPU kernels, judged per class, timed against both FP32 models.
    int8 = report["int8"]
    assert (out / "model.int8.onnx").is_file() and int8["record"]["max_drop"] == 0.05
    assert int8["vs_pruned"]["candidate"] == "pruned-int8" and int8["vs_dense"]["baseline"] == "dense"
    assert "## INT8 (ONNX Runtime CPU)" in lines and any(line.startswith("Per-class change, INT8 minus FP32") for line in lines)
    assert not list(out.rglob(".*tmp*")), "temporary files left behind"
    weights_mtime = (out / "pruned.safetensors").stat().st_mtime_ns
    onnx_mtime = (out / "model.onnx").stat().st_mtime_ns

    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "reusing" in second.stderr and "same config hash" in second.stderr and "model.int8.onnx: same" in second.stderr
    assert (out / "pruned.safetensors").stat().st_mtime_ns == weights_mtime
    assert (out / "model.onnx").stat().st_mtime_ns == onnx_mtime

    # The bundle alone is enough on a device: runtime_bench from inside it, no torch.
    bench = subprocess.run([sys.executable, "-c", "import sys, runtime_bench.__main__ as m; "
                            "assert 'torch' not in sys.modules; sys.exit(m.main(['.', '--min-runs', '5', "
                            "'--min-seconds', '0.2', '--quiet']))"],
                           cwd=out / "bundle", capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr
    device = json.loads((out / "bundle" / "bench.json").read_text())
    assert device["comparison"]["speedup_p50"] > 0
    # The INT8 model travels in the bundle too, timed on the device against dense like the pruned one.
    assert [(c["baseline"], c["candidate"]) for c in device["comparisons"]] == [("dense", "pruned"),
                                                                               ("dense", "pruned-int8")]
    assert device["models"]["pruned-int8"]["accuracy"]["count"] == device["models"]["dense"]["accuracy"]["count"]
