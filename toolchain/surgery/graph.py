"""Physical channel surgery on a CNN through torch-pruning's dependency graph.

A *filter* is an output channel of a conv, or of a pointwise Linear layer (a 1x1 conv applied to
channels-last features, as in ConvNeXt). A *channel group* is a set of filters that must be removed
together: both sides of a residual add, a depthwise conv and the conv that feeds it, concat segments, a
squeeze-excitation scale and the channels it gates. torch-pruning's DependencyGraph finds them by tracing
autograd, and it also shrinks every consumer (BatchNorm, LayerNorm, the next layer's input channels).

Constraints beyond torch-pruning's own:
- a group that a grouped (not depthwise) conv reads or writes loses channels in *stripes*: the same
  position in every conv group at once, so that every conv group keeps the same width;
- channels that pass through a channel shuffle (ShuffleNet's streams) are not pruned: the shuffle's
  permutation and the split after it would no longer line up;
- channels that are permuted and then flattened (channels-last `permute(0, 2, 3, 1).flatten(1)` before a
  linear layer) are not pruned: torch-pruning would map them as channel-major and cut the wrong columns;
- the classifier (`protected`) never loses output channels, and its filters do not count in the rate;
- any other group is pruned once, on a copy, when the graph is built, and left whole (`unprunable`, with the
  reason) if the copy then fails or computes other outputs than the masked model: modules that keep
  channel counts as plain numbers (split sizes, slices, fixed reshapes) are common in third-party models.

We keep three things beside the model:

- the groups with, per channel, which filter layers' outputs it covers (for scoring and counting filters);
- per filter layer, which ORIGINAL output channels it still has (the plan, stable across pruning steps);
- masking, the reversible twin of shrinking, used to prove that the shrunk model computes exactly what
  the masked dense model computes.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from runtime_bench.errors import InputError, first_line

from ..control.controller import lowest_covering
from ..outputs import SelectOutput


def _channel_parameters(layer: nn.Module) -> dict[str, nn.Parameter]:
    """A filter layer's own parameters other than weight and bias with one entry per output channel (the
    gain of timm's weight-standardised ScaledStdConv2d): they must shrink with its filters."""
    count = out_channels(layer)
    return {n: p for n, p in layer.named_parameters(recurse=False)
            if n not in ("weight", "bias") and p.ndim >= 1 and p.shape[0] == count}


TRIAL_TOLERANCE = 1e-4  # a trial prune's outputs vs the masked model's, relative to the largest output
_VERIFIED: dict[tuple, dict[str, str]] = {}  # PruningGraph._verify_groups, per model structure


@dataclass
class ChannelGroup:
    """Channels that are pruned together; `members` are the layers whose OUTPUT channels they are."""

    root: str  # name of the layer the group is addressed by
    members: list[str]  # filter layers (names) whose output channels belong to the group
    size: int  # current channel count
    stripes: int = 1  # conv groups of the grouped convs it touches: channels leave one per conv group
    # Member layer -> its output channel for each of the group's channels (-1: none), where that is not the
    # same index (a layer whose outputs are concatenated with others' covers only a segment of the group).
    positions: dict[str, list[int]] | None = None

    def member_scores(self, scores: dict[str, torch.Tensor], member: str) -> torch.Tensor:
        """The member's scores per channel of the group (0 where it has no channel)."""
        score = scores[member]
        if not self.positions or member not in self.positions or len(score) == self.size and \
                all(p == i for i, p in enumerate(self.positions[member])):
            return score
        index = torch.tensor(self.positions[member])
        return torch.where(index >= 0, score[index.clamp(min=0)], torch.zeros((), dtype=score.dtype))


def pointwise_linears(model: nn.Module) -> list[nn.Module]:
    """Linear layers applied to channels-last feature maps (between two Permutes of a Sequential): 1x1 convs."""
    from torchvision.ops.misc import Permute

    found = []
    for container in model.modules():
        if not isinstance(container, nn.Sequential):
            continue
        channels_last = False
        for child in container.children():
            if isinstance(child, Permute):
                channels_last = not channels_last
            elif channels_last and isinstance(child, nn.Linear):
                found.append(child)
    return found


