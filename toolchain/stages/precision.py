"""INT8 for ONNX Runtime's CPU kernels, judged per class on the small set before anything is written.

The question the gate answers is the pruning budget's: does the INT8 model keep the accuracy AND the harmonic
mean of per-class accuracy of its FP32 model within `max_drop`, judged from the small labelled set alone?
The small set is also what the head was fitted on and what calibrates INT8, so the estimate is cross-fitted
twice over:
- calibration: the small set is split in two class-stratified folds; the INT8 features of each fold come from a
  model calibrated on the other fold only;
- head: every image is classified by a ridge head fitted on the FP32 features of the other images (the head
  the pipeline fits, left out one image at a time), applied to that image's FP32 and INT8 features alike.
The paired difference is the estimate of what INT8 costs. When it exceeds the budget, the layers whose INT8
error grows most (measured on the small set: relative error of each layer's output, minus that of its input)
are kept in float, 1, 2, 4, ... of them, until the estimate is within budget; if none of these mixes, with up
to MAX_FLOAT_SHARE of the layers more in float, gets there, the export refuses with the figures. A model whose
graph does not end in a linear head, or whose head was kept (not fitted on the small set), is judged on its own
outputs.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
from typing import Any

import numpy as np

from exporters.quantize import (
    Int8Settings,
    float_ops,
    head_input,
    kept_in_float,
    layer_classes,
    layer_outputs,
    named,
    quantize_int8,
    replace_settings,
    with_outputs,
)
from runtime_bench.accuracy import classification_metrics
from runtime_bench.errors import CheckFailed, InputError

from ..control.controller import check_max_drop

MAX_FLOAT_SHARE = 0.25  # at most this share of the layers is added in float before the gate refuses
FOLDS = 2
BATCH = 64


def _session(model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_outputs(model: Any, images: np.ndarray, names: list) -> dict:
    """{name: array over all images} of the tensors `names` of an ONNX model (a path or a ModelProto)."""
    session = _session(model)
    feed_name = session.get_inputs()[0].name
    parts: dict = {name: [] for name in names}
    for start in range(0, len(images), BATCH):
        values = session.run(names, {feed_name: np.ascontiguousarray(images[start : start + BATCH], np.float32)})
        for name, value in zip(names, values):
            parts[name].append(np.asarray(value, np.float32).reshape(len(value), -1))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def folds(labels: np.ndarray, count: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A fold index per image, class-stratified (each class dealt round-robin after a seeded shuffle)."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        fold[members] = np.arange(len(members)) % count
    return fold


def class_metrics(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """accuracy, harmonic mean and per-class accuracy of top-1 predictions."""
    m = classification_metrics(predictions, labels, num_classes)
    return {"accuracy": m["accuracy"], "harmonic_mean": m["harmonic_mean"], "per_class": m["per_class"]}


def left_out_predictions(fp32: np.ndarray, others: dict, labels: np.ndarray, num_classes: int) -> dict:
    """Top-1 of every image by the ridge head fitted on the other images' FP32 features, applied to the image's
    features from each model ({"fp32": ..., **others})."""
    import torch

    from ..head import choose_ridge_alpha, ridge_solve

    x, y = torch.from_numpy(fp32).double(), torch.from_numpy(labels).long()
    alpha = choose_ridge_alpha(x.float(), y, num_classes)
    out = {name: np.zeros(len(labels), dtype=np.int64) for name in ("fp32", *others)}
    everyone = np.arange(len(labels))
    for i in everyone:
        rest = torch.from_numpy(everyone[everyone != i])
        solution = ridge_solve(x[rest].float(), y[rest], num_classes, alpha)
        for name, features in (("fp32", fp32), *others.items()):
            logits = torch.from_numpy(features[i]).float() @ solution.weight.T + solution.bias
            out[name][i] = int(logits.argmax())
    return out


class Int8Gate:
    """Estimates and exports INT8 of one FP32 ONNX model from its small labelled set."""

    def __init__(self, fp32_path: Any, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 head_fitted: bool = True, progress: bool = False, calibration: np.ndarray | None = None) -> None:
        import onnx

        self.fp32_path = pathlib.Path(fp32_path)
        self.model = named(onnx.load(str(self.fp32_path)))
        self.images = np.ascontiguousarray(images, np.float32)
        self.labels = np.asarray(labels, np.int64)
        self.num_classes = num_classes
        self.progress = progress
        self.fold = folds(self.labels)
        # Other calibration images than the small set (a test calibrates badly on purpose): no cross-fitting then.
        self.calibration = None if calibration is None else np.ascontiguousarray(calibration, np.float32)
        self.features = head_input(self.model) if head_fitted else None
        self.output = self.model.graph.output[0].name
        names = [self.features] if self.features else [self.output]
        self.fp32_values = run_outputs(with_outputs(self.model, names), self.images, names)[names[0]]

    def _say(self, message: str) -> None:
        if self.progress:
            import sys

            print(message, file=sys.stderr, flush=True)

    def _int8_values(self, settings: Int8Settings, work: pathlib.Path) -> np.ndarray:
        """The small set's features (or outputs) from INT8 models, each fold's from a model calibrated on the rest."""
        import onnx

        values = np.zeros_like(self.fp32_values)
        source = work / "fp32.onnx"
        onnx.save(self.model, str(source))
        splits = [(np.ones(len(self.labels), bool), self.calibration)] if self.calibration is not None else \
            [(self.fold == k, self.images[self.fold != k]) for k in range(FOLDS)]
        for k, (held, calibration) in enumerate(splits):
            if len(calibration) == 0:
                raise InputError("INT8 calibration: a fold of the small set is empty (need two images or more)")
            target = work / f"int8-fold{k}.onnx"
            quantize_int8(source, target, calibration, settings)
            quantized = onnx.load(str(target))
            name = head_input(quantized) if self.features else quantized.graph.output[0].name
            values[held] = run_outputs(with_outputs(quantized, [name]), self.images[held], [name])[name]
        return values

    def estimate(self, settings: Int8Settings) -> dict:
        """{"fp32": metrics, "int8": metrics, "drop": {accuracy, harmonic_mean}} on the small set, cross-fitted."""
        with tempfile.TemporaryDirectory() as work:
            int8 = self._int8_values(settings, pathlib.Path(work))
        if self.features:
            predictions = left_out_predictions(self.fp32_values, {"int8": int8}, self.labels, self.num_classes)
        else:
            predictions = {"fp32": self.fp32_values.argmax(1), "int8": int8.argmax(1)}
        fp32 = class_metrics(predictions["fp32"], self.labels, self.num_classes)
        result = class_metrics(predictions["int8"], self.labels, self.num_classes)
        return {"fp32": fp32, "int8": result,
                "drop": {k: fp32[k] - result[k] for k in ("accuracy", "harmonic_mean")},
                "head": "left out, re-fitted" if self.features else "the model's own"}

    def sensitivity(self, settings: Int8Settings) -> list:
        """Layers by how much INT8 error they add on the small set, most first: (name, added error), the relative
        error of the layer's output in the INT8 model minus the largest error already at its input."""
        import onnx

        with tempfile.TemporaryDirectory() as work:
            source, target = pathlib.Path(work) / "fp32.onnx", pathlib.Path(work) / "int8.onnx"
            onnx.save(self.model, str(source))
            quantize_int8(source, target, self.images if self.calibration is None else self.calibration, settings)
            quantized = onnx.load(str(target))
        kept = set(kept_in_float(self.model, settings))
        fp32_tensors = {o for n in self.model.graph.node for o in n.output}
        # The quantizer may fold an activation into its layer (Conv + Clip -> one output, named as the Clip's):
        # compare each layer's INT8 output with the FP32 tensor of the same name.
        layers = {n.name: n.output[0] for n in quantized.graph.node
                  if n.name in layer_outputs(self.model) and n.output[0] in fp32_tensors and n.name not in kept}
        names = sorted(set(layers.values()))
        reference = run_outputs(with_outputs(self.model, names), self.images, names)
        measured = run_outputs(with_outputs(quantized, names), self.images, names)
        error = {t: float(np.linalg.norm(measured[t] - reference[t]) / (np.linalg.norm(reference[t]) or 1.0))
                 for t in names}
        producer = {o: n for n in self.model.graph.node for o in n.output}
        memo: dict = {}

        def upstream(tensor: str) -> float:
            """The error already present in `tensor`: that of the nearest measured tensors it is computed from."""
            if tensor in error:
                return error[tensor]
            if tensor not in memo:
                node = producer.get(tensor)
                memo[tensor] = 0.0  # a cycle cannot occur in ONNX; this also ends the walk at graph inputs
                memo[tensor] = max((upstream(i) for i in node.input if i), default=0.0) if node is not None else 0.0
            return memo[tensor]

        nodes = {n.name: n for n in self.model.graph.node}
        added = [(name, error[tensor] - upstream(nodes[name].input[0])) for name, tensor in layers.items()]
        return sorted(added, key=lambda item: -item[1])

    def choose(self, settings: Int8Settings, max_drop: float) -> tuple:
        """(settings that meet the budget, their estimate, the estimates tried). Raises CheckFailed when no mix
        with up to MAX_FLOAT_SHARE of the layers more in float meets it."""
        tried = []
        estimate = self.estimate(settings)
        tried.append({"kept_float": list(kept_in_float(self.model, settings)), **_brief(estimate)})
        self._say(f"INT8 estimate: {_describe(estimate)}")
        if _within(estimate, max_drop):
            return settings, estimate, tried
        ranked = [name for name, _ in self.sensitivity(settings)]
        total = len(layer_classes(self.model)["quantizable"])
        cap = min(max(1, int(MAX_FLOAT_SHARE * total)), len(ranked))
        for count in sorted({min(2 ** k, cap) for k in range(cap.bit_length() + 1)} - {0}):  # 1, 2, 4, ..., cap
            candidate = replace_settings(settings, keep_nodes=tuple(settings.keep_nodes) + tuple(ranked[:count]))
            estimate = self.estimate(candidate)
            tried.append({"kept_float": list(kept_in_float(self.model, candidate)), **_brief(estimate)})
            self._say(f"INT8 with the {count} most sensitive layers in float: {_describe(estimate)}")
            if _within(estimate, max_drop):
                return candidate, estimate, tried
        best = min(tried, key=lambda t: max(t["drop"]["accuracy"], t["drop"]["harmonic_mean"]))
        raise CheckFailed(
            f"{self.fp32_path}: INT8 loses more than --max-drop {max_drop:g} on the small-set estimate even with "
            f"{len(tried[-1]['kept_float'])} of {total} layers in float (best: accuracy "
            f"{best['fp32']['accuracy']:.3f} -> {best['int8']['accuracy']:.3f}, harmonic mean "
            f"{best['fp32']['harmonic_mean']:.3f} -> {best['int8']['harmonic_mean']:.3f})")


