"""Filter relevance: the LRP pruning criterion of Yeom et al. (METHOD.md), computed with zennit.

Rules, one for every layer type met (`rule_table` lists them):
- conv layers (and ConvNeXt's pointwise Linear layers, which are 1x1 convs): z+ with biases left out and a
  flat fallback for outputs no input drove (`ZPlusFlatFallback`);
- linear layers, and the classifier layer whatever its type (SqueezeNet's final conv): the head rule,
  epsilon (default) or z+, biases left out;
- BatchNorm right after a conv (found by running the model once, not by module order): folded into the
  conv, reversibly; any other BatchNorm (DenseNet's pre-activation ones), LayerNorm and GroupNorm: relevance
  passes through unchanged (a documented CHOICE: they rescale per element, LRP has no standard rule for the
  normalisation itself);
- activations (ReLU, ReLU6, SiLU, Hardswish, GELU, sigmoids): pass through;
- residual adds (through zennit `Sum`, one canonizer per block type) and average pooling: split
  proportionally to the inputs; max pooling: winner takes all (the plain gradient);
- gated products (squeeze-excitation `x * scale`, ConvNeXt's layer scale): all relevance to the signal x,
  none to the gate (`Gate` + `GateRule`);
- concat, split, channel shuffle, flatten, permute, dropout and stochastic depth in eval: plain gradient,
  which routes relevance unchanged.
A leaf layer of any other type is refused with an InputError naming it, unless `allow_fallback` gives it
gradient x input (zennit `Norm`: R_in = x * J^T (R_out / y)) with a warning.

Relevance starts as 1.0 on each sample's TRUE class logit and is conserved layer to layer (every rule
above conserves), which is what makes filter scores of different layers comparable in one global
ranking. A filter's score is the sum over samples and positions of |R| at its layer's output.
Baselines: `l1` (L1 norm of the filter's weights) and `random`.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.grad import conv2d_input
from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm
from zennit.core import Composite, Hook
from zennit.layer import Sum
from zennit.rules import Epsilon, Norm, Pass, ZPlus
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import Activation, AvgPool, BatchNorm, MaxPool

from runtime_bench.errors import InputError

from .families import classifier_layer
from .surgery import filter_layers

HEAD_RULES = ("epsilon", "zplus")
# The canonized model must compute what the model computes, relative to its largest logit (folding
# BatchNorm only changes rounding).
CANONIZER_TOLERANCE = 1e-3


class Gate(nn.Module):
    """`x * scale` as a module of its own, so that the product gets an LRP rule (GateRule)."""

    def forward(self, x, scale):
        return x * scale


class GateRule(Hook):
    """A gated product passes all its relevance to the signal and none to the gate.

    Why: the gate (a sigmoid of pooled features, or a constant layer scale) modulates how much of x goes
    through, it is not a contribution of its own (the signal-take-all rule of LRP for LSTM gates). The plain
    gradient would instead scale x's relevance by the gate and hand x * R to the scale branch, breaking
    conservation.
    """

    def backward(self, module, grad_input, grad_output):
        gates = tuple(None if g is None else torch.zeros_like(g) for g in grad_input[1:])
        return (grad_output[0], *gates)


class ZPlusFlatFallback(Hook):
    """z+ (alpha1-beta0) with biases left out; an output that no input drove positively passes its
    relevance flat (uniformly) to its receptive field instead of dropping it. For Conv2d and Linear.

    Why the fallback: with BatchNorm folded, some outputs are positive only because of the folded bias
    (common in depthwise convs, whose 3x3 window of one ReLU'd channel is often all zero). Plain z+
    without the bias has a zero denominator there and silently loses that relevance; MobileNetV2 then
    keeps 1.0 at the head but about 0.04 behind the last depthwise conv. With the fallback each layer
    conserves. Written for speed: one extra forward and one transposed op per layer in the common case
    (inputs after a ReLU, every output driven), not zennit's generic three modified forwards + autograd.
    """

    stabilizer = 1e-12

    def forward(self, module, input, output):
        self.stored_tensors["input"] = input

    def copy(self):
        return self.__class__()

    def _ops(self, module):
        """(forward, transposed) for this layer type, both linear in the input and without bias."""
        if isinstance(module, nn.Linear):
            return (lambda x, w: F.linear(x, w)), (lambda shape, w, g: g @ w)
        conv = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation,
                "groups": module.groups}
        return (lambda x, w: F.conv2d(x, w, **conv)), (lambda shape, w, g: conv2d_input(shape, w, g, **conv))

    def _window_sizes(self, x, ones, forward) -> torch.Tensor:
        """How many real (not padding) inputs each output reads: the flat rule's denominator; cached."""
        key = (tuple(x.shape[1:]), tuple(ones.shape))
        cached = self.stored_tensors.get("window_sizes")
        if cached is None or cached[0] != key:
            cached = (key, forward(torch.ones_like(x[:1]), ones).clamp(min=1.0))
            self.stored_tensors["window_sizes"] = cached
        return cached[1]

    def backward(self, module, grad_input, grad_output):
        x = self.stored_tensors["input"][0].detach()
        relevance = grad_output[0]
        weight = module.weight.detach()
        forward, transposed = self._ops(module)
        x_pos, w_pos = x.clamp(min=0), weight.clamp(min=0)
        z = forward(x_pos, w_pos)
        has_negative_inputs = bool((x < 0).any())  # skip the x- w- term after a ReLU (the usual case)
        if has_negative_inputs:
            x_neg, w_neg = x.clamp(max=0), weight.clamp(max=0)
            z = z + forward(x_neg, w_neg)
        undriven = z.abs() <= self.stabilizer
        # Without negative inputs z >= 0, so a clamp replaces the masked division.
        denominator = torch.where(undriven, torch.ones_like(z), z) if has_negative_inputs \
            else z.clamp(min=self.stabilizer)
        scaled = relevance / denominator
        if has_negative_inputs:
            scaled = scaled * ~undriven
        result = x_pos * transposed(x.shape, w_pos, scaled)
        if has_negative_inputs:
            result = result + x_neg * transposed(x.shape, w_neg, scaled)
        undriven_relevance = relevance * undriven
        if bool(undriven_relevance.any()):
            ones = torch.ones_like(weight)
            sizes = self._window_sizes(x, ones, forward)
            result = result + transposed(x.shape, ones, undriven_relevance / sizes)
        return tuple(result if g is not None and g.shape == result.shape else None for g in grad_input)


# ------------------------------------------------------------------------------------------ canonizers


class BlockCanonizer(AttributeCanonizer):
    """Replaces `forward` of every block it `matches` by `canonical_forward`, which computes the same values
    but routes the block's functional ops (adds, gated products, functional ReLU or pooling) through
    modules that carry an LRP rule. The modules it needs are attached as attributes while it is applied.
    """

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        raise NotImplementedError

    @classmethod
    def rule_modules(cls) -> dict[str, nn.Module]:
        return {}

    @classmethod
    def _attribute_map(cls, name, module):
        if not cls.matches(module):
            return None
        return {"forward": cls.canonical_forward.__get__(module), **cls.rule_modules()}

    @staticmethod
    def canonical_forward(self, x):
        raise NotImplementedError

    def copy(self):
        return self.__class__()


class InvertedResidualCanonizer(BlockCanonizer):
    """`x + branch(x)` blocks: MobileNetV2 (`conv`), MobileNetV3 and EfficientNet MBConv/FusedMBConv
    (`block`, then stochastic depth, the identity in eval). The add goes through a zennit Sum.

    Without it the add passes the plain gradient to both branches and relevance is no longer conserved
    (measured on MobileNetV2: 1.0 at the head, 0.02 to 0.09 per sample behind the first residual block).
    """

    @classmethod
    def matches(cls, module):
        branch = getattr(module, "conv", None) or getattr(module, "block", None)
        return bool(getattr(module, "use_res_connect", False)) and isinstance(branch, nn.Module)

    @classmethod
    def rule_modules(cls):
        return {"canonizer_sum": Sum()}

    @staticmethod
    def canonical_forward(self, x):
        branch = self.conv(x) if isinstance(getattr(self, "conv", None), nn.Module) else self.block(x)
        depth = getattr(self, "stochastic_depth", None)
        if depth is not None:
            branch = depth(branch)
        return self.canonizer_sum(torch.stack([x, branch], dim=-1))


class SqueezeExcitationCanonizer(BlockCanonizer):
    """torchvision's SqueezeExcitation (MobileNetV3, EfficientNet, RegNetY): `scale(x) * x` through a Gate."""

    @classmethod
    def matches(cls, module):
        return isinstance(module, torchvision.ops.SqueezeExcitation)

    @classmethod
    def rule_modules(cls):
        return {"canonizer_gate": Gate()}

    @staticmethod
    def canonical_forward(self, x):
        return self.canonizer_gate(x, self._scale(x))


class ConvNeXtBlockCanonizer(BlockCanonizer):
    """ConvNeXt CNBlock: `x + stochastic_depth(layer_scale * block(x))`; layer scale is a Gate, the add a Sum."""

    @classmethod
    def matches(cls, module):
        from torchvision.models.convnext import CNBlock

        return isinstance(module, CNBlock)

    @classmethod
    def rule_modules(cls):
        return {"canonizer_gate": Gate(), "canonizer_sum": Sum()}

    @staticmethod
    def canonical_forward(self, x):
        branch = self.stochastic_depth(self.canonizer_gate(self.block(x), self.layer_scale))
        return self.canonizer_sum(torch.stack([x, branch], dim=-1))


class RegNetBlockCanonizer(BlockCanonizer):
    """RegNet ResBottleneckBlock: `activation(shortcut(x) + f(x))` with the add through a Sum."""

    @classmethod
    def matches(cls, module):
        from torchvision.models.regnet import ResBottleneckBlock

        return isinstance(module, ResBottleneckBlock)

    @classmethod
    def rule_modules(cls):
        return {"canonizer_sum": Sum()}

    @staticmethod
    def canonical_forward(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(self.canonizer_sum(torch.stack([shortcut, self.f(x)], dim=-1)))


class BasicConv2dCanonizer(BlockCanonizer):
    """GoogLeNet / Inception BasicConv2d: conv, bn, then a FUNCTIONAL ReLU, made a module (Pass).

    Why: the gradient of a functional ReLU drops the relevance that the next layer's flat fallback gives
    to positions the ReLU zeroed.
    """

    @classmethod
    def matches(cls, module):
        from torchvision.models.googlenet import BasicConv2d as GoogLeNetConv
        from torchvision.models.inception import BasicConv2d as InceptionConv

        return isinstance(module, (GoogLeNetConv, InceptionConv))

    @classmethod
    def rule_modules(cls):
        return {"canonizer_relu": nn.ReLU()}

    @staticmethod
    def canonical_forward(self, x):
        return self.canonizer_relu(self.bn(self.conv(x)))


class DenseNetCanonizer(BlockCanonizer):
    """DenseNet's top level: the functional ReLU and global average pool become modules (Pass, Norm)."""

    @classmethod
    def matches(cls, module):
        return isinstance(module, torchvision.models.DenseNet)

    @classmethod
    def rule_modules(cls):
        return {"canonizer_relu": nn.ReLU(), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}

    @staticmethod
    def canonical_forward(self, x):
        pooled = self.canonizer_pool(self.canonizer_relu(self.features(x)))
        return self.classifier(torch.flatten(pooled, 1))


class MobileNetV2PoolCanonizer(BlockCanonizer):
    """MobileNetV2's functional global average pool becomes a module, so that it splits proportionally
    (Norm) like every other average pool instead of uniformly (its plain gradient)."""

    @classmethod
    def matches(cls, module):
        return isinstance(module, torchvision.models.MobileNetV2)

    @classmethod
    def rule_modules(cls):
        return {"canonizer_pool": nn.AdaptiveAvgPool2d(1)}

    @staticmethod
    def canonical_forward(self, x):
        return self.classifier(torch.flatten(self.canonizer_pool(self.features(x)), 1))


class ShuffleNetV2PoolCanonizer(BlockCanonizer):
    """ShuffleNetV2's functional `mean([2, 3])` becomes an average pool module (Norm), as for MobileNetV2.
    Its blocks need nothing: split, concat and channel shuffle route relevance unchanged."""

    @classmethod
    def matches(cls, module):
        return isinstance(module, torchvision.models.ShuffleNetV2)

    @classmethod
    def rule_modules(cls):
        return {"canonizer_pool": nn.AdaptiveAvgPool2d(1)}

    @staticmethod
    def canonical_forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(torch.flatten(self.canonizer_pool(x), 1))


class ExactMergeBatchNorm(NamedMergeBatchNorm):
    """zennit's BatchNorm folding for named (conv, BatchNorm) pairs, with the BatchNorm left as the EXACT
    identity: zennit sets its variance to 1, so it still divides by sqrt(1 + eps); with eps = 1e-3
    (MobileNetV3, EfficientNet, GoogLeNet) that shrinks every layer by 0.05% and shifted MobileNetV3's
    logits by 10%."""

    @staticmethod
    def merge_batch_norm(modules, batch_norm):
        NamedMergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1.0 - batch_norm.eps)


BLOCK_CANONIZERS: tuple[type[BlockCanonizer], ...] = (
    InvertedResidualCanonizer,
    SqueezeExcitationCanonizer,
    ConvNeXtBlockCanonizer,
    RegNetBlockCanonizer,
    BasicConv2dCanonizer,
    DenseNetCanonizer,
    MobileNetV2PoolCanonizer,
    ShuffleNetV2PoolCanonizer,
)


def conv_batchnorm_pairs(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """(conv or linear, BatchNorm) name pairs where the BatchNorm's input IS that layer's output, found by
    running the model once on `example`; also returns the model's output (what the canonized model must
    reproduce).

    Why not module order (zennit's SequentialMergeBatchNorm): in DenseNet a dense layer's last conv is
    followed, in module order, by the next layer's BatchNorm, which reads the concat of all features.
    """
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> (layer, output kept alive)
    pairs: list[tuple[str, str]] = []

    def after_linear(name):
        def hook(module, inputs, output):
            produced[id(output)] = (name, output)

        return hook

    def before_norm(name):
        def hook(module, inputs):
            source = produced.get(id(inputs[0]))
            if source is not None and source[1] is inputs[0]:
                pairs.append((source[0], name))

        return hook

    handles = []
    was_training = model.training
    model.eval()  # a train-mode pass would update the BatchNorm statistics
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(after_linear(name)))
        elif isinstance(module, BatchNorm):
            handles.append(module.register_forward_pre_hook(before_norm(name)))
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return pairs, output


def block_canonizers(model: nn.Module, batchnorm_pairs: list[tuple[str, str]]) -> list:
    """BatchNorm folding for the given (conv, BatchNorm) pairs, plus the canonizer of every block type the
    model contains (BLOCK_CANONIZERS; zennit's own for ResNet blocks)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    canonizers: list = [ExactMergeBatchNorm([((conv,), norm) for conv, norm in batchnorm_pairs])] \
        if batchnorm_pairs else []
    modules = list(model.modules())
    if any(isinstance(m, BasicBlock) for m in modules):
        canonizers.append(ResNetBasicBlockCanonizer())
    if any(isinstance(m, Bottleneck) for m in modules):
        canonizers.append(ResNetBottleneckCanonizer())
    canonizers += [c() for c in BLOCK_CANONIZERS if any(c.matches(m) for m in modules)]
    return canonizers


def canonizers_for(model: nn.Module, example: torch.Tensor) -> list:
    """The canonizers `model` needs; `example` (one image is enough) finds which BatchNorms follow a conv."""
    pairs, _ = conv_batchnorm_pairs(model, example)
    return block_canonizers(model, pairs)


# ------------------------------------------------------------------------------------------- rules

# Leaf types whose plain gradient IS their rule: identities in eval, pure routing, or winner-takes-all.
GRADIENT_TYPES: tuple[type, ...] = (
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.Flatten,
    torchvision.ops.misc.Permute,
    torchvision.ops.StochasticDepth,
)
PASSED_NORMS: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm)


def _is_leaf(module: nn.Module) -> bool:
    """A layer that computes something itself; an empty Sequential (ShuffleNet's stride-1 branch1) does not."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    return next(module.children(), None) is None and not isinstance(module, containers)


class LrpComposite(Composite):
    """Assigns each layer its rule (module docstring); records the leaf layers that have none."""

    def __init__(self, model: nn.Module, example: torch.Tensor, head_rule: str = "epsilon",
                 epsilon: float = 1e-6, allow_fallback: bool = False):
        if head_rule not in HEAD_RULES:
            raise InputError(f"head rule '{head_rule}': choose from {', '.join(HEAD_RULES)}")
        self.head = classifier_layer(model)[1]
        self.pointwise = {m for m in filter_layers(model).values() if isinstance(m, nn.Linear)}
        self.head_rule = Epsilon(epsilon=epsilon, zero_params="bias") if head_rule == "epsilon" \
            else ZPlus(zero_params="bias")
        self.epsilon = epsilon
        self.allow_fallback = allow_fallback
        self.unruled: list[tuple[str, str]] = []  # (layer name, type) with no rule, filled by register()
        pairs, self.reference = conv_batchnorm_pairs(model, example)
        super().__init__(module_map=self.rule, canonizers=block_canonizers(model, pairs))

    def register(self, module):
        self.unruled = []
        super().register(module)

    def rule_for(self, module: nn.Module) -> tuple[Hook | None, bool]:
        """(the hook, whether the layer has a rule); a None hook with a rule means the plain gradient."""
        if not _is_leaf(module):
            return None, True  # containers: their children carry the rules
        if module is self.head:
            return self.head_rule, True
        if isinstance(module, nn.Conv2d) or module in self.pointwise:
            return ZPlusFlatFallback(), True
        if isinstance(module, nn.Linear):
            return self.head_rule, True
        if isinstance(module, (Sum, AvgPool)):
            return Norm(stabilizer=self.epsilon), True
        if isinstance(module, Gate):
            return GateRule(), True
        if isinstance(module, (Activation, BatchNorm, *PASSED_NORMS)):
            return Pass(), True  # merged BatchNorms are the identity here
        if isinstance(module, (MaxPool, *GRADIENT_TYPES)):
            return None, True
        return None, False

    def rule(self, ctx, name, module) -> Hook | None:
        hook, known = self.rule_for(module)
        if known:
            return hook
        self.unruled.append((name, type(module).__name__))
        if self.allow_fallback:
            warnings.warn(f"{name} ({type(module).__name__}): no LRP rule; using gradient x input for it",
                          stacklevel=2)
            return Norm(stabilizer=self.epsilon)
        return None


def lrp_composite(model: nn.Module, example: torch.Tensor, head_rule: str = "epsilon", epsilon: float = 1e-6,
                  allow_fallback: bool = False) -> LrpComposite:
    """The composite for `model`; `example` (one image is enough) finds which BatchNorms follow a conv."""
    return LrpComposite(model, example, head_rule, epsilon, allow_fallback)


def rule_table(model: nn.Module, example: torch.Tensor, head_rule: str = "epsilon") -> dict[str, str]:
    """Layer type -> rule name for every leaf layer of the canonized model ('gradient' where the plain
    gradient is the rule, 'NONE' where there is no rule)."""
    composite = lrp_composite(model, example, head_rule, allow_fallback=False)
    table: dict[str, str] = {}
    with composite.context(model):
        for module in model.modules():
            if _is_leaf(module):
                hook, known = composite.rule_for(module)
                label = type(hook).__name__ if hook is not None else "gradient" if known else "NONE"
                table.setdefault(type(module).__name__, label)
    return table


def conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def relevance_at(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    watch: dict[str, nn.Module],
    head_rule: str = "epsilon",
    weights: torch.Tensor | None = None,
    allow_fallback: bool = False,
) -> dict[str, torch.Tensor]:
    """Signed LRP relevance at the output of each watched module, for one batch (dict name -> tensor).

    `weights` scales each sample's starting relevance (default 1.0 on its true class logit).
    Parameters get no gradients: only the relevance is propagated. A leaf layer without an LRP rule
    raises InputError, or with `allow_fallback` gets gradient x input and a warning.
    """
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    captured: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(module, inputs, output):
            if not output.requires_grad:  # the first layer: start the graph here, its own rule is not needed
                output = output.detach().requires_grad_(True)
            captured[name] = output
            return output

        return hook

    try:
        composite = lrp_composite(model, images[:1], head_rule, allow_fallback=allow_fallback)
        with composite.context(model) as modified:
            if composite.unruled and not allow_fallback:
                (name, kind), more = composite.unruled[0], len(composite.unruled) - 1
                also = f" (and {more} more layers)" if more else ""
                raise InputError(f"{name} ({kind}): no LRP rule; pass --allow-fallback to use gradient x input "
                                 f"for it{also}")
            handles = [m.register_forward_hook(capture(n)) for n, m in watch.items()]
            try:
                with torch.enable_grad():
                    logits = modified(images)
                    _check_canonized(model, logits[:1].detach(), composite.reference)
                    start = torch.zeros_like(logits)
                    scale = torch.ones(len(labels)) if weights is None else weights
                    start[torch.arange(len(labels)), labels] = scale.to(logits.dtype)
                    names = list(captured)
                    grads = torch.autograd.grad(logits, [captured[n] for n in names], grad_outputs=start)
            finally:
                for h in handles:
                    h.remove()
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return dict(zip(names, grads))


def _check_canonized(model: nn.Module, canonized: torch.Tensor, reference: torch.Tensor) -> None:
    """A canonizer must not change what the model computes (a wrong BatchNorm fold or block rewrite would)."""
    scale = float(reference.abs().max())
    gap = float((canonized - reference).abs().max())
    if not gap <= CANONIZER_TOLERANCE * scale + 1e-12:
        raise InputError(f"{type(model).__name__}: the model rewritten for LRP computes other logits than the model "
                         f"(max |diff| {gap:.3g} vs logit scale {scale:.3g}); its structure is not supported")


def channel_totals(relevance: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Summed |R| per output channel: channels are dim 1 of a conv's output, the last dim of a Linear's."""
    channel_dim = relevance.ndim - 1 if isinstance(layer, nn.Linear) else 1
    dims = tuple(d for d in range(relevance.ndim) if d != channel_dim)
    return relevance.abs().sum(dim=dims).to(torch.float64)


def lrp_filter_scores(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 32,
    head_rule: str = "epsilon",
    sample_weights: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
    allow_fallback: bool = False,
) -> dict[str, torch.Tensor]:
    """Per filter layer (conv, or pointwise Linear), the summed |R| of each output channel over all images
    (the Yeom criterion)."""
    from .lrp_graph import GraphLrp

    layers = filter_layers(model)
    totals = {n: torch.zeros(_out_channels(m), dtype=torch.float64) for n, m in layers.items()}
    model.eval()
    fast = GraphLrp.build(model, layers, head_rule)  # None: a node it does not cover, zennit does it all
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        weights = None if sample_weights is None else sample_weights[start:stop]
        if fast is not None:
            batch_scores = fast.filter_scores(images[start:stop], labels[start:stop], weights)
        else:
            relevance = relevance_at(model, images[start:stop], labels[start:stop], layers, head_rule, weights,
                                     allow_fallback)
            batch_scores = {name: channel_totals(r, layers[name]) for name, r in relevance.items()}
        for name, score in batch_scores.items():
            totals[name] += score
        if progress is not None:
            progress(min(stop, len(images)) - start)
    return totals


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def l1_filter_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """L1 norm of each filter's weights (the magnitude baseline)."""
    return {n: m.weight.detach().abs().flatten(1).sum(1).to(torch.float64) for n, m in filter_layers(model).items()}


def random_filter_scores(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        n: torch.rand(_out_channels(m), generator=generator, dtype=torch.float64)
        for n, m in filter_layers(model).items()
    }


def taylor_filter_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 32,
                         progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """First-order Taylor baseline (Molchanov et al.): per filter, |sum over positions of activation x
    d(cross-entropy on the true class)/d(activation)|, summed over images. Plain autograd, no LRP rules."""
    layers = filter_layers(model)
    totals = {n: torch.zeros(_out_channels(m), dtype=torch.float64) for n, m in layers.items()}
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    captured: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(module, inputs, output):
            captured[name] = output

        return hook

    handles = [m.register_forward_hook(capture(n)) for n, m in layers.items()]
    try:
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            with torch.enable_grad():
                # The input carries the graph (not the first layer's output made a leaf): an in-place ReLU
                # right after a conv (VGG) may not modify a leaf. Such a ReLU leaves the product unchanged.
                x = images[start:stop].detach().requires_grad_(True)
                loss = F.cross_entropy(model(x), labels[start:stop], reduction="sum")
                names = list(captured)
                grads = torch.autograd.grad(loss, [captured[n] for n in names])
            for name, grad in zip(names, grads):
                product = captured[name].detach() * grad
                channel_dim = product.ndim - 1 if isinstance(layers[name], nn.Linear) else 1
                spatial = tuple(d for d in range(1, product.ndim) if d != channel_dim)
                per_sample = product.sum(dim=spatial) if spatial else product
                totals[name] += per_sample.abs().sum(0).to(torch.float64)
            captured.clear()
            if progress is not None:
                progress(stop - start if stop <= len(images) else len(images) - start)
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return totals
