"""Every covered model family end to end on random weights (toolchain/families.py): LRP rules for every
layer, conservation, scores, pruning 30% with round_to 8, masked == shrunk, artifact round trip, ONNX export
with parity. Small inputs (not 224) keep each family to seconds."""

from __future__ import annotations

import pathlib

import pytest
import torch
from end_to_end import CONSERVATION_TOL, check_end_to_end
from models_for_tests import calibrated, realistic_family
from torch import nn
from torch.nn import functional as F

from runtime_bench.errors import InputError
from toolchain.families import FAMILIES, build, classifier_layer, families_table, graph_cuts, unscored_layers
from toolchain.scoring.lrp import lrp_filter_scores, relevance_at, rule_table
from toolchain.surgery import (
    ChannelGroup,
    PruningGraph,
    rank_chunks,
)

# Input size per family: none is 224; the larger ones run at the smallest size their strides allow.
SIZES = {
    "vgg11": 32, "vgg16": 32, "vgg11_bn": 48, "vgg16_bn": 32, "resnet18": 64, "resnet50": 32,
    "mobilenet_v2": 64, "mobilenet_v3_small": 64, "mobilenet_v3_large": 48, "efficientnet_b0": 48,
    "densenet121": 32, "regnet_x_400mf": 64, "shufflenet_v2_x0_5": 96, "squeezenet1_0": 64,
    "convnext_tiny": 32, "googlenet": 48,
}
SLOW = {"vgg16", "vgg16_bn", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "densenet121", "convnext_tiny",
        "googlenet"}


def family_params():
    for name in FAMILIES:
        marks = [pytest.mark.slow] if name in SLOW else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", family_params())
def test_family_end_to_end(name, tmp_path: pathlib.Path):
    spec, size = FAMILIES[name], SIZES[name]
    assert size != 224 and size >= spec.min_size
    assert spec.conserves, f"{name}: the registry says relevance is not conserved; test what it does instead"
    dense = realistic_family(name, size)
    torch.manual_seed(0)
    images = torch.randn(3, 3, size, size)
    # Rules, conservation through every cut of the graph, 30% pruned with round_to 8, masked == shrunk,
    # the artifact round trip and ONNX export with parity (tests/end_to_end.py).
    check_end_to_end(dense, images, lambda model: graph_cuts(name, model), lambda: build(name, num_classes=10),
                     tmp_path / f"{name}.onnx")


def test_op_without_rule_is_refused_or_falls_back_with_a_warning():
    class Square(nn.Module):  # a product of a signal with itself: no LRP rule
        def forward(self, x):
            return x * x

    torch.manual_seed(0)
    model = calibrated(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Square(), nn.Conv2d(8, 8, 3),
                                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)), size=8)
    x = torch.rand(2, 3, 8, 8)
    labels = torch.tensor([0, 1])
    with pytest.raises(InputError, match=r"^2 \(mul\): no LRP rule; pass --allow-fallback to use gradient x "
                                         r"input for it$"):
        lrp_filter_scores(model, x, labels)
    assert all(p.requires_grad for p in model.parameters())  # the failed call restored the model
    with pytest.warns(UserWarning, match=r"2 \(mul\): no LRP rule; using gradient x input for it"):
        relevance = relevance_at(model, x, labels, {"0": model[0]}, allow_fallback=True)
    # Gradient x input of x * x hands on twice what it receives (d(x^2)/dx * x = 2 x^2): finite, not conserved.
    torch.testing.assert_close(relevance["0"].flatten(1).sum(1), torch.full((2,), 2.0), rtol=0, atol=1e-3)
    assert rule_table(model, x[:1])["mul"] == "NONE"


