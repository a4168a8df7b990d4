"""Deploy bundles: a folder with the ONNX models, the evaluation data and a manifest that ties them
together, so a device can check and benchmark everything with one command:

    python -m runtime_bench BUNDLE_DIR [--json OUT.json]

The folder holds `manifest.json`, the model files and the evaluation file, all side by side:

    {
      "format": "edgeprune-bundle",
      "schema_version": "1",
      "created_utc": "2026-11-25T12:00:00Z",
      "models": [                                  # non-empty; order kept: the first is the baseline
        {"label": "dense",  "file": "dense.onnx", "sha256": "<64 lowercase hex digits>"},
        {"label": "pruned", "file": "model.onnx", "sha256": "..."}
      ],
      "input": {
        "shape": [1, 3, 224, 224],                 # N, C, H, W; N may be null or a name (dynamic)
        "dtype": "float32",                        # the only dtype the benchmark feeds
        "preprocessing": {"image_size": 224, "mean": [...], "std": [...]},  # free-form, as applied
        "labels": ["class 0", "class 1"]           # class names; the model's output index order
      },
      "eval": {"file": "eval.npz", "sha256": "..."},  # arrays images (N,C,H,W float32), labels (N,) int64
      "engines": [                                 # optional: serialized TensorRT engines, benchmarked
        {"label": "dense-fp16", "file": "dense.fp16.engine", "sha256": "...",   # with --backend tensorrt;
         "precision": "fp16", "tensorrt_version": "10.3.0", "gpu": "Orin"}      # they run only with that
      ],                                                                        # TensorRT and GPU model
      "extra": {}                                  # optional, free-form; copied into the report
    }

File names are plain names inside the folder (no folders, no ".."). Labels are unique, non-empty
strings. `read_bundle` validates all of this and (by default) checks every file's sha256;
`write_bundle_manifest` is what the toolchain calls after writing the files: it hashes them and
writes manifest.json atomically. Pure Python + numpy: no onnx, no runtime needed to write one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import Any

from runtime_bench.atomic import atomic_output
from runtime_bench.errors import InputError, first_line
from runtime_bench.settings import BenchSettings

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "edgeprune-bundle"
BUNDLE_SCHEMA_VERSION = "1"
DEFAULT_REPORT_NAME = "bench.json"
SUPPORTED_DTYPES = ("float32",)
ENGINE_KEYS = ("precision", "tensorrt_version", "gpu")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Any, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: must be a file name, got {name!r}")
    if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name):
        raise InputError(f"{where}: {name!r} must be a plain file name inside the bundle folder")
    return name


def _check_sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise InputError(f"{where}: must be 64 lowercase hex digits, got {value!r}")
    return value


def _check_input(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise InputError(f"{where}: 'input' must be an object with shape, dtype, preprocessing, labels")
    for key in ("shape", "dtype", "preprocessing", "labels"):
        if key not in spec:
            raise InputError(f"{where}: 'input' has no '{key}'")
    shape = spec["shape"]
    if not isinstance(shape, list) or len(shape) != 4:
        raise InputError(f"{where}: input.shape must be a list [N, C, H, W], got {shape!r}")
    batch = shape[0]
    if not (batch is None or isinstance(batch, str) or _positive_int(batch)):
        raise InputError(f"{where}: input.shape[0] must be a positive integer, null or a name, got {batch!r}")
    if not all(_positive_int(d) for d in shape[1:]):
        raise InputError(f"{where}: input.shape C, H, W must be positive integers, got {shape[1:]!r}")
    if spec["dtype"] not in SUPPORTED_DTYPES:
        raise InputError(f"{where}: input.dtype {spec['dtype']!r} is not supported (only float32)")
    if not isinstance(spec["preprocessing"], dict):
        raise InputError(f"{where}: input.preprocessing must be an object")
    labels = spec["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise InputError(f"{where}: input.labels must be a non-empty list of class names")
    if len(set(labels)) != len(labels):
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        raise InputError(f"{where}: input.labels repeats {', '.join(repr(x) for x in repeated)}")
    return spec


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_entries(entries: list, key: str, where: str) -> None:
    """Each entry of `key` (models, engines) has a unique label, a plain file name and a sha256."""
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        at = f"{where}: {key}[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{at} must be an object with label, file, sha256")
        label = entry.get("label")
        if not isinstance(label, str) or not label:
            raise InputError(f"{at}.label must be a non-empty string")
        if label in seen:
            raise InputError(f"{at}.label {label!r} is used twice")
        seen.add(label)
        _check_file_name(entry.get("file"), f"{at}.file")
        _check_sha(entry.get("sha256"), f"{at}.sha256")


def validate_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """Check the manifest's structure (not the files); `where` names it in errors."""
    if not isinstance(manifest, dict):
        raise InputError(f"{where}: a bundle manifest must be a JSON object")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{where}: not an {BUNDLE_FORMAT} manifest (format is {manifest.get('format')!r})")
    version = manifest.get("schema_version")
    if version != BUNDLE_SCHEMA_VERSION:
        raise InputError(
            f"{where}: bundle schema_version {version!r} is not supported (this runtime_bench reads "
            f"{BUNDLE_SCHEMA_VERSION!r})"
        )
    models = manifest.get("models")
    if not isinstance(models, list) or not models:
        raise InputError(f"{where}: 'models' must be a non-empty list")
    _check_entries(models, "models", where)
    if "engines" in manifest:
        engines = manifest["engines"]
        if not isinstance(engines, list):
            raise InputError(f"{where}: 'engines' must be a list")
        _check_entries(engines, "engines", where)
        for i, entry in enumerate(engines):
            for key in ENGINE_KEYS:
                if not isinstance(entry.get(key), str) or not entry[key]:
                    raise InputError(f"{where}: engines[{i}].{key} must be a non-empty string")
    _check_input(manifest.get("input"), where)
    evaluation = manifest.get("eval")
    if not isinstance(evaluation, dict):
        raise InputError(f"{where}: 'eval' must be an object with file (and sha256)")
    _check_file_name(evaluation.get("file"), f"{where}: eval.file")
    if "sha256" in evaluation:
        _check_sha(evaluation["sha256"], f"{where}: eval.sha256")
    if "extra" in manifest and not isinstance(manifest["extra"], dict):
        raise InputError(f"{where}: 'extra' must be an object")
    return manifest


