"""Post-training INT8 of an ONNX classifier, calibrated on the small labelled set: ONNX Runtime's static
quantizer driven by our choices (`Int8Settings`), mixed precision by node name, and the per-layer error that
chooses which layers stay in float.

Targets:
- `ort-cpu`: a Q/DQ model that ONNX Runtime's CPU provider fuses into its int8 kernels (QLinearConv,
  QGemm...): per-channel int8 weights, int32 biases, activations uint8 with a zero point (asymmetric) by default.
- `tensorrt`: what TensorRT's explicit quantization takes: symmetric int8 activations and weights, float biases
  (TensorRT's DequantizeLinear reads int8, fp8 and int4 only). `exporters.tensorrt.quantize_qdq` uses it.

No torch here: this module runs wherever onnx and onnxruntime do.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import onnx

from runtime_bench.atomic import atomic_output
from runtime_bench.errors import InputError

CALIBRATIONS = ("minmax", "entropy", "percentile")
ACTIVATIONS = ("asymmetric", "symmetric")
LAYER_CLASSES = ("first", "head", "depthwise")  # layers that can be kept in float by what they are
TARGETS = ("ort-cpu", "tensorrt")
OPS = ("all", "layers")
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")  # the layers whose int8 kernels carry the speedup
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class Int8Settings:
    """How a model is quantized. The defaults are the measured best (benchmarks/int8_levers.py)."""

    # ONNX Runtime's quantize_static runs its entropy calibrator with 128 histogram bins for 128 quantized ones,
    # where the only candidate threshold is the whole range: "entropy" gives min-max's scales there (measured:
    # the same scale on every tensor); TensorRT 10's entropy calibrator is its own.
    calibration: str = "percentile"
    percentile: float = 99.999  # for calibration "percentile": the share of each tensor's values kept in range
    activations: str = "asymmetric"  # uint8 with a zero point; "symmetric": int8, zero point 0
    per_channel: bool = True  # one weight scale per output channel
    ops: str = "all"  # "all": every op ONNX Runtime can quantize (activations stay int8 between layers);
    # "layers": only Conv/Gemm/MatMul inputs (float in between)
    keep_float: tuple = ("head", "first", "depthwise")  # layer classes (LAYER_CLASSES) left in float
    keep_nodes: tuple = field(default=())  # and these nodes by name (mixed precision from sensitivity)
    # Empirical bias correction: every layer's bias shifted by its mean output error (INT8 minus FP32, per
    # output channel, over the calibration images), so that clipping and rounding do not move the means.
    bias_correction: bool = False

    def check(self) -> Int8Settings:
        if self.calibration not in CALIBRATIONS:
            raise InputError(f"int8 calibration {self.calibration!r}: choose from {', '.join(CALIBRATIONS)}")
        if self.activations not in ACTIVATIONS:
            raise InputError(f"int8 activations {self.activations!r}: choose from {', '.join(ACTIVATIONS)}")
        if self.ops not in OPS:
            raise InputError(f"int8 ops {self.ops!r}: choose from {', '.join(OPS)}")
        if not 0.0 < float(self.percentile) <= 100.0:
            raise InputError(f"int8 percentile {self.percentile!r}: must be in (0, 100]")
        unknown = sorted(set(self.keep_float) - set(LAYER_CLASSES))
        if unknown:
            raise InputError(f"int8 keep_float {', '.join(unknown)}: choose from {', '.join(LAYER_CLASSES)}")
        return self

    def describe(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in which every node has a unique name (the quantizer excludes nodes by name)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    seen = set()
    for index, node in enumerate(copy.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
    return copy


def layer_classes(model: onnx.ModelProto) -> dict:
    """{"first": [...], "head": [...], "depthwise": [...], "quantizable": [...]}: names of the Conv/Gemm/MatMul
    nodes of a named model. first: the layers reading the graph input; head: the last layer of the graph;
    depthwise: grouped convs with one input channel per group."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    inputs = {v.name for v in graph.input if v.name not in initializers}
    layers = [n for n in graph.node if n.op_type in QUANTIZED_OPS]
    depthwise = []
    for node in layers:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and group > 1 and weight is not None and len(weight.dims) > 1 and weight.dims[1] == 1:
            depthwise.append(node.name)
    return {"first": [n.name for n in layers if n.input[0] in inputs],
            "head": [layers[-1].name] if layers else [],
            "depthwise": depthwise,
            "quantizable": [n.name for n in layers]}


