"""The accuracy-aware controller against a scripted pruner, and the curve metrics (pure Python, fast)."""

from __future__ import annotations

from typing import Callable

import pytest

from runtime_bench.accuracy import classification_metrics, harmonic_mean
from runtime_bench.errors import InputError
from toolchain.control.controller import ControllerConfig, Unit, run_controller
from toolchain.control.curves import class_averaged_auc, rate_grid, relative_gain, state_at_rates

Oracle = Callable[[frozenset], float]


class ScriptedModel:
    """A PrunableModel whose A is an oracle of the set of removed unit keys; scores never change."""

    def __init__(self, units: list[Unit], oracle: Oracle, original_filters: int | None = None):
        self.units = sorted(units, key=lambda unit: unit.score)
        self.oracle = oracle
        self.original_filters = original_filters or sum(unit.filters for unit in units)
        self.removed: set = set()
        self.committed: list[list] = []  # keys of each commit, in order
        self.rescores = 0
        self.accuracy_calls = 0

    def ranked_units(self) -> list[Unit]:
        return [unit for unit in self.units if unit.key not in self.removed]

    def harmonic_mean_without(self, units: list[Unit]) -> float:
        self.accuracy_calls += 1
        return self.oracle(frozenset(self.removed | {unit.key for unit in units}))

    def commit(self, units: list[Unit]) -> None:
        self.removed |= {unit.key for unit in units}
        self.committed.append([unit.key for unit in units])

    def rescore(self) -> None:
        self.rescores += 1

    def harmonic_mean(self) -> float:
        self.accuracy_calls += 1
        return self.oracle(frozenset(self.removed))

    def pruned_fraction(self) -> float:
        removed = sum(unit.filters for unit in self.units if unit.key in self.removed)
        return removed / self.original_filters


def one_filter_units(count: int) -> list[Unit]:
    # Scores in key order, so unit i is the i-th lowest.
    return [Unit(key=i, filters=1, score=float(i)) for i in range(count)]


def always(value: float) -> Oracle:
    return lambda removed: value


# --- the control signal A and the metric ------------------------------------------------------------


def test_harmonic_mean_of_hand_made_predictions():
    labels = [0, 0, 1, 1, 2, 2]
    metrics = classification_metrics([0, 0, 1, 0, 2, 2], labels, num_classes=3)
    assert metrics["per_class"] == [1.0, 0.5, 1.0]
    assert metrics["harmonic_mean"] == pytest.approx(3 / (1 + 2 + 1))
    assert harmonic_mean([1.0, 0.5, 1.0]) == pytest.approx(0.75)


def test_harmonic_mean_collapses_when_one_class_fails():
    metrics = classification_metrics([0, 0, 0, 0, 2, 2], [0, 0, 1, 1, 2, 2], num_classes=3)
    # The arithmetic accuracy hides the dead class; A does not.
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["harmonic_mean"] == 0.0


def test_rate_grid_has_no_float_drift():
    grid = rate_grid(0.9, 0.05)
    assert len(grid) == 19
    assert grid[0] == 0.0 and grid[-1] == 0.9
    assert grid[3] == 0.15
    with pytest.raises(InputError, match="multiple"):
        rate_grid(0.9, 0.07)


def test_class_averaged_auc_on_known_curves():
    grid = rate_grid(0.9, 0.05)
    # Class 0 declines linearly from 1 to 0 (AUC 1/2), class 1 is constant at 0.8 (AUC 0.8).
    per_class = [[1 - rate / 0.9, 0.8] for rate in grid]
    auc = class_averaged_auc(grid, per_class, p_max=0.9)
    assert auc["per_class"] == pytest.approx([0.5, 0.8])
    assert auc["mean"] == pytest.approx(0.65)
    assert relative_gain(0.65, 0.5) == pytest.approx(0.3)


