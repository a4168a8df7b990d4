"""README block `ray-study`: the AUC study run serially and on Ray, side by side: wall time, runs, workers, and
whether every run's figures are the same (timings aside).

    python scripts/ray_study_table.py [--serial benchmarks/results/ray_study/serial.json]
                                      [--ray benchmarks/results/ray_study/ray.json] [--no-readme]

The two files are the study's JSON from `python benchmarks/auc_study.py --out DIR` without and with `--ray auto`,
run one after the other on an otherwise idle machine, with the same code.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from readme_blocks import update_readme  # noqa: E402

TIMINGS = ("wall_s", "worker", "torch_threads")  # where, how long, on how many threads


def figures(run: dict) -> dict:
    """A run without what depends on where and when it ran."""
    kept = {k: v for k, v in run.items() if k not in TIMINGS}
    kept["cost"] = {k: v for k, v in run.get("cost", {}).items() if k != "seconds"}
    return kept


def same(a, b) -> bool:
    """Equal, floats to 1e-9 relative (a sum taken in another order may differ in its last bits)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9,
                                                                                              abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def headline(run: dict) -> dict:
    """What the study's table is made of: the AUCs and the accuracy curve (without the ablations' re-fits)."""
    return {"auc": run["auc"], "auc_per_class": run["auc_per_class"], "harmonic_mean_auc": run["harmonic_mean_auc"],
            "curve": [{k: v for k, v in p.items() if k != "ablations"} for p in run["curve"]]}


def table(serial: dict, on_ray: dict) -> str:
    by_key = {(r["model"], r["seed"], r["method"]): r for r in serial["runs"]}
    pairs = [(by_key[(r["model"], r["seed"], r["method"])], r) for r in on_ray["runs"]
             if (r["model"], r["seed"], r["method"]) in by_key]
    same_headline = [same(headline(a), headline(b)) for a, b in pairs]
    same_all = [same(figures(a), figures(b)) for a, b in pairs]
    workers = {r.get("worker") for r in on_ray["runs"]}
    hosts = {w.split(":")[0] for w in workers if w}
    argv = on_ray["settings"].get("argv") or []
    ray_argv = f"--ray {argv[argv.index('--ray') + 1]}" if "--ray" in argv else ""
    n = len(pairs)
    lines = [
        f"Command: `python benchmarks/auc_study.py` (serial) and `python benchmarks/auc_study.py {ray_argv}`, one after "
        "the other on this machine (2 cores), with the same code, settings and seeds.",
        "",
        "| run | runs | wall time | workers | runs with the same AUC and accuracy curve as serial | the same in every "
        "figure (ablations too) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| serial | {len(serial['runs'])} | {serial['seconds'] / 60:.1f} min | 1 process | - | - |",
        f"| Ray, local | {len(on_ray['runs'])} | {on_ray['seconds'] / 60:.1f} min | {len(workers)} worker processes on "
        f"{len(hosts)} host{'s' if len(hosts) != 1 else ''} | {sum(same_headline)} of {n} | {sum(same_all)} of {n} |",
    ]
    differing = [b["method"] for (a, b), ok in zip(pairs, same_headline) if not ok]
    if differing or not all(same_all):
        counts = {m: differing.count(m) for m in dict.fromkeys(differing)}
        threads = {name: sorted({r.get("torch_threads") for r in study["runs"]} - {None})
                   for name, study in (("serial", serial), ("Ray", on_ray))}
        lines += ["", "Runs whose AUC or curve differ: " + (", ".join(f"{m} x{c}" for m, c in counts.items()) or "none")
                  + ". Torch's intra-op threads were " + "; ".join(
                      f"{name} {', '.join(map(str, t)) if t else 'not recorded'}" for name, t in threads.items())
                  + " (by default every core serially, one per Ray task): float sums, and with them the "
                  "controller's choices among near-equal candidates and the L-BFGS re-fits of the ablations, "
                  "depend on it; `--threads` pins it for both."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serial", default=str(ROOT / "benchmarks" / "results" / "ray_study" / "serial.json"))
    parser.add_argument("--ray", default=str(ROOT / "benchmarks" / "results" / "ray_study" / "ray.json"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    text = table(json.loads(pathlib.Path(args.serial).read_text()), json.loads(pathlib.Path(args.ray).read_text()))
    print(text)
    return 0 if args.no_readme else update_readme(args.readme, "ray-study", text)


if __name__ == "__main__":
    sys.exit(main())
