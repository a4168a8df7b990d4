"""The `edgeprune` command line: one-line errors with exit code 2, and prune -> export -> bench end to end.

Error cases run the CLI as a subprocess (`python -m toolchain --quiet ...`) so the real stderr and exit code
are checked; the quick l1/random runs call `toolchain.cli.main` in process. Nothing is downloaded: torchvision
models use `--weights none` and the images are tiny colour-separable PNGs written by fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torchvision

from toolchain.cli import main

SUBPROCESS_TIMEOUT_S = 300
RATES_OUTSIDE = ["1.5", "0", "-0.1"]  # --rate must lie strictly between 0 and 1


def run_cli(args: list, cwd: Path, quiet: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("EDGEPRUNE_DEBUG", None)  # that would turn an internal error into a traceback on purpose
    command = [sys.executable, "-m", "toolchain"] + (["--quiet"] if quiet else []) + [str(a) for a in args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)


def error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """Assert the one-line error contract and return that line."""
    shown = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr, shown
    assert result.returncode == code, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), shown
    assert lines[0].startswith("error: "), shown
    return lines[0]


def assert_no_outputs(folder: Path) -> None:
    """Nothing half-written: the output folder is absent or holds no files at all."""
    if folder.exists():
        files = [p for p in folder.rglob("*") if not p.is_dir()]
        assert files == [], f"partial outputs left in {folder}: {files}"


def prune_args(data: Path, out: Path, *extra: str, model: str = "resnet18", weights: str | None = "none",
               test_data: Path | None = None) -> list:
    args = ["prune", "--model", model]
    if weights is not None:
        args += ["--weights", weights]
    args += ["--data", str(data)]
    if test_data is not None:
        args += ["--test-data", str(test_data)]
    args += ["--image-size", "32", "--shots", "4", "--method", "lrp", "--rate", "0.2", "--out", str(out)]
    return args + list(extra)


def _tiny_onnx_bytes() -> bytes:
    """A valid (N, 3, 32, 32) -> (N, 3) classifier, built with onnx.helper (no exporter needed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


class ErrorRun(NamedTuple):
    result: subprocess.CompletedProcess
    out: Path  # where outputs would have gone: must be absent or empty afterwards
    paths: dict  # the inputs the case was built from, to spell out the expected message


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory, image_data, write_images) -> dict:
    """Build every bad input, then run all error cases as subprocesses, a few at a time.

    Each run is mostly Python importing torch (~2.5 s); running them concurrently keeps the module fast
    on a 2-core machine. The tests below each check one run.
    """
    base = tmp_path_factory.mktemp("errors")
    cases = {}

    def case(name: str, args: list, out: Path, **paths) -> None:
        cases[name] = (args, out, paths)

    def prune_case(name: str, *extra: str, data: Path = image_data.small, **kwargs) -> None:
        out = base / name / "out"
        case(name, prune_args(data, out, *extra, **kwargs), out, data=data, **kwargs)

    # Data.
    prune_case("missing_data", data=base / "no-such-data")
    with_empty_class = write_images(base / "empty-class-data", per_class=3)
    (with_empty_class / "zebra").mkdir()  # sorts last, after classes that do have images
    prune_case("empty_class", data=with_empty_class)
    prune_case("fewer_than_shots", "--shots", "20")

    # Options.
    for rate in RATES_OUTSIDE:
        prune_case(f"rate_{rate}", "--rate", rate)  # the last --rate wins
    prune_case("unknown_model", model="resnet81")
    prune_case("unknown_flag", "--bogus-flag")

    # Weights files.
    weights = base / "weights"
    weights.mkdir()
    bad = weights / "bad.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    torch.manual_seed(0)
    resnet18 = weights / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet18)
    whole = resnet18.read_bytes()
    truncated = weights / "truncated.pth"
    truncated.write_bytes(whole[: len(whole) // 2])
    resnet34 = weights / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), resnet34)
    module = weights / "module.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), module)
    prune_case("random_bytes_weights", weights=str(bad))
    prune_case("truncated_weights", weights=str(truncated))
    prune_case("pickled_module", weights=str(module))
    prune_case("resnet34_into_resnet18", model="resnet18", weights=str(resnet34))
    prune_case("resnet18_into_resnet34", model="resnet34", weights=str(resnet18))

    # Export and bench.
    not_pruned = base / "not-pruned"
    not_pruned.mkdir()
    case("export_without_manifest", ["export", not_pruned], not_pruned)
    onnx_file = base / "models" / "truncated.onnx"
    onnx_file.parent.mkdir()
    onnx_bytes = _tiny_onnx_bytes()
    onnx_file.write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    report = base / "reports" / "bench.json"
    report.parent.mkdir()  # a missing output folder is an error of its own, checked before the models
    case("bench_truncated_onnx", ["bench", onnx_file, "--data", image_data.test, "--json", report,
                                  "--image-size", "32", "--min-runs", "2", "--min-seconds", "0"],
         report.parent, model=onnx_file, report=report)

    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(run_cli, args, base) for name, (args, _, _) in cases.items()}
        return {name: ErrorRun(futures[name].result(), out, paths) for name, (_, out, paths) in cases.items()}


