"""TensorRT: engine building (exporters.tensorrt), the runtime backend (runtime_bench.tensorrt_backend) and
their wiring into export and deploy.

Three tiers, as in tinygrad: plain functions (profiles, buffer plans, cache keys, messages); the real builder
and runtime code over `tests/fake_tensorrt.py` (a fake tensorrt module and CUDA runtime: no GPU, the
fake runs the ONNX model with ONNX Runtime); and the TensorRT 11 ONNX conversions (float16, Q/DQ), which are
plain ONNX and checked here with ONNX Runtime on real images. Tests that need a real GPU skip with the reason.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fake_tensorrt import (
    FAKE_GPU,
    FAKE_LAYER_MS,
    FAKE_TENSORRT_BACKEND_NAME,
    FakeCudaRuntime,
    FakeTensorRT,
    FakeTensorRTBackend,
)
from onnx import TensorProto, helper, numpy_helper

from exporters.tensorrt import (
    _parse,
    build_engine,
    check_batch_sizes,
    detect,
    engine_cache_key,
    float32_inputs,
    quantize_qdq,
    to_float16,
)
from runtime_bench import tensorrt_backend
from runtime_bench.accuracy import top1_agreement
from runtime_bench.backends import backend_names, open_backend
from runtime_bench.bench import run_benchmark
from runtime_bench.bundle import benchmark_bundle, read_bundle
from runtime_bench.errors import CheckFailed, InputError
from runtime_bench.report import to_markdown
from runtime_bench.tensorrt_backend import (
    BufferPlan,
    LayerTimes,
    Profile,
    TensorRTBackend,
    TensorRTUnavailable,
    TensorSpec,
    batch_chunks,
    import_cuda_runtime,
    import_tensorrt,
    native_handle,
    plan_buffers,
    process_logger,
    select_profile,
    tensorrt_generation,
)
from toolchain.data import Preprocessing, load_images, scan_image_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = 3
SIZE = 16


def _cnn(seed: int = 0, size: int = SIZE, batch: str | int = "batch") -> onnx.ModelProto:
    """(N, 3, size, size) -> Conv 8 -> ReLU -> Conv 8 -> ReLU -> GAP -> Gemm -> (N, 3): a small real CNN graph."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32),
                                       name)

    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
         helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
         helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="pool"),
         helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
         helper.make_node("Gemm", ["flat", "fc", "fb"], ["logits"], name="fc")],
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])],
        initializer=[weight("w1", 8, 3, 3, 3), weight("b1", 8), weight("w2", 8, 8, 3, 3), weight("b2", 8),
                     weight("fc", 8, CLASSES), weight("fb", CLASSES)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn") / "model.onnx"
    onnx.save(_cnn(), str(path))
    return path


@pytest.fixture(scope="module")
def real_images(image_data):
    """Preprocessed real PNG images: (small set, its labels), (test set, its labels)."""
    prep = Preprocessing(SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    small, small_labels, _ = load_images(scan_image_folder(image_data.small).samples, prep, progress=False)
    test, test_labels, _ = load_images(scan_image_folder(image_data.test).samples, prep, progress=False)
    return small, small_labels, test, test_labels


def _ort_logits(model: Path | onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": np.ascontiguousarray(images, dtype=np.float32)})[0]


def _fake(generation: int = 10) -> tuple:
    cudart = FakeCudaRuntime()
    return FakeTensorRT(generation, cudart), cudart


def _engine_spec(path: Path) -> dict:
    return json.loads(path.read_bytes().decode())


# ------------------------------------------------------------------------------------------ plain logic


def test_generation_from_version():
    assert tensorrt_generation("10.3.0.26") == 10
    assert tensorrt_generation("11.4.0.106") == 11
    with pytest.raises(TensorRTUnavailable) as info:
        tensorrt_generation("8.6.1")
    assert str(info.value) == "TensorRT 8.6.1 is installed; edgeprune supports TensorRT 10 and 11"


def test_select_profile_prefers_the_closest_optimum_and_names_the_profiles_when_none_fits():
    profiles = [Profile((1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8)),
                Profile((1, 3, 8, 8), (8, 3, 8, 8), (16, 3, 8, 8))]
    assert select_profile(profiles, (1, 3, 8, 8)) == 0
    assert select_profile(profiles, (4, 3, 8, 8)) == 0  # |4-1| < |4-8|
    assert select_profile(profiles, (6, 3, 8, 8)) == 1  # only the second holds 6
    assert select_profile([profiles[0], profiles[0]], (2, 3, 8, 8)) == 0  # a tie: the first
    with pytest.raises(InputError) as info:
        select_profile(profiles, (17, 3, 8, 8))
    assert str(info.value) == ("input shape (17, 3, 8, 8) is outside every optimization profile of the engine "
                               "(profile 0: batch 1-4 (opt 1); profile 1: batch 1-16 (opt 8))")
    with pytest.raises(InputError):
        select_profile(profiles, (2, 3, 9, 8))  # not the batch: a fixed dimension differs


def test_plan_buffers_sizes_every_tensor_for_its_largest_shape():
    specs = [TensorSpec("input", True, "float32", (-1, 3, 8, 8)), TensorSpec("logits", False, "float16", (-1, 10))]
    plan = plan_buffers(specs, {"input": (16, 3, 8, 8), "logits": (16, 10)})
    assert plan == [BufferPlan("input", True, "float32", (16, 3, 8, 8), 16 * 3 * 8 * 8 * 4),
                    BufferPlan("logits", False, "float16", (16, 10), 16 * 10 * 2)]
    with pytest.raises(InputError) as info:
        plan_buffers(specs, {"input": (16, 3, 8, 8)})
    assert str(info.value) == ("tensor 'logits' has no fixed largest shape ((-1, 10)); "
                               "the engine needs an optimization profile for it")


def test_batch_chunks_cover_every_image_once():
    assert batch_chunks(20, 8) == [(0, 8), (8, 16), (16, 20)]
    assert batch_chunks(3, 8) == [(0, 3)]


def test_layer_times_average_over_runs_in_execution_order():
    times = LayerTimes()
    for _ in range(2):
        times.add("conv", 1.0)
        times.add("relu", 0.5)
        times.runs += 1
    times.add("conv", 1.0)  # a third report without a completed run does not count as a run
    assert times.table() == [{"layer": "conv", "mean_ms": 1.5}, {"layer": "relu", "mean_ms": 0.5}]
    with pytest.raises(InputError, match="no profiled runs"):
        LayerTimes().table()


def test_engine_cache_key_changes_with_every_input():
    base = dict(onnx_sha256="a" * 64, tensorrt_version="10.3.0", gpu="Orin", precision="fp16",
                batch_sizes=(1, 1, 8), calibration_sha256=None)
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base) and len(key) == 64
    for field, other in (("onnx_sha256", "b" * 64), ("tensorrt_version", "10.3.1"), ("gpu", "H100"),
                         ("precision", "int8"), ("batch_sizes", (1, 2, 8)), ("calibration_sha256", "c" * 64)):
        assert engine_cache_key(**dict(base, **{field: other})) != key, field


def test_batch_sizes_must_be_min_opt_max():
    assert check_batch_sizes([1, 4, 8]) == (1, 4, 8)
    for bad in ([1, 8], [2, 1, 8], [0, 1, 1], [1, 1.5, 2]):
        with pytest.raises(InputError) as info:
            check_batch_sizes(bad)
        assert str(info.value) == (f"TensorRT batch sizes {list(bad)}: need [min, opt, max] positive integers, "
                                   "min <= opt <= max")


# ---------------------------------------------------------------------------- what is missing, one line


def test_stream_handles_use_the_bindings_helper_where_it_knows_the_type(monkeypatch):
    class Stream:  # a cuda-bindings object: int() still works but is deprecated
        def __int__(self):
            return 5

    class Unknown(Stream):
        pass

    def helper(obj):
        if type(obj) is not Stream:
            raise TypeError(f"Unknown type: {type(obj)}")
        return 7

    monkeypatch.setattr(tensorrt_backend, "_native_handle_getter", lambda: helper)
    assert native_handle(Stream()) == 7
    assert native_handle(Unknown()) == 5  # a type the helper does not know: int()
    assert native_handle(12) == 12  # pointers from cudaMalloc are ints already
    monkeypatch.setattr(tensorrt_backend, "_native_handle_getter", lambda: None)  # bindings without the helper
    assert native_handle(Stream()) == 5


def test_missing_tensorrt_cuda_bindings_and_gpu_are_named(monkeypatch, cnn_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailable) as info:
        import_tensorrt()
    assert str(info.value) == "TensorRT is not installed (pip install tensorrt)"
    with pytest.raises(InputError) as info:
        open_backend("tensorrt", cnn_path)
    assert str(info.value) == "backend 'tensorrt': TensorRT is not installed (pip install tensorrt)"

    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(TensorRTUnavailable) as info:
        import_cuda_runtime()
    assert str(info.value) == "the CUDA Python bindings are not installed (pip install cuda-python)"

    trt, _ = _fake()
    with pytest.raises(TensorRTUnavailable) as info:
        detect(trt, FakeCudaRuntime(devices=0))
    assert str(info.value) == "no CUDA GPU is visible (cudaErrorNoDevice)"


def test_gpu_onnxruntime_backends_need_onnxruntime_gpu(cnn_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    assert backend_names() == ["ort-cpu", "ort-cuda", "ort-trt", "tensorrt"]  # fakes are not offered
    for name in ("ort-cuda", "ort-trt"):
        with pytest.raises(InputError) as info:
            open_backend(name, cnn_path)
        assert str(info.value) == f"backend '{name}' needs the package onnxruntime-gpu (pip install onnxruntime-gpu)"


# ------------------------------------------------------------------------- builder over the fake module


@pytest.mark.parametrize("generation", [10, 11])
def test_every_precision_builds_the_way_its_generation_requires(generation, cnn_path, real_images, tmp_path):
    small, _, test, _ = real_images
    trt, cudart = _fake(generation)
    reference = _ort_logits(cnn_path, test)
    for precision in ("fp32", "fp16", "int8"):
        target = tmp_path / f"model.{precision}.engine"
        record = build_engine(cnn_path, target, precision, calibration_images=small, cache_dir=tmp_path / "cache",
                              trt=trt, cudart=cudart)
        spec = _engine_spec(target)
        inner = onnx.load_from_string(base64.b64decode(spec["onnx"]))
        ops = {node.op_type for node in inner.graph.node}
        # conv2: the first conv and the head stay in float by default (exporters.quantize.Int8Settings)
        weight_types = {t.data_type for t in inner.graph.initializer if t.name in ("w2", "w2_quantized")}
        if generation == 10:  # weak typing: the ONNX model as it is, precision from builder flags
            # TF32 is on by default; an fp32 engine clears it, so that fp32 means fp32.
            assert spec["flags"] == {"fp32": [], "fp16": ["FP16", "TF32"], "int8": ["FP16", "INT8", "TF32"]}[precision]
            assert weight_types == {TensorProto.FLOAT} and "QuantizeLinear" not in ops
            assert record["notes"].get("calibration_images") == (len(small) if precision == "int8" else None)
            assert record["notes"].get("calibrator") == ("IInt8EntropyCalibrator2" if precision == "int8" else None)
        else:  # strong typing: no precision flags, no calibrator; the precision is in the ONNX model
            assert spec["flags"] == ([] if precision == "fp32" else ["TF32"]) and "calibration_images" not in record["notes"]
            assert weight_types == {"fp32": {TensorProto.FLOAT}, "fp16": {TensorProto.FLOAT16},
                                    "int8": {TensorProto.INT8}}[precision]
            assert ("QuantizeLinear" in ops) == (precision == "int8")
        assert spec["profiles"] == [[[1, 3, SIZE, SIZE], [1, 3, SIZE, SIZE], [8, 3, SIZE, SIZE]]]
        assert record["precision"] == precision and record["generation"] == generation
        assert record["gpu"] == FAKE_GPU and record["cache_hit"] is False

        engine = TensorRTBackend(target, trt=trt, cudart=cudart)
        logits = engine.run(test)  # 18 images through an engine of max batch 8: three chunks
        engine.close()
        assert top1_agreement(reference, logits) == 1.0
        if set(spec["flags"]) - {"TF32"} or precision == "fp32":  # the fake computes in float32 whatever the flags
            np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)
    assert cudart.live_allocations() == 0  # calibration buffers and engine buffers all freed


def test_int8_choices_reach_both_generations_and_the_engine_cache(cnn_path, real_images, tmp_path):
    """The INT8 settings pick TensorRT 10's calibrator (min-max or entropy) and shape TensorRT 11's Q/DQ model;
    engines built with other settings are other engines."""
    from exporters.quantize import Int8Settings

    small = real_images[0]
    trt, cudart = _fake(10)
    minmax = build_engine(cnn_path, tmp_path / "a.engine", "int8", small, cache_dir=tmp_path / "cache", trt=trt,
                          cudart=cudart, int8=Int8Settings(calibration="minmax"))
    default = build_engine(cnn_path, tmp_path / "b.engine", "int8", small, cache_dir=tmp_path / "cache", trt=trt,
                           cudart=cudart)
    assert minmax["notes"]["calibrator"] == "IInt8MinMaxCalibrator" and default["cache_hit"] is False
    assert default["notes"]["calibrator"] == "IInt8EntropyCalibrator2" and minmax["cache_key"] != default["cache_key"]
    trt, cudart = _fake(11)
    every_layer = build_engine(cnn_path, tmp_path / "c.engine", "int8", small, cache_dir=tmp_path / "cache", trt=trt,
                               cudart=cudart, int8=Int8Settings(keep_float=()))
    inner = onnx.load_from_string(base64.b64decode(_engine_spec(tmp_path / "c.engine")["onnx"]))
    assert {t.name for t in inner.graph.initializer if t.data_type == TensorProto.INT8} >= {
        "w1_quantized", "w2_quantized", "fc_quantized"}
    assert every_layer["generation"] == 11


def test_timing_cache_is_reused_and_finished_engines_come_from_the_cache(cnn_path, tmp_path):
    trt, cudart = _fake(10)
    cache = tmp_path / "cache"
    first = build_engine(cnn_path, tmp_path / "a.engine", "fp32", cache_dir=cache, trt=trt, cudart=cudart)
    second = build_engine(cnn_path, tmp_path / "b.engine", "fp16", cache_dir=cache, trt=trt, cudart=cudart)
    assert first["notes"] == {"timing_cache_reused": False}
    assert second["notes"] == {"timing_cache_reused": True}
    (timing,) = cache.glob("timing-*.cache")
    assert timing.name == "timing-10.99.0-fake-fake-gpu-for-tests.cache"
    assert json.loads(timing.read_text()) == {"builds": 2}  # the second build started from the first's cache

    again = build_engine(cnn_path, tmp_path / "c.engine", "fp16", cache_dir=cache, trt=trt, cudart=cudart)
    assert again["cache_hit"] is True and again["notes"] == second["notes"]
    assert (tmp_path / "c.engine").read_bytes() == (tmp_path / "b.engine").read_bytes()
    assert json.loads(timing.read_text()) == {"builds": 2}  # nothing was built
    assert again["cache_key"] == second["cache_key"] != first["cache_key"]
    other_gpu = FakeCudaRuntime(gpu="Another GPU")
    moved = build_engine(cnn_path, tmp_path / "d.engine", "fp16", cache_dir=cache,
                         trt=FakeTensorRT(10, other_gpu), cudart=other_gpu)
    assert moved["cache_hit"] is False and moved["cache_key"] != second["cache_key"]


def test_a_failed_build_leaves_no_engine_and_no_temporary_file(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    trt, cudart = _fake(10)
    target = tmp_path / "out" / "broken.fp16.engine"
    target.parent.mkdir()
    with pytest.raises(CheckFailed) as info:
        build_engine(broken, target, "fp16", cache_dir=tmp_path / "cache", trt=trt, cudart=cudart)
    assert str(info.value).startswith(f"{broken}: TensorRT could not parse the ONNX model (ModelImporter: ")
    assert list(target.parent.iterdir()) == []
    assert not list((tmp_path / "cache").glob("*.engine"))


def test_a_build_failure_says_what_tensorrt_logged(cnn_path, tmp_path, monkeypatch):
    import fake_tensorrt

    def out_of_memory(builder, network, config):
        builder.logger.log(fake_tensorrt.Severity.WARNING, "a warning is not the reason")
        builder.logger.log(fake_tensorrt.Severity.ERROR, "[defaultAllocator.cpp::allocate] out of memory\nmore")
        return None

    monkeypatch.setattr(fake_tensorrt._Builder, "build_serialized_network", out_of_memory)
    trt, cudart = _fake(10)
    with pytest.raises(CheckFailed) as info:
        build_engine(cnn_path, tmp_path / "m.engine", "fp16", cache_dir=tmp_path / "cache", trt=trt, cudart=cudart)
    assert str(info.value) == (f"{cnn_path}: TensorRT 10.99.0-fake failed to build a fp16 engine on {FAKE_GPU} "
                               "([defaultAllocator.cpp::allocate] out of memory)")
    assert not (tmp_path / "m.engine").exists() and cudart.live_allocations() == 0


def test_one_logger_per_process_and_each_build_reports_its_own_error(fake_engine, cnn_path, tmp_path, monkeypatch):
    """TensorRT keeps the first logger it was given (the fake does as libnvinfer does). An engine opened first
    gave the Runtime its logger; a build after it must still see its own errors, and only its own."""
    import fake_tensorrt

    trt, cudart = _fake(10)
    engine = TensorRTBackend(fake_engine, trt=trt, cudart=cudart)
    logger = process_logger(trt)
    assert trt.logger is logger and process_logger(trt) is logger
    stale = tmp_path / "stale.engine"
    stale.write_bytes(b"not an engine")
    with pytest.raises(InputError, match=r"TensorRT: not a serialized engine\)$"):
        TensorRTBackend(stale, trt=trt, cudart=cudart)  # leaves an error in the shared logger

    def mismatched_cache(config, data):
        config.module.logger.log(fake_tensorrt.Severity.ERROR, "timing cache of another TensorRT: ignored")
        return fake_tensorrt._TimingCache(b"")

    def out_of_memory(builder, network, config):
        builder.logger.log(fake_tensorrt.Severity.ERROR, "[defaultAllocator.cpp::allocate] out of memory")
        return None

    monkeypatch.setattr(fake_tensorrt._Config, "create_timing_cache", mismatched_cache)
    monkeypatch.setattr(fake_tensorrt._Builder, "build_serialized_network", out_of_memory)
    with pytest.raises(CheckFailed) as info:
        build_engine(cnn_path, tmp_path / "m.engine", "fp16", cache_dir=tmp_path / "cache", trt=trt, cudart=cudart)
    assert str(info.value).endswith("failed to build a fp16 engine on Fake GPU (for tests) "
                                    "([defaultAllocator.cpp::allocate] out of memory)")
    assert not any("differs from one already provided" in str(m) for _, m in getattr(logger, "messages", []))
    engine.close()


def test_network_flags_follow_each_generation(cnn_path):
    """TensorRT 10: EXPLICIT_BATCH 0 (ignored), STRONGLY_TYPED 1, weak typing by default; TensorRT 11:
    STRONGLY_TYPED 0 and ignored (always strongly typed), no EXPLICIT_BATCH (include/NvInfer.h of each)."""
    onnx_bytes = cnn_path.read_bytes()
    ten, eleven = FakeTensorRT(10), FakeTensorRT(11)
    assert (int(ten.NetworkDefinitionCreationFlag.STRONGLY_TYPED), int(eleven.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) == (1, 0)
    assert int(ten.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) == 0
    assert not hasattr(eleven.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert not hasattr(eleven.BuilderFlag, "FP16") and int(eleven.BuilderFlag.TF32) == int(ten.BuilderFlag.TF32) == 6
    for trt, generation in ((ten, 10), (eleven, 11)):
        builder = trt.Builder(process_logger(trt))
        network, _ = _parse(trt, builder, process_logger(trt), onnx_bytes, "m.onnx", generation)
        assert network.strongly_typed == (generation == 11)
    with pytest.raises(TypeError, match="unknown NetworkDefinitionCreationFlag bits"):
        eleven.Builder(process_logger(eleven)).create_network(1 << 3)
    strong = ten.Builder(process_logger(ten)).create_network(1 << int(ten.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    strong.model = _cnn(batch=1)
    config = ten.Builder(process_logger(ten)).create_builder_config()
    config.set_flag(ten.BuilderFlag.FP16)
    process_logger(ten).clear()
    assert ten.Builder(process_logger(ten)).build_serialized_network(strong, config) is None
    assert process_logger(ten).reason() == "a strongly typed network takes no precision flags"


def test_build_argument_errors(cnn_path, tmp_path):
    trt, cudart = _fake(10)
    with pytest.raises(InputError) as info:
        build_engine(cnn_path, tmp_path / "m.engine", "int8", cache_dir=tmp_path, trt=trt, cudart=cudart)
    assert str(info.value) == f"{tmp_path / 'm.engine'}: an int8 engine needs calibration images (the small labelled set)"
    with pytest.raises(InputError) as info:
        build_engine(cnn_path, tmp_path / "m.engine", "bf16", trt=trt, cudart=cudart)
    assert str(info.value) == "TensorRT precision 'bf16': choose from fp32, fp16, int8"
    fixed = tmp_path / "fixed.onnx"
    onnx.save(_cnn(batch=1), str(fixed))
    with pytest.raises(InputError) as info:
        build_engine(fixed, tmp_path / "m.engine", "fp32", cache_dir=tmp_path, trt=trt, cudart=cudart)
    assert str(info.value) == f"{fixed}: the ONNX batch dimension is fixed at 1; export it with a dynamic batch"


# ------------------------------------------------------------------------- runtime over the fake module


@pytest.fixture(scope="module")
def fake_engine(cnn_path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("engine")
    trt, cudart = _fake(10)
    build_engine(cnn_path, folder / "model.fp16.engine", "fp16", cache_dir=folder / "cache", trt=trt, cudart=cudart)
    return folder / "model.fp16.engine"


def test_the_harness_measures_a_fake_engine_like_any_model(fake_engine, cnn_path, real_images):
    _, _, test, labels = real_images
    report = run_benchmark({"onnx": str(cnn_path)}, test, labels, CLASSES, backend="ort-cpu", warmup_runs=1,
                           warmup_s=0, min_runs=3, min_s=0, progress=False)
    engine = run_benchmark({"engine": str(fake_engine)}, test, labels, CLASSES, backend=FAKE_TENSORRT_BACKEND_NAME,
                           batch_size=4, warmup_runs=1, warmup_s=0, min_runs=3, min_s=0, progress=False)
    entry = engine["models"]["engine"]
    assert entry["accuracy"] == report["models"]["onnx"]["accuracy"]
    assert entry["latency"]["count"] >= 3
    assert entry["backend"]["backend"] == FAKE_TENSORRT_BACKEND_NAME and entry["backend"]["gpu"] == FAKE_GPU
    assert entry["backend"]["profiles"] == [{"min": (1, 3, SIZE, SIZE), "opt": (1, 3, SIZE, SIZE),
                                             "max": (8, 3, SIZE, SIZE)}]


def test_engine_latency_has_trtexec_quantities_from_cuda_events(fake_engine, cnn_path, real_images):
    """Each timed call of an engine records CUDA events between copy in, compute and copy out: trtexec's H2D,
    GPU compute and D2H times, whose sum is its latency; the wall clock of the same call stays `latency`."""
    _, _, test, labels = real_images
    report = run_benchmark({"dense": str(fake_engine), "again": str(fake_engine)}, test, labels, CLASSES,
                           backend=FAKE_TENSORRT_BACKEND_NAME, warmup_runs=2, warmup_s=0, min_runs=5, min_s=0,
                           progress=False)
    for entry in report["models"].values():
        events, wall = entry["gpu_events"], entry["latency"]
        assert sorted(events) == ["compute", "d2h", "h2d", "latency"]
        assert all(part["count"] == wall["count"] for part in events.values())  # one per timed call, no warm-up
        assert events["latency"]["mean_ms"] == pytest.approx(sum(events[k]["mean_ms"] for k in ("h2d", "compute", "d2h")))
        assert 0 < events["latency"]["mean_ms"] <= wall["mean_ms"]  # the events lie inside the timed call
        assert events["compute"]["mean_ms"] > events["h2d"]["mean_ms"]  # the fake computes with ONNX Runtime
        assert "wall clock" in entry["backend"]["latency"]
    markdown = to_markdown(report)
    assert "## GPU latency from CUDA events (ms, p50)" in markdown and "| dense | " in markdown.split("CUDA events")[1]
    onnx_report = run_benchmark({"onnx": str(cnn_path)}, test, labels, CLASSES, warmup_runs=1, warmup_s=0,
                                min_runs=3, min_s=0, progress=False)
    assert "gpu_events" not in onnx_report["models"]["onnx"] and "CUDA events" not in to_markdown(onnx_report)
    engine = FakeTensorRTBackend(fake_engine)
    cudart = engine._cudart
    assert len(cudart.events) == 4
    engine.close()
    assert cudart.live_allocations() == 0  # the events are destroyed with the buffers


def test_runtime_errors_name_the_engine(fake_engine):
    engine = FakeTensorRTBackend(fake_engine)
    images = np.zeros((9, 3, SIZE, SIZE), np.float32)
    with pytest.raises(InputError) as info:
        engine.prepare(images)  # a timed batch cannot be split
    assert str(info.value) == (f"{fake_engine}: batch of 9 is larger than the engine's largest optimization "
                               "profile (profile 0: batch 1-8 (opt 1))")
    engine.close()
    with pytest.raises(InputError) as info:
        FakeTensorRTBackend(fake_engine, threads=2)
    assert str(info.value) == "backend 'fake-tensorrt-for-tests' runs on the GPU; threads=2 does not apply"
    with pytest.raises(InputError) as info:
        FakeTensorRTBackend(fake_engine, generation=11)
    assert str(info.value) == (f"{fake_engine}: not an engine TensorRT 11.99.0-fake can load on {FAKE_GPU} "
                               "(engines only run with the TensorRT version and GPU model they were built with; "
                               "TensorRT: engine built with another TensorRT version or GPU)")

    class ShortDevice(FakeCudaRuntime):
        """Device buffers half the size asked for: a copy past their end must fail, not corrupt memory."""

        def cudaMalloc(self, nbytes):
            return super().cudaMalloc(nbytes // 2)

    short = ShortDevice()
    engine = TensorRTBackend(fake_engine, trt=FakeTensorRT(10, short), cudart=short)
    with pytest.raises(InputError) as info:
        engine.run(np.zeros((8, 3, SIZE, SIZE), np.float32))
    assert str(info.value) == "CUDA cudaMemcpyAsync of 'input' failed (cudaErrorInvalidValue)"
    assert engine.run(np.zeros((2, 3, SIZE, SIZE), np.float32)).shape == (2, CLASSES)  # within the half: fine


def test_profiles_are_switched_per_batch(fake_engine, tmp_path, cnn_path):
    spec = _engine_spec(fake_engine)
    spec["profiles"] = [[[1, 3, SIZE, SIZE], [1, 3, SIZE, SIZE], [2, 3, SIZE, SIZE]],
                        [[3, 3, SIZE, SIZE], [8, 3, SIZE, SIZE], [16, 3, SIZE, SIZE]]]
    two = tmp_path / "two-profiles.engine"
    two.write_text(json.dumps(spec))
    engine = FakeTensorRTBackend(two)
    images = np.random.default_rng(0).standard_normal((16, 3, SIZE, SIZE)).astype(np.float32)
    assert engine.plan[0].shape == (16, 3, SIZE, SIZE)  # sized for the largest profile
    np.testing.assert_allclose(engine.run(images[:2]), _ort_logits(cnn_path, images[:2]), rtol=1e-5, atol=1e-5)
    assert engine._context.profile == 0
    np.testing.assert_allclose(engine.run(images), _ort_logits(cnn_path, images), rtol=1e-5, atol=1e-5)
    assert engine._context.profile == 1
    engine.close()


def test_layer_times_come_from_the_profiler_on_a_separate_context(fake_engine):
    engine = FakeTensorRTBackend(fake_engine)
    table = engine.layer_times(np.zeros((2, 3, SIZE, SIZE), np.float32), runs=3)
    layers = ["conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc"]
    assert [row["layer"] for row in table] == layers  # a TensorRT 10 engine: the ONNX model as it is
    assert [row["mean_ms"] for row in table] == pytest.approx([(k + 1) * FAKE_LAYER_MS for k in range(7)])
    assert engine._context.profiler is None  # the timed context never carries the profiler
    cudart = engine._cudart
    engine.close()
    assert cudart.live_allocations() == 0 and not cudart.streams


# ----------------------------------------------------------------- TensorRT 11 conversions, real ORT CPU


def test_float16_model_agrees_with_float32_on_real_images(cnn_path, real_images):
    _, _, test, _ = real_images
    model = onnx.load(str(cnn_path))
    half = to_float16(model)
    assert [v.type.tensor_type.elem_type for v in half.graph.input] == [TensorProto.FLOAT]
    assert [v.type.tensor_type.elem_type for v in half.graph.output] == [TensorProto.FLOAT]
    assert {t.data_type for t in half.graph.initializer} == {TensorProto.FLOAT16}
    reference, logits = _ort_logits(cnn_path, test), _ort_logits(half, test)
    assert top1_agreement(reference, logits) == 1.0
    assert np.max(np.abs(logits - reference)) <= 1e-2 * np.ptp(reference)
    assert model.graph.initializer[0].data_type == TensorProto.FLOAT  # the input model is untouched


def test_float16_conversion_clips_to_the_float16_range_and_refuses_subgraphs():
    model = _cnn()
    big = numpy_helper.to_array(model.graph.initializer[5]).copy()
    big[0] = 1e6
    model.graph.initializer[5].CopyFrom(numpy_helper.from_array(big, "fb"))
    half = to_float16(model)
    assert float(numpy_helper.to_array(half.graph.initializer[5])[0]) == float(np.finfo(np.float16).max)
    branch = helper.make_graph([helper.make_node("Identity", ["logits"], ["y"])], "b", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))
    with pytest.raises(InputError) as info:
        to_float16(model)
    assert str(info.value) == "float16 conversion: the model has subgraphs (If/Loop/Scan), which are not supported"


def test_float16_keeps_the_float32_inputs_onnx_requires(tmp_path):
    """Resize and Upsample take `scales` as tensor(float) whatever the data type: in a float16 model they stay
    float32, exactly, whether they are an initializer, a Constant, shared with a float16 reader, or computed."""
    import torch

    class Upsampling(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
            self.head = torch.nn.Conv2d(4, 2, 3, padding=1)

        def forward(self, x):
            return self.head(self.up(self.conv(x))).mean((2, 3))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "upsampling.onnx"
    torch.onnx.export(Upsampling().eval(), (x,), str(path), input_names=["input"], output_names=["out"],
                      dynamic_axes={"input": {0: "batch"}}, dynamo=False, opset_version=17)
    model = onnx.load(str(path))
    (resize,) = [(n, node) for n, node in enumerate(model.graph.node) if node.op_type == "Resize"]
    assert float32_inputs(model) == {(resize[0], 2)}
    half = to_float16(model)  # full ONNX check inside: a float16 `scales` fails it
    constants = {o: n for n in half.graph.node if n.op_type == "Constant" for o in n.output}
    scales = constants[half.graph.node[[n.op_type for n in half.graph.node].index("Resize")].input[2]]
    assert scales.attribute[0].t.data_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in half.graph.initializer)  # the convs are float16
    reference, logits = _ort_logits(model, x.numpy()), _ort_logits(half, x.numpy())
    assert np.max(np.abs(logits - reference)) <= 1e-2 * np.max(np.abs(reference))

    # Upsample (opset 9): a scales initializer also read by a Mul (in float16 there), and scales computed by it.
    scale = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scale")
    one = numpy_helper.from_array(np.ones(4, np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Upsample", ["input", "scale"], ["up1"], mode="nearest"),
         helper.make_node("Mul", ["scale", "one"], ["computed"]),
         helper.make_node("Upsample", ["up1", "computed"], ["y"], mode="nearest")],
        "upsample9", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "h", "w"])], initializer=[scale, one])
    model9 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model9.ir_version = 7
    half9 = to_float16(model9)
    types = {t.name: t.data_type for t in half9.graph.initializer}
    assert types == {"scale": TensorProto.FLOAT16, "one": TensorProto.FLOAT16, "scale__float32": TensorProto.FLOAT}
    ups = [n for n in half9.graph.node if n.op_type == "Upsample"]
    assert [n.input[1] for n in ups] == ["scale__float32", "computed__float32"]  # a copy; a Cast back
    image = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    session = ort.InferenceSession(half9.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(model9.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"input": image})[0], reference.run(None, {"input": image})[0])


def test_qdq_model_is_symmetric_int8_and_keeps_accuracy_on_real_images(cnn_path, real_images, tmp_path):
    small, _, test, test_labels = real_images
    target = tmp_path / "model.qdq.onnx"
    quantize_qdq(cnn_path, target, small)
    model = onnx.load(str(target))
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    # conv2's input is quantized; the first conv and the head stay in float (the measured defaults)
    quantized = {n.input[0] for n in quantize}
    assert "r1" in quantized and not quantized & {"input", "flat"}
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [init[n.input[2]] for n in quantize]
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric INT8, as TensorRT wants
    # TensorRT's DequantizeLinear reads INT8 (FP8, INT4) only: no int32 bias behind one.
    dequantized = [init[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init]
    assert dequantized and all(t.dtype == np.int8 for t in dequantized), {t.dtype for t in dequantized}
    reference, logits = _ort_logits(cnn_path, test), _ort_logits(target, test)
    assert top1_agreement(reference, logits) >= 0.9
    ref_accuracy = float(np.mean(reference.argmax(1) == test_labels))
    assert abs(float(np.mean(logits.argmax(1) == test_labels)) - ref_accuracy) <= 0.1


# ------------------------------------------------------------------------------------ export and deploy


def test_export_with_tensorrt_but_without_it_is_one_line_error(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    done = subprocess.run([sys.executable, "-m", "toolchain", "--quiet", "export", str(tmp_path / "out"),
                           "--tensorrt", "fp16", "int8"], cwd=str(REPO_ROOT), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: --tensorrt fp16 int8: TensorRT is not installed (pip install tensorrt)"]
    assert not (tmp_path / "out").exists()


def test_deploy_stage_says_in_one_line_why_it_skipped(monkeypatch, capsys, tmp_path):
    from runtime_bench.settings import BenchSettings
    from toolchain.config import TensorRTSettings
    from toolchain.stages.engines import tensorrt_stage

    assert tensorrt_stage(tmp_path, None, {}, None, None, BenchSettings(), progress=False) is None
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    settings = TensorRTSettings.from_section({"precisions": ["fp16"]}, "deploy.yaml")
    assert tensorrt_stage(tmp_path, settings, {}, None, None, BenchSettings(), progress=False) is None
    assert capsys.readouterr().err.splitlines() == [
        "skipped TensorRT engine: the config has no tensorrt section",
        "skipped TensorRT engine: TensorRT is not installed (pip install tensorrt)",
    ]
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_config_section_is_checked(tmp_path):
    from toolchain.config import TensorRTSettings

    tensorrt_settings = TensorRTSettings.from_section
    settings = tensorrt_settings({"cache_dir": str(tmp_path)}, "c.yaml")
    assert settings.to_dict() == {"precisions": ["fp16"], "batch_sizes": [1, 1, 8], "cache_dir": str(tmp_path)}
    assert tensorrt_settings(None, "c.yaml") is None
    cases = [({"precision": "fp16"}, "c.yaml: tensorrt: unknown option(s) precision"),
             ({"precisions": ["fp8"]}, "c.yaml: tensorrt: TensorRT precision 'fp8': choose from fp32, fp16, int8"),
             ({"batch_sizes": [8, 1, 1]}, "c.yaml: tensorrt: TensorRT batch sizes [8, 1, 1]: need [min, opt, max] "
                                          "positive integers, min <= opt <= max"),
             ("fp16", "c.yaml: tensorrt: expected a mapping with precisions, batch_sizes, cache_dir")]
    for section, message in cases:
        with pytest.raises(InputError) as info:
            tensorrt_settings(section, "c.yaml")
        assert str(info.value) == message


def test_engines_of_a_deploy_folder_are_measured_and_bundled(cnn_path, real_images, tmp_path):
    """toolchain.stages.engines and the bundle over the fake module: build, compare with ONNX, time, bundle, rerun."""
    from runtime_bench.settings import BenchSettings
    from toolchain.config import TensorRTSettings
    from toolchain.stages.bundle import make_bundle
    from toolchain.stages.engines import ENGINE_RECORD, build_engines, evaluate_engines
    from toolchain.stages.report import tensorrt_table

    _, _, test, labels = real_images
    out = tmp_path / "deploy"
    out.mkdir()
    onnx.save(_cnn(seed=0), str(out / "dense.onnx"))
    onnx.save(_cnn(seed=1), str(out / "model.onnx"))
    trt, cudart = _fake(10)
    settings = TensorRTSettings(("fp32", "fp16"), (1, 1, 8), str(tmp_path / "cache"))
    built = build_engines(out, settings, manifest={}, progress=False, trt=trt, cudart=cudart)
    assert sorted(built) == ["dense-fp16", "dense-fp32", "pruned-fp16", "pruned-fp32"]
    assert json.loads((out / ENGINE_RECORD).read_text())["engines"]["pruned-fp16"]["engine"] == str(
        out / "model.fp16.engine")
    bench = BenchSettings(batch_size=1, warmup_runs=1, min_runs=3, min_seconds=0)
    measured = evaluate_engines(built, test, labels, CLASSES, bench, progress=False, trt=trt, cudart=cudart)
    for label, accuracy in measured["accuracy"].items():
        assert accuracy["top1_agreement"] == 1.0 and accuracy["accuracy_delta"] == 0.0, label
        assert accuracy["per_class_delta"] == [0.0] * CLASSES and accuracy["harmonic_mean_delta"] == 0.0, label
    assert measured["benchmarks"]["fp16"]["comparison"]["baseline"] == "dense"
    table = tensorrt_table(measured)
    assert len(table) == 6 + len(built) and "CUDA events" in table[2]
    assert all(row.count(" | ") == 9 for row in table[4:])

    manifest = {"classes": ["blue", "green", "red"], "preprocessing": {"image_size": SIZE}, "source": {},
                "curve": [{"rate": 0.0}]}
    bundle = make_bundle(out, test, labels, manifest, built)
    listed = read_bundle(bundle)["engines"]
    assert [e["label"] for e in listed] == list(built)
    assert {e["file"] for e in listed} == {"dense.fp32.engine", "model.fp32.engine", "dense.fp16.engine",
                                           "model.fp16.engine"}
    with pytest.raises(InputError) as info:
        benchmark_bundle(bundle, backend=FAKE_TENSORRT_BACKEND_NAME, batch_size=9, progress=False)
    assert str(info.value) == (f"{bundle / 'dense.fp32.engine'}: batch of 9 is larger than the engine's largest "
                               "optimization profile (profile 0: batch 1-8 (opt 1))")
    report = benchmark_bundle(bundle, backend=FAKE_TENSORRT_BACKEND_NAME, warmup_runs=1, warmup_s=0, min_runs=3,
                              min_s=0, progress=False)
    assert list(report["models"]) == list(built)


def _load_script(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_and_its_readme_table_over_the_fake(real_images, tmp_path, monkeypatch):
    """benchmarks/gpu_engines.py's measuring and scripts/gpu_table.py's table, with the fake instead of a GPU."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "scripts"))
    gpu_engines = _load_script(REPO_ROOT / "benchmarks" / "gpu_engines.py")
    gpu_table = _load_script(REPO_ROOT / "scripts" / "gpu_table.py")
    small, _, test, labels = real_images
    onnx_files = {"dense": tmp_path / "dense.onnx", "pruned": tmp_path / "model.onnx"}
    onnx.save(_cnn(seed=0), str(onnx_files["dense"]))
    onnx.save(_cnn(seed=1), str(onnx_files["pruned"]))
    trt, cudart = _fake(10)
    timing = {"warmup_runs": 1, "min_runs": 3, "min_s": 0.0}
    measured = gpu_engines.measure_pair(onnx_files, ["fp16", "int8"], small, test, labels, CLASSES, tmp_path, timing,
                                        tmp_path / "cache", layer_runs=2, trt=trt, cudart=cudart)
    assert sorted(measured) == ["fp16", "int8"]
    for precision, m in measured.items():
        assert m["build"]["pruned"]["engine"] == str(tmp_path / f"pruned.{precision}.engine")
        assert all(a["top1_agreement"] == 1.0 for a in m["accuracy"].values())
        assert m["latency"]["dense"]["count"] >= 3 and m["compute"]["pruned"]["count"] >= 3
        assert m["latency"]["dense"]["count"] == m["wall_clock"]["dense"]["count"]  # the same timed calls
        assert m["latency"]["pruned"]["mean_ms"] <= m["wall_clock"]["pruned"]["mean_ms"]
        assert [row["layer"] for row in m["layers"]["dense"]][:2] == ["conv1", "relu1"]
    assert cudart.live_allocations() == 0

    result = {"command": "python benchmarks/gpu_engines.py", "gpu": FAKE_GPU, "tensorrt_version": trt.__version__,
              "timing": dict(timing, batch_size=1),
              "models": {"tiny": {"precisions": measured, "pruning": {
                  "rate": 0.1, "macs_dense": 2e6, "macs_pruned": 1e6, "image_size": SIZE, "test_images": len(labels),
                  "calibration_images": len(small)}}, "resnet18": {"error": "weights not found"}}}
    path = tmp_path / "gpu_fake.json"
    path.write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- gpu:begin -->\nold\n<!-- gpu:end -->\nend\n")
    assert gpu_table.main([str(path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- gpu:begin -->\nCommand: `python benchmarks/gpu_engines.py`; Fake GPU")
    rows = [line for line in text.splitlines() if line.startswith("| tiny |")]
    assert [row.split(" | ")[1] for row in rows] == ["fp16", "int8"]
    assert "- resnet18: not measured (weights not found)" in text and text.endswith("<!-- gpu:end -->\nend\n")


# ------------------------------------------------------------------------------------ on a real GPU only


def _real_gpu_or_skip() -> dict:
    try:
        return detect()
    except TensorRTUnavailable as exc:
        pytest.skip(f"needs TensorRT, the CUDA Python bindings and a CUDA GPU: {exc}")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_agrees_with_onnx(precision, cnn_path, real_images, tmp_path):
    env = _real_gpu_or_skip()
    small, _, test, _ = real_images
    record = build_engine(cnn_path, tmp_path / f"m.{precision}.engine", precision, calibration_images=small,
                          cache_dir=tmp_path / "cache")
    assert record["gpu"] == env["gpu"] and record["tensorrt_version"] == env["version"]
    engine = TensorRTBackend(record["engine"])
    logits = engine.run(test)
    assert top1_agreement(_ort_logits(cnn_path, test), logits) >= (0.9 if precision == "int8" else 1.0)
    assert engine.layer_times(test[:1], runs=2)
    timed = engine.prepare(test[:1])
    timed()
    timed.collect()
    assert all(len(v) == 1 and v[0] > 0 for v in timed.device_times.values())
    engine.close()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["ort-cuda", "ort-trt"])
def test_real_onnxruntime_gpu_backends(backend, cnn_path, real_images):
    provider = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}[backend]
    if provider not in ort.get_available_providers():
        pytest.skip(f"needs onnxruntime-gpu with {provider}")
    _, _, test, _ = real_images
    opened = open_backend(backend, cnn_path)
    assert opened.info()["providers"][0] == provider
    assert top1_agreement(_ort_logits(cnn_path, test), opened.run(test)) == 1.0


def test_fake_check_script_reports_what_the_real_module_lacks():
    """scripts/check_fake_tensorrt.py's comparison, against a stand-in 'real' module built from the fake
    itself (the real one needs a TensorRT install): a match is clean, a missing method and a changed kind are named."""
    import fake_tensorrt

    check_script = _load_script(REPO_ROOT / "scripts" / "check_fake_tensorrt.py")
    fake = fake_tensorrt.FakeTensorRT(generation=10)

    def real_module(**changed_classes):
        module = SimpleNamespace(**{n: v for n, v in vars(fake).items() if not n.startswith("_")})
        module.__version__ = "10.16.0"
        for name, value in vars(fake_tensorrt.FakeTensorRT).items():
            if not name.startswith("_"):
                setattr(module, name, value)
        for fake_name, real_names in check_script.REAL_CLASSES.items():
            if fake_name != "_Config11":
                setattr(module, real_names[0], getattr(fake_tensorrt, fake_name))
        module.IBuilderConfig = fake_tensorrt._Config10
        for name, cls in changed_classes.items():
            setattr(module, name, cls)
        return module

    cudart = fake_tensorrt.FakeCudaRuntime
    assert check_script.check(real_module(), cudart, fake_tensorrt) == []

    members = {k: v for k, v in vars(fake_tensorrt._Context).items() if k != "execute_async_v3"}
    engine = dict(vars(fake_tensorrt._Engine), num_io_tensors=lambda self: 2)
    problems = check_script.check(real_module(IExecutionContext=type("IExecutionContext", (), members),
                                              ICudaEngine=type("ICudaEngine", (), engine)), cudart, fake_tensorrt)
    assert problems == [
        "tensorrt.ICudaEngine.num_io_tensors: property in the fake, callable in the real one",
        "tensorrt.IExecutionContext.execute_async_v3: the fake has it (callable), the real one does not",
    ]
