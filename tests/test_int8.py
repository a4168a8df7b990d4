"""INT8 for ONNX Runtime's CPU kernels (exporters/quantize.py) behind the per-class gate (toolchain/stages/precision.py).

Real parts: a tiny CNN pruned and exported by the pipeline, real PNG images, ONNX Runtime's static quantizer and
its CPU int8 kernels. Nothing here is a test double except where a test says it replaces the estimate.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from models_for_tests import tiny_cnn  # noqa: F401  (the factory the pruned folder is built from)
from onnx import numpy_helper

from exporters.quantize import Int8Settings, float_ops, layer_classes, named, quantize_int8
from runtime_bench.errors import CheckFailed, InputError
from toolchain.stages import precision
from toolchain.stages.precision import INT8_MODEL, INT8_RECORD, Int8Gate, export_int8, folds, run_outputs

TINY = "tests/models_for_tests.py:tiny_cnn"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, image_data):
    """A pruned and exported folder of tiny_cnn on the colour images (what `edgeprune export` leaves)."""
    from toolchain.config import ExportSettings, PruneConfig
    from toolchain.stages.export import export_models
    from toolchain.stages.prune import run_prune

    out = tmp_path_factory.mktemp("int8") / "out"
    config = PruneConfig(model=TINY, data=str(image_data.small), test_data=str(image_data.test), shots=10,
                         image_size=32, method="lrp", rate=0.2, round_to=1, step=0.1, batch_size=16)
    config.check()
    run_prune(config, out, progress=False)
    export_models(out, ExportSettings(exporter="torchscript"), progress=False)
    return out


def _small(out):
    from toolchain.artifact import read_manifest
    from toolchain.stages.prepare import small_arrays

    return small_arrays(read_manifest(out), progress=False)


def _initializer_types(model: onnx.ModelProto) -> dict:
    return {t.name: t.data_type for t in model.graph.initializer}


def test_folds_are_class_stratified():
    labels = np.repeat(np.arange(3), 10)
    fold = folds(labels)
    for cls in range(3):
        assert np.bincount(fold[labels == cls], minlength=2).tolist() == [5, 5]


def test_int8_export_writes_the_model_and_its_per_class_record(exported):
    record = export_int8(exported, 0.05, progress=False)
    path = exported / INT8_MODEL
    assert record["model"] == str(path) and json.loads((exported / INT8_RECORD).read_text()) == record
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    classes = layer_classes(named(onnx.load(str(exported / "model.onnx"))))
    assert record["kept_float"] == classes["first"] + classes["head"]  # the defaults (tiny_cnn has no depthwise)
    assert record["estimate"]["head"] == "left out, re-fitted"
    for figures in (record["estimate"], record["test"]):
        assert set(figures["per_class_change"]) == {"blue", "green", "red"}
        assert figures["int8"]["accuracy"] >= figures["fp32"]["accuracy"] - 0.05
    # The test figures are those of the file written: recomputed from it here.
    from toolchain.artifact import read_manifest
    from toolchain.stages.prepare import test_arrays

    images, labels = test_arrays(read_manifest(exported), progress=False)
    logits = run_outputs(path, images, [model.graph.output[0].name])[model.graph.output[0].name]
    assert float(np.mean(logits.argmax(1) == labels)) == pytest.approx(record["test"]["int8"]["accuracy"])


def test_the_gate_refuses_a_bad_calibration_and_writes_nothing(exported, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("pruned.json", "pruned.safetensors", "model.onnx"):
        (folder / name).write_bytes((exported / name).read_bytes())
    images, labels = _small(folder)
    one = images[labels == 0][:1] * 0.05  # a single image of one class, nearly black: ranges far too narrow
    with pytest.raises(CheckFailed) as info:
        export_int8(folder, 0.01, progress=False, calibration=one)
    message = str(info.value)
    assert message.startswith(f"{folder / 'model.onnx'}: INT8 loses more than --max-drop 0.01 on the small-set "
                              "estimate even with ")
    assert "\n" not in message and "harmonic mean" in message
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "pruned.json", "pruned.safetensors"]


def test_mixed_precision_leaves_the_chosen_layers_in_float(exported, tmp_path):
    images, _ = _small(exported)
    source = named(onnx.load(str(exported / "model.onnx")))
    classes = layer_classes(source)
    convs = [n for n in classes["quantizable"] if n not in classes["head"]]
    keep = convs[1]
    record = quantize_int8(exported / "model.onnx", tmp_path / "mixed.onnx", images,
                           Int8Settings(keep_float=("first",), keep_nodes=(keep,)))
    assert record["kept_float"] == [convs[0], keep]
    model = onnx.load(str(tmp_path / "mixed.onnx"))
    types = _initializer_types(model)
    by_name = {n.name: n for n in model.graph.node}
    producers = {o: n for n in model.graph.node for o in n.output}
    for name in classes["quantizable"]:
        weight = by_name[name].input[1]
        float_weight = types.get(weight) == onnx.TensorProto.FLOAT
        assert float_weight == (name in record["kept_float"]), name
        if not float_weight:  # int8 weights behind a DequantizeLinear
            assert producers[weight].op_type == "DequantizeLinear"
            assert numpy_helper.to_array(next(t for t in model.graph.initializer
                                              if t.name == producers[weight].input[0])).dtype == np.int8
    with pytest.raises(InputError, match="int8 keep_nodes: no Conv/Gemm/MatMul node named nowhere"):
        quantize_int8(exported / "model.onnx", tmp_path / "x.onnx", images, Int8Settings(keep_nodes=("nowhere",)))
    assert not (tmp_path / "x.onnx").exists()


def test_the_gate_keeps_the_most_sensitive_layers_in_float_until_the_estimate_fits(exported, monkeypatch):
    """The escalation itself, with the estimate replaced (a stand-in, said so here): it fits once the top
    ranked layer is kept in float."""
    images, labels = _small(exported)
    gate = Int8Gate(exported / "model.onnx", images, labels, 3)
    ranked = [name for name, _ in gate.sensitivity(Int8Settings())]
    assert ranked and set(ranked) <= set(layer_classes(gate.model)["quantizable"])

    def stand_in_estimate(self, settings):
        fits = ranked[0] in settings.keep_nodes
        drop = 0.0 if fits else 0.2
        metrics = {"accuracy": 0.9, "harmonic_mean": 0.9, "per_class": [0.9] * 3}
        worse = {k: (v - drop if k != "per_class" else v) for k, v in metrics.items()}
        return {"fp32": metrics, "int8": worse, "drop": {"accuracy": drop, "harmonic_mean": drop}, "head": "x"}

    monkeypatch.setattr(Int8Gate, "estimate", stand_in_estimate)
    settings, estimate, tried = gate.choose(Int8Settings(), 0.01)
    assert ranked[0] in settings.keep_nodes and estimate["drop"]["accuracy"] == 0.0
    assert [len(t["kept_float"]) for t in tried] == [2, 3]  # first conv and head; then the top layer too
    assert precision.MAX_FLOAT_SHARE == 0.25


def test_int8_settings_are_checked():
    for settings, message in [
        (Int8Settings(calibration="mse"), "int8 calibration 'mse': choose from minmax, entropy, percentile"),
        (Int8Settings(activations="signed"), "int8 activations 'signed': choose from asymmetric, symmetric"),
        (Int8Settings(percentile=0), "int8 percentile 0: must be in (0, 100]"),
        (Int8Settings(keep_float=("tail",)), "int8 keep_float tail: choose from first, head, depthwise"),
        (Int8Settings(ops="some"), "int8 ops 'some': choose from all, layers"),
    ]:
        with pytest.raises(InputError) as info:
            settings.check()
        assert str(info.value) == message


def test_float_ops_name_what_onnx_runtime_runs_in_float(exported, tmp_path):
    images, _ = _small(exported)
    found = {}
    for ops in ("all", "layers"):
        path = tmp_path / f"{ops}.onnx"
        record = quantize_int8(exported / "model.onnx", path, images, Int8Settings(ops=ops))
        found[ops] = float_ops(path, record["kept_float"])
    op_types = {n.op_type for n in onnx.load(str(exported / "model.onnx")).graph.node}
    assert set(found["layers"]) <= op_types and "Conv" not in found["layers"]
    assert sum(found["layers"].values()) > sum(found["all"].values())  # layers-only leaves float islands between


def test_bias_correction_takes_out_the_mean_error_and_changes_only_biases(exported, tmp_path):
    images, _ = _small(exported)
    source = exported / "model.onnx"
    output = onnx.load(str(source)).graph.output[0].name
    fp32 = run_outputs(source, images, [output])[output]
    errors, models = {}, {}
    for corrected in (False, True):
        path = tmp_path / f"corrected-{corrected}.onnx"
        # Ranges clipped at the 90th percentile: clipping shifts every layer's mean output.
        quantize_int8(source, path, images, Int8Settings(percentile=90.0, keep_float=(), bias_correction=corrected))
        models[corrected] = onnx.load(str(path))
        logits = run_outputs(path, images, [output])[output]
        errors[corrected] = float(np.abs((logits - fp32).mean(0)).max())  # the worst class's mean logit error
    assert errors[True] < 0.5 * errors[False], errors  # not all: the logits themselves are clipped too
    plain, fixed = models[False], models[True]
    assert [(n.op_type, list(n.input)) for n in plain.graph.node] == [(n.op_type, list(n.input)) for n in fixed.graph.node]
    changed = {t.name for t, u in zip(plain.graph.initializer, fixed.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))}
    producers = {o: n for n in fixed.graph.node for o in n.output}
    biases = set()
    for node in fixed.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2:
            bias = producers.get(node.input[2])
            biases.add(bias.input[0] if bias is not None else node.input[2])
    assert changed and changed <= biases