def kept_in_float(model: onnx.ModelProto, settings: Int8Settings) -> list:
    """Names of the layers `settings` leaves in float, in graph order."""
    classes = layer_classes(model)
    wanted = {name for cls in settings.keep_float for name in classes[cls]} | set(settings.keep_nodes)
    unknown = sorted(set(settings.keep_nodes) - set(classes["quantizable"]))
    if unknown:
        raise InputError(f"int8 keep_nodes: no Conv/Gemm/MatMul node named {', '.join(unknown)}")
    return [name for name in classes["quantizable"] if name in wanted]


def _input_name(model: onnx.ModelProto, where: Any) -> str:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v.name for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise InputError(f"{where}: model has {len(inputs)} inputs; INT8 calibration (and a TensorRT engine here) "
                         "takes exactly one")
    return inputs[0]


def quantize_int8(onnx_path: Any, out_path: Any, calibration_images: np.ndarray, settings: Int8Settings,
                  target: str = "ort-cpu") -> dict:
    """Write an INT8 Q/DQ copy of `onnx_path` to `out_path`, calibrated on `calibration_images` (N, C, H, W,
    preprocessed like the model's input). Returns {"kept_float": [...], "quantized": [...], "settings", "target"}."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = settings.check()
    if target not in TARGETS:
        raise InputError(f"int8 target {target!r}: choose from {', '.join(TARGETS)}")
    images = np.ascontiguousarray(calibration_images, dtype=np.float32)
    if images.ndim != 4 or images.shape[0] < 1:
        raise InputError(f"INT8 calibration images must have shape (N, C, H, W), got {images.shape}")
    model = named(onnx.load(str(onnx_path)))
    input_name = _input_name(model, onnx_path)
    keep = kept_in_float(model, settings)
    symmetric = settings.activations == "symmetric" or target == "tensorrt"
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.calibration]
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True,
             # TensorRT's DequantizeLinear reads int8/fp8/int4 only (onnxruntime issues 14229, 17738;
             # onnx-tensorrt 850); ONNX Runtime's CPU kernels want the int32 bias.
             "QuantizeBias": target != "tensorrt"}
    if settings.calibration == "percentile":
        extra["CalibPercentile"] = float(settings.percentile)

    # Equal batches: the histogram calibrators (entropy, percentile) stack them into one array.
    batch = max(b for b in range(1, CALIBRATION_BATCH + 1) if len(images) % b == 0)

    class SmallSet(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{input_name: images[i : i + batch]} for i in range(0, len(images), batch)])

        def get_next(self) -> dict | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as work:
        source, prepared = pathlib.Path(work) / "named.onnx", pathlib.Path(work) / "prepared.onnx"
        target_path = pathlib.Path(work) / "int8.onnx"
        onnx.save(model, str(source))
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
            quant_pre_process(str(source), str(prepared), skip_optimization=True)  # shape inference, as it expects
            ops = None if settings.ops == "all" and target != "tensorrt" else list(QUANTIZED_OPS)
            quantize_static(str(prepared), str(target_path), SmallSet(), quant_format=QuantFormat.QDQ,
                            per_channel=settings.per_channel, calibrate_method=method,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=ops, nodes_to_exclude=keep,
                            extra_options=extra)
        if settings.bias_correction:
            correct_biases(model, target_path, images, input_name)
        with atomic_output(out_path) as tmp:
            shutil.copyfile(target_path, tmp)
    quantized = [n for n in layer_classes(model)["quantizable"] if n not in keep]
    return {"target": target, "settings": settings.describe(), "kept_float": keep, "quantized": quantized}


def _bias_of(graph: onnx.GraphProto, node: onnx.NodeProto) -> tuple | None:
    """(the bias initializer, the per-channel scale of its values) of a Conv/Gemm, read through the
    DequantizeLinear of an int32 bias; None without a bias initializer."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    initializers = {t.name: t for t in graph.initializer}
    if node.input[2] in initializers:
        return initializers[node.input[2]], 1.0
    producer = next((n for n in graph.node if node.input[2] in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear" or producer.input[0] not in initializers:
        return None
    scale = onnx.numpy_helper.to_array(initializers[producer.input[1]])
    return initializers[producer.input[0]], scale


def _cpu_session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _channel_means(session, images: np.ndarray, input_name: str, tensors: Sequence[str], feeds: dict) -> list:
    """Per-channel means (axis 1; over images and positions) of `tensors` when `session` runs `images`."""
    sums, shapes = [0.0] * len(tensors), []
    for start in range(0, len(images), CALIBRATION_BATCH):
        values = session.run(list(tensors), {input_name: images[start : start + CALIBRATION_BATCH], **feeds})
        sums = [s + v.astype(np.float64).swapaxes(0, 1).reshape(v.shape[1], -1).sum(1) for s, v in zip(sums, values)]
        shapes = [v.shape for v in values]
    return [s / (len(images) * int(np.prod(shape[2:]))) for s, shape in zip(sums, shapes)]


def correct_biases(fp32: onnx.ModelProto, qdq_path: Any, images: np.ndarray, input_name: str) -> None:
    """Empirical bias correction of the Q/DQ model at `qdq_path`, in place: each Conv/Gemm's bias less the
    mean, per output channel, of its output's error against the FP32 model on `images` (Nagel et al. 2019,
    "Data-free quantization", section 4.2 with data). Layer by layer in graph order, each measured with the
    layers above it already corrected: correcting all at once overshoots, since a layer's error is partly
    its inputs'. Quantized biases are edited in their int32 steps."""
    qdq = onnx.load(str(qdq_path))
    # A layer's output in the Q/DQ model is the FP32 model's tensor of the same name, or that name before a
    # QuantizeLinear. Where the quantizer dropped a following Relu/Clip (its uint8 range clips instead), the
    # layer takes over the activation's output name but not its values: compare after the Q/DQ pair then.
    fp32_tensors = {o for n in fp32.graph.node for o in n.output}
    consumers = {n.input[0]: n for n in qdq.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    layers = []  # (bias initializer, its scale, the tensor measured in the Q/DQ model, the FP32 tensor)
    for node in qdq.graph.node:
        bias = _bias_of(qdq.graph, node) if node.op_type in QUANTIZED_OPS else None
        name = node.output[0].removesuffix("_QuantizeLinear_Input")
        if bias is None or name not in fp32_tensors or bias[0].name in {b.name for b, *_ in layers}:
            continue
        measured = node.output[0]
        quantize = consumers.get(measured)
        if quantize is not None and quantize.op_type == "QuantizeLinear" and quantize.output[0] in consumers:
            measured = consumers[quantize.output[0]].output[0]
        layers.append((*bias, measured, name))
    if not layers:
        return
    reference = _channel_means(_cpu_session(with_outputs(fp32, [f for *_, f in layers])), images, input_name,
                               [f for *_, f in layers], {})
    # The biases become inputs of one probe session, so that every step runs with the biases corrected so far.
    values = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor, *_ in layers}
    probe = with_outputs(qdq, [m for _, _, m, _ in layers])
    kept = [t for t in probe.graph.initializer if t.name not in values]
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(kept)
    probe.graph.input.extend(onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype),
                                                                v.shape) for n, v in values.items())
    session = _cpu_session(probe)
    for (tensor, scale, measured, _), want in zip(layers, reference):
        [mean] = _channel_means(session, images, input_name, [measured], values)
        bias = values[tensor.name]
        shift = (mean - want) / scale
        if bias.dtype.kind == "i":
            info = np.iinfo(bias.dtype)
            values[tensor.name] = np.clip(np.round(bias - shift), info.min, info.max).astype(bias.dtype)
        else:
            values[tensor.name] = (bias - shift).astype(bias.dtype)
    for tensor, *_ in layers:
        tensor.CopyFrom(onnx.numpy_helper.from_array(values[tensor.name], tensor.name))
    onnx.save(qdq, str(qdq_path))


