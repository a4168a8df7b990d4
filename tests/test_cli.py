"""The `edgeprune` command line end to end: prune -> export -> bench as subprocesses, quick prunes in process.

Bad input is the fault catalogue's (tests/fault_cases.py, tests/test_faults.py). Nothing is downloaded:
torchvision models use `--weights none` and the images are tiny colour-separable PNGs written by fixtures.
"""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from cli_helpers import run_cli

from toolchain.cli import main

# ------------------------------------------------------------------------------------------- end to end


def _conv_out_channels(model: torch.nn.Module) -> dict:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.slow
def test_prune_export_bench_end_to_end(tmp_path, image_data):
    out = tmp_path / "out"
    prune = run_cli(["prune", "--model", "mobilenet_v2", "--weights", "none", "--data", image_data.small,
                     "--test-data", image_data.test, "--shots", "4", "--image-size", "32", "--method", "lrp",
                     "--rate", "0.2", "--round-to", "8", "--out", out], tmp_path)
    assert prune.returncode == 0, prune.stderr
    assert "Traceback" not in prune.stderr
    for name in ("pruned.json", "pruned.safetensors"):
        assert (out / name).is_file(), name

    manifest = json.loads((out / "pruned.json").read_text())
    curve = manifest["curve"]
    assert curve[0]["rate"] == 0.0
    assert curve[-1]["rate"] >= 0.2
    assert curve[-1]["macs"] < curve[0]["macs"]
    assert manifest["classes"] == list(image_data.classes)

    original = _conv_out_channels(torchvision.models.mobilenet_v2(weights=None))
    convs = {name: spec for name, spec in manifest["layers"].items() if spec["type"] == "Conv2d"}
    assert set(convs) == set(original)
    assert any(spec["out_channels"] < original[name] for name, spec in convs.items()), "no conv was pruned"
    for name, spec in convs.items():
        assert 0 < spec["out_channels"] <= original[name], (name, spec, original[name])
        if original[name] % 8 == 0:
            assert spec["out_channels"] % 8 == 0, f"{name}: {spec['out_channels']} channels, not a multiple of --round-to 8"

    export = run_cli(["export", out], tmp_path)
    assert export.returncode == 0, export.stderr
    assert "Traceback" not in export.stderr
    assert export.stdout.count("parity passed") == 2, export.stdout
    dense, pruned = out / "dense.onnx", out / "model.onnx"
    assert dense.is_file() and pruned.is_file()
    assert pruned.stat().st_size < dense.stat().st_size

    report_path = out / "bench.json"
    bench = run_cli(["bench", dense, pruned, "--data", image_data.test, "--json", report_path,
                     "--min-runs", "5", "--min-seconds", "0.2"], tmp_path)
    assert bench.returncode == 0, bench.stderr
    assert "Traceback" not in bench.stderr
    report = json.loads(report_path.read_text())
    assert report["comparison"]["speedup_p50"] > 0
    assert set(report["models"]) == {"dense", "model"}
    n_test = len(image_data.classes) * image_data.test_per_class
    for label, entry in report["models"].items():
        accuracy = entry["accuracy"]
        assert 0.0 <= accuracy["accuracy"] <= 1.0, label
        assert accuracy["count"] == n_test, label
        assert entry["latency"]["count"] >= 5, label


# ------------------------------------------------------------------------------ quick in-process prunes


@pytest.mark.parametrize("method", ["l1", "random"])
def test_prune_other_methods_in_process(tmp_path, image_data, method, capsys):
    out = tmp_path / "out"
    code = main(["--quiet", "prune", "--model", "mobilenet_v2", "--weights", "none", "--data", str(image_data.small),
                 "--test-data", str(image_data.test), "--shots", "4", "--image-size", "32", "--method", method,
                 "--rate", "0.1", "--round-to", "8", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote" in captured.out
    assert (out / "pruned.safetensors").is_file()
    manifest = json.loads((out / "pruned.json").read_text())
    assert manifest["config"]["method"] == method
    curve = manifest["curve"]
    assert curve[-1]["rate"] >= 0.1
    assert curve[-1]["macs"] < curve[0]["macs"]
    assert manifest["cost"]["relevance_passes"] == 0  # only LRP needs relevance passes


def test_fitted_head_separates_the_colour_classes(tmp_path, image_data, capsys):
    """A random-init ResNet-18 still yields features a fitted linear head can split by colour: the data is sane."""
    out = tmp_path / "out"
    code = main(["--quiet", "prune", "--model", "resnet18", "--weights", "none", "--data", str(image_data.small),
                 "--test-data", str(image_data.test), "--shots", "4", "--image-size", "32", "--method", "l1",
                 "--rate", "0.05", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    dense = json.loads((out / "pruned.json").read_text())["curve"][0]
    assert dense["small_set_accuracy"] == 1.0
    assert dense["accuracy"] >= 0.9
