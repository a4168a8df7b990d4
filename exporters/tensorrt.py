"""ONNX -> serialized TensorRT engine, for TensorRT 10 and 11 behind one function, `build_engine`.

The two API generations reach a precision differently:

| precision | TensorRT 10 (JetPack)                                 | TensorRT 11 (strongly typed only)            |
| --------- | ----------------------------------------------------- | -------------------------------------------- |
| fp32      | the ONNX model as it is                               | the ONNX model as it is                      |
| fp16      | BuilderFlag.FP16                                      | the ONNX model converted to float16 first    |
| int8      | BuilderFlag.INT8 (+ FP16 fallback), entropy (or       | Q/DQ nodes from ONNX Runtime's static        |
|           | min-max) calibrator fed from the small labelled set   | quantizer (exporters.quantize's choices),    |
|           |                                                       | calibrated on the small set                  |

Both conversions for TensorRT 11 (`to_float16`, `quantize_qdq`) are plain ONNX and run on a CPU, so their
accuracy is tested without a GPU. Every engine has one optimization profile over the batch dimension
(`batch_sizes` = min, opt, max); a timing cache per (TensorRT version, GPU) is reused across builds; finished
engines are cached by (ONNX sha256, TensorRT version, GPU, precision, profile, calibration data). Files
appear atomically. No torch here: this module also runs on a device that has only onnx and TensorRT.

When TensorRT, the CUDA bindings or a GPU is missing, `build_engine` raises `TensorRTUnavailable` (an
InputError) whose message says which; `edgeprune deploy` turns it into one "skipped" line.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
import time
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporters.quantize import Int8Settings, quantize_int8
from runtime_bench.atomic import atomic_output
from runtime_bench.bundle import sha256_file
from runtime_bench.errors import CheckFailed, InputError, first_line
from runtime_bench.tensorrt_backend import (
    TensorRTUnavailable,
    cuda_call,
    gpu_name,
    import_cuda_runtime,
    import_tensorrt,
    process_logger,
    tensorrt_generation,
)

__all__ = ["PRECISIONS", "TensorRTUnavailable", "build_engine", "detect", "engine_cache_key", "to_float16",
           "quantize_qdq"]

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH_SIZES = (1, 1, 8)  # min, opt, max of the batch dimension
WORKSPACE_BYTES = 1 << 30
FP16_MAX = float(np.finfo(np.float16).max)


def default_cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "edgeprune" / "tensorrt"


def detect(trt: Any = None, cudart: Any = None) -> dict:
    """{"trt", "cudart", "version", "generation", "gpu"} of this machine; TensorRTUnavailable says what is missing."""
    trt = trt if trt is not None else import_tensorrt()
    cudart = cudart if cudart is not None else import_cuda_runtime()
    version = str(trt.__version__)
    return {"trt": trt, "cudart": cudart, "version": version, "generation": tensorrt_generation(version),
            "gpu": gpu_name(cudart)}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"TensorRT precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    return precision


def check_batch_sizes(batch_sizes: Sequence[int]) -> tuple:
    sizes = tuple(batch_sizes)
    if (len(sizes) != 3 or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes)
            or not sizes[0] <= sizes[1] <= sizes[2]):
        raise InputError(f"TensorRT batch sizes {list(sizes)}: need [min, opt, max] positive integers, "
                         "min <= opt <= max")
    return sizes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu: str, precision: str,
                     batch_sizes: Sequence[int], calibration_sha256: str | None = None) -> str:
    """Hex key of an engine: what it was built from (the ONNX bytes, and for INT8 the calibration images),
    for which TensorRT and GPU (engines run nowhere else), at which precision and batch profile."""
    fields = {"onnx": onnx_sha256, "tensorrt": tensorrt_version, "gpu": gpu, "precision": precision,
              "batch_sizes": list(batch_sizes), "calibration": calibration_sha256}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _write_bytes(data: bytes, path: pathlib.Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


# ----------------------------------------------------------------------------------- ONNX for TensorRT 11


def float32_inputs(model: onnx.ModelProto) -> set:
    """(node index, input index) of every node input that ONNX types as tensor(float) whatever the other
    inputs are, e.g. the `scales` of Resize and Upsample: a float16 model must still feed them float32."""
    opsets = {o.domain or "": o.version for o in model.opset_import}
    fixed = set()
    for n, node in enumerate(model.graph.node):
        domain = node.domain or ""
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
        except onnx.defs.SchemaError:  # a custom op: nothing known about its inputs
            continue
        formal = schema.inputs
        for i, name in enumerate(node.input):
            if name and formal and formal[min(i, len(formal) - 1)].type_str == "tensor(float)":
                fixed.add((n, i))
    return fixed


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float16, with float32 inputs and outputs (a Cast at each end).

    Float initializers and Constant tensors become float16 (clipped to the float16 range), Cast-to-float
    nodes cast to float16, and intermediate type annotations are dropped for shape inference to redo. Inputs
    that ONNX requires in float32 (`float32_inputs`: Resize and Upsample scales) keep their float32 values
    exactly; one computed in the graph gets a Cast back to float32. Raises InputError for graphs with
    subgraphs (If, Loop, Scan), which this converter does not walk.
    """
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise InputError("float16 conversion: the model has subgraphs (If/Loop/Scan), which are not supported")

    fixed = float32_inputs(converted)
    float32_names = {graph.node[n].input[i] for n, i in fixed}
    elsewhere = {name for n, node in enumerate(graph.node) for i, name in enumerate(node.input) if (n, i) not in fixed}
    elsewhere |= {v.name for v in graph.output}
    kept = float32_names - elsewhere  # read only where float32 is required: left as they are
    initializers = {t.name: t for t in graph.initializer}
    producer = {out: n for n, node in enumerate(graph.node) for out in node.output}
    graph_inputs = {v.name for v in graph.input}

    def cast_back(name: str) -> onnx.NodeProto:
        return helper.make_node("Cast", [name], [f"{name}__float32"], to=TensorProto.FLOAT, name=f"{name}__to_float32")

    copies, casts_back = [], {}  # float32 initializer copies; Casts back to float32, by the tensor they read
    for name in sorted((float32_names & elsewhere) - graph_inputs):  # also read as float16: the float32 readers get their own
        if name in initializers:
            copy = TensorProto()
            copy.CopyFrom(initializers[name])
            copy.name = f"{name}__float32"
            copies.append(copy)
        else:
            casts_back[name] = cast_back(name)
    kept_nodes = set()  # Constants and Casts that produce a float32-only tensor: not converted
    for name in sorted(kept - set(initializers) - graph_inputs):
        n = producer.get(name)
        if n is not None and graph.node[n].op_type in ("Constant", "Cast"):
            kept_nodes.add(n)
        else:
            casts_back[name] = cast_back(name)
    redirected = set(casts_back) | {c.name[: -len("__float32")] for c in copies}
    for n, i in fixed:
        if graph.node[n].input[i] in redirected:
            graph.node[n].input[i] = f"{graph.node[n].input[i]}__float32"

    def half(tensor: TensorProto) -> None:
        if tensor.data_type == TensorProto.FLOAT:
            values = np.clip(numpy_helper.to_array(tensor), -FP16_MAX, FP16_MAX).astype(np.float16)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))

    for initializer in graph.initializer:
        if initializer.name not in kept:
            half(initializer)
    graph.initializer.extend(copies)
    for n, node in enumerate(graph.node):
        if n in kept_nodes:
            continue
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                half(attribute.t)
            elif node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
    del graph.value_info[:]

    casts_in, renamed = [], {}
    for value in graph.input:
        if value.name not in initializers and value.type.tensor_type.elem_type == TensorProto.FLOAT:
            renamed[value.name] = f"{value.name}__float16"
            casts_in.append(helper.make_node("Cast", [value.name], [renamed[value.name]], to=TensorProto.FLOAT16,
                                             name=f"{value.name}__to_float16"))
    for n, node in enumerate(graph.node):
        for i, name in enumerate(node.input):
            if name in renamed and (n, i) not in fixed:
                node.input[i] = renamed[name]
    casts_out = []
    for value in graph.output:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = f"{value.name}__float16"
            for node in graph.node:
                for i, name in enumerate(node.output):
                    if name == value.name:
                        node.output[i] = inner
            casts_out.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT,
                                              name=f"{value.name}__to_float32"))
    nodes = []
    for node in casts_in + list(graph.node):
        nodes.append(node)
        nodes.extend(casts_back[out] for out in node.output if out in casts_back)
    del graph.node[:]
    graph.node.extend(nodes + casts_out)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CheckFailed(f"float16 conversion produced an invalid model ({first_line(exc)})") from None
    return converted


