"""TensorRT runtime: a serialized engine, device buffers through the CUDA Python bindings, no torch.

The `tensorrt` and CUDA modules are passed in (or imported on first use), so the same code runs against
`tests/fake_tensorrt.py` in tests without a GPU. The parts that decide something are plain functions:
`select_profile` (which optimization profile serves a batch shape), `plan_buffers` (bytes per I/O tensor
at the largest shape) and `LayerTimes` (per-layer times from TensorRT's profiler). `process_logger` is the
one logger this process gives TensorRT, shared with the engine builder (exporters/tensorrt.py).

Works with TensorRT 10 and 11 (the runtime API used here is the same in both: named I/O tensors,
`set_input_shape`, `set_tensor_address`, `execute_async_v3`).
"""

from __future__ import annotations

import os
import weakref
from functools import lru_cache
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from runtime_bench.backend_api import Backend, check_model_file
from runtime_bench.errors import InputError, first_line

SUPPORTED_GENERATIONS = (10, 11)


class TensorRTUnavailable(InputError):
    """No usable TensorRT, CUDA bindings or GPU here; the message says which and what to install."""


def tensorrt_generation(version: str) -> int:
    """Major version of a TensorRT version string, if it is one we support (10: weak typing, 11: strong only)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise TensorRTUnavailable(f"TensorRT reports an unreadable version {version!r}") from None
    if major not in SUPPORTED_GENERATIONS:
        raise TensorRTUnavailable(f"TensorRT {version} is installed; edgeprune supports TensorRT 10 and 11")
    return major


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed (pip install tensorrt)") from None
    tensorrt_generation(tensorrt.__version__)
    return tensorrt


def import_cuda_runtime() -> Any:
    """The CUDA runtime bindings: `cuda.bindings.runtime` (cuda-python >= 12.6), else the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise TensorRTUnavailable("the CUDA Python bindings are not installed (pip install cuda-python)") from None
    return runtime


def cuda_call(cudart: Any, result: Any, what: str) -> Any:
    """Unwrap a cuda-python result tuple (error, *values); raise InputError naming the call on failure."""
    values = result if isinstance(result, tuple) else (result,)
    error = values[0]
    if error != cudart.cudaError_t.cudaSuccess:
        raise InputError(f"CUDA {what} failed ({getattr(error, 'name', error)})")
    rest = values[1:]
    return rest[0] if len(rest) == 1 else (rest or None)


@lru_cache(maxsize=1)
def _native_handle_getter() -> Callable[[Any], int] | None:
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:  # cuda-bindings before 12.9.1 / 13.0, or the old cuda.cudart
        return None
    return get_cuda_native_handle


def native_handle(obj: Any) -> int:
    """The address behind a CUDA Python object (a stream) as TensorRT takes it: an int.

    cuda-bindings deprecates `int(obj)` for this (13.0, "Tips and Tricks") in favour of
    `cuda.bindings.utils.get_cuda_native_handle`; older bindings only have `int(obj)`, and a plain int (a
    pointer from cudaMalloc, or a test double's handle) is its own address.
    """
    getter = _native_handle_getter()
    if getter is not None and not isinstance(obj, int):
        try:
            return int(getter(obj))
        except TypeError:  # a type the helper does not know
            pass
    return int(obj)


_LOGGERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tensorrt module -> its one logger


def process_logger(trt: Any) -> Any:
    """The one logger this process gives `trt`'s Builders and Runtimes.

    TensorRT keeps the first logger it was given: a later Builder or Runtime with another logger gets a
    warning and the first one, so errors of its build would reach a logger nobody reads. Callers clear it
    before each build or load and read `reason()` after a failure.
    """
    logger = _LOGGERS.get(trt)
    if logger is None:

        class ProcessLogger(trt.ILogger):
            """Keeps the first line of each error TensorRT logs (the last MAX_KEPT)."""

            MAX_KEPT = 64

            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list = []

            def log(self, severity: Any, message: str) -> None:
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.errors.append(first_line(str(message)))
                    del self.errors[: -self.MAX_KEPT]

            def clear(self) -> None:
                self.errors.clear()

            def reason(self, default: str = "no error logged") -> str:
                return self.errors[0] if self.errors else default

        logger = _LOGGERS[trt] = ProcessLogger()
    return logger


