"""Models nobody wrote rules for: small hand-written CNNs with the cases third-party code brings
(probabilities as the output, functional padding and pooling, PReLU stacks, a permute before the
classifier), a timm model through the command line (prune -> export -> bench), and MACs counted from the
ops that run."""

from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp
from cli_helpers import run_cli
from end_to_end import check_end_to_end
from models_for_tests import calibrated
from torch import nn
from torch.nn import functional as F

from toolchain.complexity import macs_and_params
from toolchain.families import FAMILIES, build
from toolchain.scoring.lrp import relevance_at
from toolchain.surgery.costs import layer_macs, output_positions


def conv_bn_act(cin: int, cout: int, act: nn.Module | None = None, **kwargs) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, bias=False, **kwargs), nn.BatchNorm2d(cout), act or nn.ReLU())


class ProbabilitiesOut(nn.Module):
    """Ends in a Softmax: its output is probabilities, not logits."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_act(3, 16, padding=1)
        self.body = nn.Sequential(conv_bn_act(16, 32, padding=1, stride=2), conv_bn_act(32, 32, padding=1))
        self.fc = nn.Linear(32, 4)
        self.out = nn.Softmax(dim=1)

    def forward(self, x):
        return self.out(self.fc(torch.flatten(F.adaptive_avg_pool2d(self.body(self.stem(x)), 1), 1)))


class PadAndMean(nn.Module):
    """Asymmetric F.pad before unpadded convs, a residual add, and `x.mean((2, 3))` as the global pool."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_act(3, 16, stride=2)
        self.conv1, self.conv2 = conv_bn_act(16, 16), conv_bn_act(16, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(F.pad(x, (0, 1, 0, 1)))
        x = x + self.conv2(F.pad(self.conv1(F.pad(x, (1, 1, 1, 1))), (1, 1, 1, 1)))
        return self.fc(x.mean((2, 3)))


class PReLUStack(nn.Module):
    """Convs with per-channel PReLUs (their slopes are pruned with the channels)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*(conv_bn_act(c_in, c_out, nn.PReLU(c_out), padding=1)
                                      for c_in, c_out in ((3, 16), (16, 24), (24, 32))))
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1))


class PermuteBeforeClassifier(nn.Module):
    """Channels-last features before the classifier: pooled, permuted, flattened."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn_act(3, 16, padding=1), conv_bn_act(16, 32, padding=1, stride=2),
                                      conv_bn_act(32, 32, padding=1), conv_bn_act(32, 24, padding=1))
        self.fc = nn.Linear(24, 4)

    def forward(self, x):
        pooled = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(pooled.permute(0, 2, 3, 1).flatten(1))


class ScaledConv(nn.Conv2d):
    """A Conv2d subclass with its own forward (same as its parent's, written out) and a scale of its own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ChannelScale(nn.Module):
    """A custom block holding a per-channel parameter (a layer scale), pruned with its channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels).view(1, channels, 1, 1))

    def forward(self, x):
        return x * self.scale


