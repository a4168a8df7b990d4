"""LRP relevance: conservation layer by layer, the rules' guarantees, and the baselines."""

from __future__ import annotations

import pytest
import torch
from models_for_tests import calibrated, family
from torch import nn

from toolchain.scoring.baselines import l1_filter_scores
from toolchain.scoring.lrp import lrp_filter_scores, relevance_at
from toolchain.scoring.rules import zplus_flat

CONSERVATION_TOL = 1e-3  # relative; float32 sums over ~1e5 terms


def cuts(name: str, model: nn.Module) -> dict:
    """Module outputs that cut the graph in two: all relevance must pass through each of them."""
    if name.startswith("vgg"):
        return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if name.startswith("resnet"):
        blocks = {f"layer{i}.{j}": getattr(model, f"layer{i}")[j] for i in range(1, 5) for j in range(2)}
        return {"conv1": model.conv1, **blocks}
    return {f"features.{i}": model.features[i] for i in range(len(model.features))}


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "mobilenet_v2", "mobilenet_v2_pretrained"])
def test_relevance_is_conserved_at_every_layer(name):
    model = family(name)
    size = 112 if name.endswith("pretrained") else 64
    torch.manual_seed(1)
    x = torch.randn(3, 3, size, size)
    labels = torch.tensor([0, 3, 7])
    relevance = relevance_at(model, x, labels, cuts(name, model))
    assert len(relevance) == len(cuts(name, model))
    for layer, r in relevance.items():
        per_sample = r.flatten(1).sum(1)
        torch.testing.assert_close(per_sample, torch.ones(3), rtol=CONSERVATION_TOL, atol=CONSERVATION_TOL,
                                   msg=f"{name} {layer}: relevance not conserved: {per_sample.tolist()}")


def test_sample_weights_scale_the_injected_relevance():
    model = family("resnet18")
    x = torch.randn(2, 3, 64, 64)
    r = relevance_at(model, x, torch.tensor([1, 2]), {"layer2.0": model.layer2[0]},
                     weights=torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(r["layer2.0"].flatten(1).sum(1), torch.tensor([2.0, 0.5]), rtol=1e-3, atol=1e-3)


def test_flat_fallback_keeps_relevance_that_plain_zplus_drops():
    # A depthwise conv whose input window is all zero but whose (folded) bias makes the output positive.
    conv = nn.Conv2d(2, 2, 3, padding=1, groups=2, bias=True)
    with torch.no_grad():
        conv.weight.fill_(0.5)
        conv.bias.fill_(1.0)
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 0, 0] = 1.0  # channel 1 is all zero: only the bias drives its outputs
    grad_out = torch.ones(1, 2, 4, 4)
    relevance_in = zplus_flat(x, conv.weight.detach(), grad_out,
                              lambda t, w: nn.functional.conv2d(t, w, padding=1, groups=2),
                              lambda shape, w, g: torch.nn.grad.conv2d_input(shape, w, g, padding=1, groups=2))
    torch.testing.assert_close(relevance_in.sum(), grad_out.sum())
    assert relevance_in[0, 1].sum() == pytest.approx(16.0)  # passed on flat, not lost
    assert (relevance_in >= 0).all()


def test_lrp_scores_are_nonnegative_and_cover_every_conv():
    model = calibrated(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)), size=16)
    x = torch.randn(5, 3, 16, 16)
    scores = lrp_filter_scores(model, x, torch.tensor([0, 1, 2, 0, 1]), batch_size=2)
    assert set(scores) == {"0", "3"}
    assert scores["0"].shape == (8,) and scores["3"].shape == (4,)
    assert all((s >= 0).all() for s in scores.values())
    # Summed |R| per layer is at least the injected total (|sum| <= sum |.|), equal when no sign mixing.
    assert scores["3"].sum() == pytest.approx(5.0, rel=1e-3) or scores["3"].sum() > 5.0


