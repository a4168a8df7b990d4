"""The controller's variants, one seed each, against plain LRP on the same task: what each achieves.

    python benchmarks/auc_variants.py [--seed 0] [--models vgg16_hed,mobilenet_v2] [--resume]

docs/method.md's controller as specified (A = harmonic mean of small-set accuracy, delta 0) is compared with the
variants it names: cross-fitted A, a floor tau relative to the dense model, class-weighted relevance, relevance
recomputed after every commit, and a wider change of order (m). Same grid, data, inputs and head per model as
benchmarks/auc_study.py; rows that do not name m use docs/method.md's m = 8. About an hour on 2 cores. Writes
benchmarks/results/auc_variants.json and the README block auc-variants.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "scripts")]

from auc_study import MODELS, run_one  # noqa: E402
from readme_blocks import replace_block  # noqa: E402

from runtime_bench.atomic import write_json_atomic  # noqa: E402
from toolchain.assets import prepare_default_assets  # noqa: E402
from toolchain.config import PruneConfig  # noqa: E402
from toolchain.stages.prepare import prepare  # noqa: E402

LRP = "plain LRP (Yeom)"
VARIANTS = {  # name -> PruneConfig fields of the dpx run
    "as specified: small-set accuracy, delta 0, m 8": {"signal": "small-accuracy"},
    "cross-fitted accuracy, delta 0": {"signal": "crossfit-accuracy"},
    "cross-fitted probability, delta 0": {"signal": "crossfit-probability"},
    "cross-fitted probability, tau 0.9": {"signal": "crossfit-probability", "tau": 0.9},
    "... + class-weighted relevance": {"signal": "crossfit-probability", "tau": 0.9, "class_weighted": True},
    "... + relevance after every commit": {"signal": "crossfit-probability", "tau": 0.9, "rescore": "accepted"},
    "... + m 16": {"signal": "crossfit-probability", "tau": 0.9, "m": 16},
    "... + m 32": {"signal": "crossfit-probability", "tau": 0.9, "m": 32},
    "... + m 64 (study)": {"signal": "crossfit-probability", "tau": 0.9, "m": 64},
    "... + m 128": {"signal": "crossfit-probability", "tau": 0.9, "m": 128},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="vgg16_hed,mobilenet_v2")
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument("--data", default=str(ROOT / "artifacts" / "data" / "fashion-mnist"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "auc_variants.json"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of an earlier run with the same settings and do only the missing ones")
    args = parser.parse_args(argv)
    data = pathlib.Path(args.data)
    prepare_default_assets(data)
    results = {"settings": {"argv": [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"],
                            "seed": args.seed, "test_size": args.test_size, "p_max": 0.9, "step": 0.05,
                            "rescore": "step"},
               "models": {}, "seconds": 0.0}
    out = pathlib.Path(args.out)
    if args.resume and out.is_file():
        previous = json.loads(out.read_text())
        if {k: v for k, v in previous["settings"].items() if k != "argv"} == \
                {k: v for k, v in results["settings"].items() if k != "argv"}:
            results["models"], results["seconds"] = previous["models"], previous["seconds"]
    started = time.perf_counter() - results["seconds"]
    for model in args.models.split(","):
        spec = dict(MODELS[model])
        rows = results["models"].setdefault(model, {"image_size": spec["image_size"], "runs": {}})["runs"]
        todo = [name for name in [LRP, *VARIANTS] if name not in rows]
        if not todo:
            continue
        base = PruneConfig(data=str(data / "train"), test_data=str(data / "test"), test_size=args.test_size,
                           rate=0.9, step=0.05, seed=args.seed, rescore="step", **spec)
        task = prepare(base, progress=False)
        for name in todo:
            if name == LRP:
                run = run_one(task, base, "lrp")
            else:
                run = run_one(task, PruneConfig(**dict(base.to_dict(), **VARIANTS[name])), "dpx")
            lrp_auc = run["auc"] if name == LRP else rows[LRP]["auc"]
            rows[name] = {"auc": run["auc"], "harmonic_mean_auc": run["harmonic_mean_auc"],
                          "ratio_to_lrp": run["auc"] / lrp_auc, "cost": run["cost"],
                          "accuracy": [p["accuracy"] for p in run["curve"]]}
            print(f"{model}: {name}: AUC {run['auc']:.3f} (LRP {lrp_auc:.3f}), {run['cost']['seconds']:.0f} s",
                  flush=True)
            # Saved after every row, so that an interrupted run keeps what it measured (--resume goes on from it).
            results["seconds"] = time.perf_counter() - started
            write_json_atomic(results, out)
    table = markdown(results)
    print(table)
    replace_block(args.readme, "auc-variants", table)
    return 0


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [f"Command: `{' '.join(['python benchmarks/auc_variants.py', *s['argv']])}`; seed {s['seed']}, "
             f"{s['test_size']} test images, p_max {s['p_max']}, relevance recomputed per {s['step']} of the filters removed "
             f"unless a row says otherwise, m 8 unless a row names it; "
             f"{results['seconds']:.0f} s in all.", "",
             "| model (input) | dpx variant | class-averaged AUC | / LRP | harmonic-mean AUC | s | relevance passes | "
             "accuracy checks | order changes | ... that took the last unit tried |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, m in results["models"].items():
        for name, r in m["runs"].items():
            c = r["cost"]
            changes = c["events"].get("order_change", 0)
            last = f"{c['order_change_took_last'] / changes:.0%}" if changes else ""
            lines.append(f"| {model} ({m['image_size']} px) | {name} | {r['auc']:.3f} | {r['ratio_to_lrp']:.3f} | "
                         f"{r['harmonic_mean_auc']:.3f} | {c['seconds']:.0f} | {c['relevance_passes']} | "
                         f"{c['accuracy_checks']} | {changes} | {last} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
