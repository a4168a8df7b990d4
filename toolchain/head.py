"""A linear classifier head fitted on the frozen backbone's features of the small labelled set.

The backbone never changes (no fine-tuning is possible with ~10 images per class); only this head is
fitted, by one of two solvers:
- `ridge` (default): closed-form ridge regression on one-hot targets. One small solve in the dual
  (n x n, n = the small set's size), so it can be re-fitted after every pruning step and for every
  candidate the controller judges, and it gives leave-one-out predictions in closed form: every image
  judged by the head fitted on the other n - 1 (the small-set estimate of a state, never the test set).
- `logistic`: L2-regularised multinomial logistic regression (full-batch L-BFGS, deterministic).
Measured on the default task (`benchmarks/head_solvers.py`: MobileNetV2, 112 px, 10-shot Fashion-MNIST,
1,000 test images, seeds 0 / 1 / 2): test accuracy logistic 0.681 / 0.730 / 0.752, ridge 0.696 / 0.722 /
0.744; harmonic mean logistic 0.597 / 0.663 / 0.675, ridge 0.574 / 0.640 / 0.637; one fit 130-230 ms
against 1 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from runtime_bench.errors import InputError

from .models import linear_head, replace_module


@torch.no_grad()
def head_features(model: nn.Module, images: torch.Tensor, head_name: str, batch_size: int = 64) -> torch.Tensor:
    """The inputs of the model's linear head for every image."""
    head = linear_head(model, head_name)
    captured = []
    handle = head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].detach()))
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        handle.remove()
    return torch.cat(captured)


def fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 1e-3,
               iterations: int = 200) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(features.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")
    features = features.detach().float()

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(features), labels) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    linear.requires_grad_(False)
    return linear


HEAD_SOLVERS = ("ridge", "logistic")
# Ridge strengths, relative to the mean squared norm of a feature vector (so that one alpha means the same
# whatever the features' scale, which pruning changes); the dense model's leave-one-out error picks one.
RIDGE_ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


@dataclass
class RidgeSolution:
    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor  # (classes,)
    loo: torch.Tensor  # (images, classes): each image's outputs from the head fitted without it


def ridge_solve(features: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float) -> RidgeSolution:
    """Ridge regression of one-hot targets on [features, c] (c a constant column: the bias, regularised
    like the rest so that leave-one-out stays exact), solved in the dual.

    With G = (K + l I)^-1 and D = G Y the dual coefficients, the fitted values are Y - l D, so the
    hat matrix's diagonal is 1 - l G_ii and the left-out prediction of image i is Y_i - D_i / G_ii.
    """
    x = features.detach().double().flatten(1)
    scale = float(x.pow(2).sum(1).mean().sqrt()) or 1.0
    xa = torch.cat([x, torch.full((len(x), 1), scale, dtype=x.dtype)], 1)
    kernel = xa @ xa.T
    lam = alpha * float(kernel.diagonal().mean())
    targets = nn.functional.one_hot(labels, num_classes).double()
    g = torch.cholesky_inverse(torch.linalg.cholesky(kernel + lam * torch.eye(len(x), dtype=x.dtype)))
    dual = g @ targets
    w = xa.T @ dual  # (features + 1, classes)
    return RidgeSolution(weight=w[:-1].T.float(), bias=(scale * w[-1]).float(),
                         loo=(targets - dual / g.diagonal()[:, None]).float())


def choose_ridge_alpha(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """The alpha of RIDGE_ALPHAS with the lowest leave-one-out squared error (smooth, so that picking it
    on the small set biases the estimates less than picking by leave-one-out accuracy would)."""
    targets = nn.functional.one_hot(labels, num_classes).float()
    errors = [float((ridge_solve(features, labels, num_classes, a).loo - targets).pow(2).sum(1).mean())
              for a in RIDGE_ALPHAS]
    return RIDGE_ALPHAS[min(range(len(errors)), key=errors.__getitem__)]


def set_linear(head: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Give `head` new weights in place: the pruning graph and the caches hold this very module."""
    head.weight = nn.Parameter(weight.detach().clone().contiguous(), requires_grad=False)
    head.bias = nn.Parameter(bias.detach().clone().contiguous(), requires_grad=False)
    head.in_features, head.out_features = weight.shape[1], weight.shape[0]


def refit_linear(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 solver: str = "ridge", alpha: float | None = None) -> None:
    """Re-fit `head` in place on `features` (the pruned backbone's, after a step)."""
    if solver == "logistic":
        fitted = fit_linear(features, labels, num_classes)
        set_linear(head, fitted.weight, fitted.bias)
    else:
        solution = ridge_solve(features, labels, num_classes, alpha)
        set_linear(head, solution.weight, solution.bias)


def fit_head(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, head_name: str,
             solver: str = "ridge", alpha: float | None = None, l2: float = 1e-3) -> nn.Linear:
    """Replace the model's linear head by one fitted on (images, labels) over the frozen backbone.
    `alpha` (ridge): None picks it by leave-one-out error."""
    if solver not in HEAD_SOLVERS:
        raise InputError(f"--head-solver {solver}: choose from {', '.join(HEAD_SOLVERS)}")
    features = head_features(model, images, head_name)
    if solver == "logistic":
        head = fit_linear(features, labels, num_classes, l2)
    else:
        alpha = choose_ridge_alpha(features, labels, num_classes) if alpha is None else alpha
        head = nn.Linear(features.shape[1], num_classes)
        refit_linear(head, features, labels, num_classes, solver, alpha)
    replace_module(model, head_name, head)
    return head
