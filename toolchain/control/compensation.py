"""Compensation (`--compensate`): when a layer loses input channels, re-fit its weights in closed form so
that its output on the small set stays as close as possible to the DENSE model's output of that layer.

The idea is ThiNet's and OSSCAR's (reconstruct the next layer's output from the channels that remain); the
solve is our own: ridge least squares on the small set's activations, for the CHANGE of the weights,

    dW = argmin || (Y_dense - W X) - dW X ||^2 + l || dW ||^2,      l = COMPENSATION_L2 x mean diag(X^T X),

over the layer's input patches X (the pruned model's, so that error accumulated upstream is corrected too)
and its dense outputs Y_dense. The strength was measured (MobileNetV2, 112 px, 10-shot Fashion-MNIST,
`--max-drop 0.01`, seeds 0 and 1: MACs reduction of the kept state, test accuracy change, small-set
estimate minus test): 0.03 gave 6.0x / +1.4 pt / -0.2 and 9.5x / -3.0 pt / +5.6; 0.1 gave 6.1x / -0.9 pt
/ +2.7 and 9.3x / -0.9 pt / +1.5; 0.3 gave 4.2x / +3.5 pt / -2.1 and 5.9x / -1.4 pt / +3.2. Weaker fits
the 100 images' activations too closely (1e-3: the estimate 3 points over the test at 75%). Solving for the change keeps a layer whose output already matches as it is
(nothing removed: left exactly as it is). No gradient step anywhere. Ungrouped convs (via im2col, at most
MAX_POSITIONS output positions drawn with a fixed seed) and linear layers are compensated; depthwise convs
lose their channels with their producer and need none; the classifier head is re-fitted instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from runtime_bench.errors import InputError

from .feature_cache import HeadInputCache

COMPENSATION_L2 = 0.1
MAX_POSITIONS = 20000
MATCHED = 1e-5  # a layer whose output is already this close to the dense one (relative) is left as it is


def compensable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(positions, inputs) rows: one per output position (conv) or sample (linear)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x.contiguous(), module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _rows(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.contiguous().flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


def sampled_rows(module: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                 chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(input patches, output rows) at MAX_POSITIONS positions at most, drawn once over all images and
    unfolded a few images at a time (a 3x3 conv's patches of 100 images can take gigabytes)."""
    per_image = _rows(module, y[:1]).shape[0]
    total = per_image * len(x)
    pick = torch.randperm(total, generator=generator)[:MAX_POSITIONS].sort().values if total > MAX_POSITIONS \
        else torch.arange(total)
    patches, targets = [], []
    for start in range(0, len(x), chunk):
        lo, hi = start * per_image, min(len(x), start + chunk) * per_image
        local = pick[(pick >= lo) & (pick < hi)] - lo
        if len(local):
            patches.append(_patches(module, x[start : start + chunk])[local].float())
            targets.append(_rows(module, y[start : start + chunk])[local].float())
    return torch.cat(patches), torch.cat(targets)


def _ridge(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """argmin_D ||r - x D||^2 + l ||D||^2 (D: inputs x outputs), in the primal or, with fewer rows than
    inputs, the dual; the products in float32, the solve in float64."""
    if len(x) >= x.shape[1]:
        gram = (x.T @ x).double()
        lam = COMPENSATION_L2 * float(gram.diagonal().mean()) or 1e-12
        return torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), (x.T @ r).double())
    kernel = (x @ x.T).double()
    lam = COMPENSATION_L2 * float(kernel.diagonal().sum()) / x.shape[1] or 1e-12
    return x.T.double() @ torch.linalg.solve(kernel + lam * torch.eye(len(kernel), dtype=kernel.dtype), r.double())


class Compensation:
    """Holds the dense outputs of every compensable layer on the small set (from the activation cache) and
    re-fits layers after they lost input channels.

    `fit_images`: the images (indices into the cache's) the fits use, default all; `dense`: the dense
    outputs by node name, from another Compensation of a copy of the same model (shared, not copied)."""

    def __init__(self, cache: HeadInputCache, skip: set[nn.Module], fit_images: torch.Tensor | None = None,
                 dense: dict[str, torch.Tensor] | None = None):
        if cache.nodes is None:
            raise InputError("--compensate: needs a model that torch.fx can trace (its activations are cached)")
        self.cache, self.skip, self.fit_images = cache, skip, fit_images
        self.node_of: dict[nn.Module, fx.Node] = {}
        self.dense: dict[nn.Module, torch.Tensor] = {}
        for node in cache.nodes:
            if node.op == "call_module":
                module = cache.modules[node.target]
                if compensable(module) and module not in skip and len(node.args) == 1:
                    self.node_of[module] = node
                    self.dense[module] = dense[node.target] if dense is not None \
                        else cache.values[node].detach().clone()
        self.generator = torch.Generator().manual_seed(0)

    def dense_outputs(self) -> dict[str, torch.Tensor]:
        return {node.target: self.dense[module] for module, node in self.node_of.items()}

    @torch.no_grad()
    def __call__(self, modules: list[nn.Module], kept_out: dict[nn.Module, list[int]]) -> list[nn.Module]:
        """Re-fit `modules` (in the order the model runs them), refreshing the cache after each so that the
        next one sees its corrected input; `kept_out` maps a layer to the dense output channels it still has.
        Returns the layers re-fitted."""
        order = {node: i for i, node in enumerate(self.cache.nodes)}
        todo = sorted((m for m in set(modules) if m in self.node_of), key=lambda m: order[self.node_of[m]])
        refitted = []
        for module in todo:
            node = self.node_of[module]
            x = self.cache.values[node.args[0]]
            dense = self.dense[module]
            if self.fit_images is not None:
                x, dense = x[self.fit_images], dense[self.fit_images]
            keep = kept_out.get(module)
            if keep is not None:
                dense = dense[:, keep] if not isinstance(module, nn.Linear) else dense[..., keep]
            patches, target = sampled_rows(module, x, dense, self.generator)
            weight = module.weight.reshape(module.weight.shape[0], -1).float()
            residual = target - patches @ weight.T - (module.bias if module.bias is not None else 0.0)
            if float(residual.norm()) <= MATCHED * float(target.norm()):  # float32 round-off, not a lost input
                continue
            delta = _ridge(patches, residual)
            module.weight.copy_((weight + delta.T.float()).reshape(module.weight.shape).to(module.weight.dtype))
            self.cache.refresh({module})
            refitted.append(module)
        return refitted
