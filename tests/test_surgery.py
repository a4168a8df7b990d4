"""Physical shrinking: the shrunk model computes exactly what the masked dense model computes."""

from __future__ import annotations

import copy
import pathlib

import pytest
import torch
from models_for_tests import family
from torch import nn

from runtime_bench.bundle import sha256_file
from runtime_bench.errors import InputError
from toolchain.artifact import layer_shapes, load_dense_and_pruned, save_pruned
from toolchain.models import find_head
from toolchain.scoring.baselines import random_filter_scores
from toolchain.surgery import ChannelGroup, PruningGraph, masked, select_channels


def prune_randomly(model: nn.Module, rate: float, round_to: int, seed: int = 0, size: int = 64):
    example = torch.randn(2, 3, size, size)
    _, head = find_head(model)
    graph = PruningGraph(model, example, protected=[head])
    generator = torch.Generator().manual_seed(seed)
    target = int(rate * graph.original_filters)
    while graph.original_filters - graph.filters < target:
        goal = target - (graph.original_filters - graph.filters)
        selection = select_channels(graph.groups(), random_filter_scores(model, generator), goal, round_to)
        for root, channels in selection.items():
            graph.prune(root, channels)
    return graph


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("round_to", [1, 8])
def test_shrunk_equals_masked(name, round_to):
    dense = family(name)
    shrunk = copy.deepcopy(dense)
    graph = prune_randomly(shrunk, rate=0.3, round_to=round_to)
    assert graph.pruned_fraction >= 0.3 - 1e-3
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        dense_out = dense(x)
        shrunk_out = shrunk(x)
        with masked(dense, x[:2], graph.plan(), protected=[find_head(dense)[1]]):
            masked_out = dense(x)
        restored_out = dense(x)
    scale = dense_out.abs().max()
    torch.testing.assert_close(shrunk_out, masked_out, atol=1e-5 * scale, rtol=1e-5)
    assert not torch.allclose(shrunk_out, dense_out, atol=1e-5 * scale)  # pruning changed something
    assert torch.equal(restored_out, dense_out)  # masking is reversible
    assert shrunk_out.shape == dense_out.shape  # the head's outputs are never pruned


def test_round_to_keeps_channel_counts_multiples_and_never_empties_a_layer():
    model = family("mobilenet_v2")
    prune_randomly(model, rate=0.6, round_to=8)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= 8 and m.out_channels % 8 == 0, (name, m.out_channels)


def test_selection_takes_lowest_chunks_globally():
    groups = [ChannelGroup("a", ["a"], 16), ChannelGroup("b", ["b", "b2"], 16)]
    scores = {"a": torch.arange(16.0), "b": torch.full((16,), 0.1), "b2": torch.zeros(16)}
    # Per channel: group a 0..15, group b 0.1 each (sum of its two convs); each b channel covers 2 filters.
    picked = select_channels(groups, scores, filters_to_remove=16, round_to=8)
    assert picked == {"b": list(range(8))}  # one chunk of b (mean 0.1) beats a's first chunk (mean 3.5)
    picked = select_channels(groups, scores, filters_to_remove=17, round_to=8)
    assert sorted(picked) == ["a", "b"] and picked["a"] == list(range(8))
    picked = select_channels(groups, scores, filters_to_remove=10**6, round_to=8)
    assert len(picked["a"]) == 8 and len(picked["b"]) == 8  # each keeps at least round_to channels
    picked = select_channels(groups, scores, filters_to_remove=3, round_to=1)
    assert picked == {"a": [0], "b": [0]}  # 0 (a) < 0.1 (b, 2 filters) < 1 (a)


def test_select_rejects_bad_round_to():
    with pytest.raises(InputError, match=r"--round-to 0: must be a positive integer"):
        select_channels([], {}, 1, round_to=0)


def test_refuses_to_remove_every_channel():
    model = family("resnet18")
    graph = PruningGraph(model, torch.randn(2, 3, 64, 64), protected=[model.fc])
    with pytest.raises(InputError, match="refusing to remove all 64 channels"):
        graph.prune("conv1", list(range(64)))


def test_artifact_round_trip_rebuilds_identical_models(tmp_path: pathlib.Path, monkeypatch):
    import torchvision

    dense = family("resnet18", num_classes=1000)
    weights = tmp_path / "resnet18.pt"
    torch.save(dense.state_dict(), weights)
    head = copy.deepcopy(dense.fc)
    pruned = copy.deepcopy(dense)
    graph = prune_randomly(pruned, rate=0.25, round_to=8)
    manifest = {"source": {"model": "resnet18", "weights": str(weights), "output": None,
                           "hashes": {"weights": sha256_file(weights)}},
                "head": {"name": "fc"}, "plan": graph.plan()}
    save_pruned(tmp_path / "out", pruned, head, manifest)
    _, dense2, pruned2 = load_dense_and_pruned(tmp_path / "out")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(pruned2(x), pruned(x))
        assert torch.equal(dense2(x), dense(x))
    assert layer_shapes(pruned2) == layer_shapes(pruned)
    assert not list((tmp_path / "out").glob(".*tmp*"))
    # A changed source model is refused.
    other = torchvision.models.resnet18()
    torch.save(other.state_dict(), weights)
    with pytest.raises(InputError, match="the source model's weights file changed since pruning"):
        load_dense_and_pruned(tmp_path / "out")
