"""Accuracy-vs-pruning-rate study: the accuracy-aware controller (dpx) against plain LRP and baselines.

    python benchmarks/auc_study.py            # the full study (MobileNetV2 and VGG16-HED, 3 seeds)
    python benchmarks/auc_study.py --quick    # a smoke run (the test suite runs it)

For every model, seed (a draw of the small labelled set) and method, one sweep from 0 to p_max records
per-class test accuracy on the grid 0, 0.05, ..., p_max, MACs and parameters, and the class-averaged
AUC of docs/method.md. The head is fitted once per (model, seed) and shared by all methods; no fine-tuning.
Writes benchmarks/results/auc_study.json (after every run, so an interrupted study keeps what it did),
PNG plots beside it, and the README table between the auc-study markers.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "benchmarks")]

from hed_vgg16 import prune_spec  # noqa: E402
from readme_blocks import replace_block  # noqa: E402
from sweep import Group, add_sweep_options, keep_run, one_line_errors, report_failures, run_sweep  # noqa: E402

from runtime_bench.atomic import write_json_atomic  # noqa: E402
from toolchain.assets import prepare_default_assets  # noqa: E402
from toolchain.config import PruneConfig  # noqa: E402
from toolchain.control.prune import prune  # noqa: E402
from toolchain.stages.prepare import prepare  # noqa: E402
from toolchain.stages.prune import curve_auc  # noqa: E402

MODELS = {
    # 64 px: the controller's m = 64 candidates per change of order cost a partial forward each, and at 96 px
    # the three MobileNetV2 sweeps alone would take most of the hour.
    "mobilenet_v2": {"model": "mobilenet_v2", "weights": "IMAGENET1K_V1", "image_size": 64},
    # Fashion-MNIST images are 28 px: 32 px loses nothing, and VGG16 costs 17x MobileNetV2's MACs per pixel.
    "vgg16_hed": prune_spec(32),
}


def run_one(task, base: PruneConfig, method: str) -> dict:
    config = copy.deepcopy(base)
    config.method = method
    local = copy.copy(task)
    local.model = copy.deepcopy(task.model)
    started = time.perf_counter()
    result = prune(local, config, progress=False)
    auc = curve_auc(result.curve, config.step, config.rate)
    log = result.controller or {}
    return {
        "method": method,
        "auc": auc["mean"],
        "auc_per_class": auc["per_class"],
        "harmonic_mean_auc": auc["harmonic_mean_auc"],
        "reached_p_max": auc["reached"],
        "curve": [{k: p[k] for k in ("rate", "macs", "params", "accuracy", "harmonic_mean", "per_class", "ablations") if k in p}
                  for p in result.curve],
        "cost": {"seconds": round(time.perf_counter() - started, 1), "relevance_passes": result.relevance_passes,
                 "accuracy_checks": log.get("accuracy_checks", 0),
                 "events": {k: sum(e["kind"] == k for e in log.get("events", []))
                            for k in ("accept", "reject_halve", "order_change")},
                 # How often a change of order took the LAST of the units it tried: a window too narrow.
                 "order_change_took_last": sum(e["kind"] == "order_change" and e["chosen_rank"] == e["tried"] - 1
                                               for e in log.get("events", []))},
        "stopped_early": log.get("stopped_early"),
        "p_max": config.rate,
        "step": config.step,
    }


def best_macs_reduction(curve: list[dict], max_loss: float = 0.01) -> float:
    """Largest MACs reduction whose test accuracy is within `max_loss` of the dense accuracy."""
    dense = curve[0]
    ok = [p for p in curve if p["accuracy"] >= dense["accuracy"] - max_loss]
    return max(dense["macs"] / p["macs"] for p in ok)


def summarize(runs: list[dict]) -> dict:
    summary: dict = {}
    for run in runs:
        key = (run["model"], run["method"])
        summary.setdefault(key, []).append(run)
    table = {}
    for (model, method), items in summary.items():
        aucs = [r["auc"] for r in items]
        table.setdefault(model, {})[method] = {
            "seeds": len(items),
            "auc_mean": statistics.mean(aucs),
            "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "harmonic_mean_auc_mean": statistics.mean(r["harmonic_mean_auc"] for r in items),
            "best_macs_reduction_1pt": statistics.mean(best_macs_reduction(r["curve"]) for r in items),
            "seconds_mean": statistics.mean(r["cost"]["seconds"] for r in items),
            "relevance_passes_mean": statistics.mean(r["cost"]["relevance_passes"] for r in items),
            "accuracy_checks_mean": statistics.mean(r["cost"]["accuracy_checks"] for r in items),
        }
        if "ablations" in items[0]["curve"][0]:
            p_max, step = items[0]["p_max"], items[0]["step"]
            table[model][method]["ablation_auc"] = {
                name: statistics.mean(accuracy_auc(r["curve"], key, p_max, step) for r in items)
                for name, key in (("none", lambda p: p["accuracy"]),
                                  ("refit_head", lambda p: p["ablations"]["refit_head"]["accuracy"]),
                                  ("bn_recalibrated", lambda p: p["ablations"]["bn_recalibrated"]["accuracy"]))}
    for model, methods in table.items():
        if "dpx" in methods and "lrp" in methods and methods["lrp"]["auc_mean"] > 0:
            methods["dpx"]["ratio_to_lrp"] = methods["dpx"]["auc_mean"] / methods["lrp"]["auc_mean"]
    return table


def markdown(study: dict) -> str:
    s = study["settings"]
    lines = [
        f"Command: `{' '.join(['python benchmarks/auc_study.py', *s['argv']])}`; 10-shot Fashion-MNIST "
        f"({s['shots']} images per class), {s['test_size']} test images, p_max {s['p_max']}, step {s['step']}, "
        f"round-to {s['round_to']}, dpx signal `{s['signal']}` (delta {s['delta']}, tau {s['tau']}, m {s['m']}, rescore "
        f"{s['rescore']}{', class-weighted' if s['class_weighted'] else ''}), seeds {s['seeds']}, no fine-tuning; "
        f"{study['seconds']:.0f} s in all.",
        "",
        "| model (input) | method | class-averaged AUC (mean +- std) | harmonic-mean AUC | dpx / lrp | best MACs reduction, <= 1 pt loss | s per sweep | relevance passes | accuracy checks |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, methods in study["summary"].items():
        size = MODELS[model]["image_size"] if not s["quick"] else s["quick_image_size"]
        for method, r in methods.items():
            ratio = f"{r['ratio_to_lrp']:.3f}" if "ratio_to_lrp" in r else ""
            lines.append(
                f"| {model} ({size} px) | {method} | {r['auc_mean']:.3f} +- {r['auc_std']:.3f} | "
                f"{r['harmonic_mean_auc_mean']:.3f} | {ratio} | {r['best_macs_reduction_1pt']:.2f}x | "
                f"{r['seconds_mean']:.0f} | {r['relevance_passes_mean']:.0f} | {r['accuracy_checks_mean']:.0f} |")
    if s["ablations"]:
        lines += [
            "",
            "Ablations, reported apart because they change the model beyond pruning: test-accuracy AUC of the "
            "same sweeps after re-fitting the linear head on the small set, and after recalibrating BatchNorm "
            "statistics on it, at every grid point.",
            "",
            "| model | method | accuracy AUC, no fine-tuning | head re-fitted | BatchNorm recalibrated |",
            "| --- | --- | --- | --- | --- |",
        ]
        for model, methods in study["summary"].items():
            for method, r in methods.items():
                a = r["ablation_auc"]
                lines.append(f"| {model} | {method} | {a['none']:.3f} | {a['refit_head']:.3f} | "
                             f"{a['bn_recalibrated']:.3f} |")
    return "\n".join(lines)


def accuracy_auc(curve: list[dict], key, p_max: float, step: float) -> float:
    """AUC over [0, p_max] of one accuracy series of a curve, read on the grid as curve_auc reads it."""
    series = [dict(p, per_class=[key(p)], harmonic_mean=key(p)) for p in curve]
    return curve_auc(series, step, p_max)["mean"]


def plot(study: dict, folder: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for model in study["summary"]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for method in study["summary"][model]:
            runs = [r for r in study["runs"] if r["model"] == model and r["method"] == method]
            for i, run in enumerate(runs):
                rates = [100 * p["rate"] for p in run["curve"]]
                label = method if i == 0 else None
                axes[0].plot(rates, [p["accuracy"] for p in run["curve"]], alpha=0.8, label=label,
                             color=f"C{list(study['summary'][model]).index(method)}")
                axes[1].plot([p["macs"] / 1e6 for p in run["curve"]], [p["harmonic_mean"] for p in run["curve"]],
                             alpha=0.8, label=label, color=f"C{list(study['summary'][model]).index(method)}")
        axes[0].set(xlabel="conv filters removed (%)", ylabel="test accuracy", ylim=(0, 1), title=model)
        axes[1].set(xlabel="MACs (M)", ylabel="harmonic mean of class accuracies", ylim=(0, 1))
        axes[1].invert_xaxis()
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / f"auc_study_{model}.png", dpi=100)
        plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny input, few images, low p_max")
    parser.add_argument("--models", default="mobilenet_v2,vgg16_hed")
    parser.add_argument("--methods", default="dpx,lrp,taylor,l1,random")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--p-max", type=float, default=0.9)
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument("--signal", default="crossfit-probability", help="dpx's A (docs/method.md specifies small-accuracy)")
    parser.add_argument("--delta", type=float, default=0.0)
    parser.add_argument("--tau", type=float, default=0.9)
    parser.add_argument("--rescore", default="step", help="accepted, step or never (see ControllerConfig)")
    parser.add_argument("--m", type=int, default=64,
                        help="units tried by a change of pruning order (docs/method.md's default is 8; the variants "
                             "table, benchmarks/auc_variants.py, shows what the width of this search buys)")
    parser.add_argument("--class-weighted", action="store_true", help="dpx: class-weighted starting relevance")
    # The table's setting, pinned so that a changed toolchain default cannot change the study: the head fitted
    # once on the dense model, by L-BFGS (the paper's). The budget study measures the re-fitted head.
    parser.add_argument("--head-solver", default="logistic", help="ridge or logistic (the table's)")
    parser.add_argument("--refit-head", action="store_true", help="re-fit the head after every step (not the table's)")
    parser.add_argument("--no-ablations", dest="ablations", action="store_false",
                        help="skip re-fitting the head / recalibrating BatchNorm at every point (reported apart)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs of an earlier study with the same settings and do only the missing ones")
    add_sweep_options(parser, "(model, seed, method)")
    parser.add_argument("--data", default=str(ROOT / "artifacts" / "data" / "fashion-mnist"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args(argv)

    quick_size = 32
    if args.quick:
        args.models, args.seeds, args.p_max, args.test_size = "mobilenet_v2", "0", 0.1, 100
    data = pathlib.Path(args.data)
    prepare_default_assets(data)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "auc_study_quick" if args.quick else "auc_study"
    seeds = [int(s) for s in args.seeds.split(",")]
    study = {"settings": {"argv": [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"], "quick": args.quick, "quick_image_size": quick_size, "shots": 3 if args.quick else 10,
                          "test_size": args.test_size, "p_max": args.p_max, "step": args.step,
                          "round_to": args.round_to, "signal": args.signal, "delta": args.delta,
                          "tau": args.tau, "rescore": args.rescore, "m": args.m,
                          "class_weighted": args.class_weighted, "seeds": seeds,
                          "methods": args.methods.split(","), "ablations": args.ablations,
                          "head_solver": args.head_solver, "refit_head": args.refit_head, "threads": args.threads},
             "runs": [], "summary": None, "seconds": 0.0}
    earlier = out / f"{name}.json"
    if args.resume and earlier.is_file():
        previous = json.loads(earlier.read_text())
        # Studies written before these were recorded ran with these values.
        earlier_settings = {"head_solver": "logistic", "refit_head": False, "threads": None, **previous["settings"]}
        same = {k: v for k, v in earlier_settings.items() if k != "argv"} == \
            {k: v for k, v in study["settings"].items() if k != "argv"}
        if same:
            study["runs"], study["seconds"] = previous["runs"], previous["seconds"]
    done = {(r["model"], r["seed"], r["method"]) for r in study["runs"]}
    started = time.perf_counter() - study["seconds"]
    groups = []
    for model in args.models.split(","):
        spec = dict(MODELS[model])
        if args.quick:
            spec["image_size"] = quick_size
        for seed in seeds:
            base = PruneConfig(data=str(data / "train"), test_data=str(data / "test"), test_size=args.test_size,
                               shots=study["settings"]["shots"], rate=args.p_max, step=args.step,
                               round_to=args.round_to, seed=seed, signal=args.signal, ablations=args.ablations,
                               delta=args.delta, tau=args.tau, rescore=args.rescore, m=args.m,
                               class_weighted=args.class_weighted, head_solver=args.head_solver,
                               refit_head=args.refit_head, **spec)
            todo = [m for m in study["settings"]["methods"] if (model, seed, m) not in done]
            groups.append(Group(f"{model} seed {seed}", functools.partial(prepare, base, progress=False),
                                [((model, seed, m), run_one, (base, m)) for m in todo]))

    def landed(key, result):
        run = keep_run(study, key, result, out / f"{name}.json", started)
        print(f"{run['model']} seed {run['seed']} {run['method']}: AUC {run['auc']:.3f}, harmonic-mean AUC "
              f"{run['harmonic_mean_auc']:.3f}, {run['cost']['seconds']:.0f} s on {run['worker']}", flush=True)

    failed = run_sweep(groups, landed, ray=args.ray, threads=args.threads)
    if failed:
        return report_failures(failed, out / f"{name}.json")
    study["summary"] = summarize(study["runs"])
    write_json_atomic(study, out / f"{name}.json")
    plot(study, out)
    table = markdown(study)
    print(table)
    if not args.quick:
        replace_block(args.readme, "auc-study", table)
    print(json.dumps({m: {k: round(v.get("ratio_to_lrp", 0), 3) for k, v in ms.items() if k == "dpx"}
                      for m, ms in study["summary"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))
