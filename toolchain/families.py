"""The torchvision model families edgeprune covers: how each is built, explained (LRP) and pruned.

`FAMILIES` is the registry (tests/test_families.py checks every entry end to end: relevance, conservation,
pruning with round_to 8, masked == shrunk, artifact round trip, ONNX export with parity);
`families_table()` is what an `edgeprune families` command prints. `classifier_layer` finds the layer
that must keep its outputs: the last Linear, or SqueezeNet's final conv. `unscored_layers` lists the
layers LRP gives no relevance by construction (squeeze-excitation squeeze convs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from runtime_bench.errors import InputError

from .surgery import pointwise_linears

# Every family gets its LRP rules op by op (toolchain/scoring/rules.py): nothing here is per family but the
# notes on what each one exercises.

@dataclass(frozen=True)
class Family:
    builder: str  # torchvision.models builder name
    notes: str
    status: str = "supported"  # or "partial: what is left out"
    conserves: bool = True  # relevance is conserved layer to layer (within CONSERVATION_TOLERANCE)
    kwargs: dict = field(default_factory=dict)  # extra builder arguments
    cuts: tuple[str, ...] = ("features",)  # modules whose outputs cut the graph (a Sequential: its children)
    min_size: int = 32  # smallest square input (px) checked (relevance, pruning, export)
    slow: bool = False  # seconds rather than a fraction of one in the test suite


FAMILIES: dict[str, Family] = {
    "vgg11": Family("vgg11", "plain conv stack; fc6/fc7 are linear (head rule), never pruned"),
    "vgg16": Family("vgg16", "as vgg11", slow=True),
    "vgg11_bn": Family("vgg11_bn", "BatchNorm folded into each conv"),
    "vgg16_bn": Family("vgg16_bn", "as vgg11_bn"),
    "resnet18": Family("resnet18", "residual adds split in proportion; each stage's add couples its channels into one group",
                       cuts=("conv1", "layer1", "layer2", "layer3", "layer4")),
    "resnet50": Family("resnet50", "as resnet18, bottleneck blocks",
                       cuts=("conv1", "layer1", "layer2", "layer3", "layer4"), slow=True),
    "mobilenet_v2": Family("mobilenet_v2", "ReLU6 passes relevance; depthwise convs are members of their expand conv's group"),
    "mobilenet_v3_small": Family(
        "mobilenet_v3_small",
        "Hardswish passes; SE gate x * scale gives all relevance to x, so the SE squeeze convs score 0"),
    "mobilenet_v3_large": Family(
        "mobilenet_v3_large",
        "as mobilenet_v3_small", slow=True),
    "efficientnet_b0": Family(
        "efficientnet_b0",
        "MBConv add split in proportion (stochastic depth is the identity in eval); SiLU passes; SE as in MobileNetV3; "
        "SE squeeze widths that are not multiples of 8 (4, 6, ...) stay whole with round_to 8", slow=True),
    "densenet121": Family(
        "densenet121",
        "concat routes relevance; pre-activation BatchNorms (not after a conv) pass it; a layer's new channels "
        "are a segment of every later layer's input", slow=True),
    "regnet_x_400mf": Family(
        "regnet_x_400mf",
        "grouped 3x3 convs (group width 16): their groups lose channels in stripes, one per conv group",
        cuts=("stem", "trunk_output")),
    "shufflenet_v2_x0_5": Family(
        "shufflenet_v2_x0_5",
        "split, concat and channel shuffle route relevance; only the stem, branch-internal and conv5 channels "
        "are pruned", status="partial: channels that pass through a channel shuffle are never pruned",
        cuts=("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")),
    "squeezenet1_0": Family(
        "squeezenet1_0", "Fire concat; the classifier is a 1x1 conv: it gets the head rule and is protected "
                             "(classifier_layer)"),
    "convnext_tiny": Family(
        "convnext_tiny",
        "LayerNorm passes relevance; layer scale is a gate; pointwise Linear layers are 1x1 convs (filters); "
        "masking normalises LayerNorms over kept channels", slow=True),
    "googlenet": Family(
        "googlenet",
        "Inception concat; BasicConv2d's functional ReLU passes like any other; aux classifiers off",
        kwargs={"aux_logits": False, "init_weights": True},
        cuts=("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
              "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
              "inception5a", "inception5b"), slow=True),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise InputError(f"family {name}: not covered; choose from {', '.join(FAMILIES)}")
    return FAMILIES[name]


def build(name: str, num_classes: int = 1000) -> nn.Module:
    """The family's torchvision model with random weights (weights=None), in eval mode."""
    import torchvision

    spec = family(name)
    return torchvision.models.get_model(spec.builder, weights=None, num_classes=num_classes, **spec.kwargs).eval()


def families_table() -> list[dict]:
    """One row per family: name, builder, notes, status, conserves, min_size."""
    rows = []
    for name, spec in FAMILIES.items():
        row = asdict(spec)
        for internal in ("cuts", "slow", "kwargs"):
            row.pop(internal)
        rows.append({"name": name, **row})
    return rows


def classifier_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, layer) of the classifier, which must never lose outputs: the last nn.Linear that is not a
    pointwise conv, or, in a model without one (SqueezeNet), its last conv."""
    pointwise = set(pointwise_linears(model))
    weighted = [(n, m) for n, m in model.named_modules()
                if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and m not in pointwise)]
    linears = [(n, m) for n, m in weighted if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    if weighted:
        return weighted[-1]
    raise InputError("the model has no classifier layer (no nn.Linear or nn.Conv2d)")


def unscored_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs get no relevance by construction: the squeeze convs of squeeze-excitation
    blocks, behind the gate (relevance.GateRule). LRP scores them 0, so a relevance ranking prunes them
    first; pass them as `protected` to PruningGraph to leave them whole instead. (The excitation convs, fc2,
    score 0 too, but their channels are coupled with the gated ones, which carry the group's score.)"""
    import torchvision

    return [m.fc1 for m in model.modules() if isinstance(m, torchvision.ops.SqueezeExcitation)]


def graph_cuts(name: str, model: nn.Module) -> dict[str, nn.Module]:
    """Module outputs that cut the model in two: all relevance passes through each (conservation checks)."""
    cuts = {}
    for cut in family(name).cuts:
        module = model.get_submodule(cut)
        if isinstance(module, nn.Sequential):
            cuts.update({f"{cut}.{child}": m for child, m in module.named_children()})
        else:
            cuts[cut] = module
    return cuts
