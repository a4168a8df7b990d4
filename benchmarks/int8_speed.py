"""Where INT8 time goes on ONNX Runtime CPU: INT8 variants of the pruned model against its FP32 model.

    python benchmarks/int8_speed.py --out artifacts/deploy-int8      # make deploy-int8 first

For the pruned model of a deploy folder, every model below is timed by the harness's alternating loop (batch 1
unless --batch, each intra-op thread count of --threads): FP32, the gate's model.int8.onnx when the folder has
one, and INT8 models calibrated on the small set with fewer layers kept in float (the gate's start: head, first
conv and depthwise convs in float; only the head in float). ONNX Runtime's profiler then splits one run of FP32
and of the most-int8 model by op type, which says whether the int8 kernels are faster than the FP32 ones they
replace. Writes benchmarks/results/int8_speed.json and the README block int8-speed.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import numpy as np  # noqa: E402
from readme_blocks import update_readme  # noqa: E402

from exporters.quantize import Int8Settings, quantize_int8  # noqa: E402
from runtime_bench.atomic import write_json_atomic  # noqa: E402
from runtime_bench.backends import OrtCpuBackend  # noqa: E402
from runtime_bench.environment import capture  # noqa: E402
from runtime_bench.stats import ratio_with_spread  # noqa: E402
from runtime_bench.timing import compare_alternating  # noqa: E402
from toolchain.artifact import read_manifest  # noqa: E402
from toolchain.stages.precision import INT8_MODEL  # noqa: E402
from toolchain.stages.prepare import small_arrays  # noqa: E402

CALIBRATED = {"int8, head + first + depthwise in float": ("head", "first", "depthwise"),
              "int8, head in float": ("head",)}
PROFILE_RUNS = 200


class ProfiledOrtCpu(OrtCpuBackend):
    """The harness's ONNX Runtime CPU session, with ONNX Runtime's profiler on."""

    def __init__(self, model_path: pathlib.Path, threads: int | None, prefix: pathlib.Path) -> None:
        self._prefix = prefix
        super().__init__(model_path, threads=threads)

    def _open_session(self, ort, options):
        options.enable_profiling = True
        options.profile_file_prefix = str(self._prefix)
        return super()._open_session(ort, options)


def op_times(path: pathlib.Path, image: np.ndarray, threads: int | None) -> dict:
    """{op type: microseconds per run} from ONNX Runtime's profiler, with the harness's session settings."""
    with tempfile.TemporaryDirectory() as work:
        backend = ProfiledOrtCpu(path, threads, pathlib.Path(work) / "profile")
        for _ in range(PROFILE_RUNS):
            backend.run(image)
        events = json.loads(pathlib.Path(backend._session.end_profiling()).read_text())
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: round(us / PROFILE_RUNS, 1) for op, us in totals.most_common()}


def measure(folder: pathlib.Path, batch: int, threads: list, min_s: float) -> dict:
    manifest = read_manifest(folder)
    images, _ = small_arrays(manifest, progress=False)
    fp32 = folder / "model.onnx"
    with tempfile.TemporaryDirectory() as work:
        models = {"FP32": fp32}
        if (folder / INT8_MODEL).is_file():
            models["int8, as the gate chose"] = folder / INT8_MODEL
        for label, keep in CALIBRATED.items():
            models[label] = pathlib.Path(work) / f"{len(models)}.onnx"
            quantize_int8(fp32, models[label], images, Int8Settings(keep_float=keep))
        x = np.ascontiguousarray(images[:batch])
        runs = []
        for count in threads:
            backends = {label: OrtCpuBackend(str(path), threads=count or None) for label, path in models.items()}
            samples = compare_alternating({label: (lambda b=b: b.run(x)) for label, b in backends.items()},
                                          min_runs=100, min_s=min_s)
            row = {"threads": count or "default", "p50_ms": {k: 1e3 * float(np.median(v)) for k, v in samples.items()},
                   "speedup": {k: ratio_with_spread(samples["FP32"], v) for k, v in samples.items() if k != "FP32"}}
            runs.append(row)
            print(f"threads {row['threads']}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in row["p50_ms"].items()),
                  flush=True)
        most_int8 = list(CALIBRATED)[-1]
        profile = {label: op_times(models[label], images[:1].copy(), threads[0] or None)
                   for label in ("FP32", most_int8)}
    return {"folder": str(folder), "model": manifest["config"]["model"], "batch": batch, "runs": runs,
            "profile": profile, "profile_threads": threads[0] or "default"}


def markdown(result: dict) -> str:
    labels = list(result["runs"][0]["p50_ms"])
    lines = [f"Command: `{result['command']}`; ONNX Runtime {result['onnxruntime']} on the CPU ({result['cpu']}; "
             f"int8 instructions: {', '.join(result['cpu_int8']) or 'none'}), {result['model']}, pruned model of "
             f"`{result['folder']}`, batch {result['batch']}, alternating runs; p50 in ms, speedup against FP32 "
             "(5-95% bootstrap).", "",
             "| intra-op threads | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for run in result["runs"]:
        cells = [f"{run['p50_ms']['FP32']:.3f}"] + [
            f"{run['p50_ms'][k]:.3f} ({s['ratio']:.2f}x, {s['low']:.2f}-{s['high']:.2f})"
            for k, s in run["speedup"].items()]
        lines.append(f"| {run['threads']} | " + " | ".join(cells) + " |")
    lines += ["", f"Time per op type in one run (ONNX Runtime profiler, {PROFILE_RUNS} runs, threads "
              f"{result['profile_threads']}, microseconds):", ""]
    for label, ops in result["profile"].items():
        lines.append(f"- {label}: " + ", ".join(f"{op} {us:.0f}" for op, us in ops.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="artifacts/deploy-int8", help="a deploy folder (model.onnx, manifest)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", default="0,1", help="intra-op thread counts, 0 for the runtime's default")
    parser.add_argument("--min-s", type=float, default=8.0, help="seconds of alternating runs per thread count")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "int8_speed.json"))
    args = parser.parse_args(argv)
    import onnxruntime

    result = measure(pathlib.Path(args.out), args.batch, [int(t) for t in args.threads.split(",")], args.min_s)
    env = capture()
    result.update(command="python benchmarks/int8_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  onnxruntime=onnxruntime.__version__, cpu=env.get("cpu_model") or "unknown",
                  cpu_int8=env.get("cpu_int8") or [])
    write_json_atomic(result, pathlib.Path(args.json))
    table = markdown(result)
    print(table)
    return 0 if args.no_readme else update_readme(str(ROOT / "README.md"), "int8-speed", table)


if __name__ == "__main__":
    sys.exit(main())
