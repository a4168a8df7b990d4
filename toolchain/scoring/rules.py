"""LRP rules chosen by what each op computes, for any model: the general path of `relevance.relevance_at`.

While the model runs under `RelevanceMode` (a torch function mode), every op that reads a tensor on the
relevance path is classified by the op itself, not by the module class that calls it:
- conv1d/conv2d and linear: z+ with biases left out and a flat fallback for outputs no input drove
  (`zplus_flat`); the classifier (the head) gets the head rule, epsilon (default) or z+. A Conv2d
  subclass with its own forward (TF "same" padding, weight standardisation) is seen as the conv op it
  finally calls, with the padding and weight it really uses;
- element-wise activations (ReLU family, PReLU, LeakyReLU, ELU, GELU, SiLU, Hardswish, Mish, sigmoids,
  tanh, clamps) and normalisations (BatchNorm not folded, LayerNorm, GroupNorm, InstanceNorm): relevance
  passes unchanged (a documented CHOICE for the norms: they rescale per element, LRP has no standard
  rule for the normalisation itself);
- the sum or difference of two signals (residual adds): split in proportion to each one's contribution
  (half to each where both are 0);
  a signal plus, minus, times or over a constant (a bias, a scale): passes unchanged;
- the product of two signals is a gate (squeeze-excitation, layer scale, attention over branches): all
  relevance to the signal, none to the gate. The gate is the operand that came out of a sigmoid or
  softmax (through reshapes), else the one that is broadcast; neither: no rule;
- means, sums and average pools: split in proportion to the inputs;
- dropout, identities, reshapes, permutes, slices, concat, split, channel shuffle, nearest or linear
  resizing, reflect/replicate padding and max pools: the plain gradient, which routes relevance unchanged
  (winner-takes-all for max pools); zero padding: relevance that lands on padding goes to the nearest
  real input (`_pad`), so that none is lost;
- a Softmax, LogSoftmax or Sigmoid that produces the model's output is a monotone normalisation of the
  logits: relevance starts at its input (`RelevanceMode.logits`).
Any other op on the relevance path (a matmul of two signals, an input-dependent conv weight, ...) has no
rule: `unruled` lists it with the module it ran in, and `allow_fallback` gives it gradient x input.
Every rule above conserves relevance.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import grad as nn_grad
from torch.overrides import TorchFunctionMode

STABILIZER = 1e-12  # z+ denominators
EPSILON = 1e-6  # epsilon rule and proportional splits

# Ops whose plain gradient IS their rule: they only move, copy, select or pick values.
ROUTES = frozenset("""
view view_as reshape reshape_as flatten unflatten permute transpose swapaxes movedim t contiguous clone to float
__getitem__ __get__ split split_with_sizes chunk unbind cat concat concatenate stack squeeze unsqueeze expand
expand_as narrow select channel_shuffle pixel_shuffle pixel_unshuffle roll flip repeat tile type_as
interpolate upsample max_pool1d max_pool2d max_pool3d adaptive_max_pool1d adaptive_max_pool2d amax max
dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
""".split())
# Element-wise activations and normalisations: relevance passes unchanged to their first input.
PASSES = frozenset("""
relu relu6 hardtanh elu selu celu leaky_relu prelu rrelu gelu silu mish hardswish hardsigmoid sigmoid tanh
softplus softsign threshold clamp clamp_min clip logsigmoid neg __neg__ positive
batch_norm layer_norm group_norm instance_norm local_response_norm rms_norm softmax log_softmax
""".split())
GATE_SOURCES = frozenset({"sigmoid", "hardsigmoid", "softmax", "tanh"})  # outputs in [0, 1] (or [-1, 1])
OUTPUT_NORMALISERS = frozenset({"softmax", "log_softmax", "sigmoid"})
SUMS = frozenset({"add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "rsub", "subtract"})
PRODUCTS = frozenset({"mul", "__mul__", "__rmul__", "multiply", "div", "__div__", "__truediv__", "true_divide",
                      "divide"})
DIVISIONS = frozenset({"div", "__div__", "__truediv__", "true_divide", "divide"})
REDUCTIONS = frozenset({"mean", "sum", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                        "adaptive_avg_pool2d", "adaptive_avg_pool3d"})
CONVS = {"conv1d": (F.conv1d, nn_grad.conv1d_input), "conv2d": (F.conv2d, nn_grad.conv2d_input)}
IN_PLACE = {"__iadd__": "add", "__isub__": "sub", "__imul__": "mul", "__itruediv__": "div"}


def stabilize(z: torch.Tensor) -> torch.Tensor:
    """z + epsilon with the sign of z (+ for 0), as zennit's `stabilize`."""
    return z + EPSILON * ((z >= 0).to(z.dtype) * 2 - 1)


