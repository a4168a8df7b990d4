"""ONNX export + parity gate (exporters/onnx.py). Runs on CPU in well under a minute."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import numpy_helper

from exporters import onnx as onx
from runtime_bench.bundle import sha256_file
from runtime_bench.errors import CheckFailed, InputError

pytestmark = pytest.mark.slow


def _leftovers(folder: Path) -> list[str]:
    """Temp files the exporter may have left behind (hidden files or *.tmp*)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    return sess.run(["logits"], {"input": x})[0]


class TinyNet(torch.nn.Module):
    """Fast to export with either exporter; BN with non-trivial running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.features(x))


class TupleNet(TinyNet):
    def forward(self, x):
        y = super().forward(x)
        return y, y.softmax(dim=1)


def _randomise_bn(model: torch.nn.Module, size: int, seed: int) -> torch.nn.Module:
    """Run a few batches in train mode so BN running stats are not the 0/1 init, then eval."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size) * 2.0 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def mobilenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(torchvision.models.mobilenet_v2(num_classes=10), 64, seed=1)


@pytest.fixture
def tiny() -> torch.nn.Module:
    torch.manual_seed(3)
    return _randomise_bn(TinyNet(), 16, seed=4)


# ----------------------------------------------------------------------------------------------- success


def test_mobilenet_v2_auto_dynamo_passes_gate(mobilenet, tmp_path):
    images = _images(12, 64, seed=2)
    out = tmp_path / "mnv2.onnx"
    rec = onx.export_verified(mobilenet, images, out)

    assert rec["passed"] is True and rec["exporter"] == "dynamo" and rec["exporter_notes"] == []
    assert rec["top1_agreement"] == 1.0
    assert rec["logit_range"] > 0
    assert rec["tolerance"] == pytest.approx(1e-4 * rec["logit_range"])
    assert 0 <= rec["max_abs_diff"] <= rec["tolerance"]
    assert len(set(rec["batch_sizes"])) >= 2 and sum(rec["batch_sizes"]) == 12
    assert rec["opset"] >= 18
    assert rec["simplify"]["simplifier"].startswith("onnxsim ") and rec["simplify"]["note"] is None
    assert rec["file_bytes"] == out.stat().st_size and rec["sha256"] == sha256_file(out)
    assert mobilenet.training is False

    # Single file, checker-clean, dynamic batch declared and usable at 1 and 3.
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    with torch.no_grad():
        for n in (1, 3):
            x = images[:n]
            got = _ort_logits(out, x)
            ref = mobilenet(torch.from_numpy(x)).numpy()
            assert got.shape == (n, 10)
            np.testing.assert_allclose(got, ref, rtol=0, atol=rec["tolerance"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnv2.onnx"]


def test_mobilenet_v2_torchscript_exporter(mobilenet, tmp_path):
    images = _images(5, 64, seed=5)
    out = tmp_path / "mnv2_ts.onnx"
    rec = onx.export_verified(mobilenet, images, out, exporter="torchscript", rel_tol=1e-4)
    assert rec["passed"] is True and rec["exporter"] == "torchscript"
    assert rec["opset"] == 18
    assert _ort_logits(out, images[:3]).shape == (3, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnv2_ts.onnx"]


def test_vgg11_non_dividing_adaptive_pool_exports_via_dynamo(tmp_path):
    torch.manual_seed(6)
    model = torchvision.models.vgg11(num_classes=10)
    model.classifier = torch.nn.Linear(512 * 7 * 7, 10)  # small head; the 2x2 -> 7x7 adaptive pool is the point
    model.eval()
    images = _images(4, 64, seed=7)  # 64 px -> 2x2 feature map; 7 is not a multiple of 2... nor 2 of 7

    # The legacy tracer refuses this pooling, so "auto" must succeed through dynamo.
    with pytest.raises(CheckFailed, match=r"torchscript: .*adaptive_avg_pool2d"):
        onx.export_onnx(model, torch.from_numpy(images[:2]), tmp_path / "ts.onnx", exporter="torchscript")
    assert _leftovers(tmp_path) == [] and not (tmp_path / "ts.onnx").exists()

    out = tmp_path / "vgg11.onnx"
    rec = onx.export_verified(model, images, out, exporter="auto")
    assert rec["passed"] is True and rec["exporter"] == "dynamo"
    assert rec["max_abs_diff"] <= rec["tolerance"]
    assert _ort_logits(out, images[:3]).shape == (3, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg11.onnx"]


def test_export_onnx_returns_path_and_dynamic_batch(tiny, tmp_path):
    out = tmp_path / "tiny.onnx"
    got = onx.export_onnx(tiny, torch.randn(1, 3, 16, 16), out, exporter="dynamo")  # batch 1 is widened to 2
    assert got == out and out.is_file()
    x = _images(3, 16, seed=8)
    with torch.no_grad():
        np.testing.assert_allclose(_ort_logits(out, x), tiny(torch.from_numpy(x)).numpy(), atol=1e-5)
    np.testing.assert_allclose(_ort_logits(out, x[:1]).ravel(), _ort_logits(out, x)[0], atol=1e-6)
    assert _leftovers(tmp_path) == []


def test_auto_falls_back_to_torchscript_when_dynamo_fails(tiny, tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def dynamo_broken(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("dynamo exploded\nlong traceback detail")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_broken)
    rec = onx.export_verified(tiny, _images(4, 16, seed=9), tmp_path / "tiny.onnx")
    assert rec["exporter"] == "torchscript" and rec["passed"] is True
    assert len(rec["exporter_notes"]) == 1
    assert "dynamo exploded" in rec["exporter_notes"][0] and "long traceback" not in rec["exporter_notes"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


# ----------------------------------------------------------------------------------------------- failures


def test_both_exporters_fail_one_line_check_failed(tiny, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        name = "dyn" if kwargs.get("dynamo", True) else "ts"
        raise RuntimeError(f"{name} first line\n{name} second line")

    monkeypatch.setattr(torch.onnx, "export", broken)
    out = tmp_path / "tiny.onnx"
    with pytest.raises(CheckFailed) as info:
        onx.export_onnx(tiny, torch.randn(2, 3, 16, 16), out)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{out}: ONNX export failed")
    assert "dynamo: RuntimeError: dyn first line" in msg and "torchscript: RuntimeError: ts first line" in msg
    assert "second line" not in msg
    assert list(tmp_path.iterdir()) == []


def test_tampered_onnx_fails_gate_and_keeps_evidence(tiny, tmp_path, monkeypatch):
    real_simplify = onx.simplify_onnx

    def simplify_then_tamper(path, simplifier):
        note = real_simplify(path, simplifier)
        model = onnx.load(str(path))
        # Perturb the largest initializer (conv/fc weights) so ONNX no longer matches PyTorch.
        init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        arr = numpy_helper.to_array(init).copy()
        arr += 0.05 * np.sign(arr)
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
        onnx.save(model, str(path))
        return note

    monkeypatch.setattr(onx, "simplify_onnx", simplify_then_tamper)
    out = tmp_path / "models" / "tiny.onnx"
    out.parent.mkdir()
    evidence = tmp_path / "evidence"
    with pytest.raises(CheckFailed) as info:
        onx.export_verified(tiny, _images(6, 16, seed=10), out, evidence_dir=evidence)

    msg = str(info.value)
    failed = evidence / "tiny.failed.onnx"
    assert "\n" not in msg
    assert msg.startswith(f"{out}: parity gate failed: top-1 agreement ")
    assert re.search(r"\(need 1\.0\), max \|diff\| \S+ > \S+ \(0\.0001 x logit range\); evidence kept in ", msg)
    assert msg.endswith(str(failed))
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert sorted(p.name for p in evidence.iterdir()) == ["tiny.failed.onnx", "tiny.parity.json"]

    record = json.loads((evidence / "tiny.parity.json").read_text())
    assert record["passed"] is False
    assert record["max_abs_diff"] > record["tolerance"] > 0
    assert record["failed_path"] == str(failed) and record["sha256"] == sha256_file(failed)

    # The evidence file itself reproduces the failure through parity_check.
    again = onx.parity_check(failed, tiny, _images(6, 16, seed=10), batch_size=4)
    assert again["passed"] is False and again["batch_sizes"] == [4, 2]


def test_failure_evidence_defaults_to_output_folder(tiny, tmp_path, monkeypatch):
    def tamper(path, simplifier):
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.ndim == 2:  # fc weight: negate it, so top-1 disagrees
                init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(-arr), init.name))
        onnx.save(model, str(path))
        return {"simplifier": None, "note": "tampered"}

    monkeypatch.setattr(onx, "simplify_onnx", tamper)
    out = tmp_path / "tiny.onnx"
    with pytest.raises(CheckFailed, match=r"parity gate failed: top-1 agreement 0\.\d{4} \(need 1\.0\)"):
        onx.export_verified(tiny, _images(8, 16, seed=11), out, exporter="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.failed.onnx", "tiny.parity.json"]


def test_tuple_output_is_input_error(tmp_path):
    out = tmp_path / "tuple.onnx"
    with pytest.raises(InputError, match=r"model returns tuple, expected a single logits tensor") as info:
        onx.export_onnx(TupleNet().eval(), torch.randn(2, 3, 16, 16), out)
    assert str(info.value).startswith(str(out)) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="tuple"):
        onx.export_verified(TupleNet().eval(), _images(2, 16, seed=12), out)
    assert list(tmp_path.iterdir()) == []


def test_bad_exporter_name_is_input_error(tiny, tmp_path):
    with pytest.raises(InputError, match="exporter must be one of"):
        onx.export_onnx(tiny, torch.randn(2, 3, 16, 16), tmp_path / "x.onnx", exporter="tensorrt")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- pieces


def test_simplify_keeps_dynamic_batch_and_rejects_frozen(tiny, tmp_path, monkeypatch):
    out = onx.export_onnx(tiny, torch.randn(2, 3, 16, 16), tmp_path / "tiny.onnx", exporter="torchscript",
                          simplify=False)
    for simplifier in ("onnxslim", "onnxsim"):  # the alternative, then the default
        info = onx.simplify_onnx(out, simplifier)
        assert info["simplifier"].startswith(simplifier + " ") and info["note"] is None
        assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    with pytest.raises(InputError, match="simplifier 'onnxoptimizer': choose from onnxsim, onnxslim"):
        onx.simplify_onnx(out, "onnxoptimizer")

    # The chosen one missing: the other runs, and the record says so.
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnxsim", None)
        info = onx.simplify_onnx(out)
    assert info["simplifier"].startswith("onnxslim ") and info["note"] == "onnxsim is not installed; simplified with onnxslim"

    # A simplifier that freezes the batch dimension is rejected and the file is left as it was.
    import onnxslim

    def freeze(model):
        for value in (model.graph.input[0], model.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_value = 1
        return model

    before = sha256_file(out)
    monkeypatch.setattr(onnxslim, "slim", freeze)
    info = onx.simplify_onnx(out, "onnxslim")
    assert info["simplifier"] is None and "froze the batch dimension" in info["note"]
    assert sha256_file(out) == before
    assert _leftovers(tmp_path) == []


def test_parity_check_single_image_still_runs_two_batch_sizes(tiny, tmp_path):
    out = onx.export_onnx(tiny, torch.randn(2, 3, 16, 16), tmp_path / "tiny.onnx", exporter="torchscript")
    rec = onx.parity_check(out, tiny, _images(1, 16, seed=13))
    assert rec["passed"] is True and rec["batch_sizes"] == [1, 2] and rec["n_images"] == 1
    rec = onx.parity_check(out, tiny, _images(64, 16, seed=14), batch_size=32)
    assert rec["passed"] is True and rec["batch_sizes"] == [1, 31, 32]
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        onx.parity_check(out, tiny, np.zeros((3, 16, 16), np.float32))