def test_rules_come_from_the_ops_whatever_the_module():
    """Functional ops, nn.Module activations of every kind and a Conv2d subclass with its own forward (TF
    'same' padding) all get their rule; relevance is conserved through each."""

    class SamePadConv(nn.Conv2d):  # pads itself asymmetrically, then convolves without padding
        def forward(self, x):
            return super().forward(F.pad(x, (0, 1, 0, 1)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = SamePadConv(3, 8, 2)
            self.acts = nn.ModuleList([nn.PReLU(8), nn.LeakyReLU(0.1), nn.ELU(), nn.GELU(), nn.SiLU(), nn.Mish(),
                                       nn.Hardswish()])
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = self.stem(x)
            for act in self.acts:
                x = act(x)
            y = F.relu(self.conv(x))
            x = x + y * torch.sigmoid(y.mean((2, 3), keepdim=True))  # residual add, gated product
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    model = calibrated(Net(), size=8)
    x = torch.randn(2, 3, 8, 8)
    table = rule_table(model, x[:1])
    assert "NONE" not in table.values()
    assert table["conv2d"] == "z+ flat" and table["linear"] == "epsilon" and table["pad"] == "to the nearest real input"
    assert table["add"] == "proportional" and table["mul"] == "gate" and table["mean"] == "proportional"
    assert {table[a] for a in ("prelu", "leaky_relu", "elu", "gelu", "silu", "mish", "hardswish")} == {"pass"}
    relevance = relevance_at(model, x, torch.tensor([0, 1]), {"stem": model.stem, "acts": model.acts[-1]})
    for layer, r in relevance.items():
        torch.testing.assert_close(r.flatten(1).sum(1), torch.ones(2), rtol=0, atol=CONSERVATION_TOL, msg=layer)


def test_canonized_model_must_compute_the_same_logits():
    class ConvReusedAfterNorm(nn.Module):  # the conv output feeds its BatchNorm AND the add: no fold allowed
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.pool, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), \
                nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(self.pool(self.bn(y) + y).flatten(1))

    model = calibrated(ConvReusedAfterNorm(), size=8)
    with torch.no_grad():
        model.bn.weight.fill_(3.0)
    with pytest.raises(InputError, match="the model rewritten for LRP computes other logits than the model"):
        relevance_at(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), {"conv": model.conv})


def test_grouped_convs_lose_channels_in_stripes():
    # 2 conv groups of 16: a chunk of 8 channels is 4 positions in both groups; the group keeps 8 (4 + 4).
    groups = [ChannelGroup("g", ["g"], 32, stripes=2)]
    score = torch.arange(32.0)
    score[16:] = 0.0  # position j scores j (group 1 adds nothing)
    chunks = rank_chunks(groups, {"g": score}, round_to=8)
    assert [sorted(c.channels) for c in chunks] == [[0, 1, 2, 3, 16, 17, 18, 19], [4, 5, 6, 7, 20, 21, 22, 23],
                                                   [8, 9, 10, 11, 24, 25, 26, 27]]
    # 25 conv groups (RegNet's 400-wide stage): 8 positions x 25 = 200 channels per chunk, multiples of 8.
    chunks = rank_chunks([ChannelGroup("h", ["h"], 400, stripes=25)], {"h": torch.rand(400)}, round_to=8)
    assert [len(c.channels) for c in chunks] == [200]


def test_prune_refuses_channels_that_break_conv_groups():
    model = realistic_family("regnet_x_400mf", 32)
    graph = PruningGraph(model, torch.randn(2, 3, 32, 32), protected=[model.fc])
    striped = next(g for g in graph.groups() if g.stripes > 1)
    with pytest.raises(InputError, match="channels must leave in stripes"):
        graph.prune(striped.root, [0])


def test_classifier_layer_is_the_last_linear_or_the_final_conv():
    assert classifier_layer(build("squeezenet1_0"))[0] == "classifier.1"
    assert classifier_layer(build("convnext_tiny"))[0] == "classifier.2"  # not a pointwise Linear of a block
    assert classifier_layer(build("vgg11"))[0] == "classifier.6"


def test_squeeze_excitation_squeeze_convs_get_no_relevance():
    model = realistic_family("mobilenet_v3_small", 32)
    scores = lrp_filter_scores(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    names = {m: n for n, m in model.named_modules()}
    squeeze = [names[m] for m in unscored_layers(model)]
    assert squeeze and all(float(scores[n].sum()) == 0.0 for n in squeeze)  # the gate takes none
    assert all(float(scores[n].sum()) > 0 for n in scores if n not in squeeze and ".fc2" not in n)


def test_families_table_lists_every_family():
    rows = families_table()
    assert [r["name"] for r in rows] == list(FAMILIES)
    assert all({"builder", "notes", "status", "conserves"} <= set(r) for r in rows)
    assert {r["name"] for r in rows if r["status"] != "supported"} == {"shufflenet_v2_x0_5"}