def gpu_name(cudart: Any, device: int = 0) -> str:
    """Name of CUDA device `device`; TensorRTUnavailable when there is none."""
    result = cudart.cudaGetDeviceCount()
    if result[0] != cudart.cudaError_t.cudaSuccess or result[1] < 1:
        reason = getattr(result[0], "name", result[0]) if result[0] != cudart.cudaError_t.cudaSuccess else "0 devices"
        raise TensorRTUnavailable(f"no CUDA GPU is visible ({reason})")
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
    return str(name).strip()


# ----------------------------------------------------------------------------------- plain planning logic


class TensorSpec(NamedTuple):
    name: str
    is_input: bool
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple  # as the engine declares it; -1 marks a dynamic dimension


class Profile(NamedTuple):
    """One optimization profile of the engine's single input: the shapes it was built for."""

    min: tuple
    opt: tuple
    max: tuple


def describe_profiles(profiles: Sequence[Profile]) -> str:
    return "; ".join(f"profile {i}: batch {p.min[0]}-{p.max[0]} (opt {p.opt[0]})" for i, p in enumerate(profiles))


def select_profile(profiles: Sequence[Profile], shape: Sequence[int]) -> int:
    """Index of the profile to run `shape` with: of those whose [min, max] hold it, the one whose
    optimum is closest (kernels are tuned for opt), the first on a tie."""
    shape = tuple(int(d) for d in shape)
    fitting = [
        i for i, p in enumerate(profiles)
        if len(p.min) == len(shape) and all(lo <= d <= hi for lo, d, hi in zip(p.min, shape, p.max))
    ]
    if not fitting:
        raise InputError(f"input shape {shape} is outside every optimization profile of the engine "
                         f"({describe_profiles(profiles)})")
    return min(fitting, key=lambda i: (sum(abs(d - o) for d, o in zip(shape, profiles[i].opt)), i))


def max_batch(profiles: Sequence[Profile]) -> int:
    return max(int(p.max[0]) for p in profiles)


class BufferPlan(NamedTuple):
    name: str
    is_input: bool
    dtype: str
    shape: tuple  # the largest shape this buffer must hold
    nbytes: int


def plan_buffers(specs: Sequence[TensorSpec], largest: dict) -> list:
    """One device buffer per I/O tensor, sized for its largest shape (`largest`: name -> shape, e.g. the
    input at its profile maximum and the outputs TensorRT infers from it), so no run ever reallocates."""
    plan = []
    for spec in specs:
        shape = tuple(int(d) for d in largest.get(spec.name, spec.shape))
        if any(d < 0 for d in shape):
            raise InputError(f"tensor '{spec.name}' has no fixed largest shape ({shape}); "
                             "the engine needs an optimization profile for it")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
        plan.append(BufferPlan(spec.name, spec.is_input, spec.dtype, shape, nbytes))
    return plan


def batch_chunks(n: int, largest: int) -> list:
    """Split n images into consecutive (start, stop) runs of at most `largest` images."""
    return [(start, min(n, start + largest)) for start in range(0, n, largest)]


class LayerTimes:
    """Accumulates TensorRT profiler reports (layer name, ms) over runs; `table` gives the mean per run."""

    def __init__(self) -> None:
        self.total_ms: dict = {}  # insertion order = execution order of the first run
        self.runs = 0

    def add(self, layer: str, ms: float) -> None:
        self.total_ms[layer] = self.total_ms.get(layer, 0.0) + float(ms)

    def table(self) -> list:
        if self.runs < 1:
            raise InputError("no profiled runs")
        return [{"layer": name, "mean_ms": total / self.runs} for name, total in self.total_ms.items()]