def _within(estimate: dict, max_drop: float) -> bool:
    return all(estimate["drop"][k] <= max_drop + 1e-9 for k in ("accuracy", "harmonic_mean"))


def _brief(estimate: dict) -> dict:
    return {"fp32": {k: estimate["fp32"][k] for k in ("accuracy", "harmonic_mean")},
            "int8": {k: estimate["int8"][k] for k in ("accuracy", "harmonic_mean")}, "drop": estimate["drop"]}


def _describe(estimate: dict) -> str:
    f, q = estimate["fp32"], estimate["int8"]
    return (f"accuracy {f['accuracy']:.3f} -> {q['accuracy']:.3f}, harmonic mean {f['harmonic_mean']:.3f} -> "
            f"{q['harmonic_mean']:.3f}")



INT8_MODEL = "model.int8.onnx"
INT8_RECORD = "int8.json"


def per_class_report(fp32: dict, int8: dict, classes: list) -> dict:
    """accuracy, harmonic mean, worst class and every class's change, INT8 against FP32."""
    return {"fp32": {k: fp32[k] for k in ("accuracy", "harmonic_mean")},
            "int8": {k: int8[k] for k in ("accuracy", "harmonic_mean")},
            "worst_class": {"fp32": min(fp32["per_class"]), "int8": min(int8["per_class"])},
            "per_class_change": {name: b - a for name, a, b in zip(classes, fp32["per_class"], int8["per_class"])}}