def quantize_qdq(onnx_path: Any, out_path: Any, calibration_images: np.ndarray,
                 settings: Int8Settings | None = None) -> dict:
    """Write an INT8 Q/DQ copy of `onnx_path` to `out_path` (what TensorRT 11 builds INT8 engines from),
    calibrated on `calibration_images`: the same choices as ONNX Runtime's CPU INT8 (`exporters.quantize`,
    its measured defaults unless `settings` says otherwise), with what TensorRT's explicit quantization needs:
    symmetric int8 activations, Q/DQ on Conv/Gemm/MatMul inputs, float biases."""
    return quantize_int8(onnx_path, out_path, calibration_images, settings or Int8Settings(), target="tensorrt")


# ------------------------------------------------------------------------------------------- the builder


def _calibrator(trt: Any, cudart: Any, images: np.ndarray, method: str) -> Any:
    """TensorRT 10's INT8 calibrator over `images`, one image per batch, through a device buffer: min-max for
    `method` "minmax", else entropy (TensorRT 10 has no percentile calibrator; entropy is its histogram one)."""
    base = trt.IInt8MinMaxCalibrator if method == "minmax" else trt.IInt8EntropyCalibrator2

    class SmallSetCalibrator(base):
        def __init__(self) -> None:
            base.__init__(self)
            self.images = np.ascontiguousarray(images, dtype=np.float32)
            self.index = 0
            self.used = 0
            self.nbytes = self.images[0].nbytes
            self.device = cuda_call(cudart, cudart.cudaMalloc(self.nbytes), "cudaMalloc for calibration")

        def get_batch_size(self) -> int:
            return 1  # explicit-batch network: each batch is a whole tensor of the calibration profile's shape

        def get_batch(self, names: list) -> list | None:
            if self.index >= len(self.images):
                return None
            image = self.images[self.index : self.index + 1]
            cuda_call(cudart, cudart.cudaMemcpy(self.device, image.ctypes.data, self.nbytes,
                                                cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy")
            self.index += 1
            self.used += 1
            return [int(self.device)]

        def read_calibration_cache(self) -> None:
            return None  # the engine cache already covers repeated builds

        def write_calibration_cache(self, cache: Any) -> None:
            pass

        def free(self) -> None:
            cudart.cudaFree(self.device)

    return SmallSetCalibrator()


def _parse(trt: Any, builder: Any, logger: Any, onnx_bytes: bytes, where: str, generation: int) -> Any:
    # TensorRT 11 is always strongly typed (the flag is kept but ignored); 10 must stay weakly typed to
    # take the FP16/INT8 builder flags.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(strongly_typed) if generation >= 11 and strongly_typed is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors)) or "no details"
        raise CheckFailed(f"{where}: TensorRT could not parse the ONNX model ({first_line(errors)})")
    return network, parser


def _build(env: dict, onnx_bytes: bytes, where: str, precision: str, batch_sizes: tuple,
           calibration_images: np.ndarray | None, timing_cache_path: pathlib.Path, int8: Int8Settings) -> tuple:
    """(engine bytes, notes) from ONNX bytes already prepared for this TensorRT generation."""
    trt, cudart, generation = env["trt"], env["cudart"], env["generation"]
    logger = process_logger(trt)  # a build's errors are only ever its own: cleared here, read on failure
    logger.clear()
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_bytes, where, generation)  # the parser owns the weights
    if network.num_inputs != 1:
        raise InputError(f"{where}: model has {network.num_inputs} inputs; a TensorRT engine here takes exactly one")
    tensor = network.get_input(0)
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape[1:]):
        raise InputError(f"{where}: only the batch dimension may be dynamic, input shape is {shape}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for the per-layer times
    low, opt, high = ((b,) + shape[1:] for b in batch_sizes)
    if shape[0] >= 0 and (low[0], high[0]) != (shape[0], shape[0]):
        raise InputError(f"{where}: the ONNX batch dimension is fixed at {shape[0]}; export it with a dynamic batch")
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)

    cache_bytes = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    reused = bool(cache_bytes) and timing_cache is not None and config.set_timing_cache(timing_cache, False)
    if not reused:  # absent, or written by another TensorRT/GPU: start a fresh one
        timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(timing_cache, False)
    notes = {"timing_cache_reused": reused}

    calibrator = None
    if precision == "fp32":  # TF32 (on by default) would round fp32 matmuls to a 10-bit mantissa
        config.clear_flag(trt.BuilderFlag.TF32)
    if generation == 10 and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 too: layers without INT8 kernels fall back to FP16
    if generation == 10 and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = _calibrator(trt, cudart, calibration_images, int8.calibration)
        notes["calibrator"] = type(calibrator).__mro__[1].__name__
        calibration_profile = builder.create_optimization_profile()
        single = (1,) + shape[1:]
        calibration_profile.set_shape(tensor.name, single, single, single)
        config.set_calibration_profile(calibration_profile)
        config.int8_calibrator = calibrator
    logger.clear()  # what parsing and the timing cache logged is not the reason of a failed build
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise CheckFailed(f"{where}: TensorRT {env['version']} failed to build a {precision} engine on {env['gpu']} "
                          f"({logger.reason()})")
    if calibrator is not None:
        notes["calibration_images"] = calibrator.used
    _write_bytes(bytes(config.get_timing_cache().serialize()), timing_cache_path)
    return bytes(serialized), notes