def filter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """name -> layer for every layer whose output channels are filters: Conv2d and pointwise Linear."""
    pointwise = set(pointwise_linears(model))
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) or m in pointwise}


def out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def conv_filter_count(model: nn.Module) -> int:
    """Total filters (output channels of every filter layer): the denominator of the pruning rate."""
    return sum(out_channels(m) for m in filter_layers(model).values())


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def is_grouped(module: nn.Module) -> bool:
    """A grouped conv that is not depthwise (RegNet, ResNeXt): its conv groups must keep equal widths."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not is_depthwise(module)


class _ChannelShuffle(torch.autograd.Function):
    """ShuffleNet's channel shuffle as ONE autograd node (view/transpose/view computed inside).

    Why: torch-pruning follows view/transpose/view with a reshape index mapping that fails on it
    (ZeroDivisionError while building the graph).
    """

    @staticmethod
    def forward(ctx, x, groups):
        ctx.groups = groups
        b, c, h, w = x.shape
        return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    @staticmethod
    def backward(ctx, grad):
        b, c, h, w = grad.shape
        return grad.view(b, c // ctx.groups, ctx.groups, h, w).transpose(1, 2).reshape(b, c, h, w), None


class ChannelShuffle(nn.Module):
    """The shuffle as a module, present only while torch-pruning traces the model: a node of its own whose
    pruner couples nothing across it, so that every group that reaches it can be recognised and left alone
    (its permutation, and the split of the next block, would no longer line up after pruning)."""

    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups
        self.channels = 0

    def forward(self, x):
        self.channels = x.shape[1]
        return _ChannelShuffle.apply(x, self.groups)


class _ShufflePruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning's view of ChannelShuffle: in and out channels are not coupled and nothing is pruned."""

    def prune_out_channels(self, layer, idxs):
        return layer

    def prune_in_channels(self, layer, idxs):
        return layer

    def get_out_channels(self, layer):
        return layer.channels

    def get_in_channels(self, layer):
        return layer.channels


def _traceable_shufflenet_forward(self, x):
    """torchvision's ShuffleNetV2 InvertedResidual.forward with the shuffle as a ChannelShuffle module."""
    if self.stride == 1:
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch2(x2)), dim=1)
    else:
        out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
    return self.trace_shuffle(out)


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[nn.Module]:
    """The model with the forwards torch-pruning cannot trace replaced by equivalent ones (restored after)."""
    from torchvision.models.shufflenetv2 import InvertedResidual as ShuffleBlock

    patched = [m for m in model.modules() if isinstance(m, ShuffleBlock)]
    for module in patched:
        module.trace_shuffle = ChannelShuffle()
        module.forward = _traceable_shufflenet_forward.__get__(module)
    try:
        yield model
    finally:
        for module in patched:
            del module.forward
            del module.trace_shuffle


def _masked_layer_norm(norm: nn.LayerNorm, keep: torch.Tensor):
    """A LayerNorm forward that normalises over the kept channels only and outputs 0 on the others: what
    the shrunk LayerNorm computes (zeroing its consumers alone would leave the removed channels in its
    mean and variance)."""
    from torchvision.models.convnext import LayerNorm2d

    channel_dim = 1 if isinstance(norm, LayerNorm2d) else -1
    weight = None if norm.weight is None else norm.weight[keep]
    bias = None if norm.bias is None else norm.bias[keep]

    def forward(x):
        moved = x.movedim(channel_dim, -1)
        out = torch.zeros_like(moved)
        out[..., keep] = F.layer_norm(moved[..., keep], (int(keep.sum()),), weight, bias, norm.eps)
        return out.movedim(-1, channel_dim)

    return forward


