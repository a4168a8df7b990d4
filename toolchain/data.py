"""Image-folder data: scan `root/<class>/<image>`, draw the k-shot set, decode and preprocess images.

The layout and the preprocessing follow torchvision (ImageFolder, ImageClassification transforms) so
that a model's own ImageNet statistics apply unchanged, but everything is NumPy + PIL: no DataLoader
worker processes on small edge hosts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from runtime_bench.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

Sample = Tuple[str, int]  # (image path, class index)


@dataclass
class ImageFolderIndex:
    """What `scan_image_folder` found: class names (sorted) and every image with its class index."""

    root: str
    classes: list[str]
    samples: list[Sample] = field(default_factory=list)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return not _is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_below(folder: Path) -> list[str]:
    """All image files under `folder`, recursively like ImageFolder, sorted so order is filesystem-independent."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]  # prune in place: os.walk honours it
        found.extend(os.path.join(dirpath, name) for name in filenames if _is_image_name(name))
    return sorted(found)


def scan_image_folder(root: str | os.PathLike) -> ImageFolderIndex:
    """Index `root/<class>/<image>`; every class folder must hold at least one image."""
    root_path = Path(root)
    if not root_path.exists():
        raise InputError(f"{root}: no such folder")
    if not root_path.is_dir():
        raise InputError(f"{root}: not a folder")
    classes = sorted(
        entry.name for entry in root_path.iterdir() if entry.is_dir() and not _is_hidden(entry.name)
    )
    if not classes:
        raise InputError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    samples: list[Sample] = []
    for class_index, cls in enumerate(classes):
        paths = _images_below(root_path / cls)
        if not paths:
            raise InputError(f"{root}/{cls}: class folder has no images")
        samples.extend((path, class_index) for path in paths)
    return ImageFolderIndex(root=str(root), classes=classes, samples=samples)


def sample_k_shot(
    index: ImageFolderIndex, shots: int, seed: int, allow_fewer: bool = False
) -> tuple[list[Sample], list[Sample]]:
    """Split the index into `shots` images per class (the small set) and the rest, reproducibly for `seed`."""
    if shots < 1:
        raise InputError(f"--shots must be at least 1, got {shots}")
    rng = np.random.default_rng(seed)
    small: list[Sample] = []
    rest: list[Sample] = []
    for class_index, cls in enumerate(index.classes):
        # Sorting first makes the draw depend on the seed only, never on directory listing order.
        paths = sorted(path for path, label in index.samples if label == class_index)
        if len(paths) < shots:
            if not allow_fewer:
                raise InputError(
                    f"{index.root}/{cls}: {len(paths)} images, fewer than --shots {shots} "
                    "(use --allow-fewer to proceed)"
                )
            chosen = set(range(len(paths)))
        else:
            chosen = set(rng.choice(len(paths), size=shots, replace=False).tolist())
        for position, path in enumerate(paths):
            (small if position in chosen else rest).append((path, class_index))
    return small, rest


