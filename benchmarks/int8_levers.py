"""Which INT8 settings keep every class: the standard levers measured on real models, calibrated on the small set.

    python benchmarks/int8_levers.py                                  # artifacts/deploy (make deploy first)
    python benchmarks/int8_levers.py --out artifacts/deploy artifacts/vgg16_hed --resume

For dense.onnx and model.onnx of each deploy folder and every variant (calibration method, symmetric or
asymmetric activations, per-channel or per-tensor weights, which layer classes stay in float, augmented
calibration views), the INT8 model calibrated on the whole small set is run by ONNX Runtime on the CPU over the
test set next to its FP32 model: accuracy, harmonic mean, worst class, the largest per-class drop and top-1
agreement; and the small-set estimate of the drop that the export gate uses (toolchain/stages/precision.py: calibration
and head both cross-fitted), with its error against the test. `tensorrt-previous` is the Q/DQ model TensorRT 11
was given before (symmetric int8 activations, min-max, Q/DQ on Conv/Gemm inputs only, float biases); the other
variants quantize every op ONNX Runtime can (activations stay int8 between layers) unless they say layers-only. Writes benchmarks/results/int8_levers.json
after every run, and the README block int8-levers.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import numpy as np  # noqa: E402
from readme_blocks import update_readme  # noqa: E402

from exporters.quantize import Int8Settings, quantize_int8  # noqa: E402
from runtime_bench.accuracy import top1_agreement  # noqa: E402
from runtime_bench.atomic import write_json_atomic  # noqa: E402
from toolchain.artifact import read_manifest  # noqa: E402
from toolchain.stages.precision import Int8Gate, class_metrics, output_name, run_outputs  # noqa: E402
from toolchain.stages.prepare import small_arrays, test_arrays  # noqa: E402

NONE: tuple = ()
VARIANTS = {
    "tensorrt-previous": (Int8Settings(calibration="minmax", activations="symmetric", keep_float=NONE), "tensorrt"),
    "minmax/symmetric": (Int8Settings(calibration="minmax", activations="symmetric", keep_float=NONE), "ort-cpu"),
    "minmax/asymmetric": (Int8Settings(calibration="minmax", keep_float=NONE), "ort-cpu"),
    "entropy/asymmetric": (Int8Settings(calibration="entropy", keep_float=NONE), "ort-cpu"),
    "percentile-99.99/asymmetric": (Int8Settings(percentile=99.99, keep_float=NONE), "ort-cpu"),
    "percentile-99.999/asymmetric": (Int8Settings(keep_float=NONE), "ort-cpu"),
    "percentile-99.999/asymmetric/per-tensor": (Int8Settings(per_channel=False, keep_float=NONE), "ort-cpu"),
    "percentile-99.999/asymmetric/head-float": (Int8Settings(keep_float=("head",)), "ort-cpu"),
    "percentile-99.999/asymmetric/head+first-float": (Int8Settings(keep_float=("head", "first")), "ort-cpu"),
    "percentile-99.999/asymmetric/head+first+depthwise-float": (
        Int8Settings(keep_float=("head", "first", "depthwise")), "ort-cpu"),
    "percentile-99.999/asymmetric/head-float/layers-only": (Int8Settings(keep_float=("head",), ops="layers"),
                                                            "ort-cpu"),
    "percentile-99.999/asymmetric/head-float/flipped-views": (Int8Settings(keep_float=("head",)), "ort-cpu"),
    "percentile-99.999/asymmetric/bias-corrected": (Int8Settings(keep_float=NONE, bias_correction=True), "ort-cpu"),
    "percentile-99.999/asymmetric/head-float/bias-corrected": (
        Int8Settings(keep_float=("head",), bias_correction=True), "ort-cpu"),
    "percentile-99.999/asymmetric/head+first+depthwise-float/bias-corrected": (
        Int8Settings(keep_float=("head", "first", "depthwise"), bias_correction=True), "ort-cpu"),
    "tensorrt-previous/bias-corrected": (Int8Settings(calibration="minmax", activations="symmetric", keep_float=NONE,
                                                      bias_correction=True), "tensorrt"),
}


def run_variant(fp32: pathlib.Path, variant: str, small: tuple, test: tuple, classes: int, fp32_test: dict,
                gate: Int8Gate) -> dict:
    settings, target = VARIANTS[variant]
    images = small[0]
    if variant.endswith("flipped-views"):
        images = np.concatenate([images, images[..., ::-1]])  # every calibration image and its mirror
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        path = pathlib.Path(work) / "int8.onnx"
        record = quantize_int8(fp32, path, images, settings, target=target)
        seconds = time.perf_counter() - started
        logits = next(iter(run_outputs(path, test[0], [output_name(path)]).values()))
    metrics = class_metrics(logits.argmax(1), test[1], classes)
    drops = [a - b for a, b in zip(fp32_test["per_class"], metrics["per_class"])]
    estimate = gate.estimate(settings) if target == "ort-cpu" and not variant.endswith("flipped-views") else None
    test_drop = {k: fp32_test[k] - metrics[k] for k in ("accuracy", "harmonic_mean")}
    return {
        "variant": variant, "target": target, "settings": record["settings"], "kept_float": record["kept_float"],
        "quantize_seconds": round(seconds, 1), "test": metrics, "test_drop": test_drop,
        "worst_class": min(metrics["per_class"]), "largest_class_drop": max(drops),
        "top1_agreement": top1_agreement(fp32_test["logits"], logits),
        "estimate_drop": estimate["drop"] if estimate else None,
        "estimate_minus_test": {k: estimate["drop"][k] - test_drop[k] for k in test_drop} if estimate else None,
    }


def markdown(result: dict) -> str:
    commands = list(dict.fromkeys(c for entry in result["models"].values() for c in entry["commands"]))
    lines = [f"Commands: {', '.join(f'`{c}`' for c in commands)}; ONNX Runtime {result['onnxruntime']} on the CPU, "
             "calibrated on the "
             "small set (100 images), 1,000 test images. Drops are FP32 minus INT8, in points; estimate: the export "
             "gate's cross-fitted small-set estimate of the drop in accuracy / harmonic mean.", "",
             "| model | variant | accuracy | harmonic mean | worst class | largest class drop | top-1 agreement | "
             "estimate of the drop (acc / hm) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, entry in result["models"].items():
        fp32 = entry["fp32"]
        lines.append(f"| {model} | FP32 | {fp32['accuracy']:.3f} | {fp32['harmonic_mean']:.3f} | "
                     f"{min(fp32['per_class']):.2f} | | | |")
        for run in entry["runs"].values():
            est = run["estimate_drop"]
            est_text = f"{100 * est['accuracy']:+.1f} / {100 * est['harmonic_mean']:+.1f}" if est else "-"
            lines.append(f"| {model} | {run['variant']} | {run['test']['accuracy']:.3f} "
                         f"({-100 * run['test_drop']['accuracy']:+.1f}) | {run['test']['harmonic_mean']:.3f} "
                         f"({-100 * run['test_drop']['harmonic_mean']:+.1f}) | {run['worst_class']:.2f} | "
                         f"{100 * run['largest_class_drop']:.0f} | {run['top1_agreement']:.3f} | {est_text} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", nargs="+", default=["artifacts/deploy"], help="deploy folders (pruned.json, ONNX)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "int8_levers.json"))
    args = parser.parse_args(argv)
    import onnxruntime

    target = pathlib.Path(args.json)
    result = {"command": "python benchmarks/int8_levers.py " + " ".join(a for a in (argv or sys.argv[1:])
                                                                       if a not in ("--resume", "--no-readme")),
              "onnxruntime": onnxruntime.__version__, "models": {}}
    if args.resume and target.is_file():
        result["models"] = json.loads(target.read_text())["models"]
    for folder in map(pathlib.Path, args.out):
        manifest = read_manifest(folder)
        small, test = small_arrays(manifest, progress=False), test_arrays(manifest, progress=False)
        classes = len(manifest["classes"])
        name = pathlib.Path(manifest["config"]["model"].split(":")[0]).stem
        for label, file in (("dense", "dense.onnx"), ("pruned", "model.onnx")):
            key = f"{name} {label}"
            fp32 = folder / file
            logits = next(iter(run_outputs(fp32, test[0], [output_name(fp32)]).values()))
            entry = result["models"].setdefault(key, {"runs": {}})
            entry["fp32"] = class_metrics(logits.argmax(1), test[1], classes)
            # Every command that added rows to this model's table (a --resume run adds to it).
            commands = entry.setdefault("commands", [entry.pop("command")] if "command" in entry else [])
            if result["command"] not in commands:
                commands.append(result["command"])
            fp32_test = dict(entry["fp32"], logits=logits)
            gate = Int8Gate(fp32, small[0], small[1], classes, head_fitted=manifest["config"].get("head") == "fit")
            for variant in args.variants.split(","):
                if variant in entry["runs"]:
                    continue
                run = run_variant(fp32, variant, small, test, classes, fp32_test, gate)
                entry["runs"][variant] = run
                write_json_atomic(result, target)
                est = run["estimate_drop"]
                print(f"{key} {variant}: accuracy {entry['fp32']['accuracy']:.3f} -> {run['test']['accuracy']:.3f}, "
                      f"harmonic mean {entry['fp32']['harmonic_mean']:.3f} -> {run['test']['harmonic_mean']:.3f}, "
                      f"worst class {run['worst_class']:.2f}, agreement {run['top1_agreement']:.3f}"
                      + (f"; estimate of the drop {est['accuracy']:+.3f} / {est['harmonic_mean']:+.3f}" if est else ""),
                      flush=True)
    write_json_atomic(result, target)
    table = markdown(result)
    print(table)
    return 0 if args.no_readme else update_readme(str(ROOT / "README.md"), "int8-levers", table)


if __name__ == "__main__":
    sys.exit(main())
