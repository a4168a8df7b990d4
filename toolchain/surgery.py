"""Physical channel surgery on a CNN through torch-pruning's dependency graph.

A *channel group* is a set of conv filters that must be removed together: both sides of a residual add,
a depthwise conv and the conv that feeds it, concat segments. torch-pruning's DependencyGraph finds
them by tracing autograd, and it also shrinks every consumer (BatchNorm, the next conv's or linear
layer's input channels). We keep three things beside the model:

- the groups with, per channel, which conv outputs it covers (for scoring and for counting filters);
- per conv, which ORIGINAL output channels it still has (the plan, stable across pruning steps);
- masking, the reversible twin of shrinking, used to prove that the shrunk model computes exactly what
  the masked dense model computes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn

from runtime_bench.errors import InputError


@dataclass
class ChannelGroup:
    """Channels that are pruned together; `members` are the convs whose OUTPUT channels they are."""

    root: str  # name of the conv the group is addressed by
    members: list[str]  # convs (names) whose output channels belong to the group
    size: int  # current channel count


def conv_filter_count(model: nn.Module) -> int:
    """Total conv filters (output channels of every Conv2d): the denominator of the pruning rate."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


class PruningGraph:
    """A model with its dependency graph; prunes channel groups physically and records the plan.

    `protected` modules (the classifier head) never lose output channels.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, protected: Sequence[nn.Module] = ()):
        self.model = model
        self.example_input = example_input
        self.protected = list(protected)
        self.names: dict[nn.Module, str] = {m: n for n, m in model.named_modules()}
        self.modules: dict[str, nn.Module] = dict(model.named_modules())
        # Original output-channel indices each conv still holds: the plan, in the dense model's numbering.
        self.original_out: dict[str, int] = {
            n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
        }
        self.kept: dict[str, list[int]] = {n: list(range(c)) for n, c in self.original_out.items()}
        self.original_filters = conv_filter_count(model)
        self._rebuild()

    def _rebuild(self) -> None:
        was_training = self.model.training
        self.model.eval()
        with torch.enable_grad():  # the graph is traced through autograd
            self.graph = tp.DependencyGraph().build_dependency(self.model, example_inputs=self.example_input)
        self.model.train(was_training)

    def _out_members(self, group) -> dict[str, list[int]]:
        """conv name -> current output-channel indices that this torch-pruning group removes."""
        members: dict[str, list[int]] = {}
        for dep, idxs in group:
            module = dep.target.module
            if isinstance(module, nn.Conv2d) and self.graph.is_out_channel_pruning_fn(dep.handler):
                members[self.names[module]] = list(idxs)
        return members

    def groups(self) -> list[ChannelGroup]:
        result = []
        for group in self.graph.get_all_groups(ignored_layers=self.protected, root_module_types=[nn.Conv2d]):
            root = group[0].dep.target.module
            members = list(self._out_members(group))
            if self.names[root] not in members:
                continue
            result.append(ChannelGroup(root=self.names[root], members=members, size=root.out_channels))
        return result

    @property
    def filters(self) -> int:
        return conv_filter_count(self.model)

    @property
    def pruned_fraction(self) -> float:
        return 1.0 - self.filters / self.original_filters

    def prune(self, root: str, channels: Sequence[int]) -> int:
        """Remove `channels` (current indices) of the group rooted at conv `root`; returns filters removed."""
        module = self.modules[root]
        channels = sorted(set(int(c) for c in channels))
        if not channels:
            return 0
        if len(channels) >= module.out_channels:
            raise InputError(f"{root}: refusing to remove all {module.out_channels} channels of a layer")
        before = self.filters
        group = self.graph.get_pruning_group(module, tp.prune_conv_out_channels, channels)
        for name, idxs in self._out_members(group).items():
            drop = set(idxs)
            self.kept[name] = [orig for i, orig in enumerate(self.kept[name]) if i not in drop]
        group.prune()
        return before - self.filters

    @contextlib.contextmanager
    def mask(self, selection: dict[str, list[int]]) -> Iterator[nn.Module]:
        """Temporarily zero every input weight that reads a channel of `selection` (root -> current indices).

        Zeroing the consumers (not the producers) is what makes masking exactly equivalent to shrinking:
        a removed channel's BatchNorm shift and activation still compute something, but nobody reads it.
        Depthwise convs are skipped: they are themselves group members, read by the next conv.
        """
        saved = []
        try:
            with torch.no_grad():
                for root, channels in selection.items():
                    if not channels:
                        continue
                    group = self.graph.get_pruning_group(self.modules[root], tp.prune_conv_out_channels, channels)
                    for dep, idxs in group:
                        consumer = dep.target.module
                        if self.graph.is_out_channel_pruning_fn(dep.handler) or is_depthwise(consumer):
                            continue
                        if isinstance(consumer, (nn.Conv2d, nn.Linear)):
                            saved.append((consumer, consumer.weight.detach().clone()))
                            consumer.weight[:, list(idxs)] = 0.0
            yield self.model
        finally:
            with torch.no_grad():
                for consumer, weight in reversed(saved):
                    consumer.weight.copy_(weight)

    def plan(self) -> dict[str, list[int]]:
        """Per conv, the original output channels it keeps (only convs that lost some)."""
        return {
            name: kept
            for name, kept in self.kept.items()
            if len(kept) != self.original_out[name]
        }


@dataclass(frozen=True)
class Chunk:
    """The unit of removal: `round_to` channels of one group (the first chunk aligns the group's count)."""

    root: str
    channels: tuple[int, ...]  # current indices in the group's root conv
    filters: int  # conv filters it removes (channels x member convs)
    score: float  # mean channel score


def rank_chunks(groups: Sequence[ChannelGroup], scores: dict[str, torch.Tensor], round_to: int = 1) -> list[Chunk]:
    """All removable chunks, lowest score first.

    A channel's score is the sum of its member convs' scores (METHOD.md: group score = sum). With
    `round_to` N, channels leave a group in chunks of N (lowest first; the first chunk aligns the count
    to a multiple of N) and every group keeps at least N channels, so remaining counts stay multiples
    of N, which is what makes a pruned model faster on real kernels rather than only smaller in MACs.
    """
    if round_to < 1:
        raise InputError(f"--round-to {round_to}: must be a positive integer")
    ranked = []  # (score, group index, position, chunk)
    for gi, group in enumerate(groups):
        channel_scores = sum(scores[m].to(torch.float64) for m in group.members)
        order = torch.argsort(channel_scores, stable=True).tolist()
        removable = group.size - (round_to if group.size > round_to else group.size)
        start, size = 0, group.size % round_to or round_to
        while start + size <= removable:
            idxs = order[start : start + size]
            score = float(channel_scores[idxs].mean())
            ranked.append((score, gi, start, Chunk(group.root, tuple(idxs), size * len(group.members), score)))
            start, size = start + size, round_to
    # Within a group chunks stay in order: its channels were sorted ascending.
    ranked.sort(key=lambda r: r[:3])
    return [r[3] for r in ranked]


def as_selection(chunks: Sequence[Chunk]) -> dict[str, list[int]]:
    """root conv -> current channel indices, the form PruningGraph.prune and mask take."""
    selection: dict[str, list[int]] = {}
    for chunk in chunks:
        selection.setdefault(chunk.root, []).extend(chunk.channels)
    return selection


def lowest_chunks(ranked: Sequence[Chunk], filters: int) -> list[Chunk]:
    """The lowest-scoring chunks that together cover at least `filters` conv filters."""
    picked, covered = [], 0
    for chunk in ranked:
        if covered >= filters:
            break
        picked.append(chunk)
        covered += chunk.filters
    return picked


def select_channels(
    groups: Sequence[ChannelGroup],
    scores: dict[str, torch.Tensor],
    filters_to_remove: int,
    round_to: int = 1,
) -> dict[str, list[int]]:
    """Globally pick the lowest-scoring chunks until `filters_to_remove` conv filters are covered."""
    return as_selection(lowest_chunks(rank_chunks(groups, scores, round_to), filters_to_remove))


@contextlib.contextmanager
def masked(model: nn.Module, example_input: torch.Tensor, plan: dict[str, list[int]],
           protected: Sequence[nn.Module] = ()) -> Iterator[nn.Module]:
    """The DENSE model with the plan's removed channels masked (see PruningGraph.mask)."""
    graph = PruningGraph(model, example_input, protected)
    selection = {}
    for group in graph.groups():
        keep = set(plan.get(group.root, range(group.size)))
        selection[group.root] = [c for c in range(group.size) if c not in keep]
    with graph.mask(selection):
        yield model
