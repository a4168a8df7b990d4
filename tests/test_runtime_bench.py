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
from fake_backends import FAKE_BACKEND_NAME
from onnx import TensorProto, helper, numpy_helper

from runtime_bench import environment
from runtime_bench.__main__ import main as cli_main
from runtime_bench.accuracy import classification_metrics, evaluate, harmonic_mean, top1_agreement
from runtime_bench.atomic import write_json_atomic
from runtime_bench.backends import OrtCpuBackend, open_backend
from runtime_bench.bench import run_benchmark
from runtime_bench.compare import compare_files, compare_reports
from runtime_bench.errors import InputError
from runtime_bench.report import SCHEMA_VERSION, to_markdown
from runtime_bench.stats import block_spread, ratio_with_spread, summarize
from runtime_bench.timing import compare_alternating, measure, timing_limits

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


def test_collect_runs_after_each_timed_call_outside_its_interval():
    """A timed callable's `collect()` (a GPU backend reading its CUDA events) is called once per timed call,
    never during warm-up, and its own time is in no sample."""
    clock = FakeClock()

    class Timed:
        def __init__(self, seconds):
            self.seconds, self.collected = seconds, 0

        def __call__(self):
            clock.advance(self.seconds)

        def collect(self):
            self.collected += 1
            clock.advance(10.0)  # slow on purpose: must not show up in the samples

    a, b = Timed(0.25), Timed(0.5)
    samples = compare_alternating({"a": a, "b": b}, warmup_runs=2, warmup_s=0, min_runs=3, min_s=0, clock=clock)
    assert samples == {"a": [0.25] * 3, "b": [0.5] * 3} and (a.collected, b.collected) == (3, 3)
    single = Timed(0.125)
    assert measure(single, warmup_runs=2, warmup_s=0, min_runs=4, min_s=0, clock=clock) == [0.125] * 4
    assert single.collected == 4


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