def vjp(fn: Callable, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The transpose of `fn`'s Jacobian at x applied to grad (one autograd backward)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        return torch.autograd.grad(fn(leaf), leaf, grad)[0]


def zplus_flat(x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor, forward: Callable,
               transposed: Callable, real: torch.Tensor | None = None) -> torch.Tensor:
    """z+ (alpha1-beta0) without bias; an output that no input drove positively passes its relevance flat
    (uniformly) to the real inputs of its receptive field instead of dropping it.

    Why the fallback: with BatchNorm folded, some outputs are positive only because of the folded bias
    (common in depthwise convs, whose window of one ReLU'd channel is often all zero). Plain z+ has a zero
    denominator there and silently loses that relevance (MobileNetV2: 1.0 at the head, about 0.04 behind
    the last depthwise conv). `forward(x, w)` is the layer without bias, `transposed(shape, w, g)` its
    transpose. `real` is 1 where x is an input and 0 where it is zero padding added before the layer (TF
    "same" padding): the flat rule must not hand relevance to padding, whose gradient drops it."""
    x_pos, w_pos = x.clamp(min=0), weight.clamp(min=0)
    z = forward(x_pos, w_pos)
    signed = bool((x < 0).any())  # after a ReLU (the usual case) there is no x- w- term
    if signed:
        x_neg, w_neg = x.clamp(max=0), weight.clamp(max=0)
        z = z + forward(x_neg, w_neg)
    undriven = z <= STABILIZER  # both products are >= 0, so z >= 0
    scaled = relevance / z.clamp(min=STABILIZER) * ~undriven
    result = x_pos * transposed(x.shape, w_pos, scaled)
    if signed:
        result = result + x_neg * transposed(x.shape, w_neg, scaled)
    if bool(undriven.any()):
        ones = torch.ones_like(weight)
        real = torch.ones_like(x[:1]) if real is None else real
        sizes = forward(real, ones).clamp(min=1.0)  # real (not padding) inputs per output
        result = result + real * transposed(x.shape, ones, relevance * undriven / sizes)
    return result


def epsilon_rule(x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor, forward: Callable,
                 transposed: Callable) -> torch.Tensor:
    """The epsilon rule without bias: R_in = x * W^T (R / stabilize(W x))."""
    return x * transposed(x.shape, weight, relevance / stabilize(forward(x, weight)))


class _Rule(torch.autograd.Function):
    """An op's value with its LRP rule as the backward: `backward(R_out)` returns one tensor (or None) per
    input that carries relevance."""

    @staticmethod
    def forward(ctx, backward, value, *inputs):
        ctx.rule_backward = backward
        return value

    @staticmethod
    def backward(ctx, relevance):
        return (None, None, *ctx.rule_backward(relevance))


def _flat(args, kwargs) -> list:
    flat = []
    for a in (*args, *kwargs.values()):
        flat.extend(a if isinstance(a, (list, tuple)) else (a,))
    return flat


def _bind(args, kwargs, names: tuple[str, ...], defaults: dict) -> dict:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def _to_size(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return r if r.shape == like.shape else r.sum_to_size(like.shape)


def _layer_ops(name: str, args, kwargs) -> tuple[dict, tuple[Callable, Callable]]:
    """(the op's bound arguments, (forward(x, w) without bias, transposed(shape, w, g))) of a conv or linear op."""
    if name == "linear":
        p = _bind(args, kwargs, ("input", "weight", "bias"), {"bias": None})
        return p, (lambda x, w: F.linear(x, w), lambda shape, w, g: g @ w)
    p = _bind(args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
              {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    conv, conv_input = CONVS[name]
    options = {k: p[k] for k in ("stride", "padding", "dilation", "groups")}

    def forward(x, w):
        return conv(x, w, None, **options)

    if isinstance(p["padding"], str):  # "same"/"valid": the transpose by autograd
        return p, (forward, lambda shape, w, g: vjp(lambda t: forward(t, w), torch.zeros(shape), g))
    return p, (forward, lambda shape, w, g: conv_input(shape, w, g, **options))


class RelevanceMode(TorchFunctionMode):
    """Runs a model with every op on the relevance path carrying its rule (module docstring).

    `head_weight`: the classifier's weight (gets the head rule); `pointwise`: weights of Linear layers that
    are 1x1 convs (ConvNeXt), which get z+ like convs. `names` maps id(module) -> name for messages.
    """

    def __init__(self, model: nn.Module, head_weight: torch.Tensor | None, pointwise: set[int],
                 head_rule: str = "epsilon", allow_fallback: bool = False):
        super().__init__()
        self.head_weight, self.pointwise = head_weight, pointwise
        self.head_rule, self.allow_fallback = head_rule, allow_fallback
        self.names = {id(m): n for n, m in model.named_modules()}
        self.unruled: list[tuple[str, str]] = []  # (module name, op), in the order met
        self.rules: dict[str, str] = {}  # op -> the rule it got (first use), for `relevance.rule_table`
        self._gates: dict[int, weakref.ref] = {}  # tensors that came out of a sigmoid or softmax
        self._normalised: dict[int, tuple[weakref.ref, str, torch.Tensor]] = {}  # output -> (op, its input)
        self._padded: dict[int, tuple[weakref.ref, torch.Tensor]] = {}  # zero-padded tensor -> 1 where real
        self._where: list[str] = []
        self._hooks: list = []

    # ---------------------------------------------------------------------------------- bookkeeping

    def __enter__(self):
        def before(module, inputs):
            self._where.append(self.names.get(id(module), self._where[-1] if self._where else ""))

        def after(module, inputs, output):
            if self._where:
                self._where.pop()

        from torch.nn.modules import module as module_hooks

        self._hooks = [module_hooks.register_module_forward_pre_hook(before),
                       module_hooks.register_module_forward_hook(after)]
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return super().__exit__(*exc)

    def _is_gate(self, t) -> bool:
        ref = self._gates.get(id(t)) if isinstance(t, torch.Tensor) else None
        return ref is not None and ref() is t

    def _mark_gate(self, out) -> None:
        for t in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(t, torch.Tensor):
                self._gates[id(t)] = weakref.ref(t)

    def _pad(self, func, args, kwargs, carriers):
        """Constant padding: relevance that reaches a padded position (a max pool's tie with a padded 0, a
        flat rule over padding) goes to the nearest real input, as replicate padding's gradient sends it;
        a conv right after it spreads its flat rule over the real inputs only (`zplus_flat`'s `real`).
        Reflect, replicate and circular padding: their gradient already sums back onto real inputs."""
        p = _bind(args, kwargs, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
        x, pad = p["input"], tuple(p["pad"])
        out = func(*args, **kwargs)
        # Replicate padding exists for the last 1 (2-D, 3-D input), 2 (3-D, 4-D) or 3 (4-D, 5-D) dims.
        spatial = 2 * max(1, x.ndim - 2) if 2 <= x.ndim <= 5 else 0
        if p["mode"] != "constant" or len(carriers) != 1 or x is not carriers[0] or min(pad) < 0 \
                or len(pad) > spatial:
            self.rules.setdefault("pad", "gradient")
            return out
        replicate = pad + (0,) * (spatial - len(pad))
        if not p["value"]:
            with torch.no_grad():
                real = F.pad(torch.ones_like(x[:1]), pad)
        self.rules.setdefault("pad", "to the nearest real input")
        value = out.detach()
        result = _Rule.apply(lambda r: (vjp(lambda t: F.pad(t, replicate, mode="replicate"), x, r),), value, x)
        if not p["value"]:
            self._padded[id(result)] = (weakref.ref(result), real)
        return result

    def _real_inputs(self, x) -> torch.Tensor | None:
        entry = self._padded.get(id(x))
        return entry[1] if entry is not None and entry[0]() is x else None

    def logits(self, output: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """(where relevance starts, the output normaliser skipped or None): the input of a Softmax,
        LogSoftmax or Sigmoid that produced the model's output, else the output itself."""
        entry = self._normalised.get(id(output))
        if entry is not None and entry[0]() is output:
            return entry[2], entry[1]
        return output, None

    # ----------------------------------------------------------------------------------------- ops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        # Parameters never carry relevance (a BatchNorm fold may add a bias that requires grad).
        carriers = list({id(t): t for t in _flat(args, kwargs) if isinstance(t, torch.Tensor) and t.requires_grad
                         and not isinstance(t, nn.Parameter)}.values())
        if not carriers or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        if name == "pad":
            return self._pad(func, args, kwargs, carriers)
        if name in ROUTES:
            self.rules.setdefault(name, "gradient")
            out = func(*args, **kwargs)
            if any(self._is_gate(t) for t in carriers):
                self._mark_gate(out)
            return out
        base = IN_PLACE.get(name) or (name[:-1] if name.endswith("_") and not name.endswith("__") else name)
        if base != name:  # in place -> out of place: a rule's saved tensors must never change under it
            func = next(getattr(space, base) for space in (F, torch, torch.Tensor) if hasattr(space, base))
        if "inplace" in kwargs:
            kwargs = dict(kwargs, inplace=False)
        rule = self._rule(base, func, args, kwargs, carriers)
        if rule is None:
            out = func(*args, **kwargs)
            if not (isinstance(out, torch.Tensor) and out.requires_grad and out.is_floating_point()):
                return out  # sizes, indices, comparisons: not on the relevance path
            self.unruled.append((self._where[-1] if self._where else "", base))
            self.rules.setdefault(base, "NONE")
            if not self.allow_fallback:
                return out
            rule = (*self._gradient_times_input(func, args, kwargs, carriers), "gradient x input")
        value, inputs, backward, label = rule
        self.rules.setdefault(base, label)
        out = _Rule.apply(backward, value, *inputs)
        if base in GATE_SOURCES:
            self._mark_gate(out)
        if base in OUTPUT_NORMALISERS:
            self._normalised[id(out)] = (weakref.ref(out), base, inputs[0])
        return out

    def _rule(self, name, func, args, kwargs, carriers):
        """(value, inputs that receive relevance, backward, rule name) for an op with a rule, else None."""
        with torch.no_grad():
            if name in PASSES:
                x = args[0] if args else kwargs.get("input")
                if not (isinstance(x, torch.Tensor) and x.requires_grad) or len(carriers) > 1:
                    return None
                return func(*args, **kwargs), (x,), lambda r: (r,), "pass"
            if name in SUMS or name in PRODUCTS:
                return self._binary(name, func, args, kwargs, carriers)
            if name in REDUCTIONS and len(carriers) == 1 and args and args[0] is carriers[0]:
                x, rest = args[0], args[1:]
                value = func(*args, **kwargs)

                def split(r, x=x, value=value):
                    return (x * vjp(lambda t: func(t, *rest, **kwargs), x, r / stabilize(value)),)

                return value, (x,), split, "proportional"
            if name in CONVS or name == "linear":
                return self._weighted(name, func, args, kwargs, carriers)
        return None

    def _binary(self, name, func, args, kwargs, carriers):
        value = func(*args, **kwargs)
        operands = [a for a in args[:2] if any(a is c for c in carriers)]
        if len(operands) == 1 and len(carriers) == 1:  # a signal and a constant (bias, scale): passes unchanged
            (x,) = carriers
            return value, (x,), lambda r: (_to_size(r, x),), "pass"
        if len(operands) != 2 or len(carriers) != 2:  # x * x included: two signals, one tensor
            return None
        a, b = operands
        if name in SUMS:  # linear in each input: its contribution is the op with the other one zeroed
            parts = (func(a, torch.zeros_like(b), *args[2:], **kwargs), func(torch.zeros_like(a), b, *args[2:], **kwargs))

            def split(r):
                scaled = r / stabilize(value)
                # Where both are 0 (two ReLU'd zeros) the share is 0/0: that relevance goes half to each.
                flat = r * (value == 0) / 2
                return _to_size(parts[0] * scaled + flat, a), _to_size(parts[1] * scaled + flat, b)

            return value, (a, b), split, "proportional"
        if name in DIVISIONS:
            signal = 0  # the numerator; the denominator normalises it
        elif self._is_gate(a) != self._is_gate(b):
            signal = 1 if self._is_gate(a) else 0
        elif a.numel() != b.numel():
            signal = 0 if a.numel() > b.numel() else 1
        else:
            return None  # two signals multiplied: no rule
        gate = 1 - signal

        def take_all(r):
            out = [None, None]
            out[signal] = _to_size(r, operands[signal])
            out[gate] = torch.zeros_like(operands[gate])
            return tuple(out)

        return value, (a, b), take_all, "gate"

    def _weighted(self, name, func, args, kwargs, carriers):
        p, (forward, transposed) = _layer_ops(name, args, kwargs)
        x, weight = p["input"], p["weight"]
        if len(carriers) != 1 or carriers[0] is not x or not isinstance(weight, torch.Tensor):
            return None  # an input-dependent weight: no rule
        value = func(*args, **kwargs)
        # The classifier, and fully connected layers before it, get the head rule; convs and pointwise
        # Linear layers z+.
        head_like = weight is self.head_weight or (name == "linear" and id(weight) not in self.pointwise)
        rule = zplus_flat if not head_like or self.head_rule == "zplus" else epsilon_rule
        weight = weight.detach()
        if rule is epsilon_rule:
            return value, (x,), lambda r: (rule(x.detach(), weight, r, forward, transposed),), "epsilon"
        real = self._real_inputs(x)
        return value, (x,), lambda r: (rule(x.detach(), weight, r, forward, transposed, real),), "z+ flat"

    @staticmethod
    def _gradient_times_input(func, args, kwargs, carriers):
        """The fallback for an op without a rule: R_i = x_i * d(out)/d(x_i)^T (R / out), zennit's `Norm`."""
        leaves = {id(t): t.detach().requires_grad_(True) for t in carriers}
        swap = lambda a: leaves.get(id(a), a) if isinstance(a, torch.Tensor) else \
            type(a)(swap(v) for v in a) if isinstance(a, (list, tuple)) else a  # noqa: E731
        with torch.enable_grad():
            out = func(*[swap(a) for a in args], **{k: swap(v) for k, v in kwargs.items()})
        inputs = tuple(leaves.values())

        def backward(r):
            grads = torch.autograd.grad(out, inputs, r / stabilize(out.detach()), retain_graph=True,
                                        allow_unused=True)
            return tuple(None if g is None else x * g for x, g in zip(inputs, grads))

        return out.detach(), tuple(carriers), backward


def channel_totals(relevance: torch.Tensor, linear: bool) -> torch.Tensor:
    """Summed |R| per output channel: channels are dim 1 of a conv's output, the last dim of a Linear's."""
    channel_dim = relevance.ndim - 1 if linear else 1
    dims = tuple(d for d in range(relevance.ndim) if d != channel_dim)
    return relevance.abs().sum(dim=dims).to(torch.float64)
