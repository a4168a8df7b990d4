"""The pruning stage: data and model in, pruned model, plan and accuracy curve out.

prepare() loads the model, the small labelled set and the test set, and fits the head on the frozen
backbone. prune() removes conv filters in steps of `step` x the ORIGINAL filter count, re-scoring the
shrunk model after every step, until `rate` of the filters are gone; it records a curve point per step.
"""

from __future__ import annotations

import copy
import pathlib
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from tqdm import tqdm

from runtime_bench.accuracy import classification_metrics, harmonic_mean
from runtime_bench.errors import InputError

from .compensation import Compensation
from .complexity import macs_and_params
from .controller import ControllerConfig, Unit, check_max_drop, is_number, run_controller
from .costs import COSTS, channel_costs
from .curves import class_averaged_auc, rate_grid, state_at_rates, step_ends
from .data import (
    Preprocessing,
    check_same_classes,
    load_images,
    preprocessing_from_weights,
    sample_k_shot,
    scan_image_folder,
)
from .head import HEAD_SOLVERS, choose_ridge_alpha, fit_head, head_features, refit_linear
from .models import ModelSource, build_model, check_logits, find_head, is_weights_file, torchvision_weights
from .relevance import l1_filter_scores, lrp_filter_scores, random_filter_scores, taylor_filter_scores
from .signals import SIGNALS, AccuracyBudget, ControlSignal
from .surgery import PruningGraph, as_selection, rank_chunks, removable_chunks, select_channels

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
    cost: str = "filters"  # rank by relevance / what a channel's removal saves: filters, macs, latency
    profile_backend: str | None = None  # --cost latency: the runtime the per-layer profile is measured on
    head_rule: str = "epsilon"
    allow_fallback: bool = False  # gradient x input, with a warning, for ops without an LRP rule
    batch_size: int = 32
    seed: int = 0
    # The accuracy-aware controller (--method dpx, METHOD.md); `step` is its s_max, `rate` its p_max.
    delta: float = 0.0
    tau: float | None = None
    m: int = 8
    s_min_units: int = 1
    rescore: str = "accepted"
    signal: str | None = None  # A(M), see toolchain/signals.py; None: refit with --refit-head, else crossfit-probability
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
        if not 0.0 < self.rate < 1.0:
            raise InputError(f"--rate {self.rate}: must be between 0 and 1 (a fraction of conv filters)")
        if not 0.0 < self.step <= 1.0:
            raise InputError(f"--step {self.step}: must be in (0, 1]")
        if self.method not in METHODS:
            raise InputError(f"--method {self.method}: choose from {', '.join(METHODS)}")
        if self.head not in ("fit", "keep"):
            raise InputError(f"--head {self.head}: choose fit or keep")
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

    def controller_config(self) -> ControllerConfig:
        return ControllerConfig(s_max=self.step, s_min_units=self.s_min_units, delta=self.delta, tau=self.tau,
                                m=self.m, p_max=self.rate, rescore=self.rescore,
                                floor=0.0 if self.max_drop is not None else None)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Task:
    """A model with its head fitted and the data it is pruned and judged on."""

    model: nn.Module
    source: ModelSource
    preprocessing: Preprocessing
    classes: list[str]
    head_name: str
    small_x: torch.Tensor
    small_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    skipped: list[str] = field(default_factory=list)
    head_solver: str = "ridge"
    head_alpha: float | None = None  # the ridge head's strength, chosen on the dense model (leave-one-out)


def resolve_preprocessing(config: PruneConfig) -> Preprocessing:
    is_torchvision = not (":" in config.model and config.model.split(":", 1)[0].endswith(".py"))
    if is_torchvision and not is_weights_file(config.weights) and config.mean is None and config.std is None:
        enum = torchvision_weights(config.model, config.weights)
        if enum is not None:
            return preprocessing_from_weights(enum, config.image_size)
    return Preprocessing(
        image_size=config.image_size or 224,
        mean=tuple(config.mean or IMAGENET_MEAN),
        std=tuple(config.std or IMAGENET_STD),
    )


