"""runtime_bench: statistics, timing loops, accuracy, backends, report and CLI (fast: no real networks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime_bench.accuracy import classification_metrics, evaluate, harmonic_mean, top1_agreement
from runtime_bench.backends import FAKE_BACKEND_NAME, OrtCpuBackend, open_backend
from runtime_bench.bench import run_benchmark
from runtime_bench.errors import InputError
from runtime_bench.report import SCHEMA_VERSION, to_markdown, write_json_atomic
from runtime_bench.stats import ratio_with_spread, summarize
from runtime_bench.timing import compare_alternating, measure

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3


# ---------------------------------------------------------------- helpers


class FakeClock:
    """A clock that only moves when a fake workload says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _tiny_weights():
    rng = np.random.default_rng(1)
    return rng.standard_normal((4, NUM_CLASSES)).astype(np.float32), rng.standard_normal(NUM_CLASSES).astype(
        np.float32
    )


def _write_tiny_model(path: Path) -> Path:
    """(N, 1, 2, 2) -> Flatten -> Gemm -> (N, 3) logits."""
    weight, bias = _tiny_weights()
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _tiny_data(n: int = 30):
    rng = np.random.default_rng(2)
    images = rng.standard_normal((n, 1, 2, 2)).astype(np.float32)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    return images, labels


def _numpy_logits(images: np.ndarray) -> np.ndarray:
    weight, bias = _tiny_weights()
    return images.reshape(len(images), -1) @ weight + bias


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    return _write_tiny_model(tmp_path / "tiny.onnx")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "runtime_bench", *args],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------- accuracy


def test_harmonic_mean_hand_values():
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / (2 + 1))
    assert harmonic_mean([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert harmonic_mean([0.25, 0.5, 1.0]) == pytest.approx(3 / (4 + 2 + 1))
    # One dead class collapses the score: the pruning controller depends on this.
    assert harmonic_mean([0.9, 0.0, 0.8]) == 0.0


def test_classification_metrics_hand_made():
    predictions = [0, 1, 1, 2, 2, 2]
    labels = [0, 0, 1, 1, 2, 2]
    metrics = classification_metrics(predictions, labels, 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"] == pytest.approx([0.5, 0.5, 1.0])
    assert metrics["harmonic_mean"] == pytest.approx(3 / (2 + 2 + 1))
    assert metrics["count"] == 6


def test_classification_metrics_names_missing_class():
    with pytest.raises(InputError) as info:
        classification_metrics([0, 0, 2], [0, 0, 2], 3)
    assert str(info.value) == "class 1 has no samples in the labels; per-class accuracy is undefined"


def test_top1_agreement():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.2, 0.1]])
    b = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.1]])
    assert top1_agreement(a, b) == pytest.approx(0.5)


# ---------------------------------------------------------------- stats