def build_engine(onnx_path: Any, out_path: Any, precision: str, calibration_images: np.ndarray | None = None,
                 cache_dir: Any = None, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, trt: Any = None,
                 cudart: Any = None, int8: Int8Settings | None = None) -> dict:
    """Build (or take from the cache) a TensorRT engine of `onnx_path` at `precision`, write it to `out_path`.

    `calibration_images` (N, C, H, W float32, preprocessed like the model's input) are required for int8:
    the small labelled set; `int8` the INT8 choices (exporters.quantize, its measured defaults if None): the
    Q/DQ model of TensorRT 11 follows all of them, TensorRT 10's calibrator its calibration method.
    `trt`/`cudart` default to the installed modules (tests pass fakes). Returns a
    record of what was built and how. Raises TensorRTUnavailable when TensorRT, the CUDA bindings or a GPU
    is missing, InputError for bad arguments, CheckFailed when TensorRT cannot parse or build the model.
    """
    onnx_path, out_path = pathlib.Path(onnx_path), pathlib.Path(out_path)
    check_precision(precision)
    batch_sizes = check_batch_sizes(batch_sizes)
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such file")
    if not out_path.parent.is_dir():
        raise InputError(f"{out_path}: folder {out_path.parent} does not exist")
    calibration_sha = None
    int8 = (int8 or Int8Settings()).check()
    if precision == "int8":
        if calibration_images is None or len(calibration_images) == 0:
            raise InputError(f"{out_path}: an int8 engine needs calibration images (the small labelled set)")
        calibration_images = np.ascontiguousarray(calibration_images, dtype=np.float32)
        # the calibration images and the INT8 choices: either changes the engine
        calibration_sha = hashlib.sha256(calibration_images.tobytes()
                                         + json.dumps(int8.describe(), sort_keys=True).encode()).hexdigest()
    env = detect(trt, cudart)

    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    onnx_sha = sha256_file(onnx_path)
    key = engine_cache_key(onnx_sha, env["version"], env["gpu"], precision, batch_sizes, calibration_sha)
    cached = cache / f"{key}.engine"
    record = {"engine": str(out_path), "onnx": str(onnx_path), "onnx_sha256": onnx_sha, "precision": precision,
              "tensorrt_version": env["version"], "generation": env["generation"], "gpu": env["gpu"],
              "batch_sizes": list(batch_sizes), "cache_key": key, "method": _method(env["generation"], precision)}
    started = time.perf_counter()
    if cached.is_file():
        notes = json.loads((cache / f"{key}.json").read_text())["notes"] if (cache / f"{key}.json").is_file() else {}
        record.update(cache_hit=True, notes=notes)
    else:
        onnx_bytes = _prepared_onnx(onnx_path, precision, env["generation"], calibration_images, int8)
        timing_cache = cache / f"timing-{_slug(env['version'])}-{_slug(env['gpu'])}.cache"
        engine, notes = _build(env, onnx_bytes, str(onnx_path), precision, batch_sizes, calibration_images,
                               timing_cache, int8)
        _write_bytes(engine, cached)
        with atomic_output(cache / f"{key}.json") as tmp:
            tmp.write_text(json.dumps({"notes": notes, "onnx_sha256": onnx_sha, "precision": precision}))
        record.update(cache_hit=False, notes=notes)
    if cached.resolve() != out_path.resolve():
        with atomic_output(out_path) as tmp:
            shutil.copyfile(cached, tmp)
    record.update(seconds=time.perf_counter() - started, sha256=sha256_file(out_path),
                  bytes=out_path.stat().st_size)
    return record


def _method(generation: int, precision: str) -> str:
    return {
        (10, "fp32"): "ONNX as is",
        (10, "fp16"): "builder flag FP16",
        (10, "int8"): "builder flags INT8 + FP16, TensorRT's calibrator on the small set",
        (11, "fp32"): "ONNX as is (strongly typed)",
        (11, "fp16"): "ONNX converted to float16 (strongly typed)",
        (11, "int8"): "Q/DQ ONNX from ONNX Runtime static quantization on the small set (strongly typed)",
    }[(generation, precision)]


def _prepared_onnx(onnx_path: pathlib.Path, precision: str, generation: int,
                   calibration_images: np.ndarray | None, int8: Int8Settings) -> bytes:
    """The ONNX bytes TensorRT parses: as is for TensorRT 10 (precision comes from builder flags); for 11
    the precision must be in the model itself."""
    if generation == 10 or precision == "fp32":
        return onnx_path.read_bytes()
    if precision == "fp16":
        return to_float16(onnx.load(str(onnx_path))).SerializeToString()
    with tempfile.TemporaryDirectory() as work:
        target = pathlib.Path(work) / "qdq.onnx"
        quantize_qdq(onnx_path, target, calibration_images, int8)
        return target.read_bytes()