def test_gpu_backend_never_falls_back_to_the_cpu_during_run(tiny_model: Path, monkeypatch):
    """A test double of a GPU session (a real CPU session that reports CUDA first, whose provider fails
    inside run once): onnxruntime's wrapper would switch providers and carry on; the backend must fail."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail  # what the wrapper falls back on

    class FailingGpuSession(onnxruntime.InferenceSession):
        def __init__(self, path, sess_options=None, providers=None, **kwargs):
            super().__init__(path, sess_options=sess_options, providers=["CPUExecutionProvider"], **kwargs)
            real = self._sess

            class FailsOnce:  # the C++ session as the Python wrapper calls it
                failed = False

                def __getattr__(self, name):
                    return getattr(real, name)

                def run(self, *args):
                    if not FailsOnce.failed:
                        FailsOnce.failed = True
                        raise EPFail("CUDA failure 700: an illegal memory access")
                    return real.run(*args)

            self._sess = FailsOnce()

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", FailingGpuSession)
    backend = open_backend("ort-cuda", tiny_model)
    with pytest.raises(InputError, match=r"inference failed \(.*CUDA failure 700"):
        backend.run(np.zeros([1 if not isinstance(d, int) else d for d in backend.input_shape], np.float32))


def test_gpu_provider_failures_name_their_cause(tiny_model: Path, tmp_path: Path, monkeypatch):
    """Test doubles of onnxruntime-gpu sessions whose GPU provider fails at creation: the message names the
    provider's own error (also when the wrapper's CPU retry raised "from" it), never "not a loadable ONNX
    model" unless the model does not load on the CPU either; the TensorRT provider says when TensorRT 11
    needs a newer onnxruntime."""
    import types

    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

    real_session = onnxruntime.InferenceSession
    mode = {"retry": False}

    def gpu_session(path, sess_options=None, providers=None, **kwargs):
        if providers and providers[0] != "CPUExecutionProvider":
            error = EPFail(f"{providers[0]}: cudaErrorInsufficientDriver\nCUDA driver version is too old")
            if mode["retry"]:  # an onnxruntime whose wrapper retries on the CPU, and the retry fails too
                raise RuntimeError("retry on CPUExecutionProvider failed") from error
            raise error
        return real_session(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", gpu_session)
    version = onnxruntime.__version__
    for retry in (False, True):
        mode["retry"] = retry
        with pytest.raises(InputError) as info:
            open_backend("ort-cuda", tiny_model)
        assert str(info.value) == (f"{tiny_model}: onnxruntime {version} could not start CUDAExecutionProvider "
                                   "(CUDAExecutionProvider: cudaErrorInsufficientDriver); check the CUDA and cuDNN "
                                   "libraries")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(InputError, match=r"broken.onnx: not a loadable ONNX model \("):
        open_backend("ort-cuda", broken)

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.1.0"))
    monkeypatch.setattr(onnxruntime, "__version__", "1.26.0")
    with pytest.raises(InputError) as info:
        open_backend("ort-trt", tiny_model)
    assert str(info.value).endswith("); TensorRT 11.1.0 is installed, and onnxruntime's TensorRT provider needs "
                                    "onnxruntime-gpu >= 1.27 for TensorRT 11")
    monkeypatch.setattr(onnxruntime, "__version__", "1.27.0")
    with pytest.raises(InputError) as info:
        open_backend("ort-trt", tiny_model)
    assert str(info.value).endswith("); check the TensorRT, CUDA and cuDNN libraries (the versions onnxruntime-gpu "
                                    "was built for)")


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


# ---------------------------------------------------------------- methodology: strict mode and drift


def test_timing_limits_quick_and_strict():
    assert timing_limits() == {"mode": "quick", "min_runs": 50, "min_s": 2.0, "headline": "p50_ms"}
    assert timing_limits(min_runs=5, min_s=0.1)["min_runs"] == 5
    assert timing_limits(strict=True) == {
        "mode": "strict",
        "min_runs": 1024,
        "min_s": 600.0,
        "headline": "p90_ms",
    }
    assert timing_limits(strict=True, min_runs=2000, min_s=900)["min_runs"] == 2000  # more is allowed
    with pytest.raises(InputError) as info:
        timing_limits(strict=True, min_runs=100)
    assert str(info.value) == "min_runs=100 is below the strict-mode minimum of 1024"
    with pytest.raises(InputError) as info:
        timing_limits(strict=True, min_s=60)
    assert str(info.value) == "min_s=60 is below the strict-mode minimum of 600 s"


def test_strict_minimums_reach_both_count_and_duration():
    limits = timing_limits(strict=True)
    clock = FakeClock()
    # 1 s per query: 1024 queries already take 1024 s > 600 s, so the count decides.
    samples = measure(lambda: clock.advance(1.0), warmup_runs=0, warmup_s=0,
                      min_runs=limits["min_runs"], min_s=limits["min_s"], clock=clock)  # fmt: skip
    assert len(samples) == 1024
    # Two models alternating at 0.125 s each: a round is 0.25 s, so 600 s needs 2400 rounds.
    clock = FakeClock()
    fns = {"a": lambda: clock.advance(0.125), "b": lambda: clock.advance(0.125)}
    samples = compare_alternating(fns, warmup_runs=0, warmup_s=0, min_runs=limits["min_runs"],
                                  min_s=limits["min_s"], clock=clock)  # fmt: skip
    assert len(samples["a"]) == len(samples["b"]) == 2400


def test_run_benchmark_strict_rejects_low_minimums_before_measuring(tmp_path: Path):
    spec = tmp_path / "m.json"
    spec.write_text(json.dumps({"seconds_per_call": 10.0}))
    with pytest.raises(InputError) as info:
        run_benchmark({"m": str(spec)}, np.zeros((2, 1, 2, 2), np.float32), np.array([0, 1]), 2,
                      backend=FAKE_BACKEND_NAME, strict=True, min_runs=10, progress=False)  # fmt: skip
    assert str(info.value) == "min_runs=10 is below the strict-mode minimum of 1024"


def test_block_spread_on_known_samples():
    latencies_s = np.arange(1, 21) / 1000.0  # 1..20 ms, a steady upward drift
    spread = block_spread(latencies_s, blocks=5)  # blocks of 4: medians 2.5, 6.5, ... 18.5 ms
    assert spread["count"] == 5
    assert spread["p50_ms"] == pytest.approx([2.5, 6.5, 10.5, 14.5, 18.5])
    assert (spread["min_ms"], spread["max_ms"]) == pytest.approx((2.5, 18.5))
    assert spread["relative_range"] == pytest.approx(16.0 / 2.5)
    steady = block_spread([0.002] * 50)
    assert steady["relative_range"] == 0.0 and steady["p50_ms"] == pytest.approx([2.0] * 5)
    few = block_spread([0.001, 0.003], blocks=5)  # fewer samples than blocks: one block per sample
    assert few["count"] == 2 and few["p50_ms"] == pytest.approx([1.0, 3.0])
    assert summarize(latencies_s)["blocks"] == spread  # summarize reports it too
    with pytest.raises(InputError) as info:
        block_spread(latencies_s, blocks=0)
    assert str(info.value) == "blocks=0: must be a positive integer"


def test_ratio_with_spread_at_p90():
    a = np.arange(1, 101) / 1000.0
    b = a / 2
    spread = ratio_with_spread(a, b, percentile=90.0)
    assert spread["ratio"] == pytest.approx(2.0)
    assert spread["low"] < 2.0 < spread["high"]  # a and b are resampled independently
    assert ratio_with_spread([0.004] * 20, [0.001] * 20, percentile=90.0)["low"] == pytest.approx(4.0)


def test_drift_warning_over_ten_percent():
    latency = {
        "m": {"blocks": {"count": 5, "relative_range": 0.25}},
        "ok": {"blocks": {"count": 5, "relative_range": 0.05}},
    }
    assert environment.drift_warnings(latency) == [
        "m: p50 drifted 25% across 5 consecutive blocks of runs (> 10%): the machine was noisy or "
        "throttling; rerun or lock the clocks"
    ]


def test_report_records_mode_headline_blocks_and_threads(tmp_path: Path):
    spec = tmp_path / "m.json"
    spec.write_text(json.dumps({"seconds_per_call": 0.0005, "logits": [0.0, 1.0]}))
    report = run_benchmark({"m": str(spec)}, np.zeros((2, 1, 2, 2), np.float32), np.array([0, 1]), 2,
                           backend=FAKE_BACKEND_NAME, threads=2, batch_size=2, warmup_runs=1, warmup_s=0,
                           min_runs=12, min_s=0, blocks=3, progress=False)  # fmt: skip
    settings, latency = report["settings"], report["models"]["m"]["latency"]
    assert (settings["mode"], settings["headline"], settings["blocks"]) == ("quick", "p50_ms", 3)
    assert (settings["threads"], settings["batch_size"]) == (2, 2)
    assert latency["headline_ms"] == latency["p50_ms"]
    assert latency["blocks"]["count"] == 3 and len(latency["blocks"]["p50_ms"]) == 3
    assert latency["throughput"] == pytest.approx(2 / (latency["mean_ms"] / 1000))
    assert set(report["environment"]["after_timing"]) == {"cpu_freq", "thermal", "load_average"}
    assert "block p50 spread" in to_markdown(report)


# ---------------------------------------------------------------- environment: Jetson on a fake sysfs root

_CLOCKS_SHOW = """SOC family:tegra234  Machine:NVIDIA Jetson Orin Nano Developer Kit
Online CPUs: 0-5
cpu0: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0 c7=0
cpu1: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0 c7=0
cpu4: Online=0 Governor=schedutil MinFreq=115200 MaxFreq=1510400 CurrentFreq=115200 IdleStates: WFI=0 c7=0
GPU MinFreq=624750000 MaxFreq=624750000 CurrentFreq=624750000
EMC MinFreq=204000000 MaxFreq=2133000000 CurrentFreq=2133000000 FreqOverride=1
FAN Dynamic Speed control=active hwmon3_pwm=0
NV Power Mode: 15W
"""


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fake_jetson(root: Path) -> Path:
    _write(
        root,
        "etc/nv_tegra_release",
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n",
    )
    _write(root, "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    _write(root, "proc/cpuinfo", "processor\t: 0\nmodel name\t: ARMv8 Processor rev 1 (v8l)\n"
                                 "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n")
    _write(root, "proc/loadavg", "0.50 0.40 0.30 1/200 1234\n")
    for cpu, (low, high) in enumerate([(115200, 1510400), (115200, 1510400)]):
        base = f"sys/devices/system/cpu/cpu{cpu}/cpufreq/"
        _write(root, base + "scaling_cur_freq", "729600\n")
        _write(root, base + "scaling_min_freq", f"{low}\n")
        _write(root, base + "scaling_max_freq", f"{high}\n")
        _write(root, base + "cpuinfo_max_freq", "1510400\n")
        _write(root, base + "scaling_governor", "schedutil\n")
    for zone, (kind, milli) in enumerate(
        [("cpu-thermal", 45500), ("gpu-thermal", 85250), ("PMIC-Die", 100000)]
    ):
        _write(root, f"sys/class/thermal/thermal_zone{zone}/type", kind + "\n")
        _write(root, f"sys/class/thermal/thermal_zone{zone}/temp", f"{milli}\n")
    _write(root, "sys/class/devfreq/17000000.ga10b/min_freq", "306000000\n")
    _write(root, "sys/class/devfreq/17000000.ga10b/max_freq", "624750000\n")
    _write(root, "var/lib/nvpmodel/status", "pmode:0001 fmode:quiet\n")
    _write(
        root,
        "etc/nvpmodel.conf",
        "< POWER_MODEL ID=0 NAME=15W >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=1 NAME=7W >\n",
    )
    hwmon = "sys/class/hwmon/hwmon1/"
    _write(root, hwmon + "name", "ina3221\n")
    _write(root, hwmon + "in1_label", "VDD_IN\n")
    _write(root, hwmon + "in1_input", "5000\n")
    _write(root, hwmon + "curr1_input", "1200\n")
    _write(root, hwmon + "in2_label", "VDD_CPU_GPU_CV\n")
    _write(root, hwmon + "in2_input", "5000\n")
    _write(root, hwmon + "curr2_input", "400\n")
    return root


def _no_commands(args):
    return None


def test_jetson_capture_from_sysfs_without_tools(tmp_path: Path):
    env = environment.capture(root=str(_fake_jetson(tmp_path)), runner=_no_commands)
    jetson = env["jetson"]
    assert jetson["l4t_release"] == "R36.4.3"
    assert jetson["model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert jetson["nvpmodel"] == {"name": "7W", "id": 1, "source": "/var/lib/nvpmodel/status"}
    assert jetson["clocks"] == {"source": "sysfs", "cpu_locked": False, "gpu_locked": False,
                                "emc_locked": None, "locked": False}  # fmt: skip
    assert jetson["power_rails"] == [
        {"rail": "VDD_IN", "voltage_mv": 5000, "current_ma": 1200, "power_mw": 6000.0},
        {"rail": "VDD_CPU_GPU_CV", "voltage_mv": 5000, "current_ma": 400, "power_mw": 2000.0},
    ]
    assert "jtop" not in jetson  # never consulted for a fake root
    assert env["cpu_freq"] == {
        "source": "sysfs", "cpus": 2, "cur_mhz_min": 729.6, "cur_mhz_max": 729.6, "scaling_min_mhz": 115.2,
        "scaling_max_mhz": 1510.4, "hw_max_mhz": 1510.4, "governors": ["schedutil"], "locked": False,
    }  # fmt: skip
    assert [z["temp_c"] for z in env["thermal"]] == [45.5, 85.2, 100.0]
    assert env["load_average"] == [0.5, 0.4, 0.3]
    assert env["cpu_model"] == "ARMv8 Processor rev 1 (v8l)"
    assert env["cpu_int8"] == ["asimddp"]  # Orin's dot product; no i8mm listed
    assert env["warnings"] == [
        "CPU frequency governor is 'schedutil', not 'performance': latencies may vary with clock scaling",
        # PMIC-Die's constant 100 C is a placeholder, not a reading: left out.
        "high temperature (gpu-thermal 85.2 C > 80 C): the chip may be throttling",
        "Jetson clocks are not locked (CPU, GPU scaling; run sudo jetson_clocks): latencies include frequency ramp-up",
    ]


def test_jetson_capture_with_nvpmodel_and_jetson_clocks(tmp_path: Path):
    root = _fake_jetson(tmp_path)
    answers = {
        ("nvpmodel", "-q"): "NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n0\n",
        ("jetson_clocks", "--show"): _CLOCKS_SHOW,
    }
    env = environment.capture(root=str(root), runner=lambda args: answers.get(tuple(args)))
    assert env["jetson"]["nvpmodel"] == {"name": "15W", "id": 0, "source": "nvpmodel -q"}
    assert env["jetson"]["clocks"] == {"source": "jetson_clocks --show", "cpu_locked": True, "gpu_locked": True,
                                       "emc_locked": True, "locked": True}  # fmt: skip
    assert not any("not locked" in w for w in env["warnings"])


def test_capture_degrades_gracefully_on_a_bare_root(tmp_path: Path):
    def broken(args):
        raise RuntimeError("boom")

    env = environment.capture(root=str(tmp_path), runner=broken)
    assert env["jetson"] is None and env["thermal"] is None and env["cpu_freq"] is None
    assert env["load_average"] is None and env["cpu_governor"] is None and env["nvidia_gpus"] is None
    assert env["warnings"] == []
    json.dumps(env)  # JSON-serializable
    snap = environment.snapshot(root=str(tmp_path))
    assert snap == {"cpu_freq": None, "thermal": None, "load_average": None}


def test_capture_on_this_machine_never_raises():
    env = environment.capture()
    json.dumps(env)
    assert isinstance(env["warnings"], list)


# ---------------------------------------------------------------- compare


def _synthetic_report(
    p50: float, accuracy: float, cpu: str, ort: str, threads, version: str = SCHEMA_VERSION
):
    def model(scale: float) -> dict:
        return {
            "path": "m.onnx",
            "backend": {"backend": "ort-cpu", "runtime": "onnxruntime", "version": ort, "threads": threads},
            "latency": {"p50_ms": p50 * scale, "p90_ms": 1.5 * p50 * scale, "count": 100,
                        "blocks": {"count": 5, "relative_range": 0.02}},
            "accuracy": {"accuracy": accuracy, "harmonic_mean": accuracy - 0.1, "count": 50},
        }  # fmt: skip

    return {
        "schema_version": version,
        "created_utc": "2026-11-25T12:00:00Z",
        "settings": {
            "backend": "ort-cpu",
            "threads": threads,
            "batch_size": 1,
            "mode": "quick",
            "headline": "p50_ms",
        },
        "environment": {
            "cpu_model": cpu,
            "logical_cores": 4,
            "onnxruntime": ort,
            "machine": "x86_64",
            "warnings": [],
        },
        "models": {"dense": model(1.0), "pruned": model(0.5)},
        "comparison": None,
    }


def test_compare_reports_ratios_deltas_and_environment():
    a = _synthetic_report(10.0, 0.90, "Xeon", "1.32.0", None)
    b = _synthetic_report(20.0, 0.85, "Cortex-A78AE", "1.20.0", 4)
    del b["models"]["pruned"]
    b["models"]["extra"] = b["models"]["dense"]
    result = compare_reports(a, b)
    (row,) = result["models"]
    assert row["label"] == "dense"
    assert row["p50_ratio"] == pytest.approx(2.0) and row["p90_ratio"] == pytest.approx(2.0)
    assert row["accuracy_delta"] == pytest.approx(-0.05)
    assert result["only_in_a"] == ["pruned"] and result["only_in_b"] == ["extra"]
    differing = {d["what"]: (d["a"], d["b"]) for d in result["differences"]}
    assert differing["CPU"] == ("Xeon", "Cortex-A78AE")
    assert differing["onnxruntime"] == ("1.32.0", "1.20.0")
    assert differing["threads"] == ("runtime default", "4")
    assert "batch size" not in differing


def test_compare_cli_prints_markdown_table(tmp_path: Path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_synthetic_report(10.0, 0.90, "Xeon", "1.32.0", None)))
    b.write_text(json.dumps(_synthetic_report(5.0, 0.91, "Xeon", "1.32.0", None, version="1")))
    out_md = tmp_path / "cmp.md"
    done = _cli("compare", str(a), str(b), "--md", str(out_md))
    assert done.returncode == 0, done.stderr
    assert done.stdout == out_md.read_text() == compare_files(a, b)[1]
    assert (
        "| dense | 10.000 | 5.000 | 0.500 | 15.000 | 7.500 | 0.500 | 0.9000 | 0.9100 | +0.0100 |"
        in done.stdout
    )
    assert "| pruned | 5.000 | 2.500 | 0.500 |" in done.stdout
    assert "None in CPU, cores, runtime" in done.stdout


def test_compare_cli_errors_are_one_line(tmp_path: Path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_synthetic_report(10.0, 0.9, "Xeon", "1.32.0", None)))
    missing = tmp_path / "missing.json"
    done = _cli("compare", str(good), str(missing))
    assert done.returncode == 2 and done.stderr.splitlines() == [f"error: {missing}: no such file"]

    future = tmp_path / "future.json"
    future.write_text(json.dumps(_synthetic_report(10.0, 0.9, "Xeon", "1.32.0", None, version="9")))
    done = _cli("compare", str(future), str(good))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: {future}: schema_version '9' is not a runtime_bench report version this tool reads (1, 2)"
    ]

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    done = _cli("compare", str(good), str(other))
    assert done.stderr.splitlines() == [f"error: {other}: not a runtime_bench report (no schema_version)"]

    notjson = tmp_path / "bad.json"
    notjson.write_text("{")
    assert cli_main(["compare", str(notjson), str(good)]) == 2


def test_compare_keyword_yields_to_a_file_named_compare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "compare").write_text("not a model")
    assert cli_main(["compare", "x.json"]) == 2  # treated as a model path: the model usage applies
    assert capsys.readouterr().err.splitlines() == [
        "error: the following arguments are required: --data, --json"
    ]


def test_cpu_int8_instructions_come_from_cpuinfo(tmp_path: Path):
    _write(tmp_path, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
                                     "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert environment.cpu_int8(str(tmp_path)) == ["avx512_vnni"]
    _write(tmp_path, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert environment.cpu_int8(str(tmp_path)) == []  # int8 runs, without dot-product instructions
    assert environment.cpu_int8(str(tmp_path / "nowhere")) is None
