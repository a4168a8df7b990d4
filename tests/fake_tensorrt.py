"""FAKE TensorRT and CUDA runtime modules, for tests only: they let the real builder and runtime code
(`exporters.tensorrt`, `runtime_bench.tensorrt_backend`) run without a GPU, the way tinygrad tests GPU code
on a mock device. Nothing here is fast or touches a GPU.

- `FakeCudaRuntime` stands in for `cuda.bindings.runtime`: cudaMalloc hands out host memory, but every copy
  checks that it stays inside an allocation, so a buffer planned too small fails as it would on a GPU
  (instead of silently writing past the end). It counts live allocations, so leaks are visible.
  CUDA events record the host clock, so their intervals are real but host-side.
- `FakeTensorRT(generation=10 | 11)` stands in for the `tensorrt` module, with the API differences that
  matter here, each enum value next to the line of the real source it mirrors (NVIDIA/TensorRT,
  release/10.16 and 11.1): generation 11 has no FP16/INT8 builder flags, no INT8 calibrator and no
  EXPLICIT_BATCH (strong typing only). Like libnvinfer, it keeps the first logger a Builder or Runtime was
  given. Its "engine" is JSON that carries the parsed ONNX model, and it executes that model with ONNX
  Runtime on the CPU; the profiler reports one time per ONNX node under the ONNX node's name (fixed values,
  not measurements; a real engine reports fused layers such as "conv1 + relu1").

Open a fake engine by name with the backend `fake-tensorrt-for-tests`.
"""

from __future__ import annotations

import base64
import ctypes
import enum
import json
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from runtime_bench.backend_api import check_model_file
from runtime_bench.tensorrt_backend import TensorRTBackend

FAKE_TENSORRT_BACKEND_NAME = "fake-tensorrt-for-tests"  # registered by tests/fake_backends.py

FAKE_ENGINE_FORMAT = "fake-tensorrt-engine"
FAKE_VERSIONS = {10: "10.99.0-fake", 11: "11.99.0-fake"}
FAKE_GPU = "Fake GPU (for tests)"
FAKE_LAYER_MS = 0.01  # the profiler reports layer k as taking (k + 1) * FAKE_LAYER_MS


class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400


class CudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class FakeCudaRuntime:
    """The subset of `cuda.bindings.runtime` we use; results are tuples (error, *values) like cuda-python's."""

    cudaError_t = CudaError
    cudaMemcpyKind = CudaMemcpyKind

    def __init__(self, devices: int = 1, gpu: str = FAKE_GPU, memory_bytes: int = 1 << 30) -> None:
        self.devices = devices
        self.gpu = gpu
        self.memory_bytes = memory_bytes
        self.device: dict = {}  # address -> backing numpy array
        self.host: dict = {}
        self.streams: set = set()
        self._next_stream = 1
        self.events: dict = {}  # handle -> host time it was last recorded at (None: never)
        self._next_event = 1

    # -- devices
    def cudaGetDeviceCount(self) -> tuple:
        if self.devices < 1:
            return (CudaError.cudaErrorNoDevice, 0)
        return (CudaError.cudaSuccess, self.devices)

    def cudaGetDeviceProperties(self, device: int) -> tuple:
        if not 0 <= device < self.devices:
            return (CudaError.cudaErrorInvalidValue, None)
        return (CudaError.cudaSuccess, SimpleNamespace(name=self.gpu.encode() + b"\0\0"))

    # -- memory
    def _allocate(self, registry: dict, nbytes: int) -> tuple:
        used = sum(a.nbytes for a in self.device.values()) + sum(a.nbytes for a in self.host.values())
        if nbytes < 1 or used + nbytes > self.memory_bytes:
            return (CudaError.cudaErrorMemoryAllocation, 0)
        backing = np.zeros(nbytes, dtype=np.uint8)
        registry[backing.ctypes.data] = backing
        return (CudaError.cudaSuccess, backing.ctypes.data)

    def cudaMalloc(self, nbytes: int) -> tuple:
        return self._allocate(self.device, nbytes)

    def cudaMallocHost(self, nbytes: int) -> tuple:
        return self._allocate(self.host, nbytes)

    def cudaFree(self, pointer: int) -> tuple:
        return (CudaError.cudaSuccess,) if self.device.pop(int(pointer), None) is not None else (
            CudaError.cudaErrorInvalidValue,)

    def cudaFreeHost(self, pointer: int) -> tuple:
        return (CudaError.cudaSuccess,) if self.host.pop(int(pointer), None) is not None else (
            CudaError.cudaErrorInvalidValue,)

    def live_allocations(self) -> int:
        return len(self.device) + len(self.host) + len(self.events)

    @staticmethod
    def _inside(registry: dict, pointer: int, nbytes: int) -> bool:
        pointer = int(pointer)
        return any(start <= pointer and pointer + nbytes <= start + a.nbytes for start, a in registry.items())

    def device_region_ok(self, pointer: int, nbytes: int) -> bool:
        return self._inside(self.device, pointer, nbytes)

    def cudaMemcpy(self, dst: int, src: int, nbytes: int, kind: CudaMemcpyKind) -> tuple:
        if kind == CudaMemcpyKind.cudaMemcpyHostToDevice:
            ok = self._inside(self.device, dst, nbytes) and not self._inside(self.device, src, 1)
        elif kind == CudaMemcpyKind.cudaMemcpyDeviceToHost:
            ok = self._inside(self.device, src, nbytes) and not self._inside(self.device, dst, 1)
        else:
            ok = False
        if not ok:
            return (CudaError.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), int(nbytes))
        return (CudaError.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: CudaMemcpyKind, stream: int) -> tuple:
        if int(stream) not in self.streams:
            return (CudaError.cudaErrorInvalidResourceHandle,)
        return self.cudaMemcpy(dst, src, nbytes, kind)

    # -- streams
    def cudaStreamCreate(self) -> tuple:
        stream = self._next_stream
        self._next_stream += 1
        self.streams.add(stream)
        return (CudaError.cudaSuccess, stream)

    def cudaStreamSynchronize(self, stream: int) -> tuple:
        return (CudaError.cudaSuccess,) if int(stream) in self.streams else (CudaError.cudaErrorInvalidResourceHandle,)

    def cudaStreamDestroy(self, stream: int) -> tuple:
        if int(stream) not in self.streams:
            return (CudaError.cudaErrorInvalidResourceHandle,)
        self.streams.discard(int(stream))
        return (CudaError.cudaSuccess,)

    # -- events (the host clock at record time: every call here is synchronous)
    def cudaEventCreate(self) -> tuple:
        event = self._next_event
        self._next_event += 1
        self.events[event] = None
        return (CudaError.cudaSuccess, event)

    def cudaEventRecord(self, event: int, stream: int) -> tuple:
        if int(event) not in self.events or int(stream) not in self.streams:
            return (CudaError.cudaErrorInvalidResourceHandle,)
        self.events[int(event)] = time.perf_counter()
        return (CudaError.cudaSuccess,)

    def cudaEventElapsedTime(self, start: int, end: int) -> tuple:
        times = [self.events.get(int(e)) for e in (start, end)]
        if None in times:  # unknown, or never recorded
            return (CudaError.cudaErrorInvalidResourceHandle, 0.0)
        return (CudaError.cudaSuccess, (times[1] - times[0]) * 1000.0)

    def cudaEventDestroy(self, event: int) -> tuple:
        if self.events.pop(int(event), "gone") == "gone":
            return (CudaError.cudaErrorInvalidResourceHandle,)
        return (CudaError.cudaSuccess,)


# --------------------------------------------------------------------------------------------- tensorrt


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT8 = "int8"
    INT32 = "int32"
    INT64 = "int64"


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class Logger:
    Severity = Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = list(Severity)

    def __init__(self, severity: Severity = Severity.WARNING) -> None:
        self.severity = severity
        self.messages: list = []

    def log(self, severity: Severity, message: str) -> None:
        self.messages.append((severity, message))


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: Severity, message: str) -> None:
        raise NotImplementedError


class IProfiler:
    def __init__(self) -> None:
        pass


class IInt8EntropyCalibrator2:
    def __init__(self) -> None:
        pass


