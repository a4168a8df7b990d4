"""The configuration of a run: every knob of the prune stage (`PruneConfig`) and the deploy config's typed
sections, with their one set of defaults. CLI flags and YAML keys use the field names (dashes for
underscores); an unknown key or a bad value is a one-line InputError naming it."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from dataclasses import asdict, dataclass, field, fields

from runtime_bench.errors import InputError, first_line
from runtime_bench.settings import BenchSettings, section_keys

from .control.controller import RESCORE_CHOICES, ControllerConfig, check_max_drop, is_number
from .control.signals import SIGNALS
from .head import HEAD_SOLVERS
from .surgery.costs import COSTS

METHODS = ("lrp", "dpx", "taylor", "l1", "random")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PruneConfig:
    """Every knob of the prune stage; CLI flags and YAML keys use these names (dashes for underscores)."""

    model: str = "mobilenet_v2"
    weights: str | None = None  # torchvision: its DEFAULT weights; a factory: as it builds itself
    output: str | None = None
    data: str | None = None
    test_data: str | None = None
    test_size: int | None = None  # cap on test images (balanced draw); None = all
    shots: int = 10
    allow_fewer: bool = False
    strict: bool = False
    head: str = "fit"
    head_solver: str = "ridge"  # see toolchain/head.py
    refit_head: bool | None = None  # re-fit the head after every step; None: on with --head fit
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    method: str = "lrp"
    rate: float | None = None  # a cap; None: 0.9 with a budget, else 0.3
    step: float = 0.05
    round_to: int = 8
    # Budgets: prune as far as the small-set estimate of accuracy and harmonic mean stays within max_drop
    # of the dense model's, and/or until the MACs are at most max_macs x the dense model's.
    max_drop: float | None = None
    max_macs: float | None = None
    # With --max-drop and a method without the controller: steps tried past the last state within budget
    # before stopping (the small-set estimate is noisy: one step can dip under the floor and the next recover).
    patience: int = 2
    compensate: bool = False  # re-fit the layers that read removed channels (toolchain/compensation.py)
    # With --max-drop and the re-fitted ridge head: the budget's estimate cross-validated over the whole
    # procedure, by this many shadow copies (toolchain/control/holdout.py); 0: leave-one-out of the head.
    holdout_folds: int = 0
    cost: str = "filters"  # rank by relevance / what a channel's removal saves: filters, macs, latency
    profile_backend: str | None = None  # --cost latency: the runtime the per-layer profile is measured on
    head_rule: str = "epsilon"
    allow_fallback: bool = False  # gradient x input, with a warning, for ops without an LRP rule
    batch_size: int = 32
    seed: int = 0
    # The accuracy-aware controller (--method dpx, docs/method.md); `step` is its s_max, `rate` its p_max.
    # Its defaults are the controller's own.
    delta: float = ControllerConfig.delta
    tau: float | None = ControllerConfig.tau
    m: int = ControllerConfig.m
    s_min_units: int = ControllerConfig.s_min_units
    rescore: str = ControllerConfig.rescore
    signal: str | None = None  # A(M), see toolchain/control/signals.py; None: refit with --refit-head, else crossfit-probability
    class_weighted: bool = False  # starting relevance of each sample 1 / (its class's A value)
    # The paper's setting in one switch: the controller as specified (A = small-set accuracy of the head,
    # delta 0, m 8, relevance after every commit) and no head re-fit.
    paper: bool = False
    # Ablations, reported beside (never instead of) the no-fine-tuning accuracy at every curve point.
    ablations: bool = False

    def check(self) -> None:
        """Validate, and resolve the defaults that depend on other options (so the hash sees them)."""
        budget = self.max_drop is not None or self.max_macs is not None
        if self.max_drop is not None:
            check_max_drop(self.max_drop)
        if self.max_macs is not None and not (is_number(self.max_macs) and 0.0 < self.max_macs <= 1.0):
            raise InputError(f"--max-macs {self.max_macs}: must be in (0, 1] (a fraction of the dense model's MACs)")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise InputError(f"--patience {self.patience}: must be an integer >= 0")
        if self.cost not in COSTS:
            raise InputError(f"--cost {self.cost}: choose from {', '.join(COSTS)}")
        if self.profile_backend is not None:
            from exporters.profile import PROFILE_BACKENDS

            if self.profile_backend not in PROFILE_BACKENDS:
                raise InputError(f"--profile-backend {self.profile_backend}: choose from {', '.join(PROFILE_BACKENDS)}")
        if self.cost == "latency" and not self.profile_backend:
            raise InputError("--cost latency: needs a runtime to profile per-layer latency on: give --profile-backend "
                             "(e.g. ort-cpu)")
        if self.head_solver not in HEAD_SOLVERS:
            raise InputError(f"--head-solver {self.head_solver}: choose from {', '.join(HEAD_SOLVERS)}")
        if self.paper:
            self.refit_head, self.signal, self.delta, self.tau, self.m, self.rescore = \
                False, "small-accuracy", 0.0, None, 8, "accepted"
        if self.refit_head and self.head == "keep":
            raise InputError("--refit-head: needs --head fit (--head keep keeps the model's own head)")
        if self.refit_head is None:
            self.refit_head = self.head == "fit"
        if self.signal is None:
            self.signal = "refit" if self.refit_head and self.head_solver == "ridge" else "crossfit-probability"
        if self.signal == "refit" and not (self.refit_head and self.head_solver == "ridge"):
            raise InputError("--signal refit: needs --refit-head and --head-solver ridge")
        if self.rate is None:
            self.rate = 0.9 if budget else 0.3
        self._check_holdout()
        if not 0.0 < self.rate < 1.0:
            raise InputError(f"--rate {self.rate}: must be between 0 and 1 (a fraction of conv filters)")
        if not 0.0 < self.step <= 1.0:
            raise InputError(f"--step {self.step}: must be in (0, 1]")
        if self.method not in METHODS:
            raise InputError(f"--method {self.method}: choose from {', '.join(METHODS)}")
        if self.head not in ("fit", "keep"):
            raise InputError(f"--head {self.head}: choose fit or keep")
        if self.rescore not in RESCORE_CHOICES:
            raise InputError(f"--rescore {self.rescore}: must be one of {', '.join(RESCORE_CHOICES)}")
        if self.round_to < 1:
            raise InputError(f"--round-to {self.round_to}: must be a positive integer (1 turns rounding off)")
        if self.shots < 1:
            raise InputError(f"--shots {self.shots}: must be at least 1")
        if self.data is None:
            raise InputError("--data: required (an image folder root/<class>/<image>)")
        if self.method == "dpx":
            self.controller_config()
            if self.signal not in SIGNALS:
                raise InputError(f"--signal {self.signal}: choose from {', '.join(SIGNALS)}")

    def _check_holdout(self) -> None:
        held_out = self.max_drop is not None and self.signal == "refit" and self.method != "dpx"
        if isinstance(self.holdout_folds, bool) or not isinstance(self.holdout_folds, int) or self.holdout_folds < 0 \
                or self.holdout_folds == 1:
            raise InputError(f"--holdout-folds {self.holdout_folds}: must be 0 (off) or an integer >= 2")
        if self.holdout_folds and not held_out:
            raise InputError(f"--holdout-folds {self.holdout_folds}: cross-validates the budget's estimate: needs "
                             "--max-drop, the re-fitted ridge head and a method other than dpx (the controller "
                             "judges its candidates in-sample)")

    def controller_config(self) -> ControllerConfig:
        return ControllerConfig(s_max=self.step, s_min_units=self.s_min_units, delta=self.delta, tau=self.tau,
                                m=self.m, p_max=self.rate, rescore=self.rescore,
                                floor=0.0 if self.max_drop is not None else None)

    def to_dict(self) -> dict:
        return asdict(self)


def config_hash(config: PruneConfig) -> str:
    """What a finished prune stage is keyed by: the resolved config (with dataset and weights paths)."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()


