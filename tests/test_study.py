"""The AUC study's quick mode, and the controller's cross-fitted signals, on real (tiny) data."""

from __future__ import annotations

import json

import pytest
import torch

from toolchain.config import PruneConfig
from toolchain.control.signals import ControlSignal
from toolchain.stages.prepare import prepare


@pytest.fixture(scope="module")
def task(image_data):
    config = PruneConfig(model="resnet18", weights="none", data=str(image_data.small), test_data=str(image_data.test),
                         shots=10, image_size=32, method="dpx")
    return prepare(config, progress=False)


def test_small_accuracy_signal_is_saturated_on_the_heads_own_images(task):
    signal = ControlSignal("small-accuracy", task.model, task.head_name, task.small_x, task.small_y, len(task.classes))
    assert signal() == 1.0  # the head classifies the images it was fitted on


def test_crossfit_signals_score_each_image_with_a_head_that_did_not_see_it(task):
    accuracy = ControlSignal("crossfit-accuracy", task.model, task.head_name, task.small_x, task.small_y, len(task.classes))
    probability = ControlSignal("crossfit-probability", task.model, task.head_name, task.small_x, task.small_y, len(task.classes))
    assert accuracy.weight.shape[0] == 5 and torch.bincount(accuracy.fold).tolist() == [6] * 5
    assert 0.0 <= accuracy() <= 1.0
    p = probability()
    assert 0.0 < p < 1.0  # a smooth signal: a probability, never exactly 1
    # Hiding every head input leaves only the biases: the probability signal must drop.
    hidden = probability(masked_inputs=list(range(accuracy.weight.shape[2])))
    assert hidden < p
    # Dropping inputs for good shrinks the fold heads' columns to match.
    probability.drop_inputs([0, 1, 2])
    assert len(probability.kept) == accuracy.weight.shape[2] - 3


def test_class_weighted_relevance_starts_higher_on_the_weakest_classes(task):
    signal = ControlSignal("crossfit-probability", task.model, task.head_name, task.small_x, task.small_y,
                           len(task.classes))
    per_class = torch.tensor(signal.per_class(), dtype=torch.float64)
    weights = signal.sample_weights()
    assert abs(float(weights.mean()) - 1.0) < 1e-5  # the injected relevance keeps its total
    expected = (1 / per_class.clamp(min=0.05))[task.small_y]
    torch.testing.assert_close(weights.double(), expected / expected.mean(), rtol=1e-5, atol=1e-6)
    weakest, strongest = int(per_class.argmin()), int(per_class.argmax())
    assert weights[task.small_y == weakest][0] > weights[task.small_y == strongest][0]


