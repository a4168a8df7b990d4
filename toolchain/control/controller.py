"""The accuracy-aware pruning controller (DPX-SD, docs/method.md), as pure logic over an abstract pruner.

The controller never touches a torch model: it asks a `PrunableModel` for ranked units, for the
harmonic mean of per-class accuracies A with some units masked out, and tells it what to commit and
when to recompute relevance. That keeps the loop testable with a scripted fake and lets the pipeline
decide what a unit is (a chunk of channels of a channel group, see `surgery.select_channels`).

The loop (every number below is a `ControllerConfig` field):

    A_prev = A(M); rescore; step = s_max (in filters)
    while pruned_fraction < p_max:
        candidate = lowest-scoring units covering `step` filters (at least one unit)
        A_new = A(M without candidate)
        accept            if A_new >= A_prev - delta (or A_new >= tau * A_0): commit, step grows back x2
        change of RATE    elif the candidate has more than s_min_units units: halve the step
        change of ORDER   else: among the m lowest-scoring units commit the one that keeps A highest

With a `floor` (the accuracy budget: A is then the budget's slack, >= 0 while the small-set estimate is
within budget) a candidate is accepted iff A_new >= floor, and a change of order whose best unit falls
below the floor ends the run: the model is the last state that met the budget. A model may also end the
run by itself once its own target is met (`target_reached`, e.g. a MACs budget).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Hashable, Protocol, Sequence

from runtime_bench.errors import InputError

from .curves import RATE_TOLERANCE, step_ends

RESCORE_CHOICES = ("accepted", "step", "never")


@dataclass(frozen=True)
class Unit:
    """The smallest thing the controller removes: e.g. a chunk of channels of one channel group."""

    key: Hashable  # opaque to the controller; the pruner maps it back to channels
    filters: int  # conv filters its removal takes away (counts towards the pruning rate)
    score: float  # current relevance score; lower is removed first


class PrunableModel(Protocol):
    """What the controller needs from a model. Only `commit` and `rescore` change state."""

    original_filters: int

    def ranked_units(self) -> list[Unit]:
        """Removable units, lowest current score first."""
        ...

    def harmonic_mean_without(self, units: list[Unit]) -> float:
        """A of the current model with `units` masked out; leaves the model unchanged."""
        ...

    def commit(self, units: list[Unit]) -> None:
        """Remove `units` for good."""
        ...

    def rescore(self) -> None:
        """Recompute relevance scores on the current model (one relevance pass)."""
        ...

    def harmonic_mean(self) -> float:
        """A of the current model."""
        ...

    def pruned_fraction(self) -> float:
        """Fraction of the ORIGINAL conv filters removed so far."""
        ...


@dataclass
class ControllerConfig:
    """Every CHOICE of docs/method.md's controller, with its default. Validated on construction."""

    # Largest step, as a fraction of the ORIGINAL filter count (Yeom's schedule: 5%).
    s_max: float = 0.05
    # Smallest step, in units: below it the controller changes the pruning order instead of the rate.
    s_min_units: int = 1
    # Accept a step if A drops by at most delta from the last accepted A (0: A must not drop at all).
    delta: float = 0.0
    # Variant (ablation): accept if A_new >= tau * A_0 (A of the unpruned model) instead of the delta rule.
    tau: float | None = None
    # Change of pruning order: how many of the lowest-scoring units are tried one by one.
    m: int = 8
    # Prune up to this fraction of the original filters, so that the whole curve exists.
    p_max: float = 0.9
    # The accuracy budget: accept iff A_new >= floor (instead of delta / tau); no unit above it ends the run.
    floor: float | None = None
    # "accepted": recompute relevance after every committed change; "step": once at least s_max of the filters
    # went since the last pass (what Yeom's schedule pays: one pass per 5%); "never": only once at the start.
    rescore: str = "accepted"

    def __post_init__(self) -> None:
        if not is_number(self.s_max) or not 0 < self.s_max <= 1:
            raise InputError(f"--s-max {self.s_max}: must be in (0, 1]")
        if not _is_int(self.s_min_units) or self.s_min_units < 1:
            raise InputError(f"--s-min-units {self.s_min_units}: must be an integer >= 1")
        if not is_number(self.delta) or not math.isfinite(self.delta) or self.delta < 0:
            raise InputError(f"--delta {self.delta}: must be a finite number >= 0")
        if self.tau is not None and (not is_number(self.tau) or not 0 < self.tau <= 1):
            raise InputError(f"--tau {self.tau}: must be in (0, 1]")
        if not _is_int(self.m) or self.m < 1:
            raise InputError(f"--m {self.m}: must be an integer >= 1")
        if not is_number(self.p_max) or not 0 < self.p_max < 1:
            raise InputError(f"--p-max {self.p_max}: must be in (0, 1)")
        if self.floor is not None and (not is_number(self.floor) or not math.isfinite(self.floor)):
            raise InputError(f"controller floor {self.floor}: must be a finite number")
        if self.rescore not in RESCORE_CHOICES:
            raise InputError(f"--rescore {self.rescore}: must be one of {', '.join(RESCORE_CHOICES)}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def check_max_drop(value: Any) -> float:
    """An accuracy budget (`--max-drop`): a drop in [0, 1), or a one-line InputError."""
    if not (is_number(value) and 0.0 <= value < 1.0):
        raise InputError(f"--max-drop {value}: must be in [0, 1) (an accuracy drop; 0.01 is one point)")
    return float(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ControllerLog:
    """What the controller did, for the report and for rebuilding the curve.

    events: one dict per attempt, in order (see `run_controller`).
    points: the starting model (kind "start"), then one per committed change: {"rate", "a", "kind"}.
    relevance_passes: calls to `rescore`, the initial one included.
    accuracy_checks: calls to `harmonic_mean_without` plus `harmonic_mean`.
    stopped_early: None when p_max was reached, else why the loop ended before it.
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)
    relevance_passes: int = 0
    accuracy_checks: int = 0
    stopped_early: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lowest_covering(ranked: Sequence[Any], filters: int) -> list:
    """The shortest prefix of `ranked` (units with a `filters` count, lowest score first) that covers at least
    `filters` filters; none for filters <= 0. The surgery's global selection uses it too."""
    chosen: list = []
    covered = 0
    for unit in ranked:
        if covered >= filters:
            break
        chosen.append(unit)
        covered += unit.filters
    return chosen


class _Controller:
    """One run: keeps the counters and the log next to the model so that each step reads simply."""

    def __init__(self, model: PrunableModel, config: ControllerConfig,
                 on_event: Callable[[dict[str, Any]], None] | None):
        self.model = model
        self.config = config
        self.on_event = on_event
        self.log = ControllerLog()
        self.original = int(model.original_filters)
        if self.original < 1:
            raise InputError(f"controller: the model has {self.original} conv filters to prune")
        self.s_max_filters = max(1, round(config.s_max * self.original))
        # Integer target: comparing filter counts avoids float drift in pruned_fraction.
        self.target_removed = math.ceil(config.p_max * self.original - RATE_TOLERANCE)
        self.step_ends = step_ends(config.s_max, self.original, self.target_removed)
        self.ranking: list[Unit] = []  # current ranking; refreshed after every commit and rescore
        self.removed_at_rescore = 0  # filters removed when relevance was last computed

    # Every call to the model goes through these so that the counts in the log are right.
    def measure(self) -> float:
        self.log.accuracy_checks += 1
        return float(self.model.harmonic_mean())

    def measure_without(self, units: list[Unit]) -> float:
        self.log.accuracy_checks += 1
        return float(self.model.harmonic_mean_without(units))

    def rescore(self) -> None:
        self.log.relevance_passes += 1
        self.removed_at_rescore = self.removed()
        self.model.rescore()

    def fetch_ranking(self) -> list[Unit]:
        units = list(self.model.ranked_units())
        for unit in units:
            if not _is_int(unit.filters) or unit.filters < 1:
                raise InputError(f"controller: unit {unit.key!r} removes {unit.filters} filters; must be >= 1")
        return units

    def removed(self) -> int:
        return round(self.model.pruned_fraction() * self.original)

    def commit(self, units: list[Unit]) -> None:
        before = self.removed()
        self.model.commit(units)
        # A commit that removes nothing would loop forever: fail loudly instead.
        if self.removed() <= before:
            keys = [unit.key for unit in units]
            raise InputError(f"controller: committing units {keys} did not lower the filter count")

    def emit(self, event: dict[str, Any]) -> None:
        self.log.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def record(self, a: float, kind: str) -> None:
        self.log.points.append({"rate": float(self.model.pruned_fraction()), "a": a, "kind": kind})

    def after_commit(self) -> None:
        # The last commit needs no fresh scores: skipping it saves a whole relevance pass.
        due = self.config.rescore == "accepted" or (
            self.config.rescore == "step" and self.removed() - self.removed_at_rescore >= self.s_max_filters)
        if due and self.removed() < self.target_removed:
            self.rescore()
        self.ranking = self.fetch_ranking()

    def run(self) -> ControllerLog:
        config = self.config
        a_start = self.measure()
        a_prev = a_start
        self.record(a_start, "start")
        self.rescore()
        self.ranking = self.fetch_ranking()
        step = self.s_max_filters

        while (removed := self.removed()) < self.target_removed:
            ranking = self.ranking
            if not ranking:
                self.log.stopped_early = (
                    f"no removable unit left at pruning rate {self.model.pruned_fraction():.4f} "
                    f"(p_max {config.p_max})"
                )
                break
            rate_before = float(self.model.pruned_fraction())
            # Never ask past the end of the grid step it is in (see step_ends): the curve is read on that grid.
            wanted = min(step, self.step_ends[bisect.bisect_right(self.step_ends, removed)] - removed)
            candidate = lowest_covering(ranking, max(wanted, 1))
            a_new = self.measure_without(candidate)
            if config.floor is not None:
                threshold = config.floor
            elif config.tau is not None:
                threshold = config.tau * a_start
            else:
                threshold = a_prev - config.delta
            event = {
                "rate_before": rate_before,
                "step_filters": wanted,
                "units": [unit.key for unit in candidate],
                "filters": sum(unit.filters for unit in candidate),
                "a_before": a_prev,
                "a_after": a_new,
            }

            if a_new >= threshold:
                self.commit(candidate)
                a_prev = a_new
                self.record(a_new, "accept")
                self.emit({"kind": "accept", **event, "rate_after": float(self.model.pruned_fraction())})
                self.after_commit()
                step = min(self.s_max_filters, 2 * step)

            elif len(candidate) > config.s_min_units:
                floor = sum(unit.filters for unit in ranking[: config.s_min_units])
                step = max(floor, wanted // 2)
                # The ranking has not changed, so a halved step that picks the same units would only
                # repeat a measurement whose answer is known: keep halving until the candidate shrinks.
                while step > floor and len(lowest_covering(ranking, max(step, 1))) >= len(candidate):
                    step = max(floor, step // 2)
                self.emit({"kind": "reject_halve", **event, "rate_after": rate_before, "next_step_filters": step})

            else:
                a_order = self.change_order(ranking, candidate, a_new, event)
                if a_order is None:
                    self.log.stopped_early = (
                        f"budget: at pruning rate {rate_before:.4f} none of the {min(config.m, len(ranking))} "
                        f"lowest-scoring units keeps A at or above the floor {config.floor:g}")
                    break
                a_prev = a_order
                self.after_commit()
            reached = getattr(self.model, "target_reached", None)
            if reached is not None and reached():
                self.log.stopped_early = f"target reached at pruning rate {self.model.pruned_fraction():.4f}"
                break

        return self.log

    def change_order(self, ranking: list[Unit], candidate: list[Unit], a_candidate: float,
                     event: dict[str, Any]) -> float | None:
        """Commit, among the m lowest-scoring units, the one whose removal keeps A highest; returns A(M).
        Under a floor, None (and nothing committed) when even that unit falls below it."""
        tried_a: list[float] = []
        for rank, unit in enumerate(ranking[: self.config.m]):
            if rank == 0 and candidate == [unit]:
                tried_a.append(a_candidate)  # already measured as the rejected candidate
            else:
                tried_a.append(self.measure_without([unit]))
        # Ties go to the lower rank, i.e. the order relevance suggests.
        best_rank = max(range(len(tried_a)), key=lambda rank: (tried_a[rank], -rank))
        if self.config.floor is not None and tried_a[best_rank] < self.config.floor:
            self.emit({"kind": "budget_end", **event, "rate_after": event["rate_before"], "tried": len(tried_a),
                       "tried_a": tried_a})
            return None
        chosen = ranking[best_rank]
        self.commit([chosen])
        a_now = self.measure()
        self.record(a_now, "order_change")
        self.emit({
            "kind": "order_change",
            **event,
            "units": [chosen.key],
            "filters": chosen.filters,
            "a_after": a_now,
            "rate_after": float(self.model.pruned_fraction()),
            "rejected_units": event["units"],
            "rejected_a": a_candidate,
            "tried": len(tried_a),
            "chosen_rank": best_rank,
            "tried_a": tried_a,
        })
        return a_now


def run_controller(model: PrunableModel, config: ControllerConfig | None = None,
                   on_event: Callable[[dict[str, Any]], None] | None = None) -> ControllerLog:
    """Prune `model` up to config.p_max with the accuracy-aware controller; returns the log.

    Events (dicts, also passed to `on_event` as they happen), common keys: kind, rate_before,
    rate_after, step_filters (filters asked for), units (keys), filters (filters in `units`),
    a_before (A to beat), a_after (A measured).
    - "accept": the candidate was committed; the step doubles again, up to s_max.
    - "reject_halve": the candidate was not committed; adds next_step_filters.
    - "budget_end" (with a floor): no unit of the m tried stays above it; nothing was committed, the run ends.
    - "order_change": units is the one unit committed, a_after is A of the model after the commit; adds
      rejected_units, rejected_a, tried (units evaluated), chosen_rank (0 = lowest score), tried_a.
    Relevance is recomputed after each committed change except the last one, which nothing would use.
    """
    return _Controller(model, config or ControllerConfig(), on_event).run()
