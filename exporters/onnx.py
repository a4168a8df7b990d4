"""ONNX export with a parity gate against PyTorch.

Public API:

- ``export_onnx``: export a single-output classifier to one ``.onnx`` file with a dynamic batch dimension
  (input "input", output "logits"), written atomically.
- ``simplify_onnx``: onnxsim (or onnxslim) in place, checked, batch dimension must stay dynamic.
- ``parity_check``: PyTorch vs ONNX Runtime (CPU) on a set of images.
- ``export_verified``: export + simplify + parity gate; the file at ``path`` only appears if the gate passes.

The exporters layer may import torch, onnx, onnxruntime and runtime_bench, never toolchain.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import torch

from runtime_bench.atomic import atomic_output, disk_full, is_disk_full
from runtime_bench.bundle import sha256_file
from runtime_bench.errors import CheckFailed, InputError, first_line

__all__ = ["export_onnx", "simplify_onnx", "parity_check", "export_verified"]

log = logging.getLogger(__name__)
SIMPLIFIERS = ("onnxsim", "onnxslim")  # onnx-simplifier first: the design names it; onnxslim is the alternative

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM_NAME = "batch"
EXPORTERS = ("auto", "dynamo", "torchscript")


# ----------------------------------------------------------------------------------------------- helpers


def _temp_path(folder: Path, stem: str, suffix: str = ".onnx") -> Path:
    """A fresh, unique, empty file in ``folder`` (same filesystem as the target, so os.replace is atomic),
    named as runtime_bench.atomic.TEMP_NAME says so that a later run can remove it if this one is killed."""
    fd, name = tempfile.mkstemp(dir=str(folder), prefix=f".{stem}.", suffix=f".tmp-{os.getpid()}{suffix}")
    os.close(fd)
    return Path(name)


def _remove_quietly(path: Path) -> None:
    """Remove ``path`` and any external-data side file an exporter may have written next to it."""
    for p in (path, Path(str(path) + ".data")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def _cpu_eval(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Yield the model in eval mode on CPU; restore the caller's training flag afterwards.

    A model that is already on CPU is used as is (no copy); one with parameters or buffers elsewhere is
    deep-copied to CPU so the caller's model never changes device.
    """
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    tensors = list(model.parameters()) + list(model.buffers())
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    target = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = model.training
    target.eval()
    try:
        yield target
    finally:
        if target is model:
            model.train(was_training)


def _batch_dims_dynamic(model: onnx.ModelProto) -> bool:
    """True when the first input's and first output's dim 0 are symbolic (dim_param) rather than fixed."""
    for value in (model.graph.input[0], model.graph.output[0]):
        shape = value.type.tensor_type.shape
        if not shape.dim:
            return False
        d0 = shape.dim[0]
        if d0.HasField("dim_value") or not d0.dim_param:
            return False
    return True


