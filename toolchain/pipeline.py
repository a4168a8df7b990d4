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

from runtime_bench.accuracy import classification_metrics
from runtime_bench.errors import InputError

from .controller import ControllerConfig, Unit, run_controller
from .curves import class_averaged_auc, rate_grid, state_at_rates, step_ends
from .data import (
    Preprocessing,
    check_same_classes,
    load_images,
    preprocessing_from_weights,
    sample_k_shot,
    scan_image_folder,
)
from .head import fit_head
from .models import ModelSource, build_model, check_logits, find_head, is_weights_file, torchvision_weights
from .relevance import l1_filter_scores, lrp_filter_scores, random_filter_scores, taylor_filter_scores
from .signals import SIGNALS, ControlSignal
from .surgery import PruningGraph, as_selection, rank_chunks, select_channels

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
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    method: str = "lrp"
    rate: float = 0.3
    step: float = 0.05
    round_to: int = 8
    head_rule: str = "epsilon"
    allow_fallback: bool = False  # gradient x input, with a warning, for layers without an LRP rule
    batch_size: int = 32
    seed: int = 0
    # The accuracy-aware controller (--method dpx, METHOD.md); `step` is its s_max, `rate` its p_max.
    delta: float = 0.0
    tau: float | None = None
    m: int = 8
    s_min_units: int = 1
    rescore: str = "accepted"
    signal: str = "small-accuracy"  # A(M): see toolchain/signals.py
    class_weighted: bool = False  # starting relevance of each sample 1 / (its class's A value)
    # Ablations, reported beside (never instead of) the no-fine-tuning accuracy at every curve point.
    ablations: bool = False

    def check(self) -> None:
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
                                m=self.m, p_max=self.rate, rescore=self.rescore)

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
    else:
        fit_head(model, small_x, small_y, len(classes), head_name)
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
    return Task(model, source, prep, classes, head_name, small_x, small_y, test_x, test_y, skipped)


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


def ablation_accuracies(model: nn.Module, task: Task) -> dict:
    """Test accuracy after re-fitting the head, and after recalibrating BatchNorm, on the small set only."""
    classes = len(task.classes)
    refit = copy.deepcopy(model)
    fit_head(refit, task.small_x, task.small_y, classes, task.head_name)
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


def curve_point(model: nn.Module, graph: PruningGraph, task: Task, example: torch.Tensor,
                ablations: bool = False) -> dict:
    macs, params = tp.utils.count_ops_and_params(model, example)
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
    }
    if ablations:
        point["ablations"] = ablation_accuracies(model, task)
    return point


class TorchPrunable:
    """The controller's view of a real model: chunks as units, A by masking, commits by shrinking.

    Scores are kept in each conv's ORIGINAL channel numbering, so they stay valid after a commit
    shifts the current indices (needed when relevance is not recomputed after every commit).
    """

    def __init__(self, task: Task, config: PruneConfig, graph: PruningGraph, scorer, record):
        self.task, self.config, self.graph = task, config, graph
        self.original_filters = graph.original_filters
        self.scorer, self.record = scorer, record
        self.scores: dict[str, torch.Tensor] = {}
        self.head = task.model.get_submodule(task.head_name)
        self.signal = ControlSignal(config.signal, task.model, task.head_name, task.small_x, task.small_y,
                                    len(task.classes))

    def head_inputs(self, selection: dict[str, list[int]]) -> list[int]:
        """Positions of the head's input features that removing `selection` takes away."""
        positions: list[int] = []
        for root, channels in selection.items():
            group = self.graph.graph.get_pruning_group(self.graph.modules[root], tp.prune_conv_out_channels, channels)
            for dep, idxs in group:
                if dep.target.module is self.head and not self.graph.graph.is_out_channel_pruning_fn(dep.handler):
                    positions.extend(int(i) for i in idxs)
        return positions

    def rescore(self) -> None:
        for name, score in self.scorer().items():
            full = torch.zeros(self.graph.original_out[name], dtype=torch.float64)
            full[self.graph.kept[name]] = score
            self.scores[name] = full

    def ranked_units(self) -> list[Unit]:
        current = {name: full[self.graph.kept[name]] for name, full in self.scores.items()}
        chunks = rank_chunks(self.graph.groups(), current, self.config.round_to)
        return [Unit(key=c, filters=c.filters, score=c.score) for c in chunks]

    def harmonic_mean(self) -> float:
        return self.signal()

    def harmonic_mean_without(self, units: list[Unit]) -> float:
        selection = as_selection([u.key for u in units])
        zeroed = self.graph.zeroed_inputs(selection)
        if zeroed is None:  # a LayerNorm reads them: only the weight mask normalises it over the kept channels
            with self.graph.mask(selection):
                return self.signal(self.head_inputs(selection), self.graph.masked_modules)
        return self.signal(zeroed.get(self.head, []), zeroed=zeroed)

    def commit(self, units: list[Unit]) -> None:
        selection = as_selection([u.key for u in units])
        self.signal.drop_inputs(self.head_inputs(selection))
        for root, channels in selection.items():
            self.graph.prune(root, channels)
        self.signal.refresh(self.graph.pruned_modules)
        self.graph.pruned_modules = set()
        self.record()

    def pruned_fraction(self) -> float:
        return self.graph.pruned_fraction


