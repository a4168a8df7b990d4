"""Accuracy of a backend on labelled images: overall, per class, and the per-class harmonic mean."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from runtime_bench.backends import Backend
from runtime_bench.errors import InputError


def harmonic_mean(per_class_accuracy: Sequence[float]) -> float:
    """C / sum(1 / acc_c). Any class at 0 gives 0.0: the pruning controller relies on that collapse."""
    acc = np.asarray(per_class_accuracy, dtype=np.float64).reshape(-1)
    if acc.size == 0:
        raise InputError("harmonic_mean: no per-class accuracies")
    if not np.all(np.isfinite(acc)) or np.any(acc < 0) or np.any(acc > 1):
        raise InputError(f"harmonic_mean: accuracies must be in [0, 1], got {acc.tolist()}")
    if np.any(acc == 0):
        return 0.0
    return float(acc.size / np.sum(1.0 / acc))


def _format_classes(classes: list[int]) -> str:
    if len(classes) == 1:
        return f"class {classes[0]} has"
    return "classes " + ", ".join(str(c) for c in classes) + " have"


def check_labels(labels: Any, num_classes: int, count: int | None = None) -> np.ndarray:
    """Labels as a 1-D int64 array with values in [0, num_classes) and every class present."""
    if num_classes < 1:
        raise InputError(f"num_classes={num_classes}: must be >= 1")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InputError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if count is not None and labels.size != count:
        raise InputError(f"{labels.size} labels for {count} predictions/images")
    if labels.size == 0:
        raise InputError("no labels to evaluate")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise InputError(f"label {int(bad[0])} is outside 0..{num_classes - 1} (num_classes={num_classes})")
    counts = np.bincount(labels, minlength=num_classes)
    missing = [int(c) for c in np.flatnonzero(counts == 0)]
    if missing:
        raise InputError(
            f"{_format_classes(missing)} no samples in the labels; per-class accuracy is undefined"
        )
    return labels


def classification_metrics(predictions: Any, labels: Any, num_classes: int) -> dict[str, Any]:
    """accuracy, per_class (list indexed by class), harmonic_mean of per_class, count."""
    predictions = np.asarray(predictions).reshape(-1)
    labels = check_labels(labels, num_classes, count=predictions.size)
    correct = predictions.astype(np.int64) == labels
    per_class = np.bincount(labels, weights=correct.astype(np.float64), minlength=num_classes) / np.bincount(
        labels, minlength=num_classes
    )
    per_class_list = [float(a) for a in per_class]
    return {
        "accuracy": float(correct.mean()),
        "per_class": per_class_list,
        "harmonic_mean": harmonic_mean(per_class_list),
        "count": int(labels.size),
    }


def check_images(images: Any) -> np.ndarray:
    """Images as a contiguous (N, C, H, W) float32 array."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise InputError(f"images must have shape (N, C, H, W), got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"images must be float32 (already preprocessed), got {images.dtype}")
    if images.shape[0] == 0:
        raise InputError("no images to evaluate")
    return np.ascontiguousarray(images, dtype=np.float32)


def _fixed_batch(backend: Backend) -> int | None:
    """The model's batch size when it is baked into the graph, else None."""
    shape = getattr(backend, "input_shape", None) or []
    if shape and isinstance(shape[0], (int, np.integer)) and shape[0] > 0:
        return int(shape[0])
    return None


def run_batches(
    backend: Backend,
    images: np.ndarray,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Logits (N, classes) for all images; pads the last batch when the model's batch is fixed."""
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}: must be >= 1")
    fixed = _fixed_batch(backend)
    step = fixed or batch_size
    outputs = []
    for start in range(0, images.shape[0], step):
        batch = images[start : start + step]
        n = batch.shape[0]
        if fixed is not None and n < fixed:
            pad = np.zeros((fixed - n,) + batch.shape[1:], dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        logits = np.asarray(backend.run(batch))
        if logits.shape[0] != batch.shape[0]:
            raise InputError(
                f"backend '{backend.name}' returned {logits.shape[0]} rows for a batch of {batch.shape[0]}"
            )
        outputs.append(logits.reshape(logits.shape[0], -1)[:n].astype(np.float32, copy=False))
        if on_batch is not None:
            on_batch(n)
    return np.concatenate(outputs)


def evaluate(
    backend: Backend,
    images: Any,
    labels: Any,
    num_classes: int,
    batch_size: int = 32,
    return_logits: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """classification_metrics of `backend` on the images; `logits` (ndarray) added if return_logits.

    Predictions are not returned, to keep reports small.
    """
    images = check_images(images)
    check_labels(labels, num_classes, count=images.shape[0])
    logits = run_batches(backend, images, batch_size, on_batch)
    if logits.shape[1] != num_classes:
        raise InputError(
            f"backend '{backend.name}': model outputs {logits.shape[1]} classes but num_classes={num_classes}"
        )
    result = classification_metrics(np.argmax(logits, axis=1), labels, num_classes)
    if return_logits:
        result["logits"] = logits
    return result


def top1_agreement(logits_a: Any, logits_b: Any) -> float:
    """Fraction of rows where both logit sets pick the same class."""
    a = np.asarray(logits_a)
    b = np.asarray(logits_b)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise InputError(
            f"top1_agreement: need two non-empty (N, C) arrays of equal shape, got {a.shape} and {b.shape}"
        )
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def compare_with_reference(
    reference: Backend,
    candidate: Backend,
    images: Any,
    labels: Any,
    num_classes: int,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Accuracy of `candidate` (e.g. an FP16 engine) next to `reference` (e.g. the FP32 ONNX model) on the
    same images: both accuracies and harmonic means of class accuracies, the deltas candidate - reference
    (overall and per class), top-1 agreement, largest logit difference."""
    ref = evaluate(reference, images, labels, num_classes, batch_size, return_logits=True)
    cand = evaluate(candidate, images, labels, num_classes, batch_size, return_logits=True)
    ref_logits, cand_logits = ref.pop("logits"), cand.pop("logits")
    return {
        "accuracy": cand["accuracy"],
        "harmonic_mean": cand["harmonic_mean"],
        "per_class": cand["per_class"],
        "reference_accuracy": ref["accuracy"],
        "reference_harmonic_mean": ref["harmonic_mean"],
        "reference_per_class": ref["per_class"],
        "accuracy_delta": cand["accuracy"] - ref["accuracy"],
        "harmonic_mean_delta": cand["harmonic_mean"] - ref["harmonic_mean"],
        "per_class_delta": [c - r for c, r in zip(cand["per_class"], ref["per_class"])],
        "top1_agreement": top1_agreement(ref_logits, cand_logits),
        "max_abs_logit_diff": float(np.max(np.abs(ref_logits - cand_logits))),
        "count": cand["count"],
    }