def float_ops(int8_path: Any, kept: Sequence[str] = ()) -> dict:
    """{op type: count} of the nodes ONNX Runtime's CPU provider still runs in float on dequantized values once
    it has fused what it can into its int8 kernels (its graph as optimized for the CPU), apart from the layers
    `kept` in float on purpose: where it has no int8 kernel, or no fusion, for an op."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as work:
        optimized = pathlib.Path(work) / "optimized.onnx"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: dict = {}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.name in kept:
            continue
        if any(i in dequantized for i in node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names` (type left for ONNX Runtime to infer)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {v.name for v in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def head_input(model: onnx.ModelProto) -> str | None:
    """The tensor the graph's last Gemm/MatMul reads: the features a linear head classifies (None when the
    graph does not end in one)."""
    layers = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    if not layers or layers[-1].op_type not in ("Gemm", "MatMul"):
        return None
    return layers[-1].input[0]


def layer_outputs(model: onnx.ModelProto) -> dict:
    """{layer name: its output tensor} for the Conv/Gemm/MatMul nodes of a named model."""
    return {n.name: n.output[0] for n in model.graph.node if n.op_type in QUANTIZED_OPS}


def replace_settings(settings: Int8Settings, **changes: Any) -> Int8Settings:
    return replace(settings, **changes).check()