def prune_with_controller(task: Task, config: PruneConfig, progress: bool = True) -> PruneResult:
    """--method dpx: the accuracy-aware controller of METHOD.md, LRP scores, physical shrinking."""
    started = time.perf_counter()
    model = task.model
    example = task.small_x[:2]
    graph = PruningGraph(model, example, protected=[model.get_submodule(task.head_name)])
    controller_config = config.controller_config()
    curve = [curve_point(model, graph, task, example, config.ablations)]
    next_grid = [config.step]

    def record():  # a curve point each time the rate crosses the next multiple of `step`
        if graph.pruned_fraction + 1e-9 >= next_grid[0] or graph.pruned_fraction >= config.rate - 1e-9:
            curve.append(curve_point(model, graph, task, example, config.ablations))
            while next_grid[0] <= graph.pruned_fraction + 1e-9:
                next_grid[0] += config.step

    def scorer():
        weights = prunable.signal.sample_weights() if config.class_weighted else None
        return filter_scores("lrp", model, task, config, progress, torch.Generator(), weights)

    prunable = TorchPrunable(task, config, graph, scorer, record)
    bar = tqdm(total=round(100 * config.rate), desc="pruning (dpx)", unit="%", disable=not progress)

    def on_event(event):
        bar.n = round(100 * graph.pruned_fraction)
        bar.set_postfix(last=event["kind"], A=f"{event.get('a_after', 0):.3f}", refresh=True)

    log = run_controller(prunable, controller_config, on_event)
    bar.close()
    if curve[-1]["filters"] != graph.filters:
        curve.append(curve_point(model, graph, task, example, config.ablations))
    return PruneResult(model, graph, curve, time.perf_counter() - started, log.relevance_passes, log.to_dict())


def prune(task: Task, config: PruneConfig, progress: bool = True) -> PruneResult:
    """Iterative global pruning to `config.rate`, re-scoring after every step, shrinking physically."""
    if config.method == "dpx":
        return prune_with_controller(task, config, progress)
    started = time.perf_counter()
    model = task.model
    head = model.get_submodule(task.head_name)
    example = task.small_x[:2]
    graph = PruningGraph(model, example, protected=[head])
    generator = torch.Generator().manual_seed(config.seed)
    target = int(round(config.rate * graph.original_filters))
    check_reachable(graph, target, config)
    ends = step_ends(config.step, graph.original_filters, target)
    curve = [curve_point(model, graph, task, example, config.ablations)]
    passes = 0
    bar = tqdm(total=len(ends), desc=f"pruning ({config.method})", unit="step", disable=not progress)
    removed = 0
    for end in ends:
        goal = end - removed
        if goal <= 0:  # chunks larger than a step: the last one already went past this step's end
            bar.update(1)
            continue
        scores = filter_scores(config.method, model, task, config, progress, generator)
        passes += config.method == "lrp"
        selection = select_channels(graph.groups(), scores, goal, config.round_to)
        if not selection:  # check_reachable said this cannot happen; never loop forever if it is wrong
            raise InputError(
                f"--rate {config.rate}: cannot be reached: after {graph.pruned_fraction:.1%} every layer is at its "
                f"minimum of {config.round_to} channels; lower --rate or --round-to"
            )
        for root, channels in selection.items():
            graph.prune(root, channels)
        removed = graph.original_filters - graph.filters
        curve.append(curve_point(model, graph, task, example, config.ablations))
        bar.update(1)
        bar.set_postfix(rate=f"{graph.pruned_fraction:.3f}", acc=f"{curve[-1]['accuracy']:.3f}", refresh=False)
    bar.close()
    return PruneResult(model, graph, curve, time.perf_counter() - started, passes)


def check_reachable(graph: PruningGraph, target: int, config: PruneConfig) -> None:
    """Before any scoring: can `target` filters go at all, with every group keeping its `round_to` channels?"""
    groups = graph.groups()
    zeros = {member: torch.zeros(group.size) for group in groups for member in group.members}
    removable = sum(chunk.filters for chunk in rank_chunks(groups, zeros, config.round_to))
    if target > removable:
        raise InputError(
            f"--rate {config.rate}: cannot be reached: at most {removable / graph.original_filters:.1%} of the conv "
            f"filters can be removed with --round-to {config.round_to} (each layer keeps at least "
            f"{config.round_to} channels); lower --rate or --round-to"
        )


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