def check_error(run: ErrorRun) -> str:
    line = error_line(run.result)
    assert_no_outputs(run.out)
    return line


# ----------------------------------------------------------------------------------------- bad input: data


def test_missing_data_folder(error_runs):
    run = error_runs["missing_data"]
    assert check_error(run) == f"error: {run.paths['data']}: no such folder"


def test_empty_class_folder(error_runs):
    run = error_runs["empty_class"]
    assert check_error(run) == f"error: {run.paths['data']}/zebra: class folder has no images"


def test_fewer_images_than_shots(error_runs, image_data):
    line = check_error(error_runs["fewer_than_shots"])
    first = image_data.classes[0]
    assert line == (f"error: {image_data.small}/{first}: {image_data.small_per_class} images, fewer than --shots 20 "
                    "(use --allow-fewer to proceed)")


# -------------------------------------------------------------------------------------- bad input: options


@pytest.mark.parametrize("rate", RATES_OUTSIDE)
def test_rate_outside_open_unit_interval(error_runs, rate):
    line = check_error(error_runs[f"rate_{rate}"])
    assert line == f"error: --rate {float(rate)}: must be between 0 and 1 (a fraction of conv filters)"


def test_unknown_torchvision_model_suggests_close_names(error_runs):
    line = check_error(error_runs["unknown_model"])
    assert line.startswith("error: --model resnet81: not a torchvision classification model; did you mean ")
    assert "resnet18" in line


def test_unknown_flag_is_a_one_line_usage_error(error_runs):
    assert check_error(error_runs["unknown_flag"]) == "error: edgeprune: unrecognized arguments: --bogus-flag"


# ----------------------------------------------------------------------------------- bad input: weights


def test_random_bytes_weights_file(error_runs):
    run = error_runs["random_bytes_weights"]
    line = check_error(run)
    assert line.startswith(f"error: {run.paths['weights']}: not a readable weights file (")
    assert "refused" not in line  # garbage is not a pickle that weights_only=False could load


def test_truncated_state_dict(error_runs):
    run = error_runs["truncated_weights"]
    assert check_error(run).startswith(f"error: {run.paths['weights']}: not a readable weights file (")


def test_pickled_module_is_refused(error_runs):
    run = error_runs["pickled_module"]
    line = check_error(run)
    assert line.startswith(f"error: {run.paths['weights']}: refused: ")
    assert "weights_only" in line


def test_weights_of_another_model_list_unexpected_keys(error_runs):
    run = error_runs["resnet34_into_resnet18"]
    line = check_error(run)
    assert line.startswith(f"error: {run.paths['weights']}: weights do not match the model: ")
    assert "unexpected (first: layer1.2.conv1.weight" in line  # resnet34 has 3 blocks in layer1, resnet18 2
    assert "missing" not in line


def test_weights_of_a_smaller_model_list_missing_keys(error_runs):
    run = error_runs["resnet18_into_resnet34"]
    line = check_error(run)
    assert line.startswith(f"error: {run.paths['weights']}: weights do not match the model: ")
    assert "missing (first: layer1.2.conv1.weight" in line
    assert "unexpected" not in line


# -------------------------------------------------------------------------------------- export and bench


def test_export_without_pruned_json(error_runs):
    run = error_runs["export_without_manifest"]
    out = run.out
    assert check_error(run) == f"error: {out}/pruned.json: no such file (run 'edgeprune prune ... --out {out}' first)"


def test_bench_truncated_onnx(error_runs):
    run = error_runs["bench_truncated_onnx"]
    assert check_error(run).startswith(f"error: {run.paths['model']}: not a loadable ONNX model (")
    assert not run.paths["report"].exists()