# The deploy config: the prune keys above at the top level, plus these sections.
EXPORT_PRECISIONS = ("fp32", "int8")
INT8_MAX_DROP = 0.01  # the pruning budget's default: INT8 may cost at most one point on the small-set estimate


@dataclass(frozen=True)
class ExportSettings:
    """The `export:` section: how OUT/dense.onnx and OUT/model.onnx are written (both parity-gated)."""

    exporter: str = "auto"  # dynamo, falling back to the TorchScript tracer
    precision: str = "fp32"  # int8: also OUT/model.int8.onnx, gated per class on the small set
    simplifier: str = "onnxsim"  # onnxsim (onnx-simplifier) or onnxslim; the parity gate judges either

    @classmethod
    def from_section(cls, section, where: str) -> ExportSettings:
        from exporters.onnx import EXPORTERS, SIMPLIFIERS

        settings = cls(**section_keys(cls, section, where, "export"))
        for key, choices in (("exporter", EXPORTERS), ("precision", EXPORT_PRECISIONS), ("simplifier", SIMPLIFIERS)):
            if getattr(settings, key) not in choices:
                raise InputError(f"{where}: export: {key} {getattr(settings, key)!r}: choose from {', '.join(choices)}")
        return settings


@dataclass(frozen=True)
class TensorRTSettings:
    """The `tensorrt:` section: engines of both models per precision (built only where TensorRT and a GPU are)."""

    precisions: tuple = ("fp16",)  # fp32, fp16, int8
    batch_sizes: tuple = (1, 1, 8)  # min, opt, max of the engines' dynamic batch
    cache_dir: str | None = None  # engine and timing caches; None: ~/.cache/edgeprune/tensorrt

    @classmethod
    def from_section(cls, section, where: str) -> TensorRTSettings | None:
        """None when the config has no such section (no engines are built)."""
        from exporters.tensorrt import check_batch_sizes, check_precision, default_cache_dir

        if section is None:
            return None
        values = section_keys(cls, section, where, "tensorrt")
        precisions = values.get("precisions", list(cls.precisions))
        if isinstance(precisions, str):
            precisions = [precisions]
        if not isinstance(precisions, list) or not precisions:
            raise InputError(f"{where}: tensorrt: precisions must be a list such as [fp16, int8]")
        try:
            for precision in precisions:
                check_precision(precision)
            batch_sizes = check_batch_sizes(values.get("batch_sizes", cls.batch_sizes))
        except InputError as exc:
            raise InputError(f"{where}: tensorrt: {exc}") from None
        cache_dir = values.get("cache_dir")
        return cls(tuple(dict.fromkeys(precisions)), batch_sizes,
                   os.path.expanduser(cache_dir) if cache_dir else str(default_cache_dir()))

    def to_dict(self) -> dict:
        return {"precisions": list(self.precisions), "batch_sizes": list(self.batch_sizes), "cache_dir": self.cache_dir}