class IInt8MinMaxCalibrator:
    def __init__(self) -> None:
        pass


class HostMemory(bytes):
    """IHostMemory: a buffer; bytes(x) gives its content."""


_ONNX_TO_DTYPE = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64}


def _value_shape(value: Any) -> list:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


class _Network:
    def __init__(self, flags: int, strongly_typed: bool) -> None:
        self.flags = flags
        self.strongly_typed = strongly_typed
        self.model = None

    @property
    def num_inputs(self) -> int:
        return len(self._io()[0])

    @property
    def num_outputs(self) -> int:
        return len(self._io()[1])

    def get_input(self, index: int) -> Any:
        return self._io()[0][index]

    def get_output(self, index: int) -> Any:
        return self._io()[1][index]

    def _io(self) -> tuple:
        if self.model is None:
            return [], []
        initializers = {t.name for t in self.model.graph.initializer}
        inputs = [SimpleNamespace(name=v.name, shape=_value_shape(v),
                                  dtype=_ONNX_TO_DTYPE.get(v.type.tensor_type.elem_type))
                  for v in self.model.graph.input if v.name not in initializers]
        outputs = [SimpleNamespace(name=v.name, shape=_value_shape(v),
                                   dtype=_ONNX_TO_DTYPE.get(v.type.tensor_type.elem_type))
                   for v in self.model.graph.output]
        return inputs, outputs


class _ParserError:
    def __init__(self, text: str) -> None:
        self._text = text

    def desc(self) -> str:
        return self._text


class _OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network = network
        self.errors: list = []

    def parse(self, data: bytes, path: str | None = None) -> bool:
        import onnx

        try:
            model = onnx.load_from_string(bytes(data))
            onnx.checker.check_model(model)
        except Exception as exc:  # the real parser reports any defect as a parser error
            self.errors.append(_ParserError(f"ModelImporter: {str(exc).strip().splitlines()[0] if str(exc) else exc}"))
            return False
        self.network.model = model
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> _ParserError:
        return self.errors[index]


class _OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict = {}

    def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
        self.shapes[name] = tuple(tuple(int(d) for d in s) for s in (low, opt, high))


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.builds = json.loads(bytes(data).decode())["builds"] if data else 0

    def serialize(self) -> HostMemory:
        return HostMemory(json.dumps({"builds": self.builds}).encode())


