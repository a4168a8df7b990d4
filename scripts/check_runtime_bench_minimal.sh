#!/usr/bin/env bash
# runtime_bench must run on a device that has nothing but numpy and an inference runtime. This check
# builds a fresh virtual environment with ONLY numpy + onnxruntime, copies the runtime_bench folder
# alone into a temporary folder (no toolchain, no exporters, no torch, no onnx), and runs the three
# command-line forms there: a model + eval.npz, a deploy bundle, and compare.
#
#   bash scripts/check_runtime_bench_minimal.sh
#
# The tiny model, eval.npz and bundle are made first with the project's venv (writing ONNX needs the
# onnx package, which the minimal venv must not have). Environment: PYTHON builds the minimal venv
# (default python3; e.g. PYTHON=python3.8 to check the oldest supported Python), MAIN_PY makes the
# fixtures (default .venv/bin/python). Exit status non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MAIN_PY="${MAIN_PY:-$ROOT/.venv/bin/python}"
BASE_PY="${PYTHON:-python3}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rb-minimal.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)
step() { echo "[minimal $(( $(date +%s) - START ))s] $*"; }

mkdir -p "$WORK/data/bundle" "$WORK/pkg"
step "fixtures: tiny ONNX model, eval.npz and a bundle (with $MAIN_PY)"
PYTHONPATH="$ROOT" "$MAIN_PY" - "$WORK/data" <<'EOF'
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime_bench.bundle import write_bundle_manifest

out = Path(sys.argv[1])
rng = np.random.default_rng(0)
graph = helper.make_graph(
    [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
     helper.make_node("Relu", ["c"], ["r"]),
     helper.make_node("GlobalAveragePool", ["r"], ["g"]),
     helper.make_node("Flatten", ["g"], ["y"], axis=1)],
    "tiny",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    initializer=[numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8  # readable by old onnxruntime builds (Python 3.8 wheels) too
onnx.checker.check_model(model)
onnx.save(model, str(out / "tiny.onnx"))
images = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
labels = (np.arange(16) % 4).astype(np.int64)
np.savez(out / "eval.npz", images=images, labels=labels)

bundle = out / "bundle"
shutil.copy(out / "tiny.onnx", bundle / "dense.onnx")
shutil.copy(out / "tiny.onnx", bundle / "model.onnx")
shutil.copy(out / "eval.npz", bundle / "eval.npz")
write_bundle_manifest(
    bundle, {"dense": "dense.onnx", "pruned": "model.onnx"},
    {"shape": [1, 3, 8, 8], "dtype": "float32", "preprocessing": {"note": "random"}, "labels": ["a", "b", "c", "d"]},
)
EOF

step "fresh venv from $BASE_PY ($("$BASE_PY" --version 2>&1)) with only numpy + onnxruntime"
"$BASE_PY" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q numpy onnxruntime
# Only the package itself: not the repository (its toolchain/ and exporters/ must not be reachable).
cp -R "$ROOT/runtime_bench" "$WORK/pkg/runtime_bench"
rm -rf "$WORK/pkg/runtime_bench/__pycache__"
export PYTHONPATH="$WORK/pkg"
cd "$WORK/data"

step "import check"
"$PY" - <<'EOF'
import importlib.util
import sys

for name in ("torch", "toolchain", "exporters"):
    if importlib.util.find_spec(name) is not None:
        sys.exit(f"FAIL: {name} is importable in the minimal venv")
import numpy
import onnxruntime

import runtime_bench.__main__
import runtime_bench.bench
import runtime_bench.bundle
import runtime_bench.compare
import runtime_bench.environment  # noqa: F401

print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}")
EOF

FAST=(--warmup-runs 3 --warmup-seconds 0 --min-runs 20 --min-seconds 0.2 --quiet)
step "python -m runtime_bench tiny.onnx --data eval.npz --json out.json"
"$PY" -m runtime_bench tiny.onnx --data eval.npz --json out.json --md out.md "${FAST[@]}"
step "python -m runtime_bench bundle (deploy bundle folder), twice"
"$PY" -m runtime_bench bundle "${FAST[@]}"
"$PY" -m runtime_bench bundle --json again.json "${FAST[@]}"
step "python -m runtime_bench compare bundle/bench.json again.json"
"$PY" -m runtime_bench compare bundle/bench.json again.json --md compare.md >/dev/null

"$PY" - <<'EOF'
import json
import sys

single = json.load(open("out.json"))
bundle = json.load(open("bundle/bench.json"))
problems = []
if single["schema_version"] != bundle["schema_version"]:
    problems.append("schema versions differ")
if list(single["models"]) != ["tiny"] or single["models"]["tiny"]["latency"]["count"] < 20:
    problems.append("out.json: wrong models or too few runs")
if list(bundle["models"]) != ["dense", "pruned"] or bundle["comparison"] is None:
    problems.append("bundle/bench.json: wrong models or no comparison")
if "| dense |" not in open("compare.md").read() or "| pruned |" not in open("compare.md").read():
    problems.append("compare.md: no rows for dense and pruned")
if problems:
    sys.exit("FAIL: " + "; ".join(problems))
print(f"tiny p50 {single['models']['tiny']['latency']['p50_ms']:.4f} ms; bundle speedup "
      f"{bundle['comparison']['speedup_p50']:.2f}x (same model twice)")
EOF
step "OK: runtime_bench runs with only numpy + onnxruntime"
