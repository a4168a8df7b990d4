"""Test doubles of runtime backends, registered by tests/conftest.py (never part of the package or a bundle).

- `fake-sleep-for-tests` (FakeSleepBackend): sleeps instead of computing, to test the harness's own logic.
- `fake-tensorrt-for-tests` (tests/fake_tensorrt.py): the real TensorRT backend code over a fake tensorrt
  module and CUDA runtime.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from fake_tensorrt import FAKE_TENSORRT_BACKEND_NAME, FakeTensorRTBackend

from runtime_bench.backend_api import Backend, check_model_file, check_threads
from runtime_bench.backends import register_backend
from runtime_bench.errors import InputError, first_line

FAKE_BACKEND_NAME = "fake-sleep-for-tests"


class FakeSleepBackend(Backend):
    """FAKE backend for testing the harness only: it sleeps instead of computing.

    Each call sleeps `seconds_per_call + seconds_per_image * len(batch)` and returns logits from
    `logits`: a callable batch -> (n, C) array, or a length-C vector repeated for every image.
    Opened by name, `model_path` is a JSON file with the same keys (logits as a list).
    """

    name = FAKE_BACKEND_NAME

    def __init__(
        self,
        model_path: Any = None,
        threads: int | None = None,
        seconds_per_call: float = 0.0,
        seconds_per_image: float = 0.0,
        logits: Any = None,
        num_classes: int = 2,
        input_shape: list[Any] | None = None,
    ) -> None:
        super().__init__()
        self.model_path = None
        if model_path is not None:
            self.model_path = check_model_file(model_path)
            spec = _read_fake_spec(self.model_path)
            seconds_per_call = float(spec.get("seconds_per_call", seconds_per_call))
            seconds_per_image = float(spec.get("seconds_per_image", seconds_per_image))
            logits = spec.get("logits", logits)
            num_classes = int(spec.get("num_classes", num_classes))
            input_shape = spec.get("input_shape", input_shape)
        if seconds_per_call < 0 or seconds_per_image < 0:
            raise InputError("fake backend: sleep times must be >= 0")
        self.seconds_per_call = seconds_per_call
        self.seconds_per_image = seconds_per_image
        self.threads = check_threads(threads)
        if logits is None:
            logits = np.zeros(num_classes, dtype=np.float32)
        self._logits = logits if callable(logits) else np.asarray(logits, dtype=np.float32).reshape(-1)
        self.input_shape = list(input_shape) if input_shape is not None else ["N", None, None, None]

    def run(self, batch: np.ndarray) -> np.ndarray:
        n = int(batch.shape[0])
        time.sleep(self.seconds_per_call + self.seconds_per_image * n)
        if callable(self._logits):
            return np.asarray(self._logits(batch), dtype=np.float32)
        return np.tile(self._logits, (n, 1))

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "runtime": "fake (sleeps, computes nothing)",
            "version": "0",
            "providers": [],
            "threads": self.threads,
            "seconds_per_call": self.seconds_per_call,
            "seconds_per_image": self.seconds_per_image,
        }


def _read_fake_spec(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a fake-backend JSON spec ({first_line(exc)})") from None
    if not isinstance(spec, dict):
        raise InputError(f"{path}: fake-backend spec must be a JSON object")
    return spec


def register_test_backends() -> None:
    """Make the doubles openable by name (runtime_bench's CLI and bundles too), but not offered to users."""
    register_backend(FAKE_BACKEND_NAME, FakeSleepBackend, listed=False)
    register_backend(FAKE_TENSORRT_BACKEND_NAME, FakeTensorRTBackend, opens_engines=True, listed=False)