def _locate(path: Any) -> tuple[str, str]:
    """(bundle folder, manifest path) from a folder or a manifest.json path."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        manifest = os.path.join(path, MANIFEST_NAME)
        if not os.path.isfile(manifest):
            raise InputError(f"{path}: not a bundle folder (no {MANIFEST_NAME})")
        return path, manifest
    return os.path.dirname(path) or ".", path


def read_bundle(path: Any, verify: bool = True) -> dict[str, Any]:
    """Read and validate a bundle (its folder or its manifest.json).

    Returns the manifest with `dir` and `manifest_path` added, and a `path` in every model entry
    and in `eval`. With `verify` every file must exist and match its sha256.
    """
    folder, manifest_path = _locate(path)
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as exc:
        reason = first_line(exc)
        raise InputError(f"{manifest_path}: not a readable bundle manifest ({reason})") from None
    validate_manifest(manifest, manifest_path)
    bundle = dict(manifest)
    bundle["dir"] = folder
    bundle["manifest_path"] = manifest_path
    bundle["models"] = [dict(m, path=os.path.join(folder, m["file"])) for m in manifest["models"]]
    bundle["engines"] = [dict(m, path=os.path.join(folder, m["file"])) for m in manifest.get("engines", [])]
    bundle["eval"] = dict(manifest["eval"], path=os.path.join(folder, manifest["eval"]["file"]))
    if verify:
        verify_bundle(bundle)
    return bundle


def verify_bundle(bundle: dict[str, Any]) -> None:
    """Every listed file exists and has the sha256 the manifest gives (InputError naming the file)."""
    entries = list(bundle["models"]) + list(bundle.get("engines", [])) + [bundle["eval"]]
    for entry in entries:
        path = entry["path"]
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such file (listed in {bundle['manifest_path']})")
        expected = entry.get("sha256")
        if expected is None:
            continue
        actual = sha256_file(path)
        if actual != expected:
            raise InputError(
                f"{path}: sha256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...): "
                "the file is damaged or not the one the bundle was made with"
            )


def write_bundle_manifest(
    bundle_dir: Any,
    models: dict[str, str],
    input_spec: dict[str, Any],
    eval_file: str = "eval.npz",
    extra: dict[str, Any] | None = None,
    engines: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Hash the files already in `bundle_dir` and write its manifest.json atomically; return it.

    `models`: label -> model file name in the folder, baseline first (dict order is kept).
    `input_spec`: {"shape": [N, C, H, W], "dtype": "float32", "preprocessing": {...}, "labels": [...]}.
    `engines`: label -> {"file", "precision", "tensorrt_version", "gpu"} of TensorRT engines in the folder.
    """
    folder = os.fspath(bundle_dir)
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: no such folder")
    if not isinstance(models, dict) or not models:
        raise InputError("write_bundle_manifest: models must be a non-empty dict label -> file name")
    where = os.path.join(folder, MANIFEST_NAME)

    def hashed(name: Any, what: str) -> str:
        _check_file_name(name, f"{where}: {what}")
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such file (to be listed in {where})")
        return sha256_file(path)

    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "schema_version": BUNDLE_SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": [
            {"label": label, "file": name, "sha256": hashed(name, f"model {label!r}")}
            for label, name in models.items()
        ],
        "input": {
            key: (list(value) if isinstance(value, tuple) else value)
            for key, value in dict(input_spec).items()
        },
        "eval": {"file": eval_file, "sha256": hashed(eval_file, "eval file")},
    }
    if engines:
        manifest["engines"] = [
            dict({key: spec[key] for key in ENGINE_KEYS}, label=label, file=spec["file"],
                 sha256=hashed(spec["file"], f"engine {label!r}"))
            for label, spec in engines.items()
        ]
    if extra is not None:
        manifest["extra"] = extra
    validate_manifest(manifest, where)
    # Serialize first: a value JSON cannot hold must not leave a half-written manifest.
    text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    with atomic_output(where) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return manifest


