"""The model a user ships: the ridge head and its leave-one-out estimate, the head re-fitted after every step,
the accuracy and MACs budgets, and cost-aware ranking (toolchain/head.py, signals.py, costs.py, pipeline.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from models_for_tests import tiny_cnn
from torch import nn

from toolchain.artifact import load_dense_and_pruned
from toolchain.config import PruneConfig
from toolchain.control.prune import evaluate, prune
from toolchain.control.state import PruningState
from toolchain.head import choose_ridge_alpha, ridge_solve
from toolchain.stages.prepare import prepare
from toolchain.stages.prune import run_prune
from toolchain.surgery import PruningGraph, masked
from toolchain.surgery.costs import ChannelCosts, channel_costs, layer_macs, output_positions

TINY = "tests/models_for_tests.py:tiny_cnn"
# Five close colours under heavy noise: a random tiny CNN separates them only partly, and less as it loses
# channels, so that an accuracy budget binds.
CLOSE_COLOURS = {"a": (120, 90, 90), "b": (90, 120, 90), "c": (90, 90, 120), "d": (110, 110, 80), "e": (80, 110, 110)}


@pytest.fixture(scope="module")
def hard_data(tmp_path_factory, write_images):
    base = tmp_path_factory.mktemp("hard")
    return (write_images(base / "small", per_class=8, colours=CLOSE_COLOURS, noise=45.0, seed=3),
            write_images(base / "test", per_class=6, colours=CLOSE_COLOURS, noise=45.0, seed=4))


def _config(data, **overrides) -> PruneConfig:
    small, test = data
    settings = dict(model=TINY, data=str(small), test_data=str(test), shots=8, image_size=32, method="lrp",
                    round_to=1, step=0.1, batch_size=16)
    return PruneConfig(**dict(settings, **overrides))


def test_ridge_leave_one_out_is_the_head_fitted_without_each_image():
    torch.manual_seed(0)
    features, labels = torch.randn(24, 7).double(), torch.arange(24) % 3
    alpha = 0.05
    solution = ridge_solve(features, labels, 3, alpha)
    # The same regression in the primal, refitted from scratch without each image in turn.
    scale = features.pow(2).sum(1).mean().sqrt()
    xa = torch.cat([features, scale.expand(24, 1)], 1)
    lam = alpha * float(xa.pow(2).sum(1).mean())
    targets = nn.functional.one_hot(labels, 3).double()

    def primal(rows):
        x = xa[rows]
        return torch.linalg.solve(x.T @ x + lam * torch.eye(8, dtype=x.dtype), x.T @ targets[rows])

    w = primal(torch.arange(24))
    torch.testing.assert_close(solution.weight.double(), w[:-1].T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(solution.bias.double(), scale * w[-1], rtol=1e-4, atol=1e-5)
    for i in range(24):
        others = torch.tensor([j for j in range(24) if j != i])
        torch.testing.assert_close(solution.loo[i].double(), xa[i] @ primal(others), rtol=1e-4, atol=1e-5)


def test_ridge_alpha_is_picked_by_leave_one_out_error():
    torch.manual_seed(1)
    labels = torch.arange(40) % 4
    centres = torch.randn(4, 16) * 3
    features = centres[labels] + torch.randn(40, 16)
    alpha = choose_ridge_alpha(features, labels, 4)
    targets = nn.functional.one_hot(labels, 4).float()
    errors = {a: float((ridge_solve(features, labels, 4, a).loo - targets).pow(2).sum(1).mean())
              for a in (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)}
    assert errors[alpha] == min(errors.values())


def test_refitting_the_head_never_changes_a_backbone_weight(image_data):
    """The shrunk model with its re-fitted head computes what the DENSE backbone, masked by the plan, computes
    under that head: no backbone weight moved (masked == shrunk)."""
    config = PruneConfig(model=TINY, data=str(image_data.small), test_data=str(image_data.test), shots=4,
                         image_size=32, method="lrp", rate=0.3, round_to=4, step=0.1)
    task = prepare(config, progress=False)
    dense = copy.deepcopy(task.model)
    dense_head = copy.deepcopy(dense[-1].weight)
    result = prune(task, config, progress=False)
    pruned_head = result.model[-1]
    assert not torch.equal(pruned_head.weight, dense_head[:, : pruned_head.in_features])  # it was re-fitted
    plan = result.graph.plan()
    last_conv = [name for name, m in dense.named_modules() if isinstance(m, nn.Conv2d)][-1]
    kept = plan.get(last_conv, list(range(32)))
    with torch.no_grad():
        dense[-1].weight.zero_()
        dense[-1].weight[:, kept] = pruned_head.weight
        dense[-1].bias.copy_(pruned_head.bias)
    with masked(dense, task.small_x[:2], plan, protected=[dense[-1]]) as model:
        expected = model(task.test_x)
    torch.testing.assert_close(result.model(task.test_x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("holdout_folds", [0, 3])
def test_a_budget_run_keeps_the_last_state_within_budget_and_saves_it(hard_data, tmp_path, holdout_folds):
    config = _config(hard_data, max_drop=0.0, patience=1, compensate=True, holdout_folds=holdout_folds)
    manifest = run_prune(config, tmp_path, progress=False)
    curve, explored, chosen = manifest["curve"], manifest["explored"], manifest["chosen"]
    # Cross-validated, the budget reads the shadows' estimate, with the leave-one-out one beside it.
    assert all(("in_sample_estimate" in p) == bool(holdout_folds) for p in curve + explored)
    dense = curve[0]["estimate"]

    def within(point):
        e = point["estimate"]
        return e["accuracy"] >= dense["accuracy"] - 1e-6 and e["harmonic_mean"] >= dense["harmonic_mean"] - 1e-6

    assert explored, "the budget must bind on this task, or the test proves nothing"
    assert within(curve[-1]) and chosen["estimate"] == curve[-1]["estimate"]
    assert not any(within(p) for p in explored)  # nothing after the chosen state met the budget
    assert len(explored) == config.patience + 1 and chosen["why"].startswith("budget:")
    assert chosen["rate"] == curve[-1]["rate"] < explored[0]["rate"]
    # The saved artifact is the chosen state, with the head re-fitted for it.
    _, _, pruned = load_dense_and_pruned(tmp_path)
    task = prepare(config, progress=False)
    metrics = evaluate(pruned, task.test_x, task.test_y, len(task.classes))
    assert metrics["accuracy"] == pytest.approx(chosen["test"]["accuracy"])
    assert sum(m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)) == chosen["filters"]
    assert chosen["estimate_minus_test"]["accuracy"] == pytest.approx(
        chosen["estimate"]["accuracy"] - chosen["test"]["accuracy"])


def test_the_estimate_never_reads_a_test_image(hard_data):
    """Replacing every test image and label by noise changes no decision and no estimate."""
    config = _config(hard_data, max_drop=0.05, rate=0.6)
    task = prepare(config, progress=False)
    noisy = copy.copy(task)
    noisy.model = copy.deepcopy(task.model)
    generator = torch.Generator().manual_seed(0)
    noisy.test_x = torch.randn(task.test_x.shape, generator=generator) * 100
    noisy.test_y = torch.randint(0, len(task.classes), task.test_y.shape, generator=generator)
    a, b = prune(task, config, progress=False), prune(noisy, config, progress=False)
    assert a.graph.plan() == b.graph.plan()
    assert [p["estimate"] for p in a.curve] == [p["estimate"] for p in b.curve]
    assert [p["accuracy"] for p in a.curve] != [p["accuracy"] for p in b.curve]  # the test set did change


def test_a_macs_budget_stops_at_the_first_state_under_it(image_data):
    config = PruneConfig(model=TINY, data=str(image_data.small), test_data=str(image_data.test), shots=4,
                         image_size=32, method="l1", round_to=1, step=0.05, max_macs=0.6)
    result = prune(prepare(config, progress=False), config, progress=False)
    macs = [p["macs"] / result.curve[0]["macs"] for p in result.curve]
    assert macs[-1] <= 0.6 < macs[-2]
    assert result.stopped.startswith("target reached")


def test_dpx_under_a_budget_never_commits_a_state_outside_it(hard_data):
    config = _config(hard_data, method="dpx", max_drop=0.0, m=4, rescore="step")
    result = prune(prepare(config, progress=False), config, progress=False)
    dense = result.budget
    for point in result.curve:
        assert point["estimate"]["accuracy"] >= dense["accuracy"] - 1e-6
        assert point["estimate"]["harmonic_mean"] >= dense["harmonic_mean"] - 1e-6
    assert result.controller["events"][-1]["kind"] == "budget_end"
    assert result.stopped.startswith("budget:")


def test_macs_cost_of_a_channel_is_what_its_producer_and_readers_spend_on_it():
    model = tiny_cnn()
    example = torch.randn(2, 3, 32, 32)
    graph = PruningGraph(model, example, protected=[model[-1]])
    costs = channel_costs("macs", graph, example)
    assert isinstance(costs, ChannelCosts)
    by_root = costs(graph.groups())
    conv1, conv2, conv3, head = model[0], model[3], model[7], model[-1]
    # conv1: 3x3x3 per output position at 32x32; conv2 reads each of its channels with 16 3x3 filters.
    assert by_root["0"] == pytest.approx(27 * 32 * 32 + 16 * 9 * 32 * 32)
    # conv3 (after the 2x2 max-pool, 16x16): 16x3x3 per position; the head reads each channel once per class.
    assert by_root["7"] == pytest.approx(16 * 9 * 16 * 16 + 3)
    positions = output_positions(model, example)
    total = sum(layer_macs(m, positions[m]) for m in (conv1, conv2, conv3, head))
    assert total == 16 * 27 * 32 * 32 + 16 * 144 * 32 * 32 + 32 * 144 * 16 * 16 + 3 * 32
    assert channel_costs("filters", graph, example) is None


def test_latency_cost_charges_every_conv_its_measured_time():
    from exporters.profile import layer_latency_profile

    model = tiny_cnn()
    profile = layer_latency_profile(model, torch.randn(1, 3, 32, 32), "ort-cpu", runs=5)
    convs = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs <= set(profile) and all(ms > 0 for ms in profile.values())


def test_the_state_estimate_is_leave_one_out_of_the_refitted_head(image_data):
    config = PruneConfig(model=TINY, data=str(image_data.small), test_data=str(image_data.test), shots=4,
                         image_size=32, method="lrp", rate=0.3, round_to=4)
    config.check()
    task = prepare(config, progress=False)
    state = PruningState(task, config)
    assert state.estimator.kind == "refit" and state.refit
    paper = PruneConfig(**dict(config.to_dict(), paper=True, refit_head=None, signal=None))
    paper.check()
    assert PruningState(task, paper).estimator.kind == "crossfit-accuracy" and not paper.refit_head


def _tiny_cache(images):
    from toolchain.control.feature_cache import HeadInputCache

    model = tiny_cnn().eval()
    return model, HeadInputCache(model, images, "12")


def test_compensation_with_nothing_removed_leaves_every_weight_and_output_as_it_was():
    from toolchain.control.compensation import Compensation

    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model, cache = _tiny_cache(images)
    before = copy.deepcopy(model.state_dict())
    expected = model(images)
    refitted = Compensation(cache, skip={model[12]})([model[0], model[3], model[7]], {})
    assert refitted == []
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert torch.equal(model(images), expected)


def test_compensation_brings_a_pruned_layer_back_towards_its_dense_output():
    from toolchain.control.compensation import Compensation

    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model, cache = _tiny_cache(images)
    graph = PruningGraph(model, images[:2], protected=[model[12]])
    compensation = Compensation(cache, skip={model[12]})
    reader = model[7]  # reads conv 3's channels
    node = compensation.node_of[reader]
    graph.prune("3", list(range(6)))
    cache.refresh(graph.pruned_modules)
    before = float((cache.values[node] - compensation.dense[reader]).pow(2).mean())
    assert compensation([reader], {}) == [reader]
    after = float((cache.values[node] - compensation.dense[reader]).pow(2).mean())
    assert after < 0.5 * before


def test_the_held_out_estimate_judges_no_image_by_anything_fitted_on_it():
    """Changing the images of fold 0 leaves shadow 0 exactly as it was after a step (its channels chosen, its
    compensation and its head: none of them saw those images) and changes shadow 1 (all of them did)."""
    from toolchain.control.compensation import Compensation
    from toolchain.control.holdout import HeldOutEstimate
    from toolchain.scoring.lrp import lrp_filter_scores

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 32, 32, generator=generator)
    labels = torch.arange(16) % 4
    changed = images.clone()
    fold0 = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])  # the 1st and 3rd image of each class
    changed[fold0] = torch.randn(changed[fold0].shape, generator=generator)
    shadows = []
    for x in (images, changed):
        model, cache = _tiny_cache(x)
        graph = PruningGraph(model, x[:2], protected=[model[12]])
        estimate = HeldOutEstimate(model, graph, "12", x, labels, 4, 2, "ridge", 0.1,
                                   Compensation(cache, skip={model[12]}), lambda shadow_graph: None)
        assert torch.equal(torch.nonzero(estimate.fold == 0).flatten(), fold0)
        estimate.step(12, lambda m, images, labels: lrp_filter_scores(m, images, labels), 1)
        assert len(estimate.per_class()) == 4
        shadows.append([(copy.deepcopy(s.graph.kept), s.model.state_dict()) for s in estimate.shadows])
    (kept_a, weights_a), (kept_b, weights_b) = shadows[0][0], shadows[1][0]
    assert kept_a == kept_b and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert sum(len(c) for c in kept_a.values()) < sum(m.out_channels for m in tiny_cnn() if isinstance(m, nn.Conv2d))
    (kept_a, weights_a), (kept_b, weights_b) = shadows[0][1], shadows[1][1]
    assert kept_a != kept_b or not all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert not torch.equal(weights_a["12.weight"], weights_b["12.weight"])


def test_latency_cost_splits_each_layers_measured_time_like_its_macs():
    """A profile that says every layer takes k ms per million MACs gives k x 1e-6 the MACs costs; a layer the
    profile makes twice as slow doubles its share."""
    model = tiny_cnn()
    example = torch.randn(2, 3, 32, 32)
    graph = PruningGraph(model, example, protected=[model[-1]])
    groups = graph.groups()
    macs = channel_costs("macs", graph, example)(groups)
    positions = output_positions(model, example)
    profile = {name: 3e-6 * layer_macs(m, positions[m]) for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))}
    latency = channel_costs("latency", graph, example, profile)(groups)
    for root in macs:
        assert latency[root] == pytest.approx(3e-6 * macs[root])
    profile["7"] *= 2  # conv 7 is slower than its MACs say: the channels it produces (root 7) cost more
    slower = channel_costs("latency", graph, example, profile)(groups)
    assert slower["7"] > latency["7"] and slower["0"] == pytest.approx(latency["0"])