# ------------------------------------------------------------------------------------------- end to end


def _conv_out_channels(model: torch.nn.Module) -> dict:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.slow
def test_prune_export_bench_end_to_end(tmp_path, image_data):
    out = tmp_path / "out"
    prune = run_cli(["prune", "--model", "mobilenet_v2", "--weights", "none", "--data", image_data.small,
                     "--test-data", image_data.test, "--shots", "4", "--image-size", "32", "--method", "lrp",
                     "--rate", "0.2", "--round-to", "8", "--out", out], tmp_path)
    assert prune.returncode == 0, prune.stderr
    assert "Traceback" not in prune.stderr
    for name in ("pruned.json", "pruned.safetensors"):
        assert (out / name).is_file(), name

    manifest = json.loads((out / "pruned.json").read_text())
    curve = manifest["curve"]
    assert curve[0]["rate"] == 0.0
    assert curve[-1]["rate"] >= 0.2
    assert curve[-1]["macs"] < curve[0]["macs"]
    assert manifest["classes"] == list(image_data.classes)

    original = _conv_out_channels(torchvision.models.mobilenet_v2(weights=None))
    convs = {name: spec for name, spec in manifest["layers"].items() if spec["type"] == "Conv2d"}
    assert set(convs) == set(original)
    assert any(spec["out"] < original[name] for name, spec in convs.items()), "no conv was pruned"
    for name, spec in convs.items():
        assert 0 < spec["out"] <= original[name], (name, spec, original[name])
        if original[name] % 8 == 0:
            assert spec["out"] % 8 == 0, f"{name}: {spec['out']} channels, not a multiple of --round-to 8"

    export = run_cli(["export", out], tmp_path)
    assert export.returncode == 0, export.stderr
    assert "Traceback" not in export.stderr
    assert export.stdout.count("parity passed") == 2, export.stdout
    dense, pruned = out / "dense.onnx", out / "model.onnx"
    assert dense.is_file() and pruned.is_file()
    assert pruned.stat().st_size < dense.stat().st_size

    report_path = out / "bench.json"
    bench = run_cli(["bench", dense, pruned, "--data", image_data.test, "--json", report_path,
                     "--min-runs", "5", "--min-seconds", "0.2"], tmp_path)
    assert bench.returncode == 0, bench.stderr
    assert "Traceback" not in bench.stderr
    report = json.loads(report_path.read_text())
    assert report["comparison"]["speedup_p50"] > 0
    assert set(report["models"]) == {"dense", "model"}
    n_test = len(image_data.classes) * image_data.test_per_class
    for label, entry in report["models"].items():
        accuracy = entry["accuracy"]
        assert 0.0 <= accuracy["accuracy"] <= 1.0, label
        assert accuracy["count"] == n_test, label
        assert entry["latency"]["count"] >= 5, label


# ------------------------------------------------------------------------------ quick in-process prunes


@pytest.mark.parametrize("method", ["l1", "random"])
def test_prune_other_methods_in_process(tmp_path, image_data, method, capsys):
    out = tmp_path / "out"
    code = main(["--quiet", "prune", "--model", "mobilenet_v2", "--weights", "none", "--data", str(image_data.small),
                 "--test-data", str(image_data.test), "--shots", "4", "--image-size", "32", "--method", method,
                 "--rate", "0.1", "--round-to", "8", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote" in captured.out
    assert (out / "pruned.safetensors").is_file()
    manifest = json.loads((out / "pruned.json").read_text())
    assert manifest["config"]["method"] == method
    curve = manifest["curve"]
    assert curve[-1]["rate"] >= 0.1
    assert curve[-1]["macs"] < curve[0]["macs"]
    assert manifest["cost"]["relevance_passes"] == 0  # only LRP needs relevance passes


def test_fitted_head_separates_the_colour_classes(tmp_path, image_data, capsys):
    """A random-init ResNet-18 still yields features a fitted linear head can split by colour: the data is sane."""
    out = tmp_path / "out"
    code = main(["--quiet", "prune", "--model", "resnet18", "--weights", "none", "--data", str(image_data.small),
                 "--test-data", str(image_data.test), "--shots", "4", "--image-size", "32", "--method", "l1",
                 "--rate", "0.05", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    dense = json.loads((out / "pruned.json").read_text())["curve"][0]
    assert dense["small_set_accuracy"] == 1.0
    assert dense["accuracy"] >= 0.9