class PruningGraph:
    """A model with its dependency graph; prunes channel groups physically and records the plan.

    `protected` modules (the classifier head) never lose output channels.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, protected: Sequence[nn.Module] = (),
                 verify: bool = True):
        self.model = model
        self.example_input = example_input
        self.protected = list(protected)
        self.names: dict[nn.Module, str] = {m: n for n, m in model.named_modules()}
        self.modules: dict[str, nn.Module] = dict(model.named_modules())
        self.layers: dict[str, nn.Module] = filter_layers(model)
        # Original output-channel indices each filter layer still holds: the plan, in the dense numbering.
        self.original_out: dict[str, int] = {n: out_channels(m) for n, m in self.layers.items()}
        self.kept: dict[str, list[int]] = {n: list(range(c)) for n, c in self.original_out.items()}
        self.masked_modules: set[nn.Module] = set()  # filled while mask() is active
        self.pruned_modules: set[nn.Module] = set()  # every module prune() changed; a cache user empties it
        self.original_filters = self.filters
        self._rebuild()
        # Groups whose removal does not give the masked model's outputs: root -> why (left whole).
        self.unprunable: dict[str, str] = {}
        if verify:
            self.unprunable = self._verify_groups()

    def _rebuild(self) -> None:
        was_training = self.model.training
        self.model.eval()
        # The graph is traced through autograd; verbose=False: ConvNeXt's layer scales are "unwrapped
        # parameters", pruned along their channel dim, which is what torch-pruning would warn it does.
        # A model whose logits were picked out of several outputs (--output) is traced whole: the other
        # outputs' layers read the same channels and must shrink with them.
        traced = self.model.model if isinstance(self.model, SelectOutput) else self.model
        try:
            with torch.enable_grad(), traceable(self.model):
                self.graph = tp.DependencyGraph().build_dependency(
                    traced, example_inputs=self.example_input, verbose=False,
                    customized_pruners={ChannelShuffle: _ShufflePruner()})
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a model torch-pruning cannot trace is the user's input
            raise InputError(f"{type(traced).__name__}: torch-pruning cannot build the model's channel dependency "
                             f"graph ({type(exc).__name__}: {first_line(exc)})") from None
        finally:
            self.model.train(was_training)

    def _out_members(self, group) -> dict[str, list[int]]:
        """filter layer name -> current output-channel indices that this torch-pruning group removes."""
        members: dict[str, list[int]] = {}
        for dep, idxs in group:
            module = dep.target.module
            name = self.names.get(module) if isinstance(module, nn.Module) else None
            if name in self.layers and self.graph.is_out_channel_pruning_fn(dep.handler):
                members[name] = list(idxs)
        return members

    def _positions(self, group, size: int) -> dict[str, list[int]] | None:
        """ChannelGroup.positions from torch-pruning's root indices, for members not aligned with the root."""
        positions = {}
        for item in group.items:
            name = self.names.get(item.dep.target.module) if isinstance(item.dep.target.module, nn.Module) else None
            roots = getattr(item, "root_idxs", None)
            if name not in self.layers or not self.graph.is_out_channel_pruning_fn(item.dep.handler) or roots is None:
                continue
            mapping = {int(r): int(i) for i, r in zip(item.idxs, roots)}
            if any(mapping.get(r, -1) != r for r in range(size)):
                positions[name] = [mapping.get(r, -1) for r in range(size)]
        return positions or None

    def _constraints(self, group, root_idxs: Sequence[int]) -> tuple[int, str | None]:
        """(stripes, why the group cannot be pruned or None) for a torch-pruning group."""
        stripes = 1
        grad_fns = {type(dep.target.grad_fn).__name__ for dep, _ in group if dep.target.grad_fn is not None}
        if any(n.startswith("Permute") for n in grad_fns) and any("View" in n or "Reshape" in n for n in grad_fns):
            # torch-pruning maps a flatten as channel-major; after a permute it is not, and the wrong
            # columns of the next layer would go (measured: masked and shrunk outputs differ by 50%).
            return stripes, "its channels are permuted before a flatten"
        for dep, idxs in group:
            module = dep.target.module
            if isinstance(module, ChannelShuffle):
                return stripes, "its channels pass through a channel shuffle"
            if isinstance(module, nn.GroupNorm):
                return stripes, f"{self.names.get(module)} (GroupNorm) would change its groups' statistics"
            if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
                return stripes, f"{self.names.get(module)} (LayerNorm) normalises over more than channels"
            if is_grouped(module):
                if sorted(int(i) for i in idxs) != sorted(int(i) for i in root_idxs):
                    return stripes, f"the grouped conv {self.names.get(module)} reads them at other positions"
                stripes = stripes * module.groups // math.gcd(stripes, module.groups)
        return stripes, None

    def _verify_groups(self) -> dict[str, str]:
        """root -> why, for every group that cannot be removed correctly: half its channels pruned on a copy
        of the model (`_trial`), that copy must compute what the masked model computes.

        Why: torch-pruning shrinks the layers, but a module that keeps channel counts as plain numbers
        (split sizes, slices such as `x[:, :self.out_chs]`, reshapes to a fixed width) still uses the old
        ones, and the pruned model fails or silently computes something else. All groups are tried at once
        (a model without such modules costs one trial), then one by one. Cached per structure.
        """
        key = (type(self.model).__module__, type(self.model).__qualname__, tuple(self.example_input.shape),
               tuple((n, out_channels(m)) for n, m in self.layers.items()),
               tuple(self.names[m] for m in self.protected))
        if key not in _VERIFIED:
            groups = self.groups()
            reasons: dict[str, str] = {}
            if self._trial(groups) is not None:
                # Each group alone, then the survivors together (halving any set that still fails).
                for group in groups:
                    failure = self._trial([group])
                    if failure is not None:
                        reasons[group.root] = failure
                pending = [[g for g in groups if g.root not in reasons]]
                while pending:
                    subset = pending.pop()
                    failure = self._trial(subset)
                    if failure is None:
                        continue
                    if len(subset) == 1:
                        reasons[subset[0].root] = failure
                    else:
                        pending += [subset[:len(subset) // 2], subset[len(subset) // 2:]]
            _VERIFIED[key] = reasons
        return dict(_VERIFIED[key])

    def _trial(self, groups: list[ChannelGroup]) -> str | None:
        """Why removing half the channels (in stripes) of each of `groups` goes wrong, or None if it does not:
        the pruned copy must fail nowhere, lose exactly those channels and compute the masked outputs."""
        groups = [g for g in groups if g.size // g.stripes >= 2]
        if not groups:
            return None
        selection = {g.root: [j + k * (g.size // g.stripes) for k in range(g.stripes)
                              for j in range(g.size // g.stripes // 2)] for g in groups}
        copied = copy.deepcopy(self.model)
        x = self.example_input
        try:
            trial = PruningGraph(copied, x, [copied.get_submodule(self.names[m]) for m in self.protected],
                                 verify=False)
            for root, channels in selection.items():
                trial.prune(root, channels)
            sizes = {g.root: g.size for g in groups}
            for root, channels in selection.items():
                left = out_channels(trial.modules[root])
                if left != sizes[root] - len(channels):
                    return f"removing {len(channels)} of its {sizes[root]} channels leaves {left}"
            with torch.no_grad():
                copied.eval()
                shrunk = copied(x)
                with self.mask(selection):
                    was_training = self.model.training
                    reference = self.model.eval()(x)
                    self.model.train(was_training)
        except Exception as exc:  # noqa: BLE001 - any failure of the trial is the reason
            return f"the pruned model fails ({first_line(exc)})"
        gap = float((shrunk - reference).abs().max()) if shrunk.shape == reference.shape else math.inf
        if not gap <= TRIAL_TOLERANCE * float(reference.abs().max()):
            return f"the pruned model computes other outputs than the masked one (max |diff| {gap:.3g})"
        return None

    def _ignored(self) -> list[nn.Module]:
        """Never roots: the protected layers and the linear layers that are not filter layers (VGG's fc6)."""
        filters = set(self.layers.values())
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear) and m not in filters]
        return self.protected + linears

    def groups(self) -> list[ChannelGroup]:
        result = []
        for group in self.graph.get_all_groups(ignored_layers=self._ignored(),
                                               root_module_types=[nn.Conv2d, nn.Linear]):
            root = group[0].dep.target.module
            members = self._out_members(group)
            if self.names[root] not in members:
                continue
            size = out_channels(root)
            stripes, unsupported = self._constraints(group, range(size))
            if unsupported is None and self.names[root] not in self.unprunable:
                result.append(ChannelGroup(root=self.names[root], members=list(members), size=size, stripes=stripes,
                                           positions=self._positions(group, size)))
        return result

    @property
    def filters(self) -> int:
        """Filters that count in the pruning rate (the protected classifier's outputs do not)."""
        protected = set(self.protected)
        return sum(out_channels(m) for m in self.layers.values() if m not in protected)

    @property
    def pruned_fraction(self) -> float:
        return 1.0 - self.filters / self.original_filters

    def group_of(self, root: str, channels: Sequence[int]):
        module = self.modules[root]
        return self.graph.get_pruning_group(module, self.graph.get_pruner_of_module(module).prune_out_channels,
                                            list(channels))

    def prune(self, root: str, channels: Sequence[int]) -> int:
        """Remove `channels` (current indices) of the group rooted at `root`; returns filters removed."""
        module = self.modules[root]
        channels = sorted(set(int(c) for c in channels))
        if not channels:
            return 0
        size = out_channels(module)
        if len(channels) >= size:
            raise InputError(f"{root}: refusing to remove all {size} channels of a layer")
        group = self.group_of(root, channels)
        stripes, unsupported = self._constraints(group, channels)
        unsupported = unsupported or self.unprunable.get(root)
        if unsupported is not None:
            raise InputError(f"{root}: its channels cannot be pruned: {unsupported}")
        width, removing = size // stripes, set(channels)
        if any((c % width) + k * width not in removing for c in channels for k in range(stripes)):
            raise InputError(f"{root}: channels must leave in stripes (one per conv group of its grouped convs, "
                             f"{stripes} groups of {width})")
        before = self.filters
        self.pruned_modules |= {dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Module)}
        removed = self._out_members(group)
        extras = {name: _channel_parameters(self.layers[name]) for name in removed}
        for name, idxs in removed.items():
            drop = set(idxs)
            self.kept[name] = [orig for i, orig in enumerate(self.kept[name]) if i not in drop]
        group.prune()
        for name, idxs in removed.items():
            layer, drop = self.layers[name], set(idxs)
            for attr, param in extras[name].items():  # torch-pruning prunes only weight and bias
                keep = [i for i in range(param.shape[0]) if i not in drop]
                setattr(layer, attr, nn.Parameter(param.detach()[keep].clone(), requires_grad=param.requires_grad))
        return before - self.filters

    def input_positions(self, selection: dict[str, list[int]], reader: nn.Module) -> list[int]:
        """Positions of `reader`'s input channels (the head's input features, say) that removing `selection`
        takes away."""
        positions: list[int] = []
        for root, channels in selection.items():
            for dep, idxs in self.group_of(root, channels) if channels else ():
                if dep.target.module is reader and not self.graph.is_out_channel_pruning_fn(dep.handler):
                    positions.extend(int(i) for i in idxs)
        return positions

    def take_pruned_modules(self) -> set[nn.Module]:
        """The modules prune() changed since the last call: what a cache of activations must refresh."""
        changed, self.pruned_modules = self.pruned_modules, set()
        return changed

    def readers(self, selection: dict[str, list[int]]) -> Iterator[tuple[nn.Module, list[int]]]:
        """(layer, its input channels) for every conv, linear layer or LayerNorm that reads a channel of
        `selection`, depthwise convs excepted (they are group members themselves, read by the next layer)."""
        for root, channels in selection.items():
            if not channels:
                continue
            for dep, idxs in self.group_of(root, channels):
                consumer = dep.target.module
                if isinstance(consumer, nn.LayerNorm) or (
                        isinstance(consumer, (nn.Conv2d, nn.Linear)) and not is_depthwise(consumer)
                        and not self.graph.is_out_channel_pruning_fn(dep.handler)):
                    yield consumer, [int(i) for i in idxs]

    def zeroed_inputs(self, selection: dict[str, list[int]]) -> dict[nn.Module, list[int]] | None:
        """What `mask(selection)` does, as the input channels to zero per reading layer (a conv's dim 1, a
        linear layer's last dim): the same outputs without touching a weight. None when a LayerNorm reads
        them (only `mask` normalises it over the kept channels)."""
        zeroed: dict[nn.Module, list[int]] = {}
        for consumer, idxs in self.readers(selection):
            if isinstance(consumer, nn.LayerNorm):
                return None
            zeroed[consumer] = sorted(set(zeroed.get(consumer, [])) | set(idxs))
        return zeroed

    @contextlib.contextmanager
    def mask(self, selection: dict[str, list[int]]) -> Iterator[nn.Module]:
        """Temporarily zero every input weight that reads a channel of `selection` (root -> current indices).

        Zeroing the consumers (not the producers) is what makes masking exactly equivalent to shrinking:
        a removed channel's BatchNorm shift and activation still compute something, but nobody reads it.
        Depthwise convs are skipped: they are themselves group members, read by the next layer. Grouped
        convs have their weights zeroed per conv group. A LayerNorm over the channels (ConvNeXt) mixes
        them, so it normalises over the kept channels only while masked.
        """
        saved = []
        removed_norm: dict[nn.LayerNorm, set[int]] = {}
        patched_norms = []
        try:
            with torch.no_grad():
                for consumer, idxs in self.readers(selection):
                    if isinstance(consumer, nn.LayerNorm):
                        removed_norm.setdefault(consumer, set()).update(idxs)
                    else:
                        saved.append((consumer, consumer.weight.detach().clone()))
                        _zero_inputs(consumer, idxs)
                for norm, removed in removed_norm.items():
                    keep = torch.ones(norm.normalized_shape[0], dtype=torch.bool)
                    keep[sorted(removed)] = False
                    patched_norms.append((norm, norm.__dict__.get("forward")))
                    norm.forward = _masked_layer_norm(norm, keep)
            self.masked_modules = {consumer for consumer, _ in saved} | set(removed_norm)
            yield self.model
        finally:
            self.masked_modules = set()
            with torch.no_grad():
                for consumer, weight in reversed(saved):
                    consumer.weight.copy_(weight)
            for norm, previous in patched_norms:
                if previous is None:
                    del norm.forward
                else:
                    norm.forward = previous

    def plan(self) -> dict[str, list[int]]:
        """Per filter layer, the original output channels it keeps (only layers that lost some)."""
        return {
            name: kept
            for name, kept in self.kept.items()
            if len(kept) != self.original_out[name]
        }


def _zero_inputs(consumer: nn.Module, channels: Sequence[int]) -> None:
    """Zero the weights that read input `channels` (a grouped conv's weight holds each group's inputs
    at local positions, for that group's outputs only)."""
    if is_grouped(consumer):
        per_in = consumer.in_channels // consumer.groups
        per_out = consumer.out_channels // consumer.groups
        for c in channels:
            group, local = divmod(c, per_in)
            consumer.weight[group * per_out : (group + 1) * per_out, local] = 0.0
    else:
        consumer.weight[:, list(channels)] = 0.0


@dataclass(frozen=True)
class Chunk:
    """The unit of removal: `round_to` channels of one group (the first chunk aligns the group's count)."""

    root: str
    channels: tuple[int, ...]  # current indices in the group's root layer
    filters: int  # filters it removes (channels x member layers)
    score: float  # mean channel score


def rank_chunks(groups: Sequence[ChannelGroup], scores: dict[str, torch.Tensor], round_to: int = 1,
                costs: dict[str, float] | None = None) -> list[Chunk]:
    """All removable chunks, lowest score first.

    `costs` (group root -> what removing one of its channels saves, see toolchain/costs.py): channel
    scores are divided by it, so that expensive channels of little relevance go first.

    A channel's score is the sum of its member layers' scores (docs/method.md: group score = sum). With
    `round_to` N, channels leave a group in chunks of N (lowest first; the first chunk aligns the count
    to a multiple of N) and every group keeps at least N channels, so remaining counts stay multiples
    of N, which is what makes a pruned model faster on real kernels rather than only smaller in MACs.

    A group with `stripes` S > 1 (grouped convs) loses *stripes*: the same position in each of its S
    conv groups, scored by their sum. A chunk then holds lcm(N, S) channels, so the count stays a
    multiple of both, and the group keeps at least one chunk (or all of it if it has no more).
    """
    if round_to < 1:
        raise InputError(f"--round-to {round_to}: must be a positive integer")
    ranked = []  # (score, group index, position, chunk)
    for gi, group in enumerate(groups):
        channel_scores = sum(group.member_scores(scores, m).to(torch.float64) for m in group.members)
        if costs is not None:
            channel_scores = channel_scores / costs[group.root]
        stripes = group.stripes
        width = group.size // stripes
        stripe_scores = channel_scores.view(stripes, width).sum(0)
        order = torch.argsort(stripe_scores, stable=True).tolist()
        step = round_to // math.gcd(round_to, stripes)  # stripes per chunk
        removable = width - (step if width > step else width)
        start, size = 0, width % step or step
        # A member that covers only part of the group must keep some of its own channels too.
        partial = [{r for r, p in enumerate(positions) if p >= 0} for positions in (group.positions or {}).values()
                   if min(positions) < 0]
        removed: set[int] = set()
        while start + size <= removable:
            idxs = [j + k * width for k in range(stripes) for j in order[start : start + size]]
            removed |= set(idxs)
            if any(len(covered - removed) < min(step, len(covered)) for covered in partial):
                break
            score = float(channel_scores[idxs].mean())
            ranked.append((score, gi, start, Chunk(group.root, tuple(idxs), len(idxs) * len(group.members), score)))
            start, size = start + size, step
    # Within a group chunks stay in order: its stripes were sorted ascending.
    ranked.sort(key=lambda r: r[:3])
    return [r[3] for r in ranked]


def removable_chunks(groups: Sequence[ChannelGroup], round_to: int = 1) -> list[Chunk]:
    """Every chunk that may go at all (each group keeping its `round_to` channels), whatever the scores."""
    return rank_chunks(groups, {m: torch.zeros(g.size) for g in groups for m in g.members}, round_to)


def as_selection(chunks: Sequence[Chunk]) -> dict[str, list[int]]:
    """root conv -> current channel indices, the form PruningGraph.prune and mask take."""
    selection: dict[str, list[int]] = {}
    for chunk in chunks:
        selection.setdefault(chunk.root, []).extend(chunk.channels)
    return selection


def select_channels(
    groups: Sequence[ChannelGroup],
    scores: dict[str, torch.Tensor],
    filters_to_remove: int,
    round_to: int = 1,
    costs: dict[str, float] | None = None,
) -> dict[str, list[int]]:
    """Globally pick the lowest-scoring chunks until `filters_to_remove` conv filters are covered."""
    return as_selection(lowest_covering(rank_chunks(groups, scores, round_to, costs), filters_to_remove))


@contextlib.contextmanager
def masked(model: nn.Module, example_input: torch.Tensor, plan: dict[str, list[int]],
           protected: Sequence[nn.Module] = ()) -> Iterator[nn.Module]:
    """The DENSE model with the plan's removed channels masked (see PruningGraph.mask)."""
    graph = PruningGraph(model, example_input, protected, verify=False)
    selection = {}
    for group in graph.groups():
        keep = set(plan.get(group.root, range(group.size)))
        selection[group.root] = [c for c in range(group.size) if c not in keep]
    with graph.mask(selection):
        yield model