class _Config:
    def __init__(self, module: FakeTensorRT) -> None:
        self.module = module
        # BuilderFlag.TF32 is on in a new IBuilderConfig (NvInfer.h, BuilderFlag::kTF32: "enabled by default"),
        # in TensorRT 10 and 11 alike.
        self.flags: set = {module.BuilderFlag.TF32}
        self.profiles: list = []
        self.pool_limits: dict = {}
        self.timing_cache = None
        self.profiling_verbosity = None

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool: Any, nbytes: int) -> None:
        self.pool_limits[pool] = nbytes

    def add_optimization_profile(self, profile: _OptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        return self.timing_cache


class _Config10(_Config):
    """TensorRT 10's config also takes an INT8 calibrator (gone in 11: assigning it there is an error)."""

    def __init__(self, module: FakeTensorRT) -> None:
        super().__init__(module)
        self.int8_calibrator = None
        self.calibration_profile = None

    def set_calibration_profile(self, profile: _OptimizationProfile) -> bool:
        self.calibration_profile = profile
        return True


class _Config11(_Config):
    """TensorRT 11's config: no calibrator attribute can be set."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("int8_calibrator",):
            raise AttributeError(f"'IBuilderConfig' object has no attribute '{name}'")
        object.__setattr__(self, name, value)


class _Builder:
    def __init__(self, module: FakeTensorRT, logger: Logger) -> None:
        self.module = module
        self.logger = module.keep_first_logger(logger, "createInferBuilder")

    def create_network(self, flags: int = 0) -> _Network:
        known = sum(1 << int(f) for f in self.module.NetworkDefinitionCreationFlag)
        if flags & ~known:
            raise TypeError(f"create_network(): unknown NetworkDefinitionCreationFlag bits in {flags:#x}")
        strongly_typed = self.module.generation >= 11 or bool(
            flags & (1 << int(self.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        return _Network(flags, strongly_typed)

    def create_builder_config(self) -> _Config:
        return _Config10(self.module) if self.module.generation == 10 else _Config11(self.module)

    def create_optimization_profile(self) -> _OptimizationProfile:
        return _OptimizationProfile()

    def _error(self, message: str) -> None:
        self.logger.log(Severity.ERROR, message)

    def build_serialized_network(self, network: _Network, config: _Config) -> HostMemory | None:
        if network.model is None or network.num_inputs != 1 or network.num_outputs != 1:
            self._error("network must have one parsed input and output")
            return None
        tensor = network.get_input(0)
        profiles = []
        for profile in config.profiles:
            if tensor.name not in profile.shapes:
                self._error(f"profile misses input {tensor.name}")
                return None
            low, opt, high = profile.shapes[tensor.name]
            fits = all(len(s) == len(tensor.shape) for s in (low, opt, high)) and all(
                (d == -1 and 1 <= lo <= o <= hi) or (d != -1 and lo == o == hi == d)
                for d, lo, o, hi in zip(tensor.shape, low, opt, high))
            if not fits:
                self._error(f"profile {low}/{opt}/{high} does not fit input shape {tensor.shape}")
                return None
            profiles.append([list(low), list(opt), list(high)])
        if -1 in tensor.shape and not profiles:
            self._error("dynamic input shape needs an optimization profile")
            return None
        flags = sorted(f.name for f in config.flags)
        if network.strongly_typed and {"FP16", "INT8"} & set(flags):
            self._error("a strongly typed network takes no precision flags")
            return None
        calibrated = 0
        if "INT8" in flags:
            calibrated = self._calibrate(config, tensor)
            if calibrated is None:
                return None
        if config.timing_cache is not None:
            config.timing_cache.builds += 1
        output = network.get_output(0)
        engine = {
            "format": FAKE_ENGINE_FORMAT,
            "tensorrt_version": self.module.__version__,
            "gpu": self.module.cudart.gpu,
            "input": {"name": tensor.name, "shape": tensor.shape, "dtype": tensor.dtype.value},
            "output": {"name": output.name, "shape": output.shape, "dtype": output.dtype.value},
            "profiles": profiles or [[tensor.shape] * 3],
            "flags": flags,
            "calibration_images": calibrated,
            "onnx": base64.b64encode(network.model.SerializeToString()).decode(),
        }
        return HostMemory(json.dumps(engine).encode())

    def _calibrate(self, config: _Config10, tensor: Any) -> int | None:
        calibrator = config.int8_calibrator
        if calibrator is None:
            self._error("INT8 flag set but no calibrator")
            return None
        if calibrator.read_calibration_cache():
            return 0
        batch_size = calibrator.get_batch_size()
        per_image = int(np.prod(tensor.shape[1:])) * np.dtype(tensor.dtype.value).itemsize
        images = 0
        while True:
            pointers = calibrator.get_batch([tensor.name])
            if not pointers:
                break
            if not self.module.cudart.device_region_ok(int(pointers[0]), batch_size * per_image):
                self._error("calibrator returned a device pointer outside any allocation")
                return None
            images += batch_size
        calibrator.write_calibration_cache(HostMemory(b"fake calibration table"))
        return images


class _Engine:
    def __init__(self, module: FakeTensorRT, spec: dict) -> None:
        self.module = module
        self.spec = spec
        self.onnx_bytes = base64.b64decode(spec["onnx"])
        self.tensors = {spec["input"]["name"]: spec["input"], spec["output"]["name"]: spec["output"]}
        self._session = None

    @property
    def num_io_tensors(self) -> int:
        return 2

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.spec["profiles"])

    @property
    def num_layers(self) -> int:
        return len(self.layer_names())

    def get_tensor_name(self, index: int) -> str:
        return [self.spec["input"]["name"], self.spec["output"]["name"]][index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.spec["input"]["name"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self.tensors[name]["dtype"])

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(self.tensors[name]["shape"])

    def get_tensor_profile_shape(self, name: str, index: int) -> list:
        if name != self.spec["input"]["name"]:
            raise ValueError("profile shapes exist for inputs only")
        return [tuple(s) for s in self.spec["profiles"][index]]

    def create_execution_context(self) -> _Context:
        return _Context(self)

    def layer_names(self) -> list:
        import onnx

        graph = onnx.load_from_string(self.onnx_bytes).graph
        return [node.name or f"{node.op_type}_{i}" for i, node in enumerate(graph.node)]

    def session(self) -> Any:
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            self._session = onnxruntime.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])
        return self._session


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.profiler = None
        self.profile = 0
        self.input_shape = None
        self.addresses: dict = {}

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        if not 0 <= index < self.engine.num_optimization_profiles or int(stream) not in self.engine.module.cudart.streams:
            return False
        self.profile = index
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        spec = self.engine.spec
        if name != spec["input"]["name"]:
            return False
        low, _, high = spec["profiles"][self.profile]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(low) or not all(lo <= d <= hi for lo, d, hi in zip(low, shape, high)):
            return False
        self.input_shape = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        spec = self.engine.spec
        if name == spec["input"]["name"]:
            return self.input_shape or tuple(spec["input"]["shape"])
        batch = self.input_shape[0] if self.input_shape else -1
        return (batch,) + tuple(spec["output"]["shape"][1:])

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        if name not in self.engine.tensors:
            return False
        self.addresses[name] = int(pointer)
        return True

    def execute_async_v3(self, stream: int) -> bool:
        cudart = self.engine.module.cudart
        spec = self.engine.spec
        if self.input_shape is None or set(self.addresses) != set(self.engine.tensors):
            return False
        if int(stream) not in cudart.streams:
            return False
        in_dtype = np.dtype(spec["input"]["dtype"])
        out_shape = self.get_tensor_shape(spec["output"]["name"])
        out_dtype = np.dtype(spec["output"]["dtype"])
        in_bytes = int(np.prod(self.input_shape)) * in_dtype.itemsize
        out_bytes = int(np.prod(out_shape)) * out_dtype.itemsize
        in_pointer, out_pointer = self.addresses[spec["input"]["name"]], self.addresses[spec["output"]["name"]]
        if not (cudart.device_region_ok(in_pointer, in_bytes) and cudart.device_region_ok(out_pointer, out_bytes)):
            return False
        raw = (ctypes.c_byte * in_bytes).from_address(in_pointer)
        batch = np.frombuffer(raw, dtype=in_dtype).reshape(self.input_shape).copy()
        session = self.engine.session()
        result = np.ascontiguousarray(session.run(None, {spec["input"]["name"]: batch})[0], dtype=out_dtype)
        ctypes.memmove(out_pointer, result.ctypes.data, out_bytes)
        if self.profiler is not None:
            for k, layer in enumerate(self.engine.layer_names()):
                self.profiler.report_layer_time(layer, (k + 1) * FAKE_LAYER_MS)
        return True


class _Runtime:
    def __init__(self, module: FakeTensorRT, logger: Logger) -> None:
        self.module = module
        self.logger = module.keep_first_logger(logger, "createInferRuntime")

    def deserialize_cuda_engine(self, blob: bytes) -> _Engine | None:
        try:
            spec = json.loads(bytes(blob).decode())
        except (UnicodeDecodeError, ValueError):
            spec = None
        if not isinstance(spec, dict) or spec.get("format") != FAKE_ENGINE_FORMAT:
            self.logger.log(Severity.ERROR, "not a serialized engine")
            return None
        if spec.get("tensorrt_version") != self.module.__version__ or spec.get("gpu") != self.module.cudart.gpu:
            self.logger.log(Severity.ERROR, "engine built with another TensorRT version or GPU")
            return None
        return _Engine(self.module, spec)


class FakeTensorRT:
    """Stands in for `import tensorrt` (generation 10 or 11), with a FakeCudaRuntime for its memory."""

    Logger = Logger
    ILogger = ILogger
    IProfiler = IProfiler
    TensorIOMode = TensorIOMode
    DataType = DataType
    MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "LAYER_NAMES_ONLY DETAILED NONE")

    def __init__(self, generation: int = 10, cudart: FakeCudaRuntime | None = None) -> None:
        self.generation = generation
        self.__version__ = FAKE_VERSIONS[generation]
        self.cudart = cudart if cudart is not None else FakeCudaRuntime()
        self.logger = None  # the first logger any Builder or Runtime was given
        if generation == 10:
            # include/NvInfer.h (release/10.16) lines 12102-12125, enum class NetworkDefinitionCreationFlag:
            # kEXPLICIT_BATCH TRT_DEPRECATED_ENUM = 0, kSTRONGLY_TYPED = 1, kPREFER_JIT_PYTHON_PLUGINS = 2,
            # kPREFER_AOT_PYTHON_PLUGINS = 3; python/src/infer/pyCore.cpp lines 1891-1900 bind all four.
            self.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {
                "EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2,
                "PREFER_AOT_PYTHON_PLUGINS": 3})
            # include/NvInfer.h (release/10.16) lines 10468-10489, enum class BuilderFlag: kFP16
            # TRT_DEPRECATED_ENUM = 0, kINT8 TRT_DEPRECATED_ENUM = 1, kTF32 = 6; pyCore.cpp lines 1670-1679.
            self.BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "TF32": 6})
            # python/src/infer/pyInt8.cpp (release/10.16) lines 330 and 345 bind these two.
            self.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
            self.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
        else:
            # include/NvInfer.h (11.1) lines 11462-11480: kSTRONGLY_TYPED TRT_DEPRECATED_ENUM = 0 ("Strongly
            # typed mode is always enabled ... retained for API compatibility but is ignored"),
            # kPREFER_JIT_PYTHON_PLUGINS = 1, kPREFER_AOT_PYTHON_PLUGINS = 2; pyCore.cpp lines 1771-1778 bind
            # no EXPLICIT_BATCH.
            self.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {
                "STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2})
            # include/NvInfer.h (11.1) lines 9958-9976, enum class BuilderFlag starts at kDEBUG = 2 (no kFP16,
            # kINT8), kTF32 = 6; pyCore.cpp lines 1599-1605. python/src/infer/pyInt8.cpp is gone: no calibrators.
            self.BuilderFlag = enum.IntEnum("BuilderFlag", {"TF32": 6})

    def keep_first_logger(self, logger: Any, where: str) -> Any:
        """libnvinfer keeps the first logger it is given: a Builder or Runtime created later with another
        logger gets a warning (on the first logger) and uses the first one."""
        if self.logger is None:
            self.logger = logger
        elif logger is not self.logger:
            self.logger.log(Severity.WARNING, f"The logger passed into {where} differs from one already provided "
                                              "for an existing builder, runtime, or refitter.")
        return self.logger

    @staticmethod
    def nptype(dtype: DataType) -> type:
        return np.dtype(dtype.value).type

    def Builder(self, logger: Logger) -> _Builder:  # noqa: N802 (the tensorrt module's spelling)
        return _Builder(self, logger)

    def OnnxParser(self, network: _Network, logger: Logger) -> _OnnxParser:  # noqa: N802
        return _OnnxParser(network, logger)

    def Runtime(self, logger: Logger) -> _Runtime:  # noqa: N802
        return _Runtime(self, logger)


def engine_generation(path: str) -> int:
    """The generation a fake engine file was built by (10 when the file is not a fake engine)."""
    try:
        with open(path, "rb") as handle:
            spec = json.loads(handle.read().decode())
        return int(str(spec["tensorrt_version"]).split(".")[0])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return 10


class FakeTensorRTBackend(TensorRTBackend):
    """FAKE: the real TensorRTBackend code over FakeTensorRT and FakeCudaRuntime (a fresh fake GPU each)."""

    name = FAKE_TENSORRT_BACKEND_NAME

    def __init__(self, model_path: Any, threads: int | None = None, generation: int | None = None) -> None:
        path = check_model_file(model_path)
        cudart = FakeCudaRuntime()
        trt = FakeTensorRT(generation or engine_generation(path), cudart)
        super().__init__(path, threads, trt=trt, cudart=cudart)
