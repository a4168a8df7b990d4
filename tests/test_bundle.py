"""runtime_bench.bundle: deploy bundle manifest (write, read, verify) and benchmarking a bundle folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundles_for_tests import INPUT, LABELS, write_tiny_bundle
from fake_backends import FAKE_BACKEND_NAME

from runtime_bench.bundle import (
    MANIFEST_NAME,
    benchmark_bundle,
    read_bundle,
    sha256_file,
    write_bundle_manifest,
)
from runtime_bench.errors import InputError
from runtime_bench.report import SCHEMA_VERSION

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = ("--warmup-runs", "2", "--warmup-seconds", "0", "--min-runs", "5", "--min-seconds", "0.05")


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime_bench", *args],
        cwd=str(REPO_ROOT),
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest.update(changes)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


# ---------------------------------------------------------------- manifest


def test_write_then_read_bundle(bundle_dir: Path):
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    assert manifest["format"] == "edgeprune-bundle" and manifest["schema_version"] == "1"
    assert [(m["label"], m["file"]) for m in manifest["models"]] == [
        ("dense", "dense.onnx"),
        ("pruned", "model.onnx"),
    ]
    assert manifest["models"][0]["sha256"] == sha256_file(bundle_dir / "dense.onnx")
    assert manifest["eval"] == {"file": "eval.npz", "sha256": sha256_file(bundle_dir / "eval.npz")}
    assert manifest["input"] == INPUT and manifest["extra"] == {"source": "test"}
    assert sorted(p.name for p in bundle_dir.iterdir()) == [
        "dense.onnx",
        "eval.npz",
        "manifest.json",
        "model.onnx",
    ]

    bundle = read_bundle(bundle_dir)
    assert bundle["models"][1]["path"] == os.path.join(str(bundle_dir), "model.onnx")
    assert bundle["eval"]["path"] == os.path.join(str(bundle_dir), "eval.npz")
    assert read_bundle(bundle_dir / MANIFEST_NAME)["dir"] == str(bundle_dir)  # the manifest path works too


def test_hash_mismatch_names_the_file(bundle_dir: Path):
    model = bundle_dir / "model.onnx"
    expected = sha256_file(model)
    model.write_bytes(model.read_bytes() + b"\0")
    actual = sha256_file(model)
    with pytest.raises(InputError) as info:
        read_bundle(bundle_dir)
    assert str(info.value) == (
        f"{model}: sha256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...): "
        "the file is damaged or not the one the bundle was made with"
    )
    read_bundle(bundle_dir, verify=False)  # structure alone is still fine


def test_missing_listed_file(bundle_dir: Path):
    (bundle_dir / "eval.npz").unlink()
    with pytest.raises(InputError) as info:
        read_bundle(bundle_dir)
    assert (
        str(info.value) == f"{bundle_dir / 'eval.npz'}: no such file (listed in {bundle_dir / MANIFEST_NAME})"
    )


def test_not_a_bundle(tmp_path: Path):
    with pytest.raises(InputError) as info:
        read_bundle(tmp_path)
    assert str(info.value) == f"{tmp_path}: not a bundle folder (no manifest.json)"
    with pytest.raises(InputError) as info:
        read_bundle(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: no such file or folder"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"schema_version": "7"}, "bundle schema_version '7' is not supported (this runtime_bench reads '1')"),
        ({"format": "zip"}, "not an edgeprune-bundle manifest (format is 'zip')"),
        ({"models": []}, "'models' must be a non-empty list"),
        ({"models": [{"label": "a", "file": "../a.onnx", "sha256": "0" * 64}]},
         "models[0].file: '../a.onnx' must be a plain file name inside the bundle folder"),
        ({"models": [{"label": "a", "file": "a.onnx", "sha256": "xyz"}]},
         "models[0].sha256: must be 64 lowercase hex digits, got 'xyz'"),
        ({"input": dict(INPUT, labels=["a", "a"])}, "input.labels repeats 'a'"),
        ({"input": dict(INPUT, dtype="float16")}, "input.dtype 'float16' is not supported (only float32)"),
        ({"input": dict(INPUT, shape=[1, 3, 224])}, "input.shape must be a list [N, C, H, W], got [1, 3, 224]"),
    ],
)  # fmt: skip
def test_invalid_manifest_messages(bundle_dir: Path, changes: dict, message: str):
    _edit_manifest(bundle_dir, **changes)
    with pytest.raises(InputError) as info:
        read_bundle(bundle_dir)
    assert str(info.value) == f"{bundle_dir / MANIFEST_NAME}: {message}"


def test_write_manifest_refuses_missing_file_and_writes_nothing(tmp_path: Path):
    with pytest.raises(InputError) as info:
        write_bundle_manifest(tmp_path, {"m": "m.onnx"}, INPUT)
    assert (
        str(info.value) == f"{tmp_path / 'm.onnx'}: no such file (to be listed in {tmp_path / MANIFEST_NAME})"
    )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- benchmarking a bundle


def test_bundle_cli_end_to_end(bundle_dir: Path, tmp_path: Path):
    done = _cli(str(bundle_dir), "--threads", "1", "--quiet", *FAST)
    assert done.returncode == 0, done.stderr
    report = json.loads((bundle_dir / "bench.json").read_text())  # default: inside the bundle
    assert report["schema_version"] == SCHEMA_VERSION
    assert list(report["models"]) == ["dense", "pruned"]
    assert report["comparison"]["baseline"] == "dense" and report["comparison"]["candidate"] == "pruned"
    bundle = report["settings"]["bundle"]
    assert bundle["models"]["pruned"] == {
        "file": "model.onnx",
        "sha256": sha256_file(bundle_dir / "model.onnx"),
    }
    assert bundle["extra"] == {"source": "test"} and bundle["preprocessing"] == {"scale": 1.0}
    assert report["settings"]["class_names"] == LABELS
    assert report["models"]["dense"]["sha256"] == sha256_file(bundle_dir / "dense.onnx")
    for entry in report["models"].values():
        assert entry["latency"]["count"] >= 5 and entry["accuracy"]["count"] == 12

    out = tmp_path / "elsewhere.json"
    done = _cli(str(bundle_dir), "--json", str(out), "--md", str(tmp_path / "b.md"), "--quiet", *FAST)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["settings"]["bundle"]["dir"] == str(bundle_dir)
    assert "| pruned |" in (tmp_path / "b.md").read_text()


def test_bundle_cli_hash_mismatch_is_one_line(bundle_dir: Path):
    model = bundle_dir / "dense.onnx"
    model.write_bytes(model.read_bytes()[:-1])
    done = _cli(str(bundle_dir), *FAST)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {model}: sha256 mismatch (manifest ")
    assert not (bundle_dir / "bench.json").exists()


def test_bundle_cli_rejects_data_option(bundle_dir: Path):
    done = _cli(str(bundle_dir), "--data", "x.npz")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: --data is not used with a bundle folder: {bundle_dir}/manifest.json names the eval file"
    ]


def test_benchmark_bundle_with_three_fake_models(tmp_path: Path):
    """Any backend works: three fake-backend specs, all timed interleaved, each later one against the first."""
    for name, seconds in (("a", 0.0005), ("b", 0.001), ("c", 0.0)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"seconds_per_call": seconds, "logits": [0, 1, 0]}))
    np.savez(tmp_path / "eval.npz", images=np.zeros((3, 1, 2, 2), np.float32), labels=np.array([0, 1, 2]))
    write_bundle_manifest(tmp_path, {n: f"{n}.json" for n in "abc"}, INPUT)
    report = benchmark_bundle(tmp_path, backend=FAKE_BACKEND_NAME, warmup_runs=1, warmup_s=0, min_runs=6,
                              min_s=0, progress=False)  # fmt: skip
    assert list(report["models"]) == ["a", "b", "c"]
    assert [(c["baseline"], c["candidate"]) for c in report["comparisons"]] == [("a", "b"), ("a", "c")]
    assert report["comparison"] == report["comparisons"][0] and report["comparison"]["speedup_p50"] < 1.0
    assert report["comparisons"][1]["speedup_p50"] > 1.0 and report["comparisons"][1]["top1_agreement"] == 1.0
    assert all(m["latency"]["count"] == 6 for m in report["models"].values())
    assert report["models"]["b"]["latency"]["p50_ms"] >= 1.0
    assert report["models"]["a"]["accuracy"]["per_class"] == [0.0, 1.0, 0.0]


def test_benchmark_bundle_checks_eval_shape(bundle_dir: Path):
    np.savez(bundle_dir / "eval.npz", images=np.zeros((3, 1, 3, 3), np.float32), labels=np.array([0, 1, 2]))
    write_bundle_manifest(bundle_dir, {"dense": "dense.onnx"}, INPUT)
    with pytest.raises(InputError) as info:
        benchmark_bundle(bundle_dir, progress=False)
    assert str(info.value) == (
        f"{bundle_dir / 'eval.npz'}: images have shape (N, 1, 3, 3) but the manifest's input is (N, 1, 2, 2)"
    )