def load_bundle_data(bundle: dict[str, Any]) -> tuple[Any, Any, int]:
    """(images, labels, num_classes) from the bundle's eval file, checked against its input spec."""
    from runtime_bench.evaldata import load_eval_npz

    path = bundle["eval"]["path"]
    images, labels, _, class_names = load_eval_npz(path)
    spec = bundle["input"]
    names = spec["labels"]
    if class_names is not None and class_names != names:
        raise InputError(f"{path}: its class_names differ from the manifest's input.labels")
    expected = tuple(spec["shape"][1:])
    if tuple(images.shape[1:]) != expected:
        got = ", ".join(str(d) for d in images.shape[1:])
        raise InputError(
            f"{path}: images have shape (N, {got}) but the manifest's input is (N, {', '.join(map(str, expected))})"
        )
    if int(labels.max()) >= len(names):
        raise InputError(f"{path}: label {int(labels.max())} but the manifest has only {len(names)} labels")
    return images, labels, len(names)


def benchmark_bundle(
    path: Any,
    backend: str = BenchSettings.backend,
    threads: int | None = BenchSettings.threads,
    batch_size: int | None = BenchSettings.batch_size,
    **timing: Any,
) -> dict[str, Any]:
    """Verify the bundle, then benchmark all its models (interleaved) on its eval data; the report.

    `batch_size` None takes the manifest's fixed batch (input.shape[0]) or 1. `timing` goes to
    `run_benchmark` (warmup_runs, warmup_s, min_runs, min_s, strict, blocks, progress). A TensorRT backend
    benchmarks the bundle's engines instead of its ONNX models.
    """
    from runtime_bench.backends import ENGINE_BACKENDS
    from runtime_bench.bench import run_benchmark

    bundle = read_bundle(path, verify=True)
    images, labels, num_classes = load_bundle_data(bundle)
    fixed = bundle["input"]["shape"][0]
    if batch_size is None:
        batch_size = fixed if _positive_int(fixed) else 1
    entries = bundle["engines"] if backend in ENGINE_BACKENDS else bundle["models"]
    if not entries:
        raise InputError(f"{bundle['manifest_path']}: the bundle has no TensorRT engines for backend '{backend}' "
                         "(deploy with a tensorrt section on a machine with TensorRT and a GPU)")
    models = {m["label"]: m["path"] for m in entries}
    report = run_benchmark(
        models, images, labels, num_classes, backend=backend, threads=threads, batch_size=batch_size, **timing
    )
    settings = report["settings"]
    settings["data"] = bundle["eval"]["path"]
    settings["class_names"] = list(bundle["input"]["labels"])
    settings["bundle"] = {
        "dir": bundle["dir"],
        "manifest_sha256": sha256_file(bundle["manifest_path"]),
        "schema_version": bundle["schema_version"],
        "models": {m["label"]: {"file": m["file"], "sha256": m["sha256"]} for m in entries},
        "eval": {"file": bundle["eval"]["file"], "sha256": bundle["eval"].get("sha256")},
        "input": {"shape": bundle["input"]["shape"], "dtype": bundle["input"]["dtype"]},
        "preprocessing": bundle["input"]["preprocessing"],
        "extra": bundle.get("extra"),
    }
    for label, entry in report["models"].items():
        entry["sha256"] = settings["bundle"]["models"][label]["sha256"]
    return report


def default_report_path(bundle_dir: Any) -> str:
    """Where the bundle's report goes without --json: bench.json inside the bundle folder."""
    return os.path.join(os.fspath(bundle_dir), DEFAULT_REPORT_NAME)