def test_relevance_leaves_the_model_unchanged():
    model = family("mobilenet_v2")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lrp_filter_scores(model, x, torch.tensor([0, 1]))
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_l1_scores_are_filter_weight_norms():
    conv = nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 0.5], [-3.0, 3.0]]).view(3, 2, 1, 1))
    scores = l1_filter_scores(nn.Sequential(conv))
    assert scores["0"].tolist() == [3.0, 0.5, 6.0]


def test_taylor_scores_match_activation_times_gradient_by_hand():
    from toolchain.scoring.baselines import taylor_filter_scores

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    x, labels = torch.randn(4, 2, 5, 5), torch.tensor([0, 1, 1, 0])
    scores = taylor_filter_scores(model, x, labels, batch_size=3)
    activation = model[0](x).requires_grad_(True)
    loss = nn.functional.cross_entropy(model[4](model[3](model[2](model[1](activation)))), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, activation)
    expected = (activation * grad).sum(dim=(2, 3)).abs().sum(0).detach().double()
    torch.testing.assert_close(scores["0"], expected)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "mobilenet_v2"])
def test_graph_lrp_gives_the_scores_of_the_rules_by_op(name):
    from toolchain.scoring.graph_pass import GraphLrp
    from toolchain.scoring.rules import channel_totals
    from toolchain.surgery import filter_layers

    model = family(name)
    torch.manual_seed(2)
    x, labels = torch.randn(20, 3, 48, 48), torch.randint(0, 10, (20,))  # 20: two chunks of propagation
    layers = filter_layers(model)
    fast = GraphLrp.build(model, layers)
    assert fast is not None, f"{name}: the graph path should cover it"
    scores = fast.filter_scores(x, labels)
    reference = relevance_at(model, x, labels, layers)
    assert set(scores) == set(layers)
    for layer, r in reference.items():
        expected = channel_totals(r, isinstance(layers[layer], torch.nn.Linear))
        # Relative to the layer's largest score: where a residual add's inputs nearly cancel, the proportional
        # split amplifies float rounding (the two paths run their convs in different memory layouts).
        gap = float((scores[layer] - expected).abs().max() / expected.max())
        assert gap < 1e-3, f"{name} {layer}: scores differ by {gap:.2g} of the largest"


def test_graph_lrp_leaves_models_it_does_not_cover_to_the_rules_by_op():
    from toolchain.scoring.graph_pass import GraphLrp
    from toolchain.surgery import filter_layers

    model = family("mobilenet_v3_small")  # squeeze-excitation gates: a product the graph path has no rule for
    assert GraphLrp.build(model, filter_layers(model)) is None
    model = family("resnet18")
    assert GraphLrp.build(model, filter_layers(model), head_rule="zplus") is None


def test_taylor_scores_a_model_whose_convs_feed_in_place_relus():
    import copy

    from toolchain.scoring.baselines import taylor_filter_scores

    model = family("vgg11")  # conv -> ReLU(inplace=True): the first conv's output must not be a graph leaf
    torch.manual_seed(3)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    scores = taylor_filter_scores(model, x, labels)
    out_of_place = copy.deepcopy(model)
    for m in out_of_place.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    expected = taylor_filter_scores(out_of_place, x, labels)
    for name, score in expected.items():
        assert float(score.sum()) > 0, name
        torch.testing.assert_close(scores[name], score, rtol=1e-5, atol=1e-9)


def test_graph_lrp_counts_the_multiply_adds_its_rules_need():
    from toolchain.scoring.graph_pass import GraphLrp
    from toolchain.surgery import filter_layers

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5),
                          nn.Conv2d(5, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)).eval()
    fast = GraphLrp.build(model, filter_layers(model))
    forward, relevance = fast.multiply_adds(torch.randn(3, 8, 8))
    first, second, third, head = 64 * 4 * 27, 64 * 5 * 4, 64 * 6 * 5, 6 * 2
    assert forward == first + second + third + head
    # The first conv reads the image: nothing upstream needs relevance, its rule never runs. The second reads
    # a ReLU (z+ and its transpose, once each); the third reads the BatchNorm's signed output (x+ w+ and x- w-,
    # so twice each); the head: the epsilon rule's forward and its transpose.
    assert relevance == forward + 2 * second + 4 * third + 2 * head
