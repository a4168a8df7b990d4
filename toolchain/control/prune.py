"""The pruning loops: the accuracy-aware controller (`--method dpx`) and plain iterative global pruning
(lrp, taylor, l1, random), each re-scoring the shrunk model, re-fitting the head, and stopping at the
budget; a curve point (test and small-set figures, MACs, an indicative latency) after every step.

Steps are `step` x the ORIGINAL filter count. With a budget (--max-drop, --max-macs) the model returned
is the last state within it."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from runtime_bench.accuracy import classification_metrics
from runtime_bench.errors import InputError

from ..complexity import macs_and_params
from ..config import PruneConfig
from ..head import fit_head
from ..scoring import SCORERS, ScoreOptions
from ..surgery import PruningGraph, select_channels
from ..task import Task
from .controller import run_controller
from .curves import step_ends
from .state import PruningState, check_reachable


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


def filter_scores(method: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: PruneConfig,
                  progress: bool, generator: torch.Generator,
                  sample_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The scores of `method` (scoring.SCORERS) on `images`, with a progress bar for relevance passes."""
    bar = tqdm(total=len(images), desc="relevance pass", unit="img", leave=False,
               disable=not progress or method != "lrp")
    options = ScoreOptions(batch_size=config.batch_size, head_rule=config.head_rule,
                           allow_fallback=config.allow_fallback, sample_weights=sample_weights,
                           generator=generator, progress=bar.update)
    try:
        return SCORERS[method](model, images, labels, options)
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
        "estimate": state.decider.estimate(),  # small set only: what a budget decides by
    }
    if state.holdout is not None:  # beside it, the leave-one-out estimate of the head alone
        point["in_sample_estimate"] = state.estimator.estimate()
    if state.config.ablations:
        point["ablations"] = ablation_accuracies(model, task)
    return point


def prune_with_controller(task: Task, config: PruneConfig, progress: bool = True) -> PruneResult:
    """--method dpx: the accuracy-aware controller of the method (docs/method.md), LRP scores, physical shrinking."""
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
        return filter_scores("lrp", model, task.small_x, task.small_y, config, progress, torch.Generator(), weights)

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
    shadow_generator = torch.Generator().manual_seed(config.seed + 1)

    def shadow_scores(shadow, images, labels):
        return filter_scores(config.method, shadow, images, labels, config, False, shadow_generator)

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
        scores = filter_scores(config.method, model, task.small_x, task.small_y, config, progress, generator)
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
        if state.holdout is not None:  # the shadows take the same step, each choosing on its own images
            state.holdout.step(removed, shadow_scores, config.round_to)
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
