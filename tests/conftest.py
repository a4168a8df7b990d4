"""Shared fixtures: tiny image-folder datasets written on the fly (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from fake_backends import register_test_backends
from PIL import Image

register_test_backends()

# `make test` runs the suite in one pytest-xdist worker per core: each worker's torch then uses its share of
# the cores, not all of them (oversubscribed threads made every worker slower).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# Dominant colour per class: with moderate noise the classes stay separable by colour alone.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (40, 60, 220),
    "green": (40, 200, 60),
    "red": (220, 40, 40),
}


def write_image_folder(
    root: Path,
    per_class: int,
    colours: dict[str, tuple[int, int, int]] = CLASS_COLOURS,
    size: int = 32,
    noise: float = 30.0,
    seed: int = 0,
) -> Path:
    """Write `root/<class>/<nn>.png`: `per_class` RGB images per class, the class colour plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    for cls, colour in colours.items():
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.asarray(colour, dtype=np.float64)[None, None, :] + rng.normal(0.0, noise, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index:02d}.png")
    return root


class ImageData(NamedTuple):
    small: Path  # the folder the small labelled set is drawn from
    test: Path  # a separate folder with the same classes
    classes: tuple[str, ...]
    small_per_class: int
    test_per_class: int
    size: int


@pytest.fixture(scope="session")
def image_data(tmp_path_factory) -> ImageData:
    """3 colour-separable classes of 32x32 PNGs: 14 per class to draw from, 6 per class to test on."""
    base = tmp_path_factory.mktemp("images")
    small = write_image_folder(base / "small", per_class=14, seed=0)
    test = write_image_folder(base / "test", per_class=6, seed=1)
    return ImageData(small, test, tuple(sorted(CLASS_COLOURS)), 14, 6, 32)


@pytest.fixture(scope="session")
def write_images():
    """`write_image_folder` itself, for tests that need a folder of their own: write_images(root, per_class=...)."""
    return write_image_folder


# With EDGEPRUNE_FAMILIES_JSON=path, the per-family (torchvision) and per-architecture (timm, keyed `timm:NAME`)
# end-to-end results are written there, for the README's families tables (scripts/families_table.py): the table comes from test results, never typed.
_FAMILY_RESULTS: dict = {}


def pytest_runtest_logreport(report):
    for test, prefix in (("test_family_end_to_end[", ""), ("test_timm_architecture_end_to_end[", "timm:")):
        if report.when == "call" and test in report.nodeid:
            name = prefix + report.nodeid.split("[", 1)[1].rstrip("]")
            _FAMILY_RESULTS[name] = {"outcome": report.outcome, "seconds": round(report.duration, 1)}


def pytest_sessionfinish(session):
    import json
    import os

    target = os.environ.get("EDGEPRUNE_FAMILIES_JSON")
    if target and _FAMILY_RESULTS:
        Path(target).write_text(json.dumps(_FAMILY_RESULTS, indent=2) + "\n")
