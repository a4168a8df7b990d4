"""The PNG of a bench report (toolchain.stages.report.plot_bench; `edgeprune bench --png`): written whole, or not at all."""

from __future__ import annotations

import json

import pytest
from bundles_for_tests import write_tiny_bundle
from PIL import Image

from runtime_bench.errors import InputError
from toolchain.cli import main
from toolchain.stages.report import plot_bench

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ["--threads", "1", "--min-runs", "5", "--min-seconds", "0.05"]


def test_bench_writes_a_png_of_the_report(tmp_path, capsys):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    report, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["--quiet", "bench", str(bundle / "dense.onnx"), str(bundle / "model.onnx"), "--data",
                 str(bundle / "eval.npz"), "--json", str(report), "--png", str(png), *FAST])
    assert code == 0, capsys.readouterr().err
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    with Image.open(png) as image:
        image.load()  # decodes every row: a truncated file fails here
        assert image.size == (1540, 484)  # 14 x 4.4 inches at 110 dpi
    assert set(json.loads(report.read_text())["models"]) == {"dense", "model"}


def test_bench_png_into_a_missing_folder_fails_before_measuring(tmp_path, capsys):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    report, png = tmp_path / "bench.json", tmp_path / "missing" / "bench.png"
    code = main(["--quiet", "bench", str(bundle / "dense.onnx"), "--data", str(bundle / "eval.npz"),
                 "--json", str(report), "--png", str(png), *FAST])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {png}: folder {png.parent} does not exist"]
    assert not report.exists() and not png.parent.exists()


def test_an_incomplete_report_writes_no_png(tmp_path):
    latency = {"min_ms": 1.0, "p50_ms": 1.2, "p90_ms": 1.5, "p99_ms": 2.0, "max_ms": 3.0}
    report = {"models": {"dense": {"latency": latency, "accuracy": {"accuracy": 0.5, "per_class": [0.4, 0.6]}}}}
    plot_bench(report, tmp_path / "complete.png")  # schema 1 style: no blocks, no comparison, no environment
    assert (tmp_path / "complete.png").read_bytes().startswith(PNG_SIGNATURE)

    del latency["p99_ms"]
    with pytest.raises(InputError) as info:
        plot_bench(report, tmp_path / "bench.png", "r.json")
    assert str(info.value) == "r.json: model 'dense' has no latency p99_ms; not a complete runtime_bench report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["complete.png"]