def _profiler(trt: Any, times: LayerTimes) -> Any:
    """A trt.IProfiler that forwards into `times` (the subclass must be made from the module in use)."""

    class Recorder(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            times.add(layer_name, ms)

    return Recorder()


# ------------------------------------------------------------------------------------------------ backend


def _free_all(cudart: Any, device: list, host: list, streams: list, events: list) -> None:
    # Runs at garbage collection too: errors here have no one to report to.
    for pointer in device:
        cudart.cudaFree(pointer)
    for pointer in host:
        cudart.cudaFreeHost(pointer)
    for event in events:
        cudart.cudaEventDestroy(event)
    for stream in streams:
        cudart.cudaStreamDestroy(stream)
    for handles in (device, host, events, streams):
        handles.clear()


EVENT_INTERVALS = ("h2d_ms", "compute_ms", "d2h_ms")  # between the 4 events recorded around each timed call


class TimedRoundTrip:
    """What the harness times for an engine: copy in, compute, copy out, synchronize (its wall clock is the
    harness's latency), with CUDA events recorded between the steps on the stream.

    The events give trtexec's quantities: H2D latency, GPU compute time and D2H latency, and their sum, the
    latency as trtexec defines it. `collect()` reads them; the timing loops call it after each timed call,
    outside the timed interval, so `device_times` holds one value per timed call (warm-up calls leave none).
    """

    def __init__(self, backend: TensorRTBackend, count: int, output_count: int, view: np.ndarray) -> None:
        self.backend, self.count, self.output_count, self.view = backend, count, output_count, view
        self.device_times: dict = {name: [] for name in EVENT_INTERVALS}

    def __call__(self) -> np.ndarray:
        backend = self.backend
        record = backend._record
        record(0)
        backend._copy(backend.input_name, self.count, to_device=True)
        record(1)
        backend._execute(backend._context)
        record(2)
        backend._copy(backend._output.name, self.output_count, to_device=False)
        record(3)
        backend._sync()
        return self.view

    def collect(self) -> None:
        events, cudart = self.backend._events, self.backend._cudart
        for k, name in enumerate(EVENT_INTERVALS):
            ms = cuda_call(cudart, cudart.cudaEventElapsedTime(events[k], events[k + 1]), "cudaEventElapsedTime")
            self.device_times[name].append(float(ms))


class TensorRTBackend(Backend):
    """A serialized TensorRT engine with one input and one output, run on CUDA device 0.

    `prepare` gives a `TimedRoundTrip`: the harness times its wall clock (copy in, compute, copy out,
    synchronize, as seen from the host) and its CUDA events give trtexec's H2D, GPU compute and D2H times.
    `layer_times` runs TensorRT's profiler.
    """

    name = "tensorrt"

    def __init__(self, model_path: Any, threads: int | None = None, trt: Any = None, cudart: Any = None) -> None:
        super().__init__()
        self.model_path = check_model_file(model_path)
        if threads is not None:
            raise InputError(f"backend '{self.name}' runs on the GPU; threads={threads!r} does not apply")
        self.threads = None
        try:
            self._trt = trt if trt is not None else import_tensorrt()
            self._cudart = cudart if cudart is not None else import_cuda_runtime()
            self.gpu = gpu_name(self._cudart)
        except TensorRTUnavailable as exc:
            raise InputError(f"backend '{self.name}': {exc}") from None
        self.version = str(self._trt.__version__)
        self._device: list = []
        self._host: list = []
        self._streams: list = []
        self._events: list = []
        self._finalizer = weakref.finalize(self, _free_all, self._cudart, self._device, self._host, self._streams,
                                           self._events)

        self._logger = process_logger(self._trt)
        self._runtime = self._trt.Runtime(self._logger)
        self._engine = self._load_engine()
        self.specs = self._read_specs()
        inputs = [s for s in self.specs if s.is_input]
        outputs = [s for s in self.specs if not s.is_input]
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(f"{self.model_path}: engine has {len(inputs)} inputs and {len(outputs)} outputs; "
                             "the benchmark feeds one and reads one")
        self._input, self._output = inputs[0], outputs[0]
        self.input_name = self._input.name
        self.input_shape = [None if d < 0 else int(d) for d in self._input.shape]
        self.profiles = self._read_profiles()
        self.max_batch = max_batch(self.profiles)

        self._stream = cuda_call(self._cudart, self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._streams.append(self._stream)
        self._stream_handle = native_handle(self._stream)
        for _ in range(4):
            self._events.append(cuda_call(self._cudart, self._cudart.cudaEventCreate(), "cudaEventCreate"))
        self._context_profile: dict = {}  # id(context) -> the profile it runs with now
        self._context = self._new_context()
        largest = {self.input_name: max((p.max for p in self.profiles), key=lambda s: int(np.prod(s)))}
        self._set_shape(self._context, largest[self.input_name])
        largest[self._output.name] = tuple(self._context.get_tensor_shape(self._output.name))
        self.plan = plan_buffers(self.specs, largest)
        self._buffers = {}
        for entry in self.plan:
            device = cuda_call(self._cudart, self._cudart.cudaMalloc(entry.nbytes), f"cudaMalloc of {entry.nbytes} bytes")
            self._device.append(device)
            host_pointer = cuda_call(self._cudart, self._cudart.cudaMallocHost(entry.nbytes), "cudaMallocHost")
            self._host.append(host_pointer)
            self._buffers[entry.name] = (device, _host_array(host_pointer, entry))
        self._bind(self._context)

    # -- engine description

    def _failure(self, what: str) -> InputError:
        """`what` failed: an InputError naming the engine and the first error TensorRT logged for it."""
        return InputError(f"{self.model_path}: {what} ({self._logger.reason()})")

    def _load_engine(self) -> Any:
        with open(self.model_path, "rb") as handle:
            self._logger.clear()
            engine = self._runtime.deserialize_cuda_engine(handle.read())
        if engine is None:
            raise InputError(f"{self.model_path}: not an engine TensorRT {self.version} can load on {self.gpu} "
                             "(engines only run with the TensorRT version and GPU model they were built with; "
                             f"TensorRT: {self._logger.reason()})")
        return engine

    def _read_specs(self) -> list:
        trt, engine = self._trt, self._engine
        specs = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            specs.append(TensorSpec(name, is_input, dtype, tuple(int(d) for d in engine.get_tensor_shape(name))))
        return specs

    def _read_profiles(self) -> list:
        shape = self._input.shape
        if all(d >= 0 for d in shape):  # a static engine: its one shape is its only profile
            return [Profile(shape, shape, shape)]
        profiles = []
        for index in range(self._engine.num_optimization_profiles):
            low, opt, high = self._engine.get_tensor_profile_shape(self.input_name, index)
            profiles.append(Profile(*(tuple(int(d) for d in s) for s in (low, opt, high))))
        if not profiles:
            raise InputError(f"{self.model_path}: dynamic input '{self.input_name}' but no optimization profile")
        return profiles

    # -- execution

    def _new_context(self, engine: Any = None) -> Any:
        context = (engine or self._engine).create_execution_context()
        if context is None:
            raise InputError(f"{self.model_path}: TensorRT could not create an execution context (out of GPU memory?)")
        return context

    def _bind(self, context: Any) -> None:
        for name, (device, _) in self._buffers.items():
            if not context.set_tensor_address(name, int(device)):
                raise InputError(f"{self.model_path}: TensorRT refused the address of tensor '{name}'")

    def _set_shape(self, context: Any, shape: Sequence[int]) -> None:
        index = select_profile(self.profiles, shape)
        if self._context_profile.get(id(context)) != index:
            if not context.set_optimization_profile_async(index, self._stream_handle):
                raise InputError(f"{self.model_path}: TensorRT refused optimization profile {index}")
            self._context_profile[id(context)] = index
        if not context.set_input_shape(self.input_name, tuple(int(d) for d in shape)):
            raise InputError(f"{self.model_path}: TensorRT refused input shape {tuple(shape)}")

    def _stage(self, batch: np.ndarray) -> int:
        """Set the shape for `batch` and put it in the pinned input buffer (outside any timing)."""
        if batch.shape[0] > self.max_batch:
            raise InputError(f"{self.model_path}: batch of {batch.shape[0]} is larger than the engine's largest "
                             f"optimization profile ({describe_profiles(self.profiles)})")
        self._set_shape(self._context, batch.shape)
        host = self._buffers[self.input_name][1]
        count = batch.size
        host[:count] = np.ascontiguousarray(batch, dtype=self._input.dtype).reshape(-1)
        return count

    def _output_view(self) -> np.ndarray:
        shape = tuple(self._context.get_tensor_shape(self._output.name))
        return self._buffers[self._output.name][1][: int(np.prod(shape))].reshape(shape)

    def _copy(self, name: str, count: int, to_device: bool) -> None:
        cudart = self._cudart
        device, host = self._buffers[name]
        nbytes = count * host.itemsize
        if to_device:
            call = cudart.cudaMemcpyAsync(device, host.ctypes.data, nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream)
        else:
            call = cudart.cudaMemcpyAsync(host.ctypes.data, device, nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream)
        cuda_call(cudart, call, f"cudaMemcpyAsync of '{name}'")

    def _execute(self, context: Any) -> None:
        if not context.execute_async_v3(self._stream_handle):
            raise self._failure("TensorRT execution failed")

    def _record(self, index: int) -> None:
        cuda_call(self._cudart, self._cudart.cudaEventRecord(self._events[index], self._stream), "cudaEventRecord")

    def _sync(self) -> None:
        cuda_call(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def _round_trip(self, count: int, output_count: int) -> None:
        self._copy(self.input_name, count, to_device=True)
        self._execute(self._context)
        self._copy(self._output.name, output_count, to_device=False)
        self._sync()

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        outputs = []
        for start, stop in batch_chunks(batch.shape[0], self.max_batch):
            count = self._stage(batch[start:stop])
            view = self._output_view()
            self._round_trip(count, view.size)
            outputs.append(view.astype(np.float32))  # a copy: the pinned buffer is reused
        return np.concatenate(outputs)

    def prepare(self, batch: np.ndarray) -> TimedRoundTrip:
        count = self._stage(np.asarray(batch))
        view = self._output_view()
        return TimedRoundTrip(self, count, view.size, view)

    def layer_times(self, batch: np.ndarray, runs: int = 20) -> list:
        """Mean time per layer over `runs` profiled executions of `batch` (TensorRT's IProfiler).

        The profiler goes on a context of a second copy of the engine: it never slows the timed context, and
        no optimization profile is shared between two live contexts of one engine.
        """
        if runs < 1:
            raise InputError(f"runs={runs}: must be >= 1")
        batch = np.asarray(batch)
        count = self._stage(batch)
        self._copy(self.input_name, count, to_device=True)
        self._sync()
        engine = self._load_engine()  # held here: the context must not outlive it
        context = self._new_context(engine)
        times = LayerTimes()
        context.profiler = _profiler(self._trt, times)
        self._bind(context)
        self._set_shape(context, batch.shape)
        try:
            for _ in range(runs):
                self._execute(context)
                self._sync()
                times.runs += 1
        finally:
            self._context_profile.pop(id(context), None)  # ids are reused once the context is gone
        return times.table()

    def close(self) -> None:
        """Free the GPU and pinned memory now (otherwise at garbage collection)."""
        self._finalizer()

    def info(self) -> dict:
        return {
            "backend": self.name,
            "runtime": "tensorrt",
            "version": self.version,
            "providers": [],
            "threads": None,
            "gpu": self.gpu,
            "engine_bytes": os.path.getsize(self.model_path),
            "input_dtype": self._input.dtype,
            "profiles": [p._asdict() for p in self.profiles],
            "latency": "wall clock on the host around copy in, compute, copy out, synchronize",
            "gpu_events": "CUDA events between the steps: H2D, GPU compute, D2H (trtexec's latency is their sum)",
        }


def _host_array(pointer: int, entry: BufferPlan) -> np.ndarray:
    """A flat numpy view of pinned host memory at `pointer`."""
    import ctypes

    dtype = np.dtype(entry.dtype)
    raw = (ctypes.c_byte * entry.nbytes).from_address(int(pointer))
    return np.frombuffer(raw, dtype=dtype)