def test_class_averaged_auc_trapezoid_on_an_uneven_curve():
    # One class at 1.0, 1.0, 0.0 on (0, 0.5, 1.0): area 0.5 + 0.25.
    auc = class_averaged_auc([0.0, 0.5, 1.0], [[1.0], [1.0], [0.0]], p_max=1.0)
    assert auc["mean"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "grid, per_class, p_max, message",
    [
        ([0.05, 0.9], [[1.0], [1.0]], 0.9, "start at 0"),
        ([0.0, 0.5], [[1.0], [1.0]], 0.9, "end at p_max"),
        ([0.0, 0.9], [[1.0]], 0.9, "1 rows"),
        ([0.0, 0.9], [[1.0, 0.5], [1.0]], 0.9, "1 classes"),
        ([0.0, 0.9], [[1.0], [1.5]], 0.9, r"in \[0, 1\]"),
    ],
)
def test_class_averaged_auc_validation(grid, per_class, p_max, message):
    with pytest.raises(InputError, match=message):
        class_averaged_auc(grid, per_class, p_max)


def test_relative_gain_needs_a_positive_baseline():
    with pytest.raises(InputError, match="baseline"):
        relative_gain(0.5, 0.0)


def test_state_at_rates_takes_the_last_state_reached():
    points = [(0.0, "s0"), (0.05, "s1"), (0.12, "s2"), (0.1 + 0.05 + 0.1, "s3")]
    grid = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    # 0.1 + 0.05 + 0.1 is 0.25000000000000006: drift must not push s3 past grid rate 0.25.
    assert state_at_rates(points, grid) == ["s0", "s1", "s1", "s2", "s2", "s3", "s3"]
    # Two points at one rate: the later one is the state at that rate.
    assert state_at_rates([(0.0, "a"), (0.05, "b"), (0.05, "c")], [0.0, 0.05]) == ["a", "c"]


