"""The adapter that lets the controller drive a real model: `PruningState` is a model being pruned, with
its pruning graph, head, small-set estimate, budget and cost model, and the controller's `PrunableModel`."""

from __future__ import annotations

import copy

import torch
from torch import nn

from runtime_bench.accuracy import harmonic_mean
from runtime_bench.errors import InputError

from ..complexity import macs_and_params
from ..config import PruneConfig
from ..head import refit_linear
from ..surgery import PruningGraph, as_selection, rank_chunks, removable_chunks
from ..surgery.costs import channel_costs
from ..task import Task
from .compensation import Compensation
from .controller import Unit
from .holdout import HeldOutEstimate, apply_selection
from .signals import AccuracyBudget, ControlSignal


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
        self.dense_macs = self.macs()
        if config.max_macs is not None:
            check_macs_reachable(graph, config, self.example, self.dense_macs)
        profile = None
        if config.cost == "latency":  # measured on the model as it is now: the dense one
            from exporters.profile import layer_latency_profile

            profile = layer_latency_profile(model, self.example[:1], config.profile_backend)
        self.costs = channel_costs(config.cost, graph, self.example, profile)
        self.compensation = Compensation(self.estimator.head_inputs, skip={self.head}) if config.compensate else None
        # What a budget decides by: the estimate cross-validated over the whole procedure, where asked for.
        self.holdout = HeldOutEstimate(
            model, graph, task.head_name, task.small_x, task.small_y, classes, config.holdout_folds,
            config.head_solver, task.head_alpha, self.compensation,
            lambda shadow: channel_costs(config.cost, shadow, self.example, profile)) if config.holdout_folds else None
        self.decider = self.holdout or self.estimator
        self.budget = AccuracyBudget(self.decider, config.max_drop, task.classes) \
            if config.max_drop is not None else None
        self.scores: dict[str, torch.Tensor] = {}
        self.scorer = None  # set by the caller: () -> filter scores of the current model
        self.record = lambda: None  # called after every commit

    def macs(self) -> int:
        return macs_and_params(self.task.model, self.example)[0]

    def head_inputs(self, selection: dict[str, list[int]]) -> list[int]:
        """Positions of the head's input features that removing `selection` takes away."""
        return self.graph.input_positions(selection, self.head)

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
        return self.budget is None or self.budget.slack(self.decider.per_class()) >= 0

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
        for signal in {id(s): s for s in (self.estimator, self.signal)}.values():
            signal.drop_inputs(positions)
        # The signals share one activation cache.
        apply_selection(self.graph, self.estimator.head_inputs, self.compensation, selection)
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