@dataclass(frozen=True)
class DeploySettings:
    """What `deploy` does besides pruning: the sections of its config."""

    assets: str | None = None  # write the packaged default images here first
    export: ExportSettings = field(default_factory=ExportSettings)
    bench: BenchSettings = field(default_factory=BenchSettings)
    tensorrt: TensorRTSettings | None = None

    @classmethod
    def from_sections(cls, sections: dict, where: str) -> DeploySettings:
        assets = sections.get("assets")
        if assets is not None and not isinstance(assets, str):
            raise InputError(f"{where}: assets: expected a folder path, got {assets!r}")
        return cls(assets=assets, export=ExportSettings.from_section(sections.get("export"), where),
                   bench=BenchSettings.from_section(sections.get("bench"), where),
                   tensorrt=TensorRTSettings.from_section(sections.get("tensorrt"), where))

    def to_dict(self) -> dict:
        return {"assets": self.assets, "export": asdict(self.export), "bench": self.bench.to_dict(),
                "tensorrt": None if self.tensorrt is None else self.tensorrt.to_dict()}


DEPLOY_SECTIONS = tuple(f.name for f in fields(DeploySettings))


def read_config_file(path: pathlib.Path) -> tuple[dict, dict]:
    """(prune options, deploy sections) of a YAML config; a one-line InputError for a bad file or unknown key."""
    import yaml

    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of options at the top level")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - {f.name for f in fields(PruneConfig)} - set(DEPLOY_SECTIONS))
    if unknown:
        raise InputError(f"{path}: unknown option(s) {', '.join(unknown)}")
    sections = {k: data.pop(k) for k in DEPLOY_SECTIONS if k in data}
    return data, sections
