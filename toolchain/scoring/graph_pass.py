"""LRP by explicit propagation over the model's traced graph: the fast path of `relevance.lrp_filter_scores`.

The same rules as lrp_rules.py's rules by op, for the node types plain CNNs are made of (VGG, ResNet,
MobileNetV2): conv z+ without bias and with the flat fallback, BatchNorm folded into its conv, linear layers
with the epsilon rule, residual adds and average pools split in proportion to their inputs, max pooling
winner-takes-all, activations, dropout and reshapes passing relevance unchanged.

Why a second implementation: autograd-based propagation cost 7-14x a forward pass here (zennit's hooks:
cloned tensors, BatchNorm backward, a graph over every op). This one runs one forward with the BatchNorms
folded, keeps each node's output, and walks the nodes back once: per conv one z+ forward and one
transposed conv, about 3 forwards in all. A model with any other node (or that torch.fx cannot trace) is
not covered: `GraphLrp.build` returns None and the caller uses the rules by op. Tests check both agree.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .rules import STABILIZER, channel_totals, stabilize, vjp

CHUNK = 16  # samples propagated at once

ACTIVATIONS = (nn.ReLU, nn.ReLU6)  # their outputs are >= 0, which z+ relies on
PASS_MODULES = (nn.Dropout, nn.Identity)
AVG_POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
FLATTENS = {torch.flatten, torch.reshape}
# Activations as (out of place, in place): in place where nothing else reads the input (see GraphLrp).
RELU = (torch.relu, torch.relu_)
RELU6 = (lambda t: t.clamp(0.0, 6.0), lambda t: t.clamp_(0.0, 6.0))
RESHAPE_METHODS = {"flatten", "view", "reshape"}


class _Conv:
    """A conv with its BatchNorm folded in, and the positive weight part z+ needs."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None, non_negative: bool):
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(weight.shape[0])
        if norm is not None:
            scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = (bias - norm.running_mean) * scale + norm.bias.detach()
        # channels-last throughout: oneDNN's convs, above all depthwise and transposed ones, run several times
        # faster on it than on torch's default layout (measured: a 3x3 depthwise conv 16x).
        weight = weight.contiguous(memory_format=torch.channels_last)
        self.weight, self.bias = weight, bias
        self.positive = weight.clamp(min=0)
        self.non_negative = non_negative  # its inputs are >= 0 (after a ReLU): the x- w- term never arises
        self.negative = None if non_negative else weight.clamp(max=0)
        # Signed inputs, ungrouped conv: x+ w+ + x- w- as ONE conv of [x+, x-] with [w+, w-] (one output
        # tensor instead of two and a sum: on these memory-bound layers every large allocation shows).
        self.signed = torch.cat([self.positive, self.negative], 1) if not non_negative and conv.groups == 1 \
            else None
        self.args = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
                     "groups": conv.groups}
        self.window_sizes: dict[tuple, torch.Tensor] = {}

    def forward(self, x, weight=None, bias=None):
        return F.conv2d(x, self.weight if weight is None else weight, bias, **self.args)

    def transposed(self, shape, weight, grad):
        """The transpose of `forward` applied to `grad`, shaped like the input `shape`."""
        a = self.args
        size = [(o - 1) * s - 2 * p + d * (k - 1) + 1
                for o, s, p, d, k in zip(grad.shape[2:], a["stride"], a["padding"], a["dilation"], weight.shape[2:])]
        extra = tuple(want - got for want, got in zip(shape[2:], size))
        return F.conv_transpose2d(grad, weight, None, a["stride"], a["padding"], extra, a["groups"], a["dilation"])

    def relevance(self, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """z+ without bias; outputs no input drove pass their relevance flat (ZPlusFlatFallback).

        One z+ conv, one transposed conv and three passes over the tensors, done in place (on MobileNetV2 the
        element-wise work, not the convs, is the cost). Signed inputs (after a linear bottleneck) add the
        x- w- term: its products are >= 0 like those of x+ w+, so z >= 0 either way and the same clamped
        division serves both; an output with z = 0 has every product zero, so its clamped quotient meets
        only zeros in the transposed conv and the flat rule alone passes its relevance."""
        if self.non_negative:
            z = self.forward(x, self.positive)
        elif self.signed is not None:
            x_both = torch.cat([x.clamp(min=0), x.clamp(max=0)], 1)
            z = self.forward(x_both, self.signed)
        else:
            x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
            z = self.forward(x_pos, self.positive).add_(self.forward(x_neg, self.negative))
        any_undriven = bool(z.amin() <= STABILIZER)  # one reduction; the mask only where needed
        undriven = z <= STABILIZER if any_undriven else None
        scaled = torch.div(relevance, z.clamp_(min=STABILIZER), out=z)
        if self.non_negative:
            result = self.transposed(x.shape, self.positive, scaled).mul_(x)
        elif self.signed is not None:
            both = self.transposed(x_both.shape, self.signed, scaled).mul_(x_both)
            channels = x.shape[1]
            result = both[:, :channels].add_(both[:, channels:])
        else:
            result = self.transposed(x.shape, self.positive, scaled).mul_(x_pos)
            result.addcmul_(self.transposed(x.shape, self.negative, scaled), x_neg)
        if any_undriven:
            result = result.add_(self._flat(x, relevance.mul_(undriven)))
        return result

    def _flat(self, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """The flat rule: each output's relevance split evenly over the real (not padding) inputs it reads."""
        kernel, groups = self.weight.shape[2:], self.args["groups"]
        if groups == 1 and tuple(kernel) == (1, 1) and all(s == 1 for s in self.args["stride"]):
            # A 1x1 conv reads every input channel at its own position: a sum over channels, no conv needed.
            return (relevance.sum(dim=1, keepdim=True) / x.shape[1]).expand_as(x)
        key = tuple(x.shape[1:])
        if key not in self.window_sizes:
            ones = torch.ones_like(self.weight)
            self.window_sizes[key] = (ones, self.forward(torch.ones_like(x[:1]), ones).clamp(min=1.0))
        ones, sizes = self.window_sizes[key]
        return self.transposed(x.shape, ones, relevance.div_(sizes))


class GraphLrp:
    """Compiled once per model state; `filter_scores` then runs batch after batch."""

    def __init__(self, graph: fx.Graph, steps: list, watched: dict[str, fx.Node]):
        self.graph, self.steps, self.watched = graph, steps, watched
        # Relevance is needed at a node that is watched or has a watched node upstream; the rest of the
        # backward sweep (the first conv's own propagation to the image, above all) is skipped.
        watched_nodes = set(watched.values())
        self.needed: set[fx.Node] = set()
        for node, _, _ in steps:
            if node in watched_nodes or any(source in self.needed for source in node.all_input_nodes):
                self.needed.add(node)
        # An activation may overwrite its input when it is that input's only reader, forward and backward
        # (the backward sweep reads the inputs of convs, linear layers, adds, pools): a conv's pre-activation
        # output is then never stored apart, one large allocation less per conv.
        kind_of = {node: kind for node, kind, _ in steps}
        read = {n for node, kind in kind_of.items() if kind in ("conv", "linear", "add", "split", "gradient")
                for n in node.all_input_nodes}
        read |= {node for node, kind in kind_of.items() if kind == "split"}
        self.in_place = set()
        for node, kind in kind_of.items():
            if kind != "activation":
                continue
            chain = [node.args[0]]  # the activation's input, back through a BatchNorm folded into its conv
            if kind_of[chain[0]] == "pass" and chain[0].op == "call_module":
                chain.append(chain[0].args[0])
            if kind_of[chain[-1]] == "conv" and all(len(n.users) == 1 and n not in read for n in chain):
                self.in_place.add(node)

    @classmethod
    def build(cls, model: nn.Module, watch: dict[str, nn.Module], head_rule: str = "epsilon") -> GraphLrp | None:
        """The compiled propagation, or None when the model has a node this path does not cover."""
        if head_rule != "epsilon":
            return None
        try:
            graph = fx.Tracer().trace(model)  # the graph alone: no GraphModule is compiled from it
        except Exception:  # noqa: BLE001 - any trace failure just means: use zennit
            return None
        modules = dict(model.named_modules())
        users = {node: list(node.users) for node in graph.nodes}
        steps, non_negative, folded = [], {}, {}
        for node in graph.nodes:
            step = cls._step(node, modules, users, non_negative, folded)
            if step is None:
                return None
            steps.append(step)
        names = {id(m): n for n, m in watch.items()}
        watched = {}
        for node in graph.nodes:
            if node.op == "call_module" and id(modules[node.target]) in names:
                watched[names[id(modules[node.target])]] = folded.get(node, node)
        if len(watched) != len(watch):
            return None
        return cls(graph, steps, watched)

    @staticmethod
    def _step(node, modules, users, non_negative, folded):
        """(node, kind, payload) for one node, or None if not covered. Also tracks which outputs are >= 0."""
        args = [a for a in node.args if isinstance(a, fx.Node)]
        source = args[0] if args else None
        if node.op == "placeholder":
            non_negative[node] = False
            return node, "input", None
        if node.op == "output":
            return (node, "output", None) if isinstance(node.args[0], fx.Node) else None
        if node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, nn.Conv2d):
                if isinstance(module.padding, str) or module.padding_mode != "zeros":
                    return None
                after = users[node]
                norm = None
                if (len(after) == 1 and after[0].op == "call_module"
                        and isinstance(modules[after[0].target], nn.BatchNorm2d)):
                    norm = modules[after[0].target]
                    folded[node] = after[0]  # relevance at the conv's output is that at the BatchNorm's
                non_negative[node] = False
                return node, "conv", _Conv(module, norm, non_negative[source])
            if isinstance(module, nn.BatchNorm2d):
                if source.op == "call_module" and isinstance(modules[source.target], nn.Conv2d) \
                        and users[source] == [node]:
                    non_negative[node] = False
                    return node, "pass", None  # folded into the conv
                return None
            if isinstance(module, ACTIVATIONS):
                non_negative[node] = True
                return node, "activation", RELU if isinstance(module, nn.ReLU) else RELU6
            if isinstance(module, PASS_MODULES) or isinstance(module, nn.Flatten):
                non_negative[node] = non_negative[source]
                return node, "reshape" if isinstance(module, nn.Flatten) else "pass", module
            if isinstance(module, nn.Linear):
                non_negative[node] = False
                return node, "linear", module
            if isinstance(module, AVG_POOLS):
                non_negative[node] = non_negative[source]
                return node, "split", module
            if isinstance(module, nn.MaxPool2d):
                non_negative[node] = non_negative[source]
                return node, "gradient", module
            return None
        if node.op == "call_function":
            if node.target in (operator.add, torch.add) and len(args) == 2 and not node.kwargs:
                non_negative[node] = non_negative[args[0]] and non_negative[args[1]]
                return node, "add", None
            if node.target in FLATTENS:
                non_negative[node] = non_negative[source]
                return node, "reshape", None
            if node.target in (F.relu, torch.relu) and len(args) == 1 and not node.kwargs:
                non_negative[node] = True
                return node, "activation", RELU
            if node.target is F.adaptive_avg_pool2d:
                non_negative[node] = non_negative[source]
                return node, "split", None
            return None
        if node.op == "call_method" and node.target in RESHAPE_METHODS and all(
                not isinstance(a, fx.Node) for a in node.args[1:]):
            non_negative[node] = non_negative[source]
            return node, "reshape", None
        return None

    def _forward(self, images: torch.Tensor) -> dict:
        values = {}
        for node, kind, payload in self.steps:
            if kind == "input":
                values[node] = images.contiguous(memory_format=torch.channels_last)
            elif kind == "output":
                values[node] = values[node.args[0]]
            elif kind == "conv":
                values[node] = payload.forward(values[node.args[0]], bias=payload.bias)
            elif kind == "pass" and node.op == "call_module" and payload is None:
                values[node] = values[node.args[0]]  # a BatchNorm folded into its conv
            elif kind == "activation":
                values[node] = payload[node in self.in_place](values[node.args[0]])
            else:
                args = fx.node.map_arg(node.args, lambda n: values[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
                values[node] = payload(*args, **kwargs) if callable(payload) else \
                    getattr(args[0], node.target)(*args[1:], **kwargs) if node.op == "call_method" else \
                    node.target(*args, **kwargs)
        return values

    @torch.no_grad()
    def multiply_adds(self, image: torch.Tensor) -> tuple[int, int]:
        """(a forward pass, a relevance pass) in conv and linear multiply-adds for one image: the floor the
        rules themselves set. Per conv whose input needs relevance, z+ and its transpose each cost one
        forward of the conv, two on signed inputs (x+ w+ and x- w-)."""
        values = self._forward(image[None] if image.ndim == 3 else image[:1])
        forward = backward = 0
        for node, kind, payload in self.steps:
            if kind not in ("conv", "linear"):
                continue
            macs = values[node].numel() * payload.weight[0].numel()
            forward += macs
            if any(source in self.needed for source in node.all_input_nodes):
                backward += 2 * macs * (1 if kind == "linear" or payload.non_negative else 2)
        return forward, forward + backward

    def filter_scores(self, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
        """Per watched layer, the summed |R| of each output channel over the batch (relevance 1.0, or
        `weights`, on each sample's true-class logit)."""
        totals: dict[str, torch.Tensor] = {}
        # Chunks of CHUNK samples: glibc maps every tensor over 32 MB afresh, and the page faults cost more
        # than the arithmetic (MobileNetV2, 112 px: 32 samples at once 598 ms, two chunks of 16 467 ms).
        for start in range(0, len(images), CHUNK):
            stop = start + CHUNK
            chunk = self._chunk_scores(images[start:stop], labels[start:stop],
                                       None if weights is None else weights[start:stop])
            for name, score in chunk.items():
                totals[name] = totals[name] + score if name in totals else score
        return totals

    def _chunk_scores(self, images, labels, weights):
        with torch.no_grad():
            values = self._forward(images)
            output = next(node for node, kind, _ in self.steps if kind == "output")
            logits = values[output]
            start = torch.zeros_like(logits)
            scale = torch.ones(len(labels)) if weights is None else weights
            start[torch.arange(len(labels)), labels] = scale.to(logits.dtype)
            relevance = {output: start}
            scores = {}
            watched = {node: name for name, node in self.watched.items()}
            for node, kind, payload in reversed(self.steps):
                r = relevance.pop(node, None)
                if node in watched and r is not None:
                    scores[watched[node]] = channel_totals(r, kind == "linear")
                if r is None or kind == "input" or not any(s in self.needed for s in node.all_input_nodes):
                    continue
                for source, contribution in self._backward(node, kind, payload, values, r):
                    if source not in self.needed:
                        continue
                    relevance[source] = relevance[source] + contribution if source in relevance else contribution
        return scores

    @staticmethod
    def _backward(node, kind, payload, values, r):
        """(input node, relevance it receives) pairs for one node."""
        source = node.args[0]
        if kind in ("output", "pass", "activation"):
            return [(source, r)]
        x = values[source]
        if kind == "reshape":
            return [(source, r.reshape(x.shape))]
        if kind == "conv":
            return [(source, payload.relevance(x, r))]
        if kind == "linear":
            weight = payload.weight.detach()
            return [(source, x * ((r / stabilize(F.linear(x, weight))) @ weight))]
        if kind == "add":
            a, b = node.args
            total = values[a] + values[b]
            scaled = r / stabilize(total)
            flat = r * (total == 0) / 2  # both 0: half to each (lrp_rules)
            return [(a, values[a] * scaled + flat), (b, values[b] * scaled + flat)]
        function = payload if payload is not None else (lambda t: node.target(t, *node.args[1:], **node.kwargs))
        if kind == "split":
            return [(source, x * vjp(function, x, r / stabilize(values[node])))]
        return [(source, vjp(function, x, r))]  # "gradient": max pooling, winner takes all