def _balanced_cap(samples, cap: int | None, seed: int):
    if cap is None or cap >= len(samples):
        return samples
    rng = np.random.default_rng(seed + 1)
    by_class: dict[int, list] = {}
    for s in sorted(samples):
        by_class.setdefault(s[1], []).append(s)
    per_class = max(1, cap // len(by_class))
    picked = []
    for label in sorted(by_class):
        items = by_class[label]
        for i in sorted(rng.choice(len(items), size=min(per_class, len(items)), replace=False).tolist()):
            picked.append(items[i])
    return picked


def prepare(config: PruneConfig, progress: bool = True) -> Task:
    config.check()
    small_index = scan_image_folder(config.data)
    small, rest = sample_k_shot(small_index, config.shots, config.seed, config.allow_fewer)
    if config.test_data:
        test_index = scan_image_folder(config.test_data)
        check_same_classes(small_index, test_index)
        test = test_index.samples
    else:
        test = rest
    test = _balanced_cap(test, config.test_size, config.seed)
    tested = {label for _, label in test}
    for label, cls in enumerate(small_index.classes):
        if label not in tested:  # only without --test-data: --allow-fewer put all of a class in the small set
            count = sum(1 for _, other in small if other == label)
            raise InputError(f"{config.data}/{cls}: all {count} images are in the small set (--shots "
                             f"{config.shots}), none is left to test on; give --test-data")

    prep = resolve_preprocessing(config)
    source = ModelSource(model=config.model, weights=config.weights, output=config.output)
    model = build_model(source)
    classes = small_index.classes

    small_x, small_y, skipped_small = load_images(small, prep, progress, config.strict)
    test_x, test_y, skipped_test = load_images(test, prep, progress, config.strict)
    skipped = skipped_small + skipped_test
    small_x, small_y = torch.from_numpy(small_x), torch.from_numpy(small_y)
    test_x, test_y = torch.from_numpy(test_x), torch.from_numpy(test_y)

    outputs = check_logits(model, small_x[:2], config.model)
    head_name, _ = find_head(model, small_x[:2])
    if config.head == "keep":
        if outputs != len(classes):
            raise InputError(
                f"--head keep: the model has {outputs} outputs but {config.data} has {len(classes)} classes; "
                "use --head fit"
            )
        head_alpha = None
    else:
        head_alpha = choose_ridge_alpha(head_features(model, small_x, head_name), small_y, len(classes)) \
            if config.head_solver == "ridge" else None
        fit_head(model, small_x, small_y, len(classes), head_name, config.head_solver, head_alpha)
    # Said once the inputs are loaded and checked, not an hour later in the manifest.
    short = [(cls, count) for cls, count in zip(classes, np.bincount([label for _, label in small],
                                                                     minlength=len(classes)))
             if count < config.shots]
    if short:
        print(f"warning: {len(short)} class{'es' * (len(short) > 1)} with fewer images than --shots {config.shots} "
              f"(first: {config.data}/{short[0][0]}: {short[0][1]} images); all of their images are in the small set",
              file=sys.stderr)
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image file{'s' * (len(skipped) > 1)} (first: "
              f"{skipped[0]}); --strict stops on them instead", file=sys.stderr)
    return Task(model, source, prep, classes, head_name, small_x, small_y, test_x, test_y, skipped,
                config.head_solver, head_alpha)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    predictions = predict(model, images).argmax(1).numpy()
    return classification_metrics(predictions, labels.numpy(), num_classes)


def torch_latency_ms(model: nn.Module, example: torch.Tensor, runs: int = 20) -> float:
    """Median PyTorch CPU latency of one batch: a cheap per-step indicator; ONNX Runtime gives the real figure."""
    with torch.no_grad():
        for _ in range(3):
            model(example)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def filter_scores(method: str, model: nn.Module, task: Task, config: PruneConfig, progress: bool,
                  generator: torch.Generator, sample_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    if method == "l1":
        return l1_filter_scores(model)
    if method == "random":
        return random_filter_scores(model, generator)
    if method == "taylor":
        return taylor_filter_scores(model, task.small_x, task.small_y, config.batch_size)
    bar = tqdm(total=len(task.small_x), desc="relevance pass", unit="img", leave=False, disable=not progress)
    try:
        return lrp_filter_scores(model, task.small_x, task.small_y, config.batch_size, config.head_rule,
                                 sample_weights, progress=bar.update, allow_fallback=config.allow_fallback)
    finally:
        bar.close()


@dataclass
class PruneResult:
    model: nn.Module
    graph: PruningGraph
    curve: list[dict]
    seconds: float
    relevance_passes: int
    controller: dict | None = None  # the dpx controller's log: every accepted and rejected step
    stopped: str | None = None  # why pruning ended before --rate (a budget), None when it reached it
    budget: dict | None = None  # the dense model's small-set estimate that --max-drop is measured from
    explored: list[dict] = field(default_factory=list)  # curve points past the chosen state, undone


def ablation_accuracies(model: nn.Module, task: Task) -> dict:
    """Test accuracy after re-fitting the head, and after recalibrating BatchNorm, on the small set only."""
    classes = len(task.classes)
    refit = copy.deepcopy(model)
    fit_head(refit, task.small_x, task.small_y, classes, task.head_name, task.head_solver, task.head_alpha)
    recal = copy.deepcopy(model)
    for m in recal.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the small set
    recal.train()
    with torch.no_grad():
        recal(task.small_x)
    refit_metrics = evaluate(refit, task.test_x, task.test_y, classes)
    recal_metrics = evaluate(recal, task.test_x, task.test_y, classes)
    return {"refit_head": {k: refit_metrics[k] for k in ("accuracy", "harmonic_mean")},
            "bn_recalibrated": {k: recal_metrics[k] for k in ("accuracy", "harmonic_mean")}}


def curve_point(state: PruningState) -> dict:
    model, graph, task, example = state.task.model, state.graph, state.task, state.example
    macs, params = macs_and_params(model, example)
    test = evaluate(model, task.test_x, task.test_y, len(task.classes))
    small = evaluate(model, task.small_x, task.small_y, len(task.classes))
    point = {
        "rate": round(graph.pruned_fraction, 6),
        "filters": graph.filters,
        "macs": int(macs),
        "params": int(params),
        "accuracy": test["accuracy"],
        "harmonic_mean": test["harmonic_mean"],
        "per_class": test["per_class"],
        "small_set_accuracy": small["accuracy"],
        "small_set_harmonic_mean": small["harmonic_mean"],
        "torch_latency_ms": torch_latency_ms(model, example[:1]),
        "estimate": state.estimator.estimate(),  # small set only: what a budget decides by
    }
    if state.config.ablations:
        point["ablations"] = ablation_accuracies(model, task)
    return point


class PruningState:
    """A model being pruned, with everything a step needs: the pruning graph, the head (re-fitted after
    every step with --refit-head), the small-set estimate and budget, the MACs target, the cost model.

    It is also the controller's view of the model (`PrunableModel`): chunks as units, A by zeroing the
    inputs a candidate would take away, commits by shrinking. Scores are kept in each conv's ORIGINAL
    channel numbering, so they stay valid after a commit shifts the current indices (needed when
    relevance is not recomputed after every commit). With --compensate a candidate is judged without the
    compensation its commit will bring (one closed-form solve per reading layer is too dear per candidate).
    """

    def __init__(self, task: Task, config: PruneConfig):
        self.task, self.config = task, config
        model = task.model
        self.example = task.small_x[:2]
        self.head = model.get_submodule(task.head_name)
        self.graph = graph = PruningGraph(model, self.example, protected=[self.head])
        if graph.unprunable:
            (root, why), count = next(iter(graph.unprunable.items())), len(graph.unprunable)
            print(f"note: {count} channel group{'s' * (count > 1)} left whole, pruning them would change what the "
                  f"model computes (first: {root}: {why})")
        self.original_filters = graph.original_filters
        self.refit = bool(config.refit_head)
        classes = len(task.classes)
        # The estimate a state is judged by (small set only), and the controller's own A when it differs.
        kind = "small-accuracy" if config.head == "keep" else ("refit" if self.refit else "crossfit-accuracy")
        self.estimator = ControlSignal(kind, model, task.head_name, task.small_x, task.small_y, classes,
                                       alpha=task.head_alpha)
        self.signal = self.estimator
        if config.method == "dpx" and config.signal != kind and config.max_drop is None:
            self.signal = ControlSignal(config.signal, model, task.head_name, task.small_x, task.small_y, classes,
                                        alpha=task.head_alpha, head_inputs=self.estimator.head_inputs)
        self.budget = AccuracyBudget(self.estimator, config.max_drop, task.classes) \
            if config.max_drop is not None else None
        self.dense_macs = self.macs()
        if config.max_macs is not None:
            check_macs_reachable(graph, config, self.example, self.dense_macs)
        profile = None
        if config.cost == "latency":  # measured on the model as it is now: the dense one
            from exporters.profile import layer_latency_profile

            profile = layer_latency_profile(model, self.example[:1], config.profile_backend)
        self.costs = channel_costs(config.cost, graph, self.example, profile)
        self.compensation = Compensation(self.estimator.head_inputs, skip={self.head}) if config.compensate else None
        self.scores: dict[str, torch.Tensor] = {}
        self.scorer = None  # set by the caller: () -> filter scores of the current model
        self.record = lambda: None  # called after every commit

    def macs(self) -> int:
        return macs_and_params(self.task.model, self.example)[0]

    def head_inputs(self, selection: dict[str, list[int]]) -> list[int]:
        """Positions of the head's input features that removing `selection` takes away."""
        positions: list[int] = []
        for root, channels in selection.items():
            group = self.graph.graph.get_pruning_group(self.graph.modules[root], tp.prune_conv_out_channels, channels)
            for dep, idxs in group:
                if dep.target.module is self.head and not self.graph.graph.is_out_channel_pruning_fn(dep.handler):
                    positions.extend(int(i) for i in idxs)
        return positions

    def per_class_without(self, selection: dict[str, list[int]], signal: ControlSignal) -> list[float]:
        """`signal`'s per-class values for the model with `selection` removed; leaves the model unchanged."""
        zeroed = self.graph.zeroed_inputs(selection)
        if zeroed is None:  # a LayerNorm reads them: only the weight mask normalises it over the kept channels
            with self.graph.mask(selection):
                return signal.per_class(self.head_inputs(selection), self.graph.masked_modules)
        return signal.per_class(zeroed.get(self.head, []), zeroed=zeroed)

    def value(self, per_class: list[float]) -> float:
        """What the controller maximises: the budget's slack under a budget, else the harmonic mean."""
        return self.budget.slack(per_class) if self.budget is not None else harmonic_mean(per_class)

    def within_budget(self) -> bool:
        return self.budget is None or self.budget.slack(self.estimator.per_class()) >= 0

    def snapshot(self) -> tuple[nn.Module, dict[str, list[int]]]:
        return copy.deepcopy(self.task.model), copy.deepcopy(self.graph.kept)

    def restore(self, snapshot: tuple[nn.Module, dict[str, list[int]]]) -> tuple[nn.Module, PruningGraph]:
        """The model and graph of an earlier snapshot (the state object itself is done after this)."""
        model, kept = snapshot
        graph = PruningGraph(model, self.example, protected=[model.get_submodule(self.task.head_name)], verify=False)
        graph.kept, graph.original_out, graph.original_filters = kept, self.graph.original_out, self.original_filters
        graph.unprunable = self.graph.unprunable  # verified on the dense model; the snapshot is one of its states
        return model, graph

    def commit_selection(self, selection: dict[str, list[int]]) -> None:
        positions = self.head_inputs(selection)
        readers = [consumer for consumer, _ in self.graph.readers(selection)] if self.compensation else []
        for signal in {id(s): s for s in (self.estimator, self.signal)}.values():
            signal.drop_inputs(positions)
        for root, channels in selection.items():
            self.graph.prune(root, channels)
        self.estimator.refresh(self.graph.pruned_modules)  # the signals share one activation cache
        self.graph.pruned_modules = set()
        if readers:
            names = self.graph.names
            self.compensation(readers, {m: self.graph.kept[names[m]] for m in readers if names[m] in self.graph.kept})
        if self.refit:  # the next relevance pass and every later estimate read the re-fitted head
            refit_linear(self.head, self.estimator.head_inputs(), self.task.small_y, len(self.task.classes),
                         self.config.head_solver, self.task.head_alpha)
        self.record()

    def target_reached(self) -> bool:
        return self.config.max_macs is not None and self.macs() <= self.config.max_macs * self.dense_macs

    # The controller's interface (PrunableModel).
    def rescore(self) -> None:
        for name, score in self.scorer().items():
            full = torch.zeros(self.graph.original_out[name], dtype=torch.float64)
            full[self.graph.kept[name]] = score
            self.scores[name] = full

    def ranked_units(self) -> list[Unit]:
        current = {name: full[self.graph.kept[name]] for name, full in self.scores.items()}
        groups = self.graph.groups()
        chunks = rank_chunks(groups, current, self.config.round_to, self.costs(groups) if self.costs else None)
        return [Unit(key=c, filters=c.filters, score=c.score) for c in chunks]

    def harmonic_mean(self) -> float:
        return self.value(self.signal.per_class())

    def harmonic_mean_without(self, units: list[Unit]) -> float:
        return self.value(self.per_class_without(as_selection([u.key for u in units]), self.signal))

    def commit(self, units: list[Unit]) -> None:
        self.commit_selection(as_selection([u.key for u in units]))

    def pruned_fraction(self) -> float:
        return self.graph.pruned_fraction


def prune_with_controller(task: Task, config: PruneConfig, progress: bool = True) -> PruneResult:
    """--method dpx: the accuracy-aware controller of the method (docs/METHOD.md), LRP scores, physical shrinking."""
    started = time.perf_counter()
    model = task.model
    state = PruningState(task, config)
    graph = state.graph
    controller_config = config.controller_config()
    curve = [curve_point(state)]
    next_grid = [config.step]

    def record():  # a curve point each time the rate crosses the next multiple of `step`
        if graph.pruned_fraction + 1e-9 >= next_grid[0] or graph.pruned_fraction >= config.rate - 1e-9:
            curve.append(curve_point(state))
            while next_grid[0] <= graph.pruned_fraction + 1e-9:
                next_grid[0] += config.step

    def scorer():
        weights = state.signal.sample_weights() if config.class_weighted else None
        return filter_scores("lrp", model, task, config, progress, torch.Generator(), weights)

    state.scorer, state.record = scorer, record
    bar = tqdm(total=round(100 * config.rate), desc="pruning (dpx)", unit="%", disable=not progress)

    def on_event(event):
        bar.n = round(100 * graph.pruned_fraction)
        bar.set_postfix(last=event["kind"], A=f"{event.get('a_after', 0):.3f}", refresh=True)

    log = run_controller(state, controller_config, on_event)
    bar.close()
    if curve[-1]["filters"] != graph.filters:
        curve.append(curve_point(state))
    return PruneResult(model, graph, curve, time.perf_counter() - started, log.relevance_passes, log.to_dict(),
                       stopped=log.stopped_early, budget=state.budget.dense if state.budget else None)


def prune(task: Task, config: PruneConfig, progress: bool = True) -> PruneResult:
    """Iterative global pruning to `config.rate`, re-scoring after every step, shrinking physically.

    With a budget (--max-drop, --max-macs) it stops before the first step that would leave the accuracy
    budget, or after the step that meets the MACs target: the model is the last state within budget."""
    if config.method == "dpx":
        return prune_with_controller(task, config, progress)
    started = time.perf_counter()
    model = task.model
    state = PruningState(task, config)
    graph = state.graph
    generator = torch.Generator().manual_seed(config.seed)
    target = check_reachable(graph, int(round(config.rate * graph.original_filters)), config)
    ends = step_ends(config.step, graph.original_filters, target)
    curve = [curve_point(state)]
    passes = 0
    stopped = None
    best = (state.snapshot(), 1) if state.budget is not None else None  # last state within budget, curve length
    bar = tqdm(total=len(ends), desc=f"pruning ({config.method})", unit="step", disable=not progress)
    removed = 0
    for end in ends:
        goal = end - removed
        if goal <= 0:  # chunks larger than a step: the last one already went past this step's end
            bar.update(1)
            continue
        scores = filter_scores(config.method, model, task, config, progress, generator)
        passes += config.method == "lrp"
        groups = graph.groups()
        selection = select_channels(groups, scores, goal, config.round_to, state.costs(groups) if state.costs else None)
        if not selection:  # check_reachable said this cannot happen; never loop forever if it is wrong
            raise InputError(
                f"--rate {config.rate}: cannot be reached: after {graph.pruned_fraction:.1%} every layer is at its "
                f"minimum of {config.round_to} channels; lower --rate or --round-to"
            )
        state.commit_selection(selection)
        removed = graph.original_filters - graph.filters
        curve.append(curve_point(state))
        bar.update(1)
        bar.set_postfix(rate=f"{graph.pruned_fraction:.3f}", acc=f"{curve[-1]['accuracy']:.3f}", refresh=False)
        if best is not None:
            if state.within_budget():
                best = (state.snapshot(), len(curve))
            elif len(curve) - best[1] > config.patience:
                stopped = (f"budget: the small-set estimate left --max-drop {config.max_drop} for {config.patience + 1} "
                           f"steps in a row; kept the last state within it")
                break
        if state.target_reached():
            stopped = f"target reached: MACs at most --max-macs {config.max_macs} of the dense model's"
            break
    bar.close()
    explored = []
    if best is not None and best[1] < len(curve):  # the steps past the last state within budget: undone
        if stopped is None:
            stopped = f"budget: the last {len(curve) - best[1]} steps to --rate {config.rate} left --max-drop; kept the last state within it"
        model, graph = state.restore(best[0])
        curve, explored = curve[: best[1]], curve[best[1]:]
    return PruneResult(model, graph, curve, time.perf_counter() - started, passes, stopped=stopped,
                       budget=state.budget.dense if state.budget else None, explored=explored)


def check_macs_reachable(graph: PruningGraph, config: PruneConfig, example: torch.Tensor, dense_macs: int) -> None:
    """--max-macs below what the model has left with every removable chunk gone (each layer keeps
    `round_to` channels) cannot be met: say so before any pruning."""
    floor_model = copy.deepcopy(graph.model)
    floor_graph = PruningGraph(floor_model, example, protected=[floor_model.get_submodule(
        graph.names[graph.protected[0]])] if graph.protected else [])
    groups = floor_graph.groups()
    for root, channels in as_selection(removable_chunks(groups, config.round_to)).items():
        floor_graph.prune(root, channels)
    least = macs_and_params(floor_model, example)[0]
    if least > config.max_macs * dense_macs:
        raise InputError(
            f"--max-macs {config.max_macs}: the dense model cannot be brought that low: with every layer at its "
            f"minimum of {config.round_to} channels it still has {least / dense_macs:.3f} of its MACs "
            f"({least / 1e6:.1f} M of {dense_macs / 1e6:.1f} M)")


def check_reachable(graph: PruningGraph, target: int, config: PruneConfig) -> int:
    """Before any scoring: can `target` filters go at all, with every group keeping its `round_to` channels?
    With a budget `--rate` is only a cap: the target is then what can go, at most. Returns the target."""
    groups = graph.groups()
    removable = sum(chunk.filters for chunk in removable_chunks(groups, config.round_to))
    if config.max_drop is not None or config.max_macs is not None:
        return min(target, removable)
    if target > removable:
        raise InputError(
            f"--rate {config.rate}: cannot be reached: at most {removable / graph.original_filters:.1%} of the conv "
            f"filters can be removed with --round-to {config.round_to} (each layer keeps at least "
            f"{config.round_to} channels); lower --rate or --round-to"
        )
    return target


AUC_SNAP = 0.01  # a step lands slightly above its grid rate (whole chunks are removed); it stands for it


def curve_auc(curve: list[dict], step: float, p_max: float) -> dict | None:
    """Class-averaged AUC of the test accuracy curve on the grid 0, step, ..., p_max (METHOD.md).

    The model state at a grid rate is the last curve point at or below it (+AUC_SNAP). None when p_max
    is not a multiple of step.
    """
    if abs(round(p_max / step) * step - p_max) > 1e-9:
        return None
    grid = rate_grid(p_max, step)
    states = state_at_rates([(p["rate"], p) for p in curve], [g + AUC_SNAP for g in grid])
    auc = class_averaged_auc(grid, [s["per_class"] for s in states], p_max)
    harmonic = [s["harmonic_mean"] for s in states]
    return dict(auc, grid=grid, rates_used=[s["rate"] for s in states],
                harmonic_mean_auc=float(np.trapezoid(harmonic, grid) / p_max),
                reached=curve[-1]["rate"] >= p_max - AUC_SNAP)


def chosen_state(curve: list[dict], classes: list[str], config: PruneConfig, result: PruneResult) -> dict:
    """The state the run ends on, what the small set said of it, what the test set says, and the gap."""
    dense, last = curve[0], curve[-1]

    def worst(point):
        c = min(range(len(classes)), key=lambda k: point["per_class"][k])
        return {"class": classes[c], "accuracy": point["per_class"][c]}

    return {
        "rate": last["rate"],
        "filters": last["filters"],
        "macs": last["macs"],
        "macs_reduction": dense["macs"] / last["macs"],
        "why": result.stopped or f"reached --rate {config.rate}",
        "budget": {"max_drop": config.max_drop, "max_macs": config.max_macs, "dense_estimate": result.budget},
        "estimate": last["estimate"],
        "dense_estimate": dense["estimate"],
        "test": {"accuracy": last["accuracy"], "harmonic_mean": last["harmonic_mean"], "worst": worst(last)},
        "dense_test": {"accuracy": dense["accuracy"], "harmonic_mean": dense["harmonic_mean"], "worst": worst(dense)},
        "estimate_minus_test": {k: last["estimate"][k] - last[k] for k in ("accuracy", "harmonic_mean")},
    }


def config_hash(config: PruneConfig) -> str:
    """What a finished prune stage is keyed by: the resolved config (with dataset and weights paths)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()


def manifest_for(task: Task, config: PruneConfig, result: PruneResult) -> dict:
    from .artifact import source_hashes

    source = dict(task.source.to_dict(), hashes=source_hashes(task.source))
    return {
        "source": source,
        "config": config.to_dict(),
        "config_hash": config_hash(config),
        "preprocessing": task.preprocessing.to_dict(),
        "classes": task.classes,
        "head": {"name": task.head_name, "fitted": config.head == "fit"},
        "plan": result.graph.plan(),
        "filters": {"original": result.graph.original_filters, "kept": result.graph.filters},
        "curve": result.curve,
        "auc": curve_auc(result.curve, config.step, config.rate),
        "cost": {"seconds": round(result.seconds, 2), "relevance_passes": result.relevance_passes},
        "controller": result.controller,
        "chosen": chosen_state(result.curve, task.classes, config, result),
        "explored": result.explored,
        "skipped_images": task.skipped,
        "images": {"small": len(task.small_y), "test": len(task.test_y)},
    }


def run_prune(config: PruneConfig, out: pathlib.Path, progress: bool = True) -> dict:
    from .artifact import save_pruned

    task = prepare(config, progress)
    dense_head = copy.deepcopy(task.model.get_submodule(task.head_name))  # pruning shrinks its inputs
    result = prune(task, config, progress)
    manifest = manifest_for(task, config, result)
    save_pruned(out, result.model, dense_head, manifest)
    return manifest


def test_arrays(manifest: dict, limit: int | None = None, progress: bool = True):
    """The test images of a pruning run, preprocessed as the manifest says (for export and bench)."""
    config = PruneConfig(**manifest["config"])
    small_index = scan_image_folder(config.data)
    if config.test_data:
        samples = scan_image_folder(config.test_data).samples
    else:
        _, samples = sample_k_shot(small_index, config.shots, config.seed, config.allow_fewer)
    samples = _balanced_cap(samples, limit if limit is not None else config.test_size, config.seed)
    images, labels, _ = load_images(samples, Preprocessing.from_dict(manifest["preprocessing"]), progress,
                                    config.strict)
    return images, labels


def small_arrays(manifest: dict, progress: bool = True):
    """The small labelled set of a pruning run, preprocessed as the manifest says (INT8 calibration data)."""
    config = PruneConfig(**manifest["config"])
    small, _ = sample_k_shot(scan_image_folder(config.data), config.shots, config.seed, config.allow_fewer)
    images, labels, _ = load_images(small, Preprocessing.from_dict(manifest["preprocessing"]), progress,
                                    config.strict)
    return images, labels
