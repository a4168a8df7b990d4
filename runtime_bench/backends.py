"""Inference backends: one small class per runtime, opened by name through `open_backend`.

Runtimes are imported lazily inside the backend so that `import runtime_bench` needs only numpy.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from runtime_bench.backend_api import Backend, check_model_file, check_threads
from runtime_bench.errors import InputError, first_line


def _ort_line(exc: BaseException) -> str:
    """An ONNX Runtime error's first line without its "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF :" prefix."""
    return re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*", "", first_line(exc, limit=200))


class OrtCpuBackend(Backend):
    """onnxruntime on the CPU execution provider, configured for repeatable single-stream latency."""

    name = "ort-cpu"
    providers = ["CPUExecutionProvider"]
    package = "onnxruntime"

    def __init__(self, model_path: Any, threads: int | None = None) -> None:
        super().__init__()
        ort = _import_onnxruntime(self.name, self.package)
        self.model_path = check_model_file(model_path)
        self.threads = check_threads(threads)
        self._ort_version = getattr(ort, "__version__", "unknown")

        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        # One inter-op thread and sequential execution: parallel branches would add scheduling noise.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spin-waiting worker threads: when two sessions alternate, the idle one's spinning threads
        # steal the cores from the one being timed (measured on 2 cores: p90 5.2 ms against a p50 of
        # 1.6 ms with spinning, 1.9 ms without), which distorts exactly the comparison we make.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Errors are reported by us in one line; runtime warnings on stderr would only add noise.
        options.log_severity_level = 3
        self._session = self._open_session(ort, options)

        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise InputError(
                f"{self.model_path}: model has {len(inputs)} inputs; the benchmark feeds exactly one"
            )
        if inputs[0].type != "tensor(float)":
            raise InputError(
                f"{self.model_path}: model input '{inputs[0].name}' is {inputs[0].type}, expected tensor(float)"
            )
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self._output_names = [self._session.get_outputs()[0].name]

    def _open_session(self, ort: Any, options: Any) -> Any:
        try:
            return ort.InferenceSession(self.model_path, sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises several unrelated types for unloadable files
            raise InputError(f"{self.model_path}: not a loadable ONNX model ({_ort_line(exc)})") from None

    def run(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        try:
            return self._session.run(self._output_names, feed)[0]
        except Exception as exc:
            raise InputError(f"{self.model_path}: inference failed ({_ort_line(exc)})") from None

    def prepare(self, batch: np.ndarray) -> Callable[[], np.ndarray]:
        # Bind everything once so the timed call is just session.run.
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        output_names = self._output_names
        session_run = self._session.run

        def run_prepared() -> np.ndarray:
            return session_run(output_names, feed)[0]

        return run_prepared

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "runtime": "onnxruntime",
            "version": self._ort_version,
            "providers": list(self._session.get_providers()),
            "threads": self.threads,  # None = runtime default
            "inter_op_threads": 1,
            "spinning": False,
        }


def _import_onnxruntime(backend_name: str, package: str) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise InputError(
            f"backend '{backend_name}' needs the package {package} (pip install {package})"
        ) from None
    return onnxruntime


class OrtCudaBackend(OrtCpuBackend):
    """onnxruntime on its CUDA execution provider (onnxruntime-gpu)."""

    name = "ort-cuda"
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    package = "onnxruntime-gpu"

    def __init__(self, model_path: Any, threads: int | None = None) -> None:
        ort = _import_onnxruntime(self.name, self.package)
        wanted = self.providers[0]
        if wanted not in ort.get_available_providers():
            raise InputError(f"backend '{self.name}' needs the package {self.package} (pip install {self.package})")
        super().__init__(model_path, threads)
        # onnxruntime falls back to the CPU silently when a GPU provider cannot start; a CPU timing
        # under a GPU label would be worse than no timing.
        active = self._session.get_providers()
        if not active or active[0] != wanted:
            raise InputError(
                f"{self.model_path}: onnxruntime {self._ort_version} could not start {wanted} (it runs on "
                f"{', '.join(active)}); {self._requirements()}"
            )
        # The check above covers session creation only: on a provider failure inside run() the Python
        # wrapper would switch to the CPU and carry on. Fail instead.
        self._session.disable_fallback()

    def _open_session(self, ort: Any, options: Any) -> Any:
        """The session on the GPU provider, or a one-line error naming the provider's own failure.

        onnxruntime's wrapper retries a failed provider on the CPU (enable_fallback=0 turns that off where it
        exists); a retry that fails too raises its own error "from" the provider's. Whether the model itself
        is at fault is decided by opening it on the CPU alone."""
        wanted = self.providers[0]
        try:
            return ort.InferenceSession(self.model_path, sess_options=options, providers=self.providers,
                                        enable_fallback=0)
        except Exception as exc:
            cause = exc.__cause__ or exc
        try:
            ort.InferenceSession(self.model_path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise InputError(f"{self.model_path}: not a loadable ONNX model ({_ort_line(exc)})") from None
        raise InputError(f"{self.model_path}: onnxruntime {self._ort_version} could not start {wanted} "
                         f"({_ort_line(cause)}); {self._requirements()}") from None

    def _requirements(self) -> str:
        return "check the CUDA and cuDNN libraries"


class OrtTensorrtBackend(OrtCudaBackend):
    """onnxruntime on its TensorRT execution provider (FP32; engines are built at session start)."""

    name = "ort-trt"
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def _requirements(self) -> str:
        # onnxruntime's TensorRT provider is built against one TensorRT major version; TensorRT 11 needs
        # onnxruntime-gpu >= ORT_FOR_TENSORRT_11 (the provider's requirements, as read for issue 18).
        try:
            import tensorrt

            major = int(str(tensorrt.__version__).split(".")[0])
        except Exception:  # absent or broken: nothing more to say about it
            major = None
        if major is not None and major >= 11 and _version_tuple(self._ort_version) < ORT_FOR_TENSORRT_11:
            wanted = ".".join(map(str, ORT_FOR_TENSORRT_11))
            return (f"TensorRT {tensorrt.__version__} is installed, and onnxruntime's TensorRT provider needs "
                    f"onnxruntime-gpu >= {wanted} for TensorRT 11")
        return "check the TensorRT, CUDA and cuDNN libraries (the versions onnxruntime-gpu was built for)"


ORT_FOR_TENSORRT_11 = (1, 27)


def _version_tuple(version: str) -> tuple:
    numbers = re.findall(r"\d+", str(version))[:2]
    return tuple(int(n) for n in numbers) if numbers else (0,)


def _open_tensorrt(model_path: Any, threads: int | None = None) -> Backend:
    from runtime_bench.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(model_path, threads)


# Backends by name. Runtimes and the TensorRT modules are imported when a backend is opened.
BACKENDS: dict[str, Callable[..., Backend]] = {
    OrtCpuBackend.name: OrtCpuBackend,
    OrtCudaBackend.name: OrtCudaBackend,
    OrtTensorrtBackend.name: OrtTensorrtBackend,
    "tensorrt": _open_tensorrt,
}
ENGINE_BACKENDS = {"tensorrt"}  # they open serialized engines, not ONNX files
_UNLISTED: set[str] = set()


def register_backend(name: str, factory: Callable[..., Backend], opens_engines: bool = False,
                     listed: bool = True) -> None:
    """Add a backend under `name`: `factory(model_path, threads=...)` opens a model (or an engine when
    `opens_engines`). The tests register their doubles this way; `listed=False` keeps one out of
    `backend_names()`, the names offered to users."""
    BACKENDS[name] = factory
    if opens_engines:
        ENGINE_BACKENDS.add(name)
    if not listed:
        _UNLISTED.add(name)


def backend_names() -> list[str]:
    """Names offered to users."""
    return [name for name in BACKENDS if name not in _UNLISTED]


def open_backend(name: str, model_path: Any, threads: int | None = None) -> Backend:
    """Open `model_path` with the backend called `name` (see `backend_names()`)."""
    factory = BACKENDS.get(name)
    if factory is None:
        raise InputError(f"unknown backend '{name}'; choose from: {', '.join(backend_names())}")
    return factory(model_path, threads=threads)
