"""Small CNNs with realistic weights for the equivalence and conservation tests (no downloads)."""

from __future__ import annotations

import torch
import torchvision

from toolchain.assets import MOBILENET_V2_FILENAME, WEIGHTS_PACKAGE, package_dir


def calibrated(model: torch.nn.Module, size: int = 64, seed: int = 0) -> torch.nn.Module:
    """Random weights with BatchNorm statistics from real forward passes, so BN folding is non-trivial."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
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
    return calibrated(torchvision.models.get_model(name, num_classes=num_classes))