class CustomClasses(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(ScaledConv(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(ScaledConv(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                                   ChannelScale(32))
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.block(self.stem(x)), 1).flatten(1))


HAND_WRITTEN = {"custom_classes": (CustomClasses, "stem"), "probabilities": (ProbabilitiesOut, "stem"), "pad_and_mean": (PadAndMean, "stem"),
                "prelu_stack": (PReLUStack, "layers.0"), "permute_before_classifier": (PermuteBeforeClassifier,
                                                                                        "features.1")}


@pytest.mark.parametrize("name", list(HAND_WRITTEN))
def test_hand_written_model_end_to_end(name, tmp_path):
    factory, cut = HAND_WRITTEN[name]
    torch.manual_seed(0)
    dense = calibrated(factory(), size=16, exact=True)
    images = torch.randn(4, 3, 16, 16)
    check_end_to_end(dense, images, lambda model: {cut: model.get_submodule(cut)}, factory,
                     tmp_path / f"{name}.onnx")


def test_probabilities_at_the_output_start_relevance_at_the_logits():
    torch.manual_seed(0)
    model = calibrated(ProbabilitiesOut(), size=16, exact=True)
    x = torch.randn(2, 3, 16, 16)
    with pytest.warns(UserWarning, match="ProbabilitiesOut: the output is a softmax of the logits, a monotone "
                                         "normalisation; relevance starts at its input"):
        relevance = relevance_at(model, x, torch.tensor([0, 1]), {"stem": model.stem})
    # 1.0 on the true class LOGIT (not on a probability, whose gradient would spread over every class).
    torch.testing.assert_close(relevance["stem"].flatten(1).sum(1), torch.ones(2), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_macs_are_counted_from_the_ops_that_run(name):
    """On every torchvision family: the op-level count equals the sum over conv and linear layers exactly;
    torch-pruning's module counter, which also counts BatchNorm and activations, is at most 10% above it (8% on ShuffleNetV2)."""
    model = build(name, num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    macs, params = macs_and_params(model, x)
    by_layer = sum(layer_macs(m, p) for m, p in output_positions(model, x).items())
    assert macs == int(by_layer)
    theirs, their_params = tp.utils.count_ops_and_params(model, x)
    assert macs <= theirs <= 1.10 * macs and params == their_params


def test_macs_see_conv_subclasses_and_functional_calls():
    class FunctionalNet(nn.Module):  # a conv subclass with its own forward, and a functional conv
        def __init__(self):
            super().__init__()
            self.conv = SamePad(3, 8, 3)
            self.weight = nn.Parameter(torch.randn(4, 8, 1, 1))

        def forward(self, x):
            return F.conv2d(self.conv(x), self.weight).mean((2, 3))

    class SamePad(nn.Conv2d):
        def forward(self, x):
            return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias)

    macs, params = macs_and_params(FunctionalNet(), torch.randn(1, 3, 10, 10))
    assert macs == 100 * 8 * 27 + 100 * 4 * 8 and params == 8 * 27 + 8 + 32


@pytest.mark.slow
def test_timm_model_prunes_exports_and_benches_from_the_command_line(tmp_path, image_data):
    pytest.importorskip("timm", reason="timm is not installed (the dev extra installs it)")
    (tmp_path / "net.py").write_text(
        "import timm\n\n\ndef build():\n"
        "    return timm.create_model('tf_mobilenetv3_small_minimal_100', pretrained=False, num_classes=1000)\n")
    out = tmp_path / "out"
    prune = run_cli(["prune", "--model", f"{tmp_path / 'net.py'}:build", "--data", image_data.small, "--test-data",
                     image_data.test, "--shots", "4", "--image-size", "32", "--method", "lrp", "--rate", "0.3",
                     "--round-to", "8", "--out", out], tmp_path)
    assert prune.returncode == 0, prune.stderr
    manifest = json.loads((out / "pruned.json").read_text())
    import timm

    dense = timm.create_model("tf_mobilenetv3_small_minimal_100", pretrained=False, num_classes=1000)
    expected, _ = macs_and_params(dense, torch.zeros(1, 3, 32, 32))
    # The manifest's dense MACs are the op-level count (with the head re-fitted to the task's classes).
    head_macs = dense.get_classifier().in_features * (1000 - len(image_data.classes))
    assert manifest["curve"][0]["macs"] == expected - head_macs
    assert manifest["curve"][-1]["macs"] < manifest["curve"][0]["macs"]
    export = run_cli(["export", out], tmp_path)
    assert export.returncode == 0 and export.stdout.count("parity passed") == 2, export.stderr
    bench = run_cli(["bench", out / "dense.onnx", out / "model.onnx", "--data", image_data.test, "--json",
                     out / "bench.json", "--min-runs", "5", "--min-seconds", "0.2"], tmp_path)
    assert bench.returncode == 0, bench.stderr
    assert json.loads((out / "bench.json").read_text())["comparison"]["speedup_p50"] > 0


def test_probabilities_model_prunes_from_the_command_line_and_says_where_relevance_starts(tmp_path, image_data,
                                                                                          capsys):
    from toolchain.cli import main

    (tmp_path / "net.py").write_text("from test_any_model import ProbabilitiesOut\n\n\n"
                                     "def build():\n    return ProbabilitiesOut()\n")
    out = tmp_path / "out"
    assert main(["--quiet", "prune", "--model", f"{tmp_path / 'net.py'}:build", "--data", str(image_data.small),
                 "--shots", "4", "--image-size", "16", "--method", "lrp", "--rate", "0.3", "--round-to", "4",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: ProbabilitiesOut: the output is a softmax of the logits, a monotone normalisation; " \
           "relevance starts at its input" in err
    assert "Traceback" not in err and (out / "pruned.json").is_file()
