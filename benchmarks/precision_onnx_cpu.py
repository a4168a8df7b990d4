"""The ONNX models TensorRT 11 builds FP16 and INT8 engines from, checked on a CPU (no GPU needed).

    python benchmarks/precision_onnx_cpu.py --out artifacts/deploy

For dense.onnx and model.onnx of a deploy folder: the float16 conversion (`exporters.tensorrt.to_float16`) and
the Q/DQ INT8 model (`quantize_qdq`, calibrated on the small labelled set), each run by ONNX Runtime on the CPU
over the test set next to the FP32 model: accuracy, harmonic mean of class accuracies and every class's
change, top-1 agreement, largest logit difference. Writes benchmarks/results/precision_onnx_cpu.json and the
README block precision-cpu. ONNX Runtime's CPU provider computes float16 nodes it has no
float16 kernel for in float32 (it inserts casts), so this checks the conversion itself (weights rounded to
float16, a valid graph, Q/DQ scales from the small set), not GPU float16 arithmetic.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import onnx  # noqa: E402
from readme_blocks import update_readme  # noqa: E402

from exporters.tensorrt import quantize_qdq, to_float16  # noqa: E402
from runtime_bench.accuracy import compare_with_reference  # noqa: E402
from runtime_bench.atomic import write_json_atomic  # noqa: E402
from runtime_bench.backends import OrtCpuBackend  # noqa: E402
from toolchain.artifact import read_manifest  # noqa: E402
from toolchain.stages.prepare import small_arrays, test_arrays  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="artifacts/deploy", help="a folder with pruned.json, dense.onnx, model.onnx")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "precision_onnx_cpu.json"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args()

    out = pathlib.Path(args.out)
    manifest = read_manifest(out)
    images, labels = test_arrays(manifest, progress=False)
    calibration, _ = small_arrays(manifest, progress=False)
    result = {"command": "python benchmarks/precision_onnx_cpu.py " + " ".join(sys.argv[1:]),
              "model": manifest["source"]["model"], "test_images": int(len(labels)),
              "calibration_images": int(len(calibration)), "models": {}}
    with tempfile.TemporaryDirectory() as work:
        for label, name in (("dense", "dense.onnx"), ("pruned", "model.onnx")):
            fp16 = pathlib.Path(work) / f"{label}.fp16.onnx"
            onnx.save(to_float16(onnx.load(str(out / name))), str(fp16))
            qdq = pathlib.Path(work) / f"{label}.qdq.onnx"
            quantize_qdq(out / name, qdq, calibration)
            reference = OrtCpuBackend(out / name)
            result["models"][label] = {
                variant: compare_with_reference(reference, OrtCpuBackend(path), images, labels, len(manifest["classes"]))
                for variant, path in (("fp16", fp16), ("int8_qdq", qdq))}
            for variant, r in result["models"][label].items():
                print(f"{label} {variant}: accuracy {r['accuracy']:.3f} (FP32 {r['reference_accuracy']:.3f}, "
                      f"{100 * r['accuracy_delta']:+.1f} pt), harmonic mean {r['harmonic_mean']:.3f} "
                      f"({100 * r['harmonic_mean_delta']:+.1f} pt), largest class drop "
                      f"{-100 * min(r['per_class_delta']):.0f} pt, top-1 agreement {r['top1_agreement']:.3f}, "
                      f"max |logit diff| {r['max_abs_logit_diff']:.3g}")
    result["classes"] = manifest["classes"]
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, args.json)
    return update_readme(args.readme, "precision-cpu", markdown(result))


def markdown(result: dict) -> str:
    """Per model and precision: accuracy, harmonic mean, worst class and every class's change against FP32."""
    classes = result["classes"]
    lines = [f"Command: `{result['command'].strip()}`; {result['model']}, ONNX Runtime on the CPU, "
             f"{result['test_images']} test images, Q/DQ calibrated on {result['calibration_images']} small-set "
             "images. Changes are the reduced-precision model minus its FP32 model, in points.", "",
             "| model | precision | accuracy | harmonic mean | worst class | per-class change | top-1 agreement |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, variants in result["models"].items():
        for variant, r in variants.items():
            worst = min(range(len(classes)), key=lambda c: r["per_class"][c])
            changes = ", ".join(f"{name} {100 * d:+.0f}" for name, d in zip(classes, r["per_class_delta"]))
            lines.append(f"| {label} | {variant} | {r['accuracy']:.3f} ({100 * r['accuracy_delta']:+.1f}) | "
                         f"{r['harmonic_mean']:.3f} ({100 * r['harmonic_mean_delta']:+.1f}) | {classes[worst]} "
                         f"{r['per_class'][worst]:.2f} | {changes} | {r['top1_agreement']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
