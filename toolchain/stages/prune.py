"""Stage 2, prune: prepare, prune (toolchain/control), and save the pruned weights with a manifest that
records the config, the plan, the curve, the AUC and the chosen state with its estimate and test figures."""

from __future__ import annotations

import copy
import pathlib

from ..artifact import save_pruned, source_hashes
from ..config import PruneConfig, config_hash
from ..control.curves import class_averaged_auc, rate_grid, state_at_rates, trapezoid
from ..control.prune import PruneResult, prune
from ..task import Task
from .prepare import prepare

AUC_SNAP = 0.01  # a step lands slightly above its grid rate (whole chunks are removed); it stands for it


def curve_auc(curve: list[dict], step: float, p_max: float) -> dict | None:
    """Class-averaged AUC of the test accuracy curve on the grid 0, step, ..., p_max (docs/method.md).

    The model state at a grid rate is the last curve point at or below it (+AUC_SNAP). None when p_max
    is not a multiple of step.
    """
    if abs(round(p_max / step) * step - p_max) > 1e-9:
        return None
    grid = rate_grid(p_max, step)
    states = state_at_rates([(p["rate"], p) for p in curve], [g + AUC_SNAP for g in grid])
    auc = class_averaged_auc(grid, [s["per_class"] for s in states], p_max)
    harmonic = [s["harmonic_mean"] for s in states]
    return dict(auc, grid=grid, rates_used=[s["rate"] for s in states],
                harmonic_mean_auc=trapezoid(harmonic, grid) / p_max,
                reached=curve[-1]["rate"] >= p_max - AUC_SNAP)


def chosen_state(curve: list[dict], classes: list[str], config: PruneConfig, result: PruneResult) -> dict:
    """The state the run ends on, what the small set said of it, what the test set says, and the gap."""
    dense, last = curve[0], curve[-1]

    def worst(point):
        c = min(range(len(classes)), key=lambda k: point["per_class"][k])
        return {"class": classes[c], "accuracy": point["per_class"][c]}

    return {
        "rate": last["rate"],
        "filters": last["filters"],
        "macs": last["macs"],
        "macs_reduction": dense["macs"] / last["macs"],
        "why": result.stopped or f"reached --rate {config.rate}",
        "budget": {"max_drop": config.max_drop, "max_macs": config.max_macs,
                   "holdout_folds": config.holdout_folds or None, "dense_estimate": result.budget},
        "estimate": last["estimate"],
        "dense_estimate": dense["estimate"],
        "test": {"accuracy": last["accuracy"], "harmonic_mean": last["harmonic_mean"], "worst": worst(last)},
        "dense_test": {"accuracy": dense["accuracy"], "harmonic_mean": dense["harmonic_mean"], "worst": worst(dense)},
        "estimate_minus_test": {k: last["estimate"][k] - last[k] for k in ("accuracy", "harmonic_mean")},
    }


def manifest_for(task: Task, config: PruneConfig, result: PruneResult) -> dict:
    source = dict(task.source.to_dict(), hashes=source_hashes(task.source))
    return {
        "source": source,
        "config": config.to_dict(),
        "config_hash": config_hash(config),
        "preprocessing": task.preprocessing.to_dict(),
        "classes": task.classes,
        "head": {"name": task.head_name, "fitted": config.head == "fit"},
        "plan": result.graph.plan(),
        "filters": {"original": result.graph.original_filters, "kept": result.graph.filters},
        "curve": result.curve,
        "auc": curve_auc(result.curve, config.step, config.rate),
        "cost": {"seconds": round(result.seconds, 2), "relevance_passes": result.relevance_passes},
        "controller": result.controller,
        "chosen": chosen_state(result.curve, task.classes, config, result),
        "explored": result.explored,
        "skipped_images": task.skipped,
        "images": {"small": len(task.small_y), "test": len(task.test_y)},
    }


def run_prune(config: PruneConfig, out: pathlib.Path | str, progress: bool = True) -> dict:
    """Prune as `config` says (checked by `prepare`) and save OUT/pruned.safetensors, OUT/head.safetensors,
    OUT/pruned.json; the manifest."""
    out = pathlib.Path(out)
    task = prepare(config, progress)
    dense_head = copy.deepcopy(task.model.get_submodule(task.head_name))  # pruning shrinks its inputs
    result = prune(task, config, progress)
    manifest = manifest_for(task, config, result)
    save_pruned(out, result.model, dense_head, manifest)
    return manifest


def reusable_manifest(out: pathlib.Path, config: PruneConfig) -> dict | None:
    """OUT's manifest when OUT was pruned with this very config (same hash), so that a rerun skips the prune."""
    from runtime_bench.errors import InputError

    from ..artifact import MANIFEST, read_manifest

    if not (out / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(out)
    except InputError:
        return None
    return manifest if manifest.get("config_hash") == config_hash(config) else None
