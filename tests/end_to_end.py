"""The end-to-end check every model family goes through (torchvision, timm, hand-written): relevance
conserved through cuts of the graph, 30% pruned with round_to 8, masked == shrunk, conserved again on the
pruned model, the artifact rebuilt from the factory's classes, ONNX export through the parity gate."""

from __future__ import annotations

import copy
import pathlib
from typing import Callable

import torch
from torch import nn

from toolchain.artifact import apply_shapes, layer_shapes
from toolchain.complexity import macs_and_params
from toolchain.families import classifier_layer
from toolchain.scoring.lrp import lrp_filter_scores, relevance_at, rule_table
from toolchain.surgery import PruningGraph, as_selection, filter_layers, masked, out_channels, rank_chunks

CONSERVATION_TOL = 1e-3  # per sample, relative to the 1.0 injected; measured worst 5e-5 (ConvNeXt, DenseNet)
MASK_TOL = 1e-5  # masked vs shrunk, relative to the largest logit
RATE, ROUND_TO = 0.3, 8


def prune_by_relevance(graph: PruningGraph, scores: dict[str, torch.Tensor]) -> None:
    """One chunk from EVERY group (so that each kind of coupling is exercised), then the globally
    lowest-scoring chunks until RATE of the filters are gone."""
    ranked = rank_chunks(graph.groups(), scores, ROUND_TO)
    picked = list({chunk.root: chunk for chunk in reversed(ranked)}.values())  # each group's first chunk
    covered = sum(chunk.filters for chunk in picked)
    target = int(RATE * graph.original_filters)
    for chunk in ranked:
        if covered >= target:
            break
        if chunk not in picked:
            picked.append(chunk)
            covered += chunk.filters
    for root, channels in as_selection(picked).items():
        graph.prune(root, channels)


def conservation_gap(model: nn.Module, images: torch.Tensor, cuts: dict[str, nn.Module]) -> float:
    """Worst |sum of relevance - 1| over samples and cuts, relevance 1.0 injected on the predicted class."""
    with torch.no_grad():
        labels = model(images).argmax(1)
    relevance = relevance_at(model, images, labels, cuts)
    assert set(relevance) == set(cuts), set(cuts) - set(relevance)
    return max(float((r.flatten(1).sum(1) - 1.0).abs().max()) for r in relevance.values())


def check_end_to_end(dense: nn.Module, images: torch.Tensor, cuts: Callable[[nn.Module], dict[str, nn.Module]],
                     rebuild: Callable[[], nn.Module], onnx_path: pathlib.Path, *, partial: bool = False,
                     conserved: bool = True, exporter: str = "auto") -> PruningGraph:
    """The whole check on `dense` (random weights made realistic). `cuts(model)`: modules whose outputs cut
    the graph; `rebuild()`: a fresh model from the factory, reshaped from the manifest. `partial`: some groups
    are expected to be left whole; `conserved=False`: relevance is expected NOT to be conserved; `exporter`:
    exporters.onnx's choice."""
    assert "NONE" not in rule_table(dense, images[:1]).values()
    gap = conservation_gap(dense, images, cuts(dense))
    assert (gap <= CONSERVATION_TOL) == conserved, f"relevance conserved: {gap <= CONSERVATION_TOL} ({gap:.3g})"
    scores = lrp_filter_scores(dense, images, torch.tensor([i % 3 for i in range(len(images))]))
    layers = filter_layers(dense)
    assert set(scores) == set(layers)
    for layer, score in scores.items():
        assert score.shape == (out_channels(layers[layer]),)
        assert torch.isfinite(score).all() and (score >= 0).all(), layer
    assert sum(float(s.sum()) for s in scores.values()) > 0

    shrunk = copy.deepcopy(dense)
    head = classifier_layer(shrunk)[1]
    classes = out_channels(head)
    graph = PruningGraph(shrunk, images[:2], protected=[head])
    assert bool(graph.unprunable) == partial, graph.unprunable
    prune_by_relevance(graph, scores)
    assert graph.pruned_fraction >= (0.01 if partial else RATE - 1e-3), graph.pruned_fraction
    for layer, kept in graph.plan().items():
        assert len(kept) % ROUND_TO == 0, (layer, len(kept))
    assert out_channels(head) == classes

    with torch.no_grad():
        dense_out, shrunk_out = dense(images), shrunk(images)
        with masked(dense, images[:2], graph.plan(), protected=[classifier_layer(dense)[1]]):
            masked_out = dense(images)
        restored_out = dense(images)
    scale = float(dense_out.abs().max())
    torch.testing.assert_close(shrunk_out, masked_out, rtol=MASK_TOL, atol=MASK_TOL * scale)
    if not partial:  # with most groups left whole, what is pruned may be channels nothing reads
        assert not torch.allclose(shrunk_out, dense_out, atol=MASK_TOL * scale), "pruning changed nothing"
    assert torch.equal(restored_out, dense_out), "masking is not reversible"
    assert macs_and_params(shrunk, images)[0] < macs_and_params(dense, images)[0]
    if conserved:
        gap = conservation_gap(shrunk, images, cuts(shrunk))
        assert gap <= CONSERVATION_TOL, f"pruned: relevance not conserved ({gap:.3g})"

    rebuilt = rebuild()
    apply_shapes(rebuilt, layer_shapes(shrunk))
    rebuilt.load_state_dict(shrunk.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(images), shrunk_out, rtol=1e-6, atol=1e-6 * scale)

    from exporters.onnx import export_verified

    assert export_verified(shrunk, images.numpy(), onnx_path, exporter=exporter)["passed"] and onnx_path.is_file()
    return graph