def test_summarize_percentiles_on_known_array():
    latencies_s = np.arange(1, 101) / 1000.0  # 1 ms .. 100 ms
    summary = summarize(latencies_s, batch_size=4)
    assert summary["count"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p90_ms"] == pytest.approx(90.1)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["min_ms"] == pytest.approx(1.0)
    assert summary["max_ms"] == pytest.approx(100.0)
    assert summary["mean_ms"] == pytest.approx(50.5)
    assert summary["std_ms"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert summary["throughput"] == pytest.approx(4 / 0.0505)


def test_ratio_with_spread_known_samples():
    exact = ratio_with_spread([0.002] * 40, [0.001] * 40)
    assert exact == pytest.approx({"ratio": 2.0, "low": 2.0, "high": 2.0})

    a = [0.001, 0.002, 0.003, 0.004, 0.005]
    b = [0.001] * 5
    spread = ratio_with_spread(a, b)
    assert spread["ratio"] == pytest.approx(3.0)
    assert 1.0 <= spread["low"] < 3.0 < spread["high"] <= 5.0
    assert ratio_with_spread(a, b) == spread  # fixed seed: reproducible


# ---------------------------------------------------------------- timing


def test_measure_reaches_both_minimums_after_warmup():
    clock = FakeClock()
    calls = []

    def work():
        calls.append(clock())
        clock.advance(0.125)

    # Warm-up: 3 runs would do, but 1 s needs 8 calls. Timed: 5 runs would do, but 2 s needs 16.
    samples = measure(work, warmup_runs=3, warmup_s=1.0, min_runs=5, min_s=2.0, clock=clock)
    assert len(samples) == 16
    assert len(calls) == 8 + 16
    assert samples == [0.125] * 16

    # Now the count dominates: 20 runs take 2.5 s > 0.5 s.
    clock, calls = FakeClock(), []
    samples = measure(work, warmup_runs=6, warmup_s=0.25, min_runs=20, min_s=0.5, clock=clock)
    assert len(samples) == 20
    assert len(calls) == 6 + 20


def test_measure_max_runs_caps_timed_runs():
    clock = FakeClock()
    samples = measure(
        lambda: clock.advance(0.5),
        warmup_runs=0,
        warmup_s=0,
        min_runs=2,
        min_s=100.0,
        max_runs=3,
        clock=clock,
    )
    assert len(samples) == 3


def test_compare_alternating_interleaves_and_rotates_order():
    clock = FakeClock()
    order = []
    fns = {
        "a": lambda: (order.append("a"), clock.advance(0.25)),
        "b": lambda: (order.append("b"), clock.advance(0.5)),
    }
    samples = compare_alternating(fns, warmup_runs=1, warmup_s=0, min_runs=3, min_s=0, clock=clock)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b"]
    assert samples == {"a": [0.25] * 3, "b": [0.5] * 3}


def test_compare_alternating_runs_until_total_duration():
    clock = FakeClock()
    fns = {"a": lambda: clock.advance(0.25), "b": lambda: clock.advance(0.5)}
    # Each round takes 0.75 s: 3 s total needs 4 rounds even though 1 run each would do.
    samples = compare_alternating(fns, warmup_runs=0, warmup_s=0, min_runs=1, min_s=3.0, clock=clock)
    assert samples == {"a": [0.25] * 4, "b": [0.5] * 4}


# ---------------------------------------------------------------- backends and harness


def test_fake_sleep_backends_through_run_benchmark(tmp_path: Path):
    slow, fast = tmp_path / "slow.json", tmp_path / "fast.json"
    slow.write_text(json.dumps({"seconds_per_call": 0.002, "logits": [0.0, 1.0]}))
    fast.write_text(json.dumps({"seconds_per_call": 0.001, "logits": [0.0, 1.0]}))
    images = np.zeros((4, 1, 2, 2), dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    report = run_benchmark(
        {"slow": str(slow), "fast": str(fast)},
        images,
        labels,
        num_classes=2,
        backend=FAKE_BACKEND_NAME,
        warmup_runs=2,
        warmup_s=0.0,
        min_runs=20,
        min_s=0.1,
        progress=False,
    )
    assert report["schema_version"] == SCHEMA_VERSION
    comparison = report["comparison"]
    assert (comparison["baseline"], comparison["candidate"]) == ("slow", "fast")
    assert 1.5 <= comparison["speedup_p50"] <= 2.6
    assert comparison["low"] <= comparison["speedup_p50"] <= comparison["high"]
    assert comparison["top1_agreement"] == 1.0
    assert report["models"]["slow"]["latency"]["p50_ms"] >= 2.0  # sleep never returns early
    assert report["models"]["slow"]["latency"]["count"] >= 20
    assert report["models"]["fast"]["accuracy"]["accuracy"] == 0.5  # always predicts class 1
    assert report["models"]["fast"]["accuracy"]["per_class"] == [0.0, 1.0]


def test_ort_cpu_evaluate_matches_numpy(tiny_model: Path):
    images, labels = _tiny_data(30)
    backend = open_backend("ort-cpu", tiny_model, threads=1)
    assert isinstance(backend, OrtCpuBackend)
    assert backend.input_name == "x"
    assert backend.input_shape[1:] == [1, 2, 2]
    info = backend.info()
    assert info["providers"] == ["CPUExecutionProvider"] and info["threads"] == 1

    result = evaluate(backend, images, labels, NUM_CLASSES, batch_size=8, return_logits=True)
    expected_logits = _numpy_logits(images)
    np.testing.assert_allclose(result["logits"], expected_logits, rtol=1e-5, atol=1e-5)
    predictions = expected_logits.argmax(axis=1)
    assert result["accuracy"] == pytest.approx(np.mean(predictions == labels))
    for c in range(NUM_CLASSES):
        assert result["per_class"][c] == pytest.approx(np.mean(predictions[labels == c] == c))
    assert result["count"] == 30
    # prepare(): the timed callable returns the same logits as run().
    np.testing.assert_allclose(backend.prepare(images[:2])(), expected_logits[:2], rtol=1e-5, atol=1e-5)


def test_run_benchmark_rejects_wrong_image_shape(tiny_model: Path):
    images = np.zeros((3, 1, 3, 3), dtype=np.float32)
    with pytest.raises(InputError) as info:
        run_benchmark({"m": str(tiny_model)}, images, np.array([0, 1, 2]), NUM_CLASSES, progress=False)
    assert (
        str(info.value) == f"{tiny_model}: model expects images of shape (1, 2, 2) but the data has (1, 3, 3)"
    )


# ---------------------------------------------------------------- errors


def test_missing_model_file(tmp_path: Path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(InputError) as info:
        open_backend("ort-cpu", path)
    assert str(info.value) == f"{path}: no such file"


def test_truncated_model_file(tiny_model: Path, tmp_path: Path):
    data = tiny_model.read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        open_backend("ort-cpu", broken)
    message = str(info.value)
    assert message.startswith(f"{broken}: not a loadable ONNX model (")
    assert message.endswith(")") and "\n" not in message


def test_unknown_backend(tiny_model: Path):
    with pytest.raises(InputError) as info:
        open_backend("xyz", tiny_model)
    assert str(info.value) == "unknown backend 'xyz'; choose from: ort-cpu, ort-cuda, ort-trt, tensorrt"


def test_gpu_backend_without_its_package(tiny_model: Path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(InputError) as info:
        open_backend("ort-cuda", tiny_model)
    assert (
        str(info.value)
        == "backend 'ort-cuda' needs the package onnxruntime-gpu (pip install onnxruntime-gpu)"
    )


def test_onnxruntime_not_installed(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(InputError) as info:
        open_backend("ort-cpu", tiny_model)
    assert str(info.value) == "backend 'ort-cpu' needs the package onnxruntime (pip install onnxruntime)"


# ---------------------------------------------------------------- report


def test_write_json_atomic_replaces_and_cleans_up(tmp_path: Path):
    target = tmp_path / "out.json"
    write_json_atomic({"a": np.float32(1.5), "b": np.arange(2)}, target)
    assert json.loads(target.read_text()) == {"a": 1.5, "b": [0, 1]}
    # NaN is not JSON: the old file must survive untouched and no temp file may remain.
    with pytest.raises(ValueError):
        write_json_atomic({"a": float("nan")}, target)
    assert json.loads(target.read_text()) == {"a": 1.5, "b": [0, 1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# ---------------------------------------------------------------- CLI


def test_cli_end_to_end(tiny_model: Path, tmp_path: Path):
    images, labels = _tiny_data(30)
    data = tmp_path / "eval.npz"
    np.savez(data, images=images, labels=labels, class_names=np.array(["a", "b", "c"]))
    dense = tmp_path / "dense.onnx"
    dense.write_bytes(tiny_model.read_bytes())
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    done = _cli(
        str(dense), str(tiny_model), "--data", str(data), "--json", str(out_json), "--md", str(out_md),
        "--warmup-runs", "2", "--warmup-seconds", "0", "--min-runs", "5", "--min-seconds", "0.05",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out_json.read_text())
    assert report["schema_version"] == SCHEMA_VERSION
    assert set(report) >= {"schema_version", "settings", "environment", "models", "comparison"}
    assert list(report["models"]) == ["dense", "tiny"]
    expected_accuracy = float(np.mean(_numpy_logits(images).argmax(axis=1) == labels))
    for entry in report["models"].values():
        assert entry["latency"]["p50_ms"] > 0 and entry["latency"]["count"] >= 5
        assert entry["accuracy"]["accuracy"] == pytest.approx(expected_accuracy)
    assert report["comparison"]["top1_agreement"] == 1.0
    assert report["settings"]["class_names"] == ["a", "b", "c"]
    markdown = out_md.read_text()
    assert markdown == to_markdown(report)
    assert "| dense |" in markdown and "Speedup" in markdown


def test_cli_bad_npz_is_one_line_error(tiny_model: Path, tmp_path: Path):
    data = tmp_path / "bad.npz"
    np.savez(data, images=np.zeros((2, 1, 2, 2), dtype=np.float32))
    out_json = tmp_path / "bench.json"
    done = _cli(str(tiny_model), "--data", str(data), "--json", str(out_json))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: {data}: missing array 'labels' (found: images)"]
    assert "Traceback" not in done.stderr
    assert not out_json.exists()


def test_cli_unknown_backend_is_one_line_error(tiny_model: Path, tmp_path: Path):
    images, labels = _tiny_data(6)
    data = tmp_path / "eval.npz"
    np.savez(data, images=images, labels=labels)
    done = _cli(str(tiny_model), "--data", str(data), "--json", str(tmp_path / "o.json"), "--backend", "xyz")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: unknown backend 'xyz'; choose from: ort-cpu, ort-cuda, ort-trt, tensorrt"
    ]


def test_cli_usage_error_is_one_line(tiny_model: Path):
    done = _cli(str(tiny_model), "--json", "x.json")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: the following arguments are required: --data"]


def test_import_isolation():
    code = (
        "import sys; import runtime_bench.bench, runtime_bench.__main__; "
        "heavy = [m for m in ('torch', 'toolchain', 'exporters', 'onnxruntime') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(REPO_ROOT),
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
