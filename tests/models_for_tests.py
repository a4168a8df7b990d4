"""Small CNNs with realistic weights for the equivalence and conservation tests (no downloads)."""

from __future__ import annotations

import torch
import torchvision

from toolchain.assets import MOBILENET_V2_FILENAME, WEIGHTS_PACKAGE, package_dir


def calibrated(model: torch.nn.Module, size: int = 64, seed: int = 0, exact: bool = False) -> torch.nn.Module:
    """Random weights with BatchNorm statistics from real forward passes, so BN folding is non-trivial.

    `exact`: statistics are the plain average of the passes (momentum None) rather than 3 momentum steps
    from the init, so that every BatchNorm standardises its outputs as in a trained model; without it deep
    random models (MobileNetV3) end with activations and logits of ~1e-5.
    """
    torch.manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    if exact:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def pretrained_mobilenet_v2() -> torch.nn.Module | None:
    """torchvision's ImageNet MobileNetV2, read from its offline carrier package; None if not installed."""
    folder = package_dir(WEIGHTS_PACKAGE)
    if folder is None:
        return None
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(folder / "weights" / MOBILENET_V2_FILENAME, weights_only=True))
    return model.eval()


def family(name: str, num_classes: int = 10) -> torch.nn.Module:
    if name == "mobilenet_v2_pretrained":
        model = pretrained_mobilenet_v2()
        if model is None:
            import pytest

            pytest.skip(f"package {WEIGHTS_PACKAGE} not installed (make installs it)")
        return model
    torch.manual_seed(0)  # weights independent of what ran before: the tests must be deterministic
    return calibrated(torchvision.models.get_model(name, num_classes=num_classes))


def realistic_family(name: str, size: int, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """A covered family (toolchain.families) with random weights made to behave like a trained model
    (`realistic`)."""
    from toolchain.families import build

    torch.manual_seed(seed)
    return realistic(build(name, num_classes), size, seed)


def realistic(model: torch.nn.Module, size: int, seed: int = 0) -> torch.nn.Module:
    """Random weights made to behave like a trained model where the tests depend on it: exact BatchNorm
    statistics; layer scales (ConvNeXt, timm's `gamma`s) of 0.1 to 1 instead of the init's 1e-6 (blocks
    that contribute, so that pruning them changes something); the classifier scaled to logits of about 10,
    so that the epsilon head rule absorbs ~1e-7 of the relevance, not percents."""
    from toolchain.families import classifier_layer

    torch.manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.rpartition(".")[2] in ("layer_scale", "gamma"):
                param.uniform_(0.1, 1.0)
    model = calibrated(model, size=size, seed=seed, exact=True)
    head = classifier_layer(model)[1]
    with torch.no_grad():
        scale = float(model(torch.randn(8, 3, size, size)).abs().max())
        head.weight.mul_(10.0 / scale)
        if head.bias is not None:
            head.bias.mul_(10.0 / scale)
    return model


def tiny_cnn(num_classes: int = 3) -> torch.nn.Module:
    """Three convs and a linear head: the cheapest model the command line can prune, export and bench
    (`--model tests/models_for_tests.py:tiny_cnn`)."""
    from torch import nn

    torch.manual_seed(0)

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16), *block(16, 16), nn.MaxPool2d(2), *block(16, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes)).eval()


def blind_to_last_class(num_classes: int = 3) -> torch.nn.Module:
    """tiny_cnn whose own head never predicts its last class (a bias of -1e4): with --head keep, that class's
    small-set accuracy is 0 before any pruning, so no accuracy budget can be judged."""
    model = tiny_cnn(num_classes)
    with torch.no_grad():
        model[-1].bias[-1] = -1e4
    return model
