"""Does the harness measure what a plain timing loop measures? Ground truth for runtime_bench's timing.

    OMP_NUM_THREADS=1 python benchmarks/harness_truth.py [--threads 1] [--rounds 3] [--min-seconds 2]

Builds a fixed ONNX model (three 3x3 convolutions with ReLU on a 16x56x56 input, then pooling and a
2-class head: 152 M multiply-adds, about 1.6 ms per image on one x86 core) in a temporary folder,
then, in this one process, alternates `rounds` times between
  - the harness: runtime_bench.bench.run_benchmark (ort-cpu backend, batch 1), its p50;
  - a plain loop: its own onnxruntime session with the same session options, the same input, the
    same warm-up rule (at least N calls and S seconds), then time.perf_counter() around each
    session.run until both minimums are met; the median of those times.
Prints each round, the median p50 of each method and the ratio harness / plain (target: within 5%,
0.95..1.05). The exit status is non-zero only on errors, never because of the ratio.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from runtime_bench.bench import run_benchmark
from runtime_bench.errors import EdgePruneError

INPUT_SHAPE = (1, 16, 56, 56)
CHANNELS = (16, 48, 48, 48)


def build_model(path: pathlib.Path) -> None:
    """Conv3x3+ReLU x3 (16->48->48->48 channels, 56x56), GlobalAveragePool, Flatten, Gemm -> 2 logits."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    current = "x"
    for i, (cin, cout) in enumerate(zip(CHANNELS[:-1], CHANNELS[1:])):
        weight = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        inits += [
            numpy_helper.from_array(weight, f"w{i}"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        current = f"r{i}"
    head = rng.standard_normal((CHANNELS[-1], 2)).astype(np.float32)
    inits += [
        numpy_helper.from_array(head, "head_w"),
        numpy_helper.from_array(np.zeros(2, np.float32), "head_b"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "head_w", "head_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "harness_truth",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *INPUT_SHAPE[1:]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def plain_session(path: pathlib.Path, threads: int | None) -> ort.InferenceSession:
    """The session options runtime_bench's ort-cpu backend documents, set here by hand."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def plain_p50_ms(
    session: ort.InferenceSession, batch: np.ndarray, args: argparse.Namespace
) -> tuple[float, int]:
    """(median ms, runs) of session.run timed with perf_counter; same warm-up and stopping rule."""
    feed = {session.get_inputs()[0].name: batch}
    names = [session.get_outputs()[0].name]
    run = session.run
    clock = time.perf_counter
    start, done = clock(), 0
    while done < args.warmup_runs or clock() - start < args.warmup_seconds:
        run(names, feed)
        done += 1
    times = []
    first = clock()
    last = first
    while len(times) < args.min_runs or last - first < args.min_seconds:
        t0 = clock()
        run(names, feed)
        last = clock()
        times.append(last - t0)
    return statistics.median(times) * 1000.0, len(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for both (default: 1)")
    parser.add_argument("--rounds", type=int, default=3, help="harness/plain alternations (default: 3)")
    parser.add_argument("--min-runs", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--warmup-runs", type=int, default=10)
    parser.add_argument("--warmup-seconds", type=float, default=0.5)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")

    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, *INPUT_SHAPE[1:])).astype(np.float32)
    labels = np.array([0, 1])
    batch = np.ascontiguousarray(images[:1])  # run_benchmark times images[:batch_size] too

    harness, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "harness_truth.onnx"
        build_model(path)
        session = plain_session(path, args.threads)
        for r in range(args.rounds):
            report = run_benchmark(
                {"truth": str(path)}, images, labels, 2, threads=args.threads, batch_size=1,
                warmup_runs=args.warmup_runs, warmup_s=args.warmup_seconds, min_runs=args.min_runs,
                min_s=args.min_seconds, progress=False,
            )  # fmt: skip
            latency = report["models"]["truth"]["latency"]
            p50, runs = plain_p50_ms(session, batch, args)
            harness.append(latency["p50_ms"])
            plain.append(p50)
            print(f"round {r + 1}: harness p50 {latency['p50_ms']:.4f} ms ({latency['count']} runs), "
                  f"plain p50 {p50:.4f} ms ({runs} runs)")  # fmt: skip

    h, p = statistics.median(harness), statistics.median(plain)
    ratio = h / p
    verdict = "within 5%" if abs(ratio - 1.0) <= 0.05 else "OUTSIDE 5%"
    print(f"harness p50 {h:.4f} ms, plain-loop p50 {p:.4f} ms, ratio harness/plain {ratio:.4f} ({verdict}); "
          f"threads {args.threads}, onnxruntime {ort.__version__}")  # fmt: skip
    print(json.dumps({"harness_p50_ms": round(h, 4), "plain_p50_ms": round(p, 4), "ratio": round(ratio, 4)}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EdgePruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
