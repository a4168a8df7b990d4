"""Stage 1, prepare: the model, the small labelled set and the test set, and the head fitted on the frozen
backbone. Also the small and test images of a finished run, as its manifest says (for export, INT8, bench)."""

from __future__ import annotations

import sys

import numpy as np
import torch

from runtime_bench.errors import InputError

from ..config import IMAGENET_MEAN, IMAGENET_STD, PruneConfig
from ..data import (
    Preprocessing,
    check_same_classes,
    load_images,
    preprocessing_from_weights,
    sample_k_shot,
    scan_image_folder,
)
from ..head import choose_ridge_alpha, fit_head, head_features
from ..models import ModelSource, build_model, check_logits, find_head, is_weights_file, torchvision_weights
from ..task import Task


def resolve_preprocessing(config: PruneConfig) -> Preprocessing:
    is_torchvision = not (":" in config.model and config.model.split(":", 1)[0].endswith(".py"))
    if is_torchvision and not is_weights_file(config.weights) and config.mean is None and config.std is None:
        enum = torchvision_weights(config.model, config.weights)
        if enum is not None:
            return preprocessing_from_weights(enum, config.image_size)
    return Preprocessing(
        image_size=config.image_size or 224,
        mean=tuple(config.mean or IMAGENET_MEAN),
        std=tuple(config.std or IMAGENET_STD),
    )


def _balanced_cap(samples, cap: int | None, seed: int):
    if cap is None or cap >= len(samples):
        return samples
    rng = np.random.default_rng(seed + 1)
    by_class: dict[int, list] = {}
    for s in sorted(samples):
        by_class.setdefault(s[1], []).append(s)
    per_class = max(1, cap // len(by_class))
    picked = []
    for label in sorted(by_class):
        items = by_class[label]
        for i in sorted(rng.choice(len(items), size=min(per_class, len(items)), replace=False).tolist()):
            picked.append(items[i])
    return picked


def split_samples(config: PruneConfig, test_cap: int | None = None) -> tuple:
    """(index of --data, small-set samples, test samples): the one split that pruning, export, INT8 and bench
    all see. `test_cap` overrides --test-size (a balanced draw)."""
    small_index = scan_image_folder(config.data)
    small, rest = sample_k_shot(small_index, config.shots, config.seed, config.allow_fewer)
    if config.test_data:
        test_index = scan_image_folder(config.test_data)
        check_same_classes(small_index, test_index)
        test = test_index.samples
    else:
        test = rest
    return small_index, small, _balanced_cap(test, config.test_size if test_cap is None else test_cap, config.seed)


def prepare(config: PruneConfig, progress: bool = True) -> Task:
    config.check()
    small_index, small, test = split_samples(config)
    tested = {label for _, label in test}
    for label, cls in enumerate(small_index.classes):
        if label not in tested:  # only without --test-data: --allow-fewer put all of a class in the small set
            count = sum(1 for _, other in small if other == label)
            raise InputError(f"{config.data}/{cls}: all {count} images are in the small set (--shots "
                             f"{config.shots}), none is left to test on; give --test-data")

    prep = resolve_preprocessing(config)
    source = ModelSource(model=config.model, weights=config.weights, output=config.output)
    model = build_model(source)
    classes = small_index.classes

    small_x, small_y, skipped_small = load_images(small, prep, progress, config.strict)
    test_x, test_y, skipped_test = load_images(test, prep, progress, config.strict)
    skipped = skipped_small + skipped_test
    small_x, small_y = torch.from_numpy(small_x), torch.from_numpy(small_y)
    test_x, test_y = torch.from_numpy(test_x), torch.from_numpy(test_y)

    outputs = check_logits(model, small_x[:2], config.model)
    head_name, _ = find_head(model, small_x[:2])
    if config.head == "keep":
        if outputs != len(classes):
            raise InputError(
                f"--head keep: the model has {outputs} outputs but {config.data} has {len(classes)} classes; "
                "use --head fit"
            )
        head_alpha = None
    else:
        head_alpha = choose_ridge_alpha(head_features(model, small_x, head_name), small_y, len(classes)) \
            if config.head_solver == "ridge" else None
        fit_head(model, small_x, small_y, len(classes), head_name, config.head_solver, head_alpha)
    # Said once the inputs are loaded and checked, not an hour later in the manifest.
    short = [(cls, count) for cls, count in zip(classes, np.bincount([label for _, label in small],
                                                                     minlength=len(classes)))
             if count < config.shots]
    if short:
        print(f"warning: {len(short)} class{'es' * (len(short) > 1)} with fewer images than --shots {config.shots} "
              f"(first: {config.data}/{short[0][0]}: {short[0][1]} images); all of their images are in the small set",
              file=sys.stderr)
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image file{'s' * (len(skipped) > 1)} (first: "
              f"{skipped[0]}); --strict stops on them instead", file=sys.stderr)
    return Task(model, source, prep, classes, head_name, small_x, small_y, test_x, test_y, skipped,
                config.head_solver, head_alpha)


def test_arrays(manifest: dict, limit: int | None = None, progress: bool = True):
    """The test images of a pruning run, preprocessed as the manifest says (for export and bench)."""
    config = PruneConfig(**manifest["config"])
    _, _, samples = split_samples(config, limit)
    images, labels, _ = load_images(samples, Preprocessing.from_dict(manifest["preprocessing"]), progress,
                                    config.strict)
    return images, labels


def small_arrays(manifest: dict, progress: bool = True):
    """The small labelled set of a pruning run, preprocessed as the manifest says (INT8 calibration data)."""
    config = PruneConfig(**manifest["config"])
    _, small, _ = split_samples(config)
    images, labels, _ = load_images(small, Preprocessing.from_dict(manifest["preprocessing"]), progress,
                                    config.strict)
    return images, labels
