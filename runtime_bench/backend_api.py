"""What a backend is: the interface every runtime backend implements and the checks they share.

Its own module so that the backends defined elsewhere (tensorrt_backend.py, the test double
tests/fake_tensorrt.py) build on it without importing the registry in backends.py, which opens them.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from runtime_bench.errors import InputError


def check_model_file(model_path: Any) -> str:
    """The model path as a string, or a one-line InputError when it is missing or not a file."""
    path = os.fspath(model_path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a file")
    return path


def check_threads(threads: int | None) -> int | None:
    """A backend's intra-op thread count: None (the runtime's default) or a positive integer."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise InputError(f"threads={threads!r}: must be a positive integer (or None for the runtime default)")
    return int(threads)


class Backend:
    """What the harness needs from a runtime: run one batch, and describe itself.

    Subclasses set `name`, `input_name` and `input_shape` (batch dim may be None or a symbolic str).
    """

    name = "backend"

    def __init__(self) -> None:
        self.input_name = "input"
        self.input_shape: list[Any] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on `batch` and return the first output (float32 logits)."""
        raise NotImplementedError

    def prepare(self, batch: np.ndarray) -> Callable[[], np.ndarray]:
        """Return a zero-argument callable that runs the model once on `batch`.

        The timing code times the callable, so anything that is not inference (dtype conversion,
        building the feed) belongs here, outside the timed call. A callable may also offer `collect()` and
        `device_times` ({name: [ms per timed call]}): device timers read after each timed call, outside it.
        """
        prepared = np.ascontiguousarray(batch, dtype=np.float32)
        return lambda: self.run(prepared)

    def info(self) -> dict[str, Any]:
        raise NotImplementedError