def export_int8(out: pathlib.Path, max_drop: float, settings: Int8Settings | None = None, progress: bool = True,
                calibration: np.ndarray | None = None) -> dict:
    """OUT/model.int8.onnx from OUT/model.onnx through the gate, and OUT/int8.json: the settings chosen, the
    small-set estimate, and the test figures per class next to FP32. Nothing is written when the gate refuses.
    `calibration`: images to calibrate on instead of the small set (a test calibrates badly on purpose)."""
    from runtime_bench.atomic import write_json_atomic
    from runtime_bench.bundle import sha256_file

    from ..artifact import read_manifest
    from .prepare import small_arrays, test_arrays

    out = pathlib.Path(out)
    fp32_path = out / "model.onnx"
    if not fp32_path.is_file():
        raise InputError(f"{fp32_path}: no such file (run 'edgeprune export {out}' first)")
    max_drop = check_max_drop(max_drop)
    manifest = read_manifest(out)
    classes = manifest["classes"]
    images, labels = small_arrays(manifest, progress=False)
    gate = Int8Gate(fp32_path, images, labels, len(classes), head_fitted=manifest["config"].get("head") == "fit",
                    progress=progress, calibration=calibration)
    start = (settings or Int8Settings()).check()
    chosen, estimate, tried = gate.choose(start, max_drop)
    calibration = images if calibration is None else calibration
    with tempfile.TemporaryDirectory() as work:
        staged = pathlib.Path(work) / INT8_MODEL
        quantized = quantize_int8(fp32_path, staged, calibration, chosen)
        test_x, test_y = test_arrays(manifest, progress=False)
        name = gate.output
        fp32_test = class_metrics(run_outputs(fp32_path, test_x, [name])[name].argmax(1), test_y, len(classes))
        int8_logits = run_outputs(staged, test_x, [output_name(staged)])
        int8_test = class_metrics(next(iter(int8_logits.values())).argmax(1), test_y, len(classes))
        record = {
            "model": str(out / INT8_MODEL), "from": str(fp32_path), "from_sha256": sha256_file(fp32_path),
            "max_drop": max_drop, "start": start.describe(),
            "settings": chosen.describe(), "kept_float": quantized["kept_float"],
            "quantized_layers": len(quantized["quantized"]), "calibration_images": int(len(calibration)),
            # what ONNX Runtime's CPU provider has no int8 kernel (or fusion) for, run in float between Q/DQ
            "float_ops": float_ops(staged, quantized["kept_float"]),
            "estimate": dict(per_class_report(estimate["fp32"], estimate["int8"], classes), head=estimate["head"]),
            "test": per_class_report(fp32_test, int8_test, classes),
            "tried": tried,
        }
        record["estimate_minus_test"] = {
            k: (estimate["fp32"][k] - estimate["int8"][k]) - (fp32_test[k] - int8_test[k])
            for k in ("accuracy", "harmonic_mean")}
        from runtime_bench.atomic import atomic_output

        with atomic_output(out / INT8_MODEL) as tmp:
            tmp.write_bytes(staged.read_bytes())
    write_json_atomic(record, out / INT8_RECORD)
    return record


