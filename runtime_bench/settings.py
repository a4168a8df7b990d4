"""How a benchmark is run: one set of defaults for the harness's CLI, `edgeprune bench`, deploy and the device.

    BenchSettings()                                   the defaults (quick mode: 50 runs and 2 s per model)
    BenchSettings.from_section(section, "d.yaml")     a config's `bench:` mapping, checked; one-line errors
    settings.run_kwargs()                             keyword arguments of run_benchmark / benchmark_bundle
    settings.cli_args()                               the same as `python -m runtime_bench` options (the device)

`section_keys` is the check every config section shares: a mapping whose keys are the dataclass's fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from runtime_bench.errors import InputError
from runtime_bench.stats import DEFAULT_BLOCKS


def section_keys(cls: Any, section: Any, where: str, name: str) -> dict:
    """`section` (None: empty) as a dict of `cls`'s fields, or the one-line error a config file gets."""
    keys = [f.name for f in dataclasses.fields(cls)]
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise InputError(f"{where}: {name}: expected a mapping with {', '.join(keys)}")
    unknown = sorted(set(section) - set(keys))
    if unknown:
        raise InputError(f"{where}: {name}: unknown option(s) {', '.join(map(str, unknown))}")
    return dict(section)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    backend: str = "ort-cpu"
    threads: int | None = None  # the runtime's default (all cores)
    batch_size: int | None = None  # None: 1, or a bundle's fixed batch size
    warmup_runs: int = 10
    warmup_seconds: float = 0.5
    min_runs: int | None = None  # None: the timing mode's (quick 50; strict 1024)
    min_seconds: float | None = None  # None: the timing mode's (quick 2 s; strict 600 s)
    strict: bool = False  # MLPerf single-stream minimums, p90 headline
    blocks: int = DEFAULT_BLOCKS  # consecutive blocks of timed runs, for the drift figure

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """InputError naming the first field that is wrong (before minutes of pruning, not after)."""
        from runtime_bench.backend_api import check_threads
        from runtime_bench.backends import BACKENDS, backend_names
        from runtime_bench.stats import check_blocks
        from runtime_bench.timing import check_limits

        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise InputError(f"unknown backend '{self.backend}'; choose from: {', '.join(backend_names())}")
        for key in ("batch_size", "warmup_runs", "min_runs"):
            value = getattr(self, key)
            if value is not None and not _is_int(value):
                raise InputError(f"{key}={value!r}: must be an integer")
        for key in ("warmup_seconds", "min_seconds"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InputError(f"{key}={value!r}: must be a number of seconds")
        if not isinstance(self.strict, bool):
            raise InputError(f"strict={self.strict!r}: must be true or false")
        check_threads(self.threads)
        check_blocks(self.blocks)
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size={self.batch_size}: must be >= 1")
        check_limits(self.warmup_runs, self.warmup_seconds, 1 if self.min_runs is None else self.min_runs,
                     0.0 if self.min_seconds is None else self.min_seconds, None)

    @classmethod
    def from_section(cls, section: Any, where: str, name: str = "bench") -> BenchSettings:
        values = section_keys(cls, section, where, name)
        try:
            return cls(**values)
        except InputError as exc:
            raise InputError(f"{where}: {name}: {exc}") from None

    def replace(self, **changes: Any) -> BenchSettings:
        """A copy with `changes`; None values are left out (an option that was not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_kwargs(self) -> dict:
        """Keyword arguments of run_benchmark and benchmark_bundle."""
        return {"backend": self.backend, "threads": self.threads, "batch_size": self.batch_size,
                "warmup_runs": self.warmup_runs, "warmup_s": self.warmup_seconds, "min_runs": self.min_runs,
                "min_s": self.min_seconds, "strict": self.strict, "blocks": self.blocks}

    def cli_args(self) -> list:
        """The settings that differ from the defaults, as `python -m runtime_bench` options."""
        defaults = BenchSettings()
        args: list = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value == getattr(defaults, field.name):
                continue
            flag = "--" + field.name.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        return args
