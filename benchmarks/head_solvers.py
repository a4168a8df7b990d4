"""The head a state is judged and shipped with: closed-form ridge against L-BFGS logistic regression.

    python benchmarks/head_solvers.py            # MobileNetV2 112 px, 10-shot Fashion-MNIST, 3 seeds

For each seed, both solvers fitted on the dense model's small-set features: test accuracy and harmonic mean
of class accuracies (1,000 test images), the ridge head's leave-one-out estimate on the small set, and the
time of one fit (median of 5, measured side by side). Prints a table and writes
benchmarks/results/head_solvers.json.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime_bench.accuracy import classification_metrics  # noqa: E402
from runtime_bench.atomic import write_json_atomic  # noqa: E402
from toolchain.assets import prepare_default_assets  # noqa: E402
from toolchain.config import PruneConfig  # noqa: E402
from toolchain.control.signals import ControlSignal  # noqa: E402
from toolchain.head import choose_ridge_alpha, fit_linear, head_features, ridge_solve  # noqa: E402
from toolchain.stages.prepare import prepare  # noqa: E402


def timed(fn, repeats: int = 5):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, 1000 * statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", default=str(ROOT / "artifacts" / "data" / "fashion-mnist"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "head_solvers.json"))
    args = parser.parse_args(argv)
    data = pathlib.Path(args.data)
    prepare_default_assets(data)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        config = PruneConfig(data=str(data / "train"), test_data=str(data / "test"), test_size=1000, image_size=112,
                             weights="IMAGENET1K_V1", seed=seed)
        task = prepare(config, progress=False)
        classes = len(task.classes)
        small = head_features(task.model, task.small_x, task.head_name)
        test = head_features(task.model, task.test_x, task.head_name)
        alpha = choose_ridge_alpha(small, task.small_y, classes)
        logistic, logistic_ms = timed(lambda: fit_linear(small, task.small_y, classes))
        ridge, ridge_ms = timed(lambda: ridge_solve(small, task.small_y, classes, alpha))
        estimate = ControlSignal("refit", task.model, task.head_name, task.small_x, task.small_y, classes,
                                 alpha=alpha).estimate()
        row = {"seed": seed, "alpha": alpha, "ridge_leave_one_out": estimate}
        for name, logits, ms in (("logistic", logistic(test), logistic_ms),
                                 ("ridge", test @ ridge.weight.T + ridge.bias, ridge_ms)):
            m = classification_metrics(logits.argmax(1).numpy(), task.test_y.numpy(), classes)
            row[name] = {"accuracy": m["accuracy"], "harmonic_mean": m["harmonic_mean"], "fit_ms": ms}
        rows.append(row)
        print(f"seed {seed}: logistic {row['logistic']['accuracy']:.3f} / {row['logistic']['harmonic_mean']:.3f} in "
              f"{logistic_ms:.0f} ms; ridge (alpha {alpha:g}) {row['ridge']['accuracy']:.3f} / "
              f"{row['ridge']['harmonic_mean']:.3f} in {ridge_ms:.1f} ms; ridge leave-one-out on the small set "
              f"{estimate['accuracy']:.3f} / {estimate['harmonic_mean']:.3f}", flush=True)
    write_json_atomic({"rows": rows}, args.json)
    print("| seed | logistic: test accuracy / harmonic mean | fit (ms) | ridge: test accuracy / harmonic mean | fit (ms) "
          "| ridge leave-one-out (small set) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        lo, ri, e = r["logistic"], r["ridge"], r["ridge_leave_one_out"]
        print(f"| {r['seed']} | {lo['accuracy']:.3f} / {lo['harmonic_mean']:.3f} | {lo['fit_ms']:.0f} | "
              f"{ri['accuracy']:.3f} / {ri['harmonic_mean']:.3f} | {ri['fit_ms']:.1f} | "
              f"{e['accuracy']:.3f} / {e['harmonic_mean']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
