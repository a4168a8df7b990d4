"""The ONNX models TensorRT 11 builds FP16 and INT8 engines from, checked on a CPU (no GPU needed).

    python benchmarks/precision_onnx_cpu.py --out artifacts/deploy

For dense.onnx and model.onnx of a deploy folder: the float16 conversion (`exporters.tensorrt.to_float16`) and
the Q/DQ INT8 model (`quantize_qdq`, calibrated on the small labelled set), each run by ONNX Runtime on the CPU
over the test set next to the FP32 model: accuracy, its delta, top-1 agreement, largest logit difference.
Writes benchmarks/results/precision_onnx_cpu.json. ONNX Runtime's CPU provider computes float16 nodes it has no
float16 kernel for in float32 (it inserts casts), so this checks the conversion itself (weights rounded to
float16, a valid graph, Q/DQ scales from the small set), not GPU float16 arithmetic.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import onnx  # noqa: E402

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
                      f"{100 * r['accuracy_delta']:+.1f} pt), top-1 agreement {r['top1_agreement']:.3f}, "
                      f"max |logit diff| {r['max_abs_logit_diff']:.3g}")
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