def _default_opset(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def _save_single_file(model: onnx.ModelProto, path: Path) -> None:
    """Serialise ``model`` to one file (no external data), atomically replacing ``path``."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(model.SerializeToString())


# ----------------------------------------------------------------------------------------------- export


def _check_single_tensor_output(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        out = model(example)
    if not isinstance(out, torch.Tensor):
        raise InputError(
            f"{path}: model returns {type(out).__name__}, expected a single logits tensor; "
            "wrap the model so forward returns only the logits"
        )


def _export_dynamo(model: torch.nn.Module, example: torch.Tensor, out: Path, opset: int) -> None:
    batch = torch.export.Dim(BATCH_DIM_NAME, min=1)
    torch.onnx.export(
        model,
        (example,),
        str(out),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=({0: batch},),
        external_data=False,
        verbose=False,
    )


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, out: Path, opset: int) -> None:
    # Chosen on purpose (explicitly or as the fallback): silence torch's "legacy exporter" deprecations.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        _torchscript_export_call(model, example, out, opset)


def _torchscript_export_call(model: torch.nn.Module, example: torch.Tensor, out: Path, opset: int) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(out),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=False,
        dynamic_axes={INPUT_NAME: {0: BATCH_DIM_NAME}, OUTPUT_NAME: {0: BATCH_DIM_NAME}},
        do_constant_folding=True,
    )


def _export(
    model: torch.nn.Module, example_input: torch.Tensor, out: Path, opset: int, exporter: str, path: Path
) -> dict[str, Any]:
    """Export to ``out`` atomically; return {"exporter": used, "notes": [...], "seconds": float}.

    ``path`` is the user's destination, named in messages (``out`` is usually a temp file next to it).
    """
    if exporter not in EXPORTERS:
        raise InputError(f"{path}: exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise InputError(f"{path}: example_input must be a torch.Tensor with a batch dimension")
    example = example_input.detach().to("cpu", torch.float32)
    if example.shape[0] < 2:
        # torch.export specialises sizes 0 and 1, which would freeze the batch dimension.
        example = example[:1].repeat(2, *([1] * (example.dim() - 1)))

    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    runners = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}
    errors: list[tuple[str, BaseException]] = []
    notes: list[str] = []

    with _cpu_eval(model) as m:
        _check_single_tensor_output(m, example, path)
        for name in order:
            tmp = _temp_path(out.parent, path.stem)
            t0 = time.perf_counter()
            try:
                runners[name](m, example, tmp, opset)
                exported = onnx.load(str(tmp))
                if not _batch_dims_dynamic(exported):
                    raise CheckFailed("exported batch dimension is fixed, expected dynamic")
                os.replace(tmp, out)
            except Exception as exc:  # noqa: BLE001 - any exporter failure moves on to the next one
                if is_disk_full(exc):  # the next exporter would fail the same way
                    raise disk_full(path) from None
                errors.append((name, exc))
                if exporter == "auto" and name == "dynamo":
                    notes.append(f"dynamo exporter failed ({first_line(exc, typed=True)}); fell back to torchscript")
                continue
            finally:  # also on Ctrl-C
                _remove_quietly(tmp)
            for note in notes:  # only once the fallback worked: a failed export is one line, its error
                log.warning("%s: %s", path, note)
            return {"exporter": name, "notes": notes, "seconds": time.perf_counter() - t0}

    detail = "; ".join(f"{name}: {first_line(exc, typed=True)}" for name, exc in errors)
    raise CheckFailed(f"{path}: ONNX export failed ({detail})")


def export_onnx(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    path,
    opset: int = 18,
    exporter: str = "auto",
    simplify: bool = True,
    simplifier: str = SIMPLIFIERS[0],
) -> Path:
    """Export ``model`` (eval mode, CPU) to a single ONNX file at ``path`` and return that path.

    Input "input", output "logits", dynamic batch dimension. ``exporter`` is "dynamo" (torch.export ->
    onnxscript), "torchscript" (legacy tracer) or "auto" (dynamo, falling back to torchscript with a logged
    warning). An example batch below 2 is repeated to 2 so torch.export does not specialise it.
    The file is written to a temp file in the same folder and moved into place at the end.

    Raises InputError for a model whose output is not a single tensor, CheckFailed if every exporter fails.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: output folder {path.parent} does not exist")
    tmp = _temp_path(path.parent, path.stem)
    try:
        _export(model, example_input, tmp, opset, exporter, path)
        if simplify:
            simplify_onnx(tmp, simplifier)
        os.replace(tmp, path)
    except BaseException as exc:
        _remove_quietly(tmp)
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    return path


# ----------------------------------------------------------------------------------------------- simplify


def _onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    return simplified


def _onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def _simplifier(name: str) -> tuple[str, Any] | None:
    """(name and version, function) of an installed simplifier, or None."""
    try:
        module = __import__(name)
    except ImportError:
        return None
    return f"{name} {str(getattr(module, '__version__', '?')).lstrip('v')}", {"onnxsim": _onnxsim, "onnxslim": _onnxslim}[name]


def simplify_onnx(path, simplifier: str = SIMPLIFIERS[0]) -> dict[str, Any]:
    """Simplify the ONNX file at ``path`` in place (atomically) with ``simplifier``; return what happened.

    When it is not installed the other one runs (said in "note"); with neither, the file is untouched.
    The simplified model must pass ``onnx.checker.check_model`` and keep a dynamic batch dimension;
    otherwise the original file is kept. The parity gate judges the result either way.
    Returns {"simplifier": "onnxsim x.y" | "onnxslim x.y" | None, "nodes_before": int,
    "nodes_after": int, "note": str | None}.
    """
    if simplifier not in SIMPLIFIERS:
        raise InputError(f"simplifier {simplifier!r}: choose from {', '.join(SIMPLIFIERS)}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ONNX file not found")
    try:
        original = onnx.load(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a readable ONNX model ({first_line(exc, typed=True)})") from exc
    result: dict[str, Any] = {
        "simplifier": None,
        "nodes_before": len(original.graph.node),
        "nodes_after": len(original.graph.node),
        "note": None,
    }
    other = next(name for name in SIMPLIFIERS if name != simplifier)
    found = _simplifier(simplifier)
    if found is None:
        found = _simplifier(other)
        if found is None:
            result["note"] = f"not simplified: neither {simplifier} nor {other} is installed"
            log.warning("%s: %s", path, result["note"])
            return result
        result["note"] = f"{simplifier} is not installed; simplified with {other}"
    tool, run = found

    try:
        simplified = run(copy.deepcopy(original))
        if not isinstance(simplified, onnx.ModelProto):
            raise TypeError(f"returned {type(simplified).__name__}, expected onnx.ModelProto")
        onnx.checker.check_model(simplified)
        if not _batch_dims_dynamic(simplified):
            raise ValueError("simplification froze the batch dimension")
    except Exception as exc:  # noqa: BLE001 - simplification is optional; keep the exported model
        result["note"] = f"not simplified: {tool} failed ({first_line(exc, typed=True)}); kept the exported model"
        log.warning("%s: %s", path, result["note"])
        return result

    _save_single_file(simplified, path)
    result["simplifier"] = tool
    result["nodes_after"] = len(simplified.graph.node)
    return result


# ----------------------------------------------------------------------------------------------- parity


def _batch_plan(n: int, batch_size: int) -> list[int]:
    """Batch sizes covering n images, with at least two distinct sizes whenever n >= 2."""
    bs = max(1, min(batch_size, n))
    sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
    if len(set(sizes)) < 2 and n >= 2:
        # e.g. 64 images at 32 -> [1, 31, 32]; 3 images at 32 -> [1, 2]
        sizes = [1, sizes[0] - 1] + sizes[1:] if sizes[0] >= 2 else sizes
    return sizes


def parity_check(onnx_path, model: torch.nn.Module, images: np.ndarray, batch_size: int = 32,
                 rel_tol: float = 1e-4) -> dict[str, Any]:
    """Compare PyTorch (CPU, no_grad) with ONNX Runtime CPU on all ``images`` (N, C, H, W float32).

    Batches use at least two different sizes (the dynamic batch dimension is exercised); with a single
    image an extra batch of two copies is run as well. Returns {"n_images", "batch_sizes",
    "top1_agreement", "max_abs_diff", "logit_range", "rel_tol", "tolerance", "passed"} with
    tolerance = rel_tol * logit_range and passed = agreement == 1.0 and max_abs_diff <= tolerance.
    """
    return _parity_check(onnx_path, model, images, batch_size, rel_tol, label=None)


def _parity_check(onnx_path, model, images, batch_size, rel_tol, label) -> dict[str, Any]:
    import onnxruntime as ort

    onnx_path = Path(onnx_path)
    name = Path(label) if label is not None else onnx_path  # named in messages
    if not onnx_path.is_file():
        raise InputError(f"{name}: ONNX file not found")
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[0] == 0:
        shape = getattr(images, "shape", None)
        raise InputError(f"{name}: parity images must be a non-empty (N, C, H, W) array, got shape {shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"{name}: parity images must be float32, got {images.dtype}")
    if batch_size < 1:
        raise InputError(f"{name}: batch_size must be >= 1, got {batch_size}")
    images = np.ascontiguousarray(images, dtype=np.float32)

    try:
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CheckFailed(f"{name}: ONNX Runtime cannot load the model ({first_line(exc, typed=True)})") from exc
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name

    sizes = _batch_plan(len(images), batch_size)
    ref_chunks, ort_chunks = [], []
    with _cpu_eval(model) as m, torch.no_grad():
        start = 0
        for size in sizes:
            batch = images[start:start + size]
            start += size
            ref = m(torch.from_numpy(batch))
            if not isinstance(ref, torch.Tensor):
                raise InputError(f"{name}: model returns {type(ref).__name__}, expected a single logits tensor")
            try:
                got = sess.run([out_name], {in_name: batch})[0]
            except Exception as exc:
                raise CheckFailed(
                    f"{name}: ONNX Runtime failed on a batch of {size} ({first_line(exc, typed=True)})"
                ) from exc
            ref_np = ref.detach().float().numpy()
            if got.shape != ref_np.shape:
                raise CheckFailed(
                    f"{name}: ONNX output shape {tuple(got.shape)} != PyTorch {tuple(ref_np.shape)} "
                    f"for a batch of {size}"
                )
            ref_chunks.append(ref_np)
            ort_chunks.append(got.astype(np.float32, copy=False))
        if len(images) == 1:
            # One image only: prove the dynamic batch with two copies of it.
            pair = np.repeat(images, 2, axis=0)
            sizes.append(2)
            ref_chunks.append(m(torch.from_numpy(pair)).detach().float().numpy())
            ort_chunks.append(sess.run([out_name], {in_name: pair})[0].astype(np.float32, copy=False))

    ref_all = np.concatenate([r.reshape(len(r), -1) for r in ref_chunks])
    ort_all = np.concatenate([o.reshape(len(o), -1) for o in ort_chunks])
    agreement = float(np.mean(ref_all.argmax(axis=1) == ort_all.argmax(axis=1)))
    max_abs_diff = float(np.max(np.abs(ref_all.astype(np.float64) - ort_all.astype(np.float64))))
    logit_range = float(np.max(ref_all) - np.min(ref_all))
    tolerance = float(rel_tol) * logit_range
    passed = bool(agreement == 1.0 and max_abs_diff <= tolerance)  # NaN anywhere -> False
    return {
        "n_images": int(len(images)),
        "batch_sizes": sizes,
        "top1_agreement": agreement,
        "max_abs_diff": max_abs_diff,
        "logit_range": logit_range,
        "rel_tol": float(rel_tol),
        "tolerance": tolerance,
        "passed": passed,
    }


# ----------------------------------------------------------------------------------------------- gate


def export_verified(
    model: torch.nn.Module,
    images: np.ndarray,
    path,
    example_batch: int = 2,
    opset: int = 18,
    exporter: str = "auto",
    simplify: bool = True,
    simplifier: str = SIMPLIFIERS[0],
    rel_tol: float = 1e-4,
    evidence_dir=None,
) -> dict[str, Any]:
    """Export, simplify and parity-check; ``path`` is written only if the gate passes.

    On failure the ONNX file is kept as ``<evidence_dir>/<stem>.failed.onnx`` next to
    ``<stem>.parity.json`` (evidence_dir defaults to path's folder) and CheckFailed is raised.
    On success returns the parity dict plus "path", "exporter", "exporter_notes", "export_seconds",
    "opset", "simplify", "file_bytes" and "sha256".
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: output folder {path.parent} does not exist")
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[0] == 0:
        raise InputError(f"{path}: parity images must be a non-empty (N, C, H, W) array")
    if example_batch < 1:
        raise InputError(f"{path}: example_batch must be >= 1, got {example_batch}")
    evidence = Path(evidence_dir) if evidence_dir is not None else path.parent

    example_np = images[:example_batch]
    if len(example_np) < example_batch:
        reps = -(-example_batch // len(example_np))
        example_np = np.concatenate([example_np] * reps)[:example_batch]
    example = torch.from_numpy(np.ascontiguousarray(example_np, dtype=np.float32))

    tmp = _temp_path(path.parent, path.stem)
    try:
        info = _export(model, example, tmp, opset, exporter, path)
        simplify_info = simplify_onnx(tmp, simplifier) if simplify else {"simplifier": None, "note": "simplify=False"}
        parity = _parity_check(tmp, model, images, 32, rel_tol, label=path)
        opset_used = _default_opset(onnx.load(str(tmp), load_external_data=False))
        record = {
            **parity,
            "path": str(path),
            "exporter": info["exporter"],
            "exporter_notes": info["notes"],
            "export_seconds": round(info["seconds"], 3),
            "opset": opset_used,
            "simplify": simplify_info,
            "file_bytes": tmp.stat().st_size,
            "sha256": sha256_file(tmp),
        }
        if not parity["passed"]:
            evidence.mkdir(parents=True, exist_ok=True)
            failed_path = evidence / f"{path.stem}.failed.onnx"
            shutil.move(str(tmp), str(failed_path))
            record["failed_path"] = str(failed_path)
            json_path = evidence / f"{path.stem}.parity.json"
            json_tmp = _temp_path(evidence, json_path.stem, suffix=".json")
            try:
                json_tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
                os.replace(json_tmp, json_path)
            finally:
                _remove_quietly(json_tmp)
            a, d, tol = parity["top1_agreement"], parity["max_abs_diff"], parity["tolerance"]
            cmp = ">" if not d <= tol else "<="
            raise CheckFailed(
                f"{path}: parity gate failed: top-1 agreement {a:.4f} (need 1.0), max |diff| {d:.3g} {cmp} "
                f"{tol:.3g} ({rel_tol:g} x logit range); evidence kept in {failed_path}"
            )
        os.replace(tmp, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    finally:
        _remove_quietly(tmp)
    return record