@dataclass
class Preprocessing:
    """Resize shorter side, center crop, scale to 0..1, normalise per channel (torchvision's recipe)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | None = None  # shorter side before the crop; None resizes straight to image_size

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.image_size < 1:
            raise InputError(f"preprocessing: image_size must be positive, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InputError(f"preprocessing: mean and std need 3 values each, got {self.mean} and {self.std}")
        if any(v <= 0 for v in self.std):
            raise InputError(f"preprocessing: std must be positive, got {self.std}")
        # A resize below the crop would need padding, which torchvision's recipe never does for its weights.
        if self.resize is not None and self.resize < self.image_size:
            raise InputError(
                f"preprocessing: resize {self.resize} is smaller than image_size {self.image_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        missing = [key for key in ("image_size", "mean", "std") if key not in data]
        if missing:
            raise InputError(f"preprocessing: missing {', '.join(missing)}")
        resize = data.get("resize")
        return cls(
            image_size=int(data["image_size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            resize=None if resize is None else int(resize),
        )


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey -> 8-bit grey using the image's own value range.

    PIL's convert('L') clips at 255, which turns 12- or 16-bit scans almost all white.
    """
    values = np.asarray(img, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.full_like(values, min(max(low, 0.0), 255.0))  # flat image: nothing to stretch
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _scale_to_8bit(img).convert("RGB")
    if img.mode in ("P", "PA"):
        # Via RGBA so palette transparency is resolved before the alpha is dropped.
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def _resize_and_crop(img: Image.Image, prep: Preprocessing) -> Image.Image:
    short_target = prep.resize if prep.resize is not None else prep.image_size
    width, height = img.size
    # Same output size as torchvision's Resize(int): shorter side to target, longer side truncated.
    if width <= height:
        new_size = (short_target, int(short_target * height / width))
    else:
        new_size = (int(short_target * width / height), short_target)
    if new_size != img.size:
        img = img.resize(new_size, Image.BILINEAR)
    width, height = img.size
    crop = prep.image_size
    left = int(round((width - crop) / 2.0))
    top = int(round((height - crop) / 2.0))
    if (left, top, width, height) != (0, 0, crop, crop):
        img = img.crop((left, top, left + crop, top + crop))
    return img


def load_image(path: str | os.PathLike, prep: Preprocessing) -> np.ndarray:
    """Decode one image file into a normalised (3, H, W) float32 array."""
    try:
        with Image.open(path) as img:
            img.load()  # force the full decode: a truncated file fails here, not later
            rgb = _to_rgb(img)
            rgb = _resize_and_crop(rgb, prep)
            pixels = np.asarray(rgb, dtype=np.float32)
    except InputError:
        raise
    except Exception as exc:  # PIL signals bad files with many types (OSError, SyntaxError, struct.error ...)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: not a readable image ({reason})") from exc
    pixels = pixels / 255.0
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def load_images(
    samples: Sequence[Sample], prep: Preprocessing, progress: bool = True, strict: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode `samples` into (images (N,3,H,W) float32, labels (N,) int64, skipped paths).

    Unreadable files are skipped and returned unless `strict`; a class that loses every image is an error.
    """
    size = prep.image_size
    images = np.empty((len(samples), 3, size, size), dtype=np.float32)
    labels = np.empty(len(samples), dtype=np.int64)
    skipped: list[str] = []
    kept = 0
    bar = tqdm(samples, total=len(samples), desc="loading images", unit="img", disable=not progress)
    for path, label in bar:
        try:
            images[kept] = load_image(path, prep)
        except InputError:
            if strict:
                bar.close()
                raise
            skipped.append(str(path))
            bar.set_postfix(skipped=len(skipped), refresh=False)
            continue
        labels[kept] = label
        kept += 1
    bar.close()
    if skipped:
        loaded_labels = set(labels[:kept].tolist())
        for path, label in samples:
            if label not in loaded_labels:
                class_folder = Path(path).parent
                total = sum(1 for _, other in samples if other == label)
                raise InputError(f"{class_folder}: class folder has no readable images (all {total} skipped)")
    return images[:kept], labels[:kept], skipped


def preprocessing_from_weights(weights: Any, image_size: int | None = None) -> Preprocessing:
    """Preprocessing from a torchvision weights enum member; `image_size` rescales crop and resize together."""
    transforms = weights.transforms()

    def first(value: Any) -> int:
        return int(value[0] if isinstance(value, (list, tuple)) else value)

    crop = first(transforms.crop_size)
    resize = first(transforms.resize_size)
    if image_size is not None:
        # Keep the weights' resize/crop ratio (256/224 for most ImageNet models) at the new resolution.
        resize = int(round(image_size * resize / crop))
        crop = int(image_size)
    return Preprocessing(
        image_size=crop, mean=tuple(transforms.mean), std=tuple(transforms.std), resize=resize
    )


def _short_list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names)} in all)"
    return f"[{shown}]"


def check_same_classes(small_index: ImageFolderIndex, test_index: ImageFolderIndex) -> None:
    """The test folder must hold exactly the classes of the small folder, or labels would not line up."""
    if small_index.classes == test_index.classes:
        return
    test_names = set(test_index.classes)
    small_names = set(small_index.classes)
    missing = [name for name in small_index.classes if name not in test_names]
    extra = [name for name in test_index.classes if name not in small_names]
    raise InputError(
        f"{test_index.root}: test classes differ from {small_index.root}: "
        f"missing {_short_list(missing)}, extra {_short_list(extra)}"
    )
