"""A user's own model from `file.py:factory`: PReLU, a residual add, permute + flatten before the linear
head, two outputs (logits picked with --output); and a coupled group's score summed by hand."""

from __future__ import annotations

import copy
import json

import torch
from models_for_tests import family
from torch import nn

from toolchain.cli import main
from toolchain.models import ModelSource, build_model
from toolchain.scoring.lrp import lrp_filter_scores
from toolchain.surgery import PruningGraph, rank_chunks

FACTORY = '''
import torch
from torch import nn


class TwoHeaded(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.PReLU(16))
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.PReLU(16))
        self.reduce = nn.Sequential(nn.Conv2d(16, 24, 3, stride=4, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(24 * 4, num_classes)
        self.aux = nn.Linear(24 * 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)
        x = self.reduce(x).permute(0, 2, 3, 1).flatten(1)
        return self.fc(x), self.aux(x)


def build():
    return TwoHeaded()
'''


def test_own_model_with_two_outputs_prunes_shrinks_and_exports(tmp_path, image_data, capsys):
    (tmp_path / "net.py").write_text(FACTORY)
    spec = f"{tmp_path / 'net.py'}:build"
    out = tmp_path / "out"
    assert main(["--quiet", "prune", "--model", spec, "--data", str(image_data.small), "--shots", "4",
                 "--image-size", "32", "--output", "0", "--method", "lrp", "--rate", "0.3", "--round-to", "4",
                 "--out", str(out)]) == 0
    layers = json.loads((out / "pruned.json").read_text())["layers"]
    # The residual stream (stem + block, PReLU on both) is pruned; the channels that are permuted before
    # the flatten are left whole (torch-pruning would cut the wrong columns of both heads).
    assert layers["model.stem.0"]["out_channels"] == layers["model.block.0"]["out_channels"] < 16
    assert layers["model.stem.0"]["out_channels"] % 4 == 0
    assert layers["model.stem.1"]["num_features"] == layers["model.stem.2"]["num_parameters"] == layers["model.stem.0"]["out_channels"]
    assert layers["model.reduce.0"]["out_channels"] == 24
    assert layers["model.fc"]["in_features"] == layers["model.aux"]["in_features"] == 96
    assert layers["model.fc"]["out_features"] == 3  # the fitted head keeps every class
    assert main(["--quiet", "export", str(out)]) == 0
    assert capsys.readouterr().out.count("parity passed") == 2


def test_own_model_masked_equals_shrunk(tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    dense = build_model(ModelSource(f"{tmp_path / 'net.py'}:build", output="0"))
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    shrunk = copy.deepcopy(dense)
    graph = PruningGraph(shrunk, x[:2], protected=[shrunk.model.fc])
    assert [g.root for g in graph.groups()] == ["model.block.0"]  # not the permuted-then-flattened conv
    for group in graph.groups():
        graph.prune(group.root, [0, 1])
    with torch.no_grad():
        reference = PruningGraph(dense, x[:2], protected=[dense.model.fc])
        selection = {g.root: [0, 1] for g in reference.groups()}
        with reference.mask(selection):
            masked = dense(x)
        torch.testing.assert_close(shrunk(x), masked, rtol=1e-5, atol=1e-5 * float(masked.abs().max()))


def test_residual_group_score_is_the_sum_of_its_members_by_hand():
    model = family("resnet18")
    torch.manual_seed(0)
    x, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    scores = lrp_filter_scores(model, x, labels)
    graph = PruningGraph(model, x[:2], protected=[model.fc])
    stem = next(g for g in graph.groups() if "conv1" in g.members)
    # The stem's channels run through layer1's two residual adds: three convs write them.
    assert sorted(stem.members) == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    by_hand = scores["conv1"] + scores["layer1.0.conv2"] + scores["layer1.1.conv2"]
    chunks = {c.channels[0]: c.score for c in rank_chunks([stem], scores, round_to=1)}
    for channel, score in chunks.items():
        assert score == float(by_hand[channel])
    assert len(chunks) == 64 - 1  # every channel but one may go: a layer is never emptied
    assert isinstance(model.fc, nn.Linear)