def test_crossfit_needs_two_images_per_class(task):
    from runtime_bench.errors import InputError

    with pytest.raises(InputError, match="needs at least 2 images per class to cross-fit, a class has 1"):
        ControlSignal("crossfit-accuracy", task.model, task.head_name, task.small_x[:3], torch.tensor([0, 1, 2]), 3)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_head_input_cache_recomputes_only_what_a_mask_changed_and_agrees_with_a_full_forward(name):
    from models_for_tests import family

    from toolchain.control.feature_cache import HeadInputCache
    from toolchain.head import head_features
    from toolchain.models import linear_head
    from toolchain.surgery import PruningGraph

    model = family(name)
    head_name = "fc" if name == "resnet18" else "classifier.1"
    images = torch.randn(6, 3, 32, 32)
    cache = HeadInputCache(model, images, head_name)
    # The cache runs the layout it chose (MobileNetV2: channels-last); a full forward in it computes the same sums.
    images = cache.images
    assert cache.nodes is not None, "torchvision models trace: the cache must be in use"
    graph = PruningGraph(model, images[:1], protected=[linear_head(model, head_name)])
    group = graph.groups()[len(graph.groups()) // 2]
    with graph.mask({group.root: [0, 1]}):
        masked = cache(graph.masked_modules)
        torch.testing.assert_close(masked, head_features(model, images, head_name), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(masked, cache())  # the mask changed the features; the cache still holds the dense ones
    graph.prune(group.root, [0, 1])
    cache.refresh(graph.pruned_modules)  # only what the commit changed, and downstream of it
    torch.testing.assert_close(cache(), head_features(model, images, head_name), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_auc_study_quick_writes_json_and_table(tmp_path, capsys):
    from benchmarks.auc_study import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    study = json.loads((tmp_path / "auc_study_quick.json").read_text())
    methods = {run["method"] for run in study["runs"]}
    assert methods == {"dpx", "lrp", "taylor", "l1", "random"}
    for run in study["runs"]:
        assert 0.0 <= run["auc"] <= 1.0 and run["reached_p_max"]
        assert run["curve"][0]["rate"] == 0.0 and run["curve"][-1]["rate"] >= 0.1 - 0.01
    assert "ratio_to_lrp" in study["summary"]["mobilenet_v2"]["dpx"]
    assert (tmp_path / "auc_study_mobilenet_v2.png").stat().st_size > 10_000
    assert "| mobilenet_v2 (32 px) | dpx |" in capsys.readouterr().out


@pytest.mark.parametrize("name, head_name", [("vgg11", "classifier.6"), ("resnet18", "fc"),
                                             ("mobilenet_v2", "classifier.1"), ("regnet_x_400mf", "fc")])
def test_zeroed_inputs_give_the_head_inputs_of_the_weight_mask(name, head_name, monkeypatch):
    # The controller's candidates are measured by zeroing the input channels of the layers that read them
    # (the first one by subtracting what they contributed) instead of masking weights: same numbers.
    from models_for_tests import family

    import toolchain.control.feature_cache as feature_cache
    from toolchain.control.feature_cache import HeadInputCache
    from toolchain.surgery import PruningGraph, as_selection, rank_chunks

    subtracted = []
    contribution = feature_cache._contribution
    monkeypatch.setattr(feature_cache, "_contribution",
                        lambda *args: subtracted.append(args[0]) or contribution(*args))
    model = family(name)
    images = torch.randn(4, 3, 32, 32)
    head = model.get_submodule(head_name)
    cache = HeadInputCache(model, images, head_name)
    graph = PruningGraph(model, images[:1], protected=[head])
    groups = graph.groups()
    chunks = rank_chunks(groups, {m: torch.zeros(g.size) for g in groups for m in g.members}, round_to=8)
    for chunk in chunks[:: max(1, len(chunks) // 6)]:
        selection = as_selection([chunk])
        zeroed = graph.zeroed_inputs(selection)
        positions = zeroed.pop(head, [])
        fast = cache(zeroed=zeroed).clone()
        with graph.mask(selection):
            reference = cache(graph.masked_modules).clone()
        fast[:, positions] = reference[:, positions] = 0.0  # what the head reads; its own columns are masked
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5, msg=f"{name} {chunk.root}")
        assert not torch.equal(fast, cache()), "the candidate must change what the head reads"
    assert subtracted, "the first reading layer should cost only the removed channels' share"
    if name == "regnet_x_400mf":
        assert any(m.groups > 1 for m in graph.model.modules() if isinstance(m, torch.nn.Conv2d))


def test_baseline_steps_end_on_the_grid_the_auc_reads(task):
    # Whole chunks overshoot each step a little; step k must still end at k x step (not k x (step +
    # overshoot)), or by 45% a method is read a whole step behind where it is.
    import copy

    from toolchain.control.prune import prune
    from toolchain.stages.prune import curve_auc

    local = copy.copy(task)
    local.model = copy.deepcopy(task.model)
    step = 0.0335  # 161 of resnet18's 4800 filters: no whole number of 8-channel chunks, every step overshoots
    config = PruneConfig(model="resnet18", weights="none", data="unused", method="l1", rate=15 * step, step=step,
                         round_to=8, image_size=32)
    result = prune(local, config, progress=False)
    rates = [point["rate"] for point in result.curve]
    assert len(rates) == 16 and result.graph.original_filters == 4800
    largest_chunk = 8 * max(len(group.members) for group in result.graph.groups()) / result.graph.original_filters
    for k, rate in enumerate(rates):
        assert step * k - 1e-9 <= rate < step * k + largest_chunk, (k, rate)
    assert curve_auc(result.curve, step, 15 * step)["rates_used"] == rates  # each grid rate reads its own step