def output_name(path: pathlib.Path) -> str:
    """The name of an ONNX model's first output."""
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.output[0].name


def reusable_int8(out: pathlib.Path, max_drop: float) -> dict | None:
    """OUT/int8.json when OUT/model.int8.onnx was made from the OUT/model.onnx that is there now, for this budget
    and from the settings the gate starts from today."""
    from runtime_bench.bundle import sha256_file

    try:
        record = json.loads((out / INT8_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if (not (out / INT8_MODEL).is_file() or record.get("from_sha256") != sha256_file(out / "model.onnx")
            or record.get("max_drop") != max_drop or record.get("start") != Int8Settings().describe()):
        return None
    return record


def int8_stage(out: pathlib.Path, max_drop: float, progress: bool = True) -> dict:
    if progress:
        print(f"INT8: calibrating on the small set and judging it per class (--max-drop {max_drop:g})",
              file=sys.stderr)
    return export_int8(out, max_drop, progress=progress)


def int8_summary(record: dict) -> str:
    """One line: the small-set estimate that let the model through, its test figures, what stayed in float."""
    e, t = record["estimate"], record["test"]
    kept = record["kept_float"]
    return (f"{record['model']}: INT8 within --max-drop {record['max_drop']:g} on the small-set estimate (accuracy "
            f"{e['fp32']['accuracy']:.3f} -> {e['int8']['accuracy']:.3f}, harmonic mean {e['fp32']['harmonic_mean']:.3f}"
            f" -> {e['int8']['harmonic_mean']:.3f}); test accuracy {t['fp32']['accuracy']:.3f} -> "
            f"{t['int8']['accuracy']:.3f}, harmonic mean {t['fp32']['harmonic_mean']:.3f} -> "
            f"{t['int8']['harmonic_mean']:.3f}, worst class {t['worst_class']['fp32']:.2f} -> "
            f"{t['worst_class']['int8']:.2f}; {len(kept)} layer{'s' if len(kept) != 1 else ''} kept in float"
            + ("; no int8 kernel in ONNX Runtime's CPU provider for " + ", ".join(
                f"{op} x{n}" for op, n in record["float_ops"].items()) + " (run in float)" if record["float_ops"] else ""))