def test_state_at_rates_validation():
    with pytest.raises(InputError, match="rate 0"):
        state_at_rates([(0.05, "s")], [0.0])
    with pytest.raises(InputError, match="must not decrease"):
        state_at_rates([(0.0, "a"), (0.2, "b"), (0.1, "c")], [0.0])


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p_max": 1.2}, r"--p-max 1.2: must be in \(0, 1\)"),
        ({"p_max": 0.0}, "--p-max 0.0"),
        ({"s_max": 0.0}, "--s-max 0.0"),
        ({"s_min_units": 0}, "--s-min-units 0"),
        ({"delta": -0.1}, "--delta -0.1"),
        ({"tau": 1.5}, "--tau 1.5"),
        ({"m": 0}, "--m 0"),
        ({"rescore": "always"}, "--rescore always: must be one of accepted, step, never"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(InputError, match=message):
        ControllerConfig(**kwargs)


def test_config_defaults_follow_method():
    config = ControllerConfig()
    assert (config.s_max, config.s_min_units, config.delta, config.tau, config.m, config.p_max) == (
        0.05, 1, 0.0, None, 8, 0.9,
    )
    assert config.rescore == "accepted"


# --- the controller ---------------------------------------------------------------------------------


def test_rate_halves_on_failure_then_grows_back():
    # The first step hurts if it removes more than 2 units; once anything is committed, nothing hurts.
    model = ScriptedModel(one_filter_units(20), lambda removed: 0.5 if not model.committed and len(removed) > 2 else 1.0)
    log = run_controller(model, ControllerConfig(s_max=0.2, p_max=0.5))
    kinds = [event["kind"] for event in log.events]
    assert kinds[:4] == ["reject_halve", "accept", "accept", "accept"]
    first, second, third, fourth = log.events[:4]
    assert first["step_filters"] == 4 and first["units"] == [0, 1, 2, 3]
    assert first["a_after"] == 0.5 and first["next_step_filters"] == 2
    assert first["rate_after"] == first["rate_before"] == 0.0
    assert second["step_filters"] == 2 and second["units"] == [0, 1]
    assert second["rate_after"] == pytest.approx(0.1)
    # The step grows back to 4 but first completes the grid step it is in (0.2), then takes whole steps.
    assert third["step_filters"] == 2 and third["units"] == [2, 3]
    assert fourth["step_filters"] == 4 and fourth["units"] == [4, 5, 6, 7]
    assert model.committed[:3] == [[0, 1], [2, 3], [4, 5, 6, 7]]


def test_steps_end_on_the_grid_and_overshoots_do_not_add_up():
    # Units of 5 filters, steps of 12: each step ends less than one unit past its multiple of 12.
    units = [Unit(key=i, filters=5, score=float(i)) for i in range(24)]
    model = ScriptedModel(units, always(1.0))
    log = run_controller(model, ControllerConfig(s_max=0.1, p_max=0.5))
    ends = [round(event["rate_after"] * 120) for event in log.events]
    assert [event["kind"] for event in log.events] == ["accept"] * 5
    assert ends == [15, 25, 40, 50, 60]
    assert all(k * 12 <= end < k * 12 + 5 for k, end in enumerate(ends, start=1))


def test_halving_skips_steps_that_would_pick_the_same_units():
    # A small unit then big ones: halving 11 filters to 5 or 2 still needs "a" and "b", measured once.
    units = [Unit(key="a", filters=1, score=0.0)] + [
        Unit(key=f"b{i}", filters=10, score=1.0 + i) for i in range(10)
    ]
    measured: list[frozenset] = []

    def oracle(removed: frozenset) -> float:
        measured.append(removed)
        return 0.5 if "b0" in removed else 1.0

    model = ScriptedModel(units, oracle)
    log = run_controller(model, ControllerConfig(s_max=11 / 101, p_max=0.3))
    first, second, third = log.events[:3]
    assert first["kind"] == "reject_halve" and first["units"] == ["a", "b0"]
    assert first["next_step_filters"] == 1
    assert second["kind"] == "accept" and second["units"] == ["a"]
    # "b0" alone is a single unit that fails: the order changes to the next unit instead.
    assert third["kind"] == "order_change" and third["units"] == ["b1"]
    # A_0, the rejected pair, then straight to "a": the halved steps 5 and 2 were never measured.
    assert measured[:3] == [frozenset(), frozenset({"a", "b0"}), frozenset({"a"})]


def test_order_change_commits_the_unit_that_keeps_a_highest():
    # Unit 0 (lowest score) kills a class; the others cost A in proportion to a penalty, least for 3.
    penalty = {i: 0.01 * (i + 1) for i in range(1, 12)}
    penalty[3] = 0.001

    def oracle(removed: frozenset) -> float:
        if 0 in removed:
            return 0.0
        return 1.0 - sum(penalty[key] for key in removed)

    model = ScriptedModel(one_filter_units(12), oracle)
    seen: list[tuple[dict, int]] = []
    log = run_controller(
        model, ControllerConfig(s_max=4 / 12, m=8, p_max=0.5),
        on_event=lambda event: seen.append((event, model.accuracy_calls)),
    )
    kinds = [event["kind"] for event in log.events]
    # 4 units fail, 2 units fail, 1 unit fails: then the order changes.
    assert kinds[:3] == ["reject_halve", "reject_halve", "order_change"]
    assert [event["units"] for event in log.events[:2]] == [[0, 1, 2, 3], [0, 1]]
    change = log.events[2]
    assert change["units"] == [3] and change["chosen_rank"] == 3 and change["tried"] == 8
    assert change["rejected_units"] == [0] and change["rejected_a"] == 0.0
    assert change["tried_a"][0] == 0.0 and max(change["tried_a"]) == change["tried_a"][3]
    assert model.committed[0] == [3]
    assert change["a_after"] == pytest.approx(1.0 - 0.001)
    # 1 (A_0) + 3 rejected candidates + 7 single units (unit 0 was already measured) + 1 A(M) after.
    assert seen[2][1] == 12
    # The harmful unit is never committed, yet the loop still reaches p_max.
    assert 0 not in model.removed
    assert model.pruned_fraction() >= 0.5 and log.stopped_early is None
    assert log.accuracy_checks == model.accuracy_calls


def test_order_change_with_fewer_units_than_m():
    model = ScriptedModel(one_filter_units(3), lambda removed: 0.0 if 0 in removed else 1.0 - 0.1 * len(removed),
                          original_filters=3)
    log = run_controller(model, ControllerConfig(s_max=1 / 3, m=8, p_max=0.3))
    assert log.events[0]["kind"] == "order_change"
    assert log.events[0]["tried"] == 3 and log.events[0]["units"] == [1]


@pytest.mark.parametrize("s_max", [0.05, 0.13])
def test_reaches_p_max_without_overshooting(s_max):
    # Units of 1 to 4 filters: steps rarely land exactly on p_max.
    units = [Unit(key=f"u{i}", filters=1 + i % 4, score=float(i)) for i in range(60)]
    model = ScriptedModel(units, always(0.7))
    log = run_controller(model, ControllerConfig(s_max=s_max, p_max=0.9))
    largest_unit = 4 / model.original_filters
    step = round(s_max * model.original_filters) / model.original_filters
    assert log.stopped_early is None
    assert 0.9 <= model.pruned_fraction() < 0.9 + largest_unit
    for event in log.events:
        assert event["kind"] == "accept"
        assert event["rate_after"] - event["rate_before"] < step + largest_unit
    # Points: the start, then one per commit, in increasing rate.
    assert [point["kind"] for point in log.points] == ["start"] + ["accept"] * len(log.events)
    rates = [point["rate"] for point in log.points]
    assert rates == sorted(rates) and rates[0] == 0.0
    # Rescored once at the start and after every commit but the last (which nothing would use).
    assert model.rescores == log.relevance_passes == len(model.committed)


def test_rescore_never_only_scores_once():
    model = ScriptedModel(one_filter_units(40), always(1.0))
    log = run_controller(model, ControllerConfig(s_max=0.1, p_max=0.9, rescore="never"))
    assert len(model.committed) == 9
    assert model.rescores == log.relevance_passes == 1


def test_rescore_step_scores_once_per_s_max_of_removed_filters():
    # A refuses every step of 4, so the controller removes single units through order changes: with
    # "accepted" that would be a relevance pass per unit; with "step" one per 4 filters (s_max).
    model = ScriptedModel(one_filter_units(40), lambda removed: 1.0 - len(removed) / 100)
    log = run_controller(model, ControllerConfig(s_max=0.1, p_max=0.5, rescore="step"))
    assert len(model.committed) == 20 and all(len(keys) == 1 for keys in model.committed)
    # The start, then after every 4th commit but the last: at 4, 8, 12 and 16 filters.
    assert model.rescores == log.relevance_passes == 5


def test_stops_early_with_a_reason_when_units_run_out():
    # Only half the filters are removable (the rest belong to protected layers).
    model = ScriptedModel(one_filter_units(10), always(1.0), original_filters=20)
    log = run_controller(model, ControllerConfig(s_max=0.1, p_max=0.9))
    assert model.pruned_fraction() == pytest.approx(0.5)
    assert log.stopped_early is not None and "no removable unit" in log.stopped_early
    assert "0.5000" in log.stopped_early


def test_tau_accepts_against_the_unpruned_model():
    def oracle(removed: frozenset) -> float:
        return 1.0 - 0.05 * len(removed)

    strict = run_controller(ScriptedModel(one_filter_units(20), oracle), ControllerConfig(s_max=0.1, p_max=0.5))
    assert strict.events[0]["kind"] == "reject_halve"

    model = ScriptedModel(one_filter_units(20), oracle)
    log = run_controller(model, ControllerConfig(s_max=0.1, p_max=0.5, tau=0.8))
    # Steps of 2 units each cost 0.1 of A: accepted while A stays >= 0.8 * A_0 = 0.8.
    assert [event["kind"] for event in log.events[:3]] == ["accept", "accept", "reject_halve"]
    assert log.events[1]["a_after"] == pytest.approx(0.8)
    assert log.events[1]["a_before"] == pytest.approx(0.9)


def test_delta_tolerates_small_drops():
    model = ScriptedModel(one_filter_units(20), lambda removed: 1.0 - 0.01 * len(removed))
    log = run_controller(model, ControllerConfig(s_max=0.1, p_max=0.5, delta=0.03))
    assert {event["kind"] for event in log.events} == {"accept"}
    assert model.pruned_fraction() == pytest.approx(0.5)


def test_commit_that_removes_nothing_is_an_error():
    class StuckModel(ScriptedModel):
        def commit(self, units: list[Unit]) -> None:
            pass

    with pytest.raises(InputError, match="did not lower the filter count"):
        run_controller(StuckModel(one_filter_units(5), always(1.0)), ControllerConfig(s_max=0.2))
