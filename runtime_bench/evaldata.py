"""The evaluation data file: an .npz with preprocessed images, integer labels and optional class names."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from runtime_bench.errors import InputError, first_line


def load_eval_npz(path: str) -> tuple[np.ndarray, np.ndarray, int, list[str] | None]:
    """(images, labels, num_classes, class_names or None) from an evaluation .npz, checked."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
        # A plain .npy loads as one array; we need the named arrays of an .npz archive.
        if not hasattr(data, "files"):
            raise InputError(f"{path}: not an .npz archive (a single array; save with numpy.savez)")
        with data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = first_line(exc)
        raise InputError(f"{path}: not a readable .npz file ({reason})") from None
    for key in ("images", "labels"):
        if key not in arrays:
            found = ", ".join(sorted(arrays)) or "nothing"
            raise InputError(f"{path}: missing array '{key}' (found: {found})")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 4:
        raise InputError(f"{path}: 'images' must have shape (N, C, H, W), got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"{path}: 'images' must be float32 (preprocessed), got {images.dtype}")
    if images.shape[0] == 0:
        raise InputError(f"{path}: 'images' is empty")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise InputError(f"{path}: 'labels' must have shape ({images.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: 'labels' must be integers, got {labels.dtype}")
    if labels.min() < 0:
        raise InputError(f"{path}: 'labels' has a negative value ({int(labels.min())})")
    class_names: list[str] | None = None
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise InputError(
                f"{path}: 'class_names' must be a 1-D string array, got {names.dtype} {names.shape}"
            )
        class_names = [str(n) for n in names.tolist()]
        num_classes = len(class_names)
        if labels.max() >= num_classes:
            raise InputError(f"{path}: label {int(labels.max())} but only {num_classes} class_names")
    else:
        num_classes = int(labels.max()) + 1
    return np.ascontiguousarray(images, dtype=np.float32), labels.astype(np.int64), num_classes, class_names
