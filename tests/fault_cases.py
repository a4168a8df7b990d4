"""The fault catalogue: every bad input we know a user can give, the one line they see, and the exit code.

Each row is a test (tests/test_faults.py runs the `cli` rows through `toolchain.cli.main`; the other runners
name the test that checks the row) and a line of README's table (`python scripts/fault_catalogue.py`).

In `argv` and `message`, `{name}` stands for a path the row's setup made (`{out}` the output folder, `{data}`
and `{test}` the image folders, ...) and `{any}` for words of a third party (PIL, torch, ONNX) that we pass
on but do not control. Exit codes: 2 bad input or usage, 3 a check failed, 130/143 interrupted/terminated.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

ANY = "{any}"
TINY_CNN = f"{Path(__file__).with_name('models_for_tests.py')}:tiny_cnn"
# How placeholders read in README (default: the name in capitals).
SHOWN_AS = {"factory": "MODEL.py", "model": "MODEL.onnx"}
ARTIFACT = ("head.safetensors", "pruned.json", "pruned.safetensors")  # what `edgeprune prune` writes


@dataclass
class Workspace:
    """What a row's setup works with; `paths` holds the placeholders of argv and message."""

    tmp: Path  # this row's own folder
    paths: dict
    images: NamedTuple  # conftest.ImageData: shared colour-separable image folders (small, test)
    write_images: Callable  # conftest.write_image_folder
    pruned: Path  # a finished `edgeprune prune` folder of tiny_cnn, to copy
    monkeypatch: pytest.MonkeyPatch
    finalizers: list = field(default_factory=list)

    def set(self, name: str, value) -> Path:
        self.paths[name] = str(value)
        return Path(value)

    @property
    def out(self) -> Path:
        return Path(self.paths["out"])

    def close(self) -> None:
        for finalize in reversed(self.finalizers):
            finalize()


@dataclass(frozen=True)
class Fault:
    id: str
    area: str
    case: str  # what the user did (README)
    argv: tuple = ()
    message: str | None = None  # the one line on stderr; None: stderr stays empty
    exit: int = 2
    setup: Callable[[Workspace], None] | None = None
    keeps: tuple = ()  # the files the output folder holds afterwards (relative names); nothing else
    outcome: str = ""  # what happens, where that is more than the message (README)
    check: Callable[[Workspace], None] | None = None  # further assertions on what the command left
    runner: str = "cli"  # "cli", or the test that checks this row: "stopped_runs", "fuzz"
    skip: Callable[[], str | None] | None = None  # a reason to skip on this machine, or None

    def command(self, paths: dict) -> list[str]:
        return [arg.format(**paths) for arg in self.argv]

    def pattern(self, paths: dict) -> re.Pattern:
        """The message with the row's paths filled in; `{any}` matches any non-empty text."""
        parts = [re.escape(part.format(**paths)) for part in self.message.split(ANY)]
        return re.compile(".+".join(parts))

    def shown(self) -> str:
        """What the user sees, for README: the message with placeholders in capitals, then the outcome."""
        text = ""
        if self.message is not None:
            message = re.sub(r"\{(\w+)\}", lambda m: "…" if m[1] == "any" else SHOWN_AS.get(m[1], m[1].upper()),
                             self.message)
            text = f"`{message}`"
        if self.outcome:
            text = f"{text}; {self.outcome}" if text else self.outcome
        return text


def prune(*extra: str, test: bool = True) -> tuple:
    """A quick `edgeprune prune` of tiny_cnn (l1 scores, 32 px); `extra` flags come last and win."""
    test_data = ("--test-data", "{test}") if test else ()
    return ("prune", "--model", "{tiny}", "--data", "{data}", *test_data, "--shots", "4", "--image-size", "32",
            "--method", "l1", "--rate", "0.3", "--round-to", "4", "--out", "{out}", *extra)


def bench(*extra: str) -> tuple:
    return ("bench", "{model}", "--data", "{test}", "--json", "{out}/bench.json", "--image-size", "32",
            "--min-runs", "2", "--min-seconds", "0", *extra)


# ------------------------------------------------------------------------------------------------ setups


def noise_png_bytes(size: int = 64) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def copy_test_images(ws: Workspace) -> Path:
    return ws.set("test", shutil.copytree(ws.images.test, ws.tmp / "test"))


def missing_folder(ws):
    ws.set("data", ws.tmp / "no-such-folder")


def a_file_as_folder(ws):
    ws.set("data", ws.tmp / "images.zip").write_bytes(b"PK\x03\x04")


def loose_images(ws):
    root = ws.set("data", ws.tmp / "flat")
    root.mkdir()
    shutil.copy(next(Path(ws.images.small, "blue").iterdir()), root / "00.png")


def empty_class(ws):
    root = ws.set("data", ws.write_images(ws.tmp / "data", per_class=5))
    (root / "zebra").mkdir()  # sorts after the classes that have images


def red_has_three(ws):
    root = ws.set("data", ws.write_images(ws.tmp / "data", per_class=6))
    for index in range(3, 6):
        (root / "red" / f"{index:02d}.png").unlink()


def unreadable_files(ws):
    test = copy_test_images(ws)
    whole = noise_png_bytes()
    (test / "blue" / "zz-truncated.png").write_bytes(whole[: len(whole) // 2])
    (test / "green" / "notes.jpg").write_text("not a jpeg\n")


def class_all_unreadable(ws):
    test = copy_test_images(ws)
    for image in (test / "red").iterdir():
        image.unlink()
    (test / "red" / "scan.png").write_text("not a png\n")


def image_modes(ws):
    """Each class's first test image as grey, grey + alpha, RGBA, palette, 16-bit grey and CMYK."""
    import numpy as np
    from PIL import Image

    root = ws.set("test", ws.tmp / "modes")
    for source in sorted(Path(ws.images.test).iterdir()):
        folder = root / source.name
        folder.mkdir(parents=True)
        with Image.open(min(source.iterdir())) as image:
            rgb = image.convert("RGB")
        rgb.convert("L").save(folder / "grey.png")
        rgb.convert("LA").save(folder / "grey-alpha.png")
        rgb.convert("RGBA").save(folder / "rgba.png")
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
        Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(folder / "deep.png")
        rgb.convert("CMYK").save(folder / "print.tif")


def other_classes(ws):
    colours = {"blue": (40, 60, 220), "green": (40, 200, 60), "yellow": (220, 220, 40)}
    ws.set("test", ws.write_images(ws.tmp / "test", per_class=2, colours=colours))


def write_factory(ws, source: str) -> None:
    path = ws.set("factory", ws.tmp / "net.py")
    path.write_text(source)


TWO_OUTPUTS = '''
from torch import nn


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        logits = self.fc(self.conv(x).mean((2, 3)))
        return logits, logits.softmax(1)


def build():
    return TwoOutputs()


def features():
    return nn.Sequential(nn.Conv2d(3, 8, 3))


def fixed_size():  # a flatten sized for 64 px inputs
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 64 * 64, 3))


def build_raising():
    raise ValueError("width must be positive")
'''


def factory(ws):
    write_factory(ws, TWO_OUTPUTS)


def factory_import_fails(ws):
    write_factory(ws, "import no_such_module_for_edgeprune\n")


def missing_factory(ws):
    ws.set("factory", ws.tmp / "nope.py")


def tiny_state(ws, change: Callable[[dict], None], name: str = "weights.pth") -> None:
    import torch
    from models_for_tests import tiny_cnn

    state = tiny_cnn().state_dict()
    change(state)
    torch.save(state, ws.set("weights", ws.tmp / name))


def without_head_weight(ws):
    tiny_state(ws, lambda state: state.pop("12.weight"))


def with_extra_key(ws):
    import torch

    tiny_state(ws, lambda state: state.update({"13.weight": torch.zeros(3)}))


def with_five_classes(ws):
    import torch

    tiny_state(ws, lambda state: state.update({"12.weight": torch.zeros(5, 32), "12.bias": torch.zeros(5)}))


def random_bytes(ws):
    import numpy as np

    ws.set("weights", ws.tmp / "weights.pth").write_bytes(np.random.default_rng(0).bytes(4096))


def truncated_weights(ws):
    tiny_state(ws, lambda state: None)
    path = Path(ws.paths["weights"])
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def corrupt_safetensors(ws):
    ws.set("weights", ws.tmp / "weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")


def pickled_module(ws):
    import torch
    from models_for_tests import tiny_cnn

    torch.save(tiny_cnn(), ws.set("weights", ws.tmp / "model.pth"))


def empty_out(ws):
    ws.out.mkdir()


def pruned_out(ws):
    shutil.copytree(ws.pruned, ws.out, ignore=shutil.ignore_patterns("*.onnx", "export.json"))


def negate_the_head(path, simplifier) -> dict:
    """Stands in for an exporter bug: the exported classifier's weights negated, so ONNX disagrees."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.ndim == 2:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(-array), init.name))
    onnx.save(model, str(path))
    return {"simplifier": None, "note": "negated"}


def exporter_disagrees(ws):
    from exporters import onnx as onnx_exporter

    pruned_out(ws)
    ws.monkeypatch.setattr(onnx_exporter, "simplify_onnx", negate_the_head)


def tiny_onnx_bytes() -> bytes:
    """A valid (N, 3, 32, 32) -> (N, 3) classifier, built with onnx.helper (no exporter needed)."""
    import numpy as np
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


def onnx_model(ws):
    empty_out(ws)
    ws.set("model", ws.tmp / "tiny.onnx").write_bytes(tiny_onnx_bytes())


def truncated_onnx(ws):
    empty_out(ws)
    whole = tiny_onnx_bytes()
    ws.set("model", ws.tmp / "truncated.onnx").write_bytes(whole[: len(whole) // 2])


def missing_onnx(ws):
    empty_out(ws)
    ws.set("model", ws.tmp / "missing.onnx")


def onnxruntime_gpu_installed() -> str | None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return "onnxruntime-gpu is installed here, so its backend is not missing"
    return None


def small_disk(ws, kilobytes: int) -> Path:
    """A tmpfs of `kilobytes` mounted in the row's folder (root only), unmounted when the row is done."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is a small tmpfs, and mounting one needs root")
    disk = ws.tmp / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    ws.finalizers.append(lambda: subprocess.run(["umount", str(disk)], check=True))
    return disk


def disk_too_small_for_the_weights(ws):
    ws.set("out", small_disk(ws, 8) / "out")


def disk_full_after_pruning(ws):
    disk = small_disk(ws, 256)
    ws.set("out", disk / "out")
    pruned_out(ws)
    free = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(free.f_bavail * free.f_frsize - 4096))  # 4 KiB left: less than an ONNX file


def bad_config(ws):
    ws.set("config", ws.tmp / "my.yaml").write_text("model: resnet18\ncolour: blue\n")


# ------------------------------------------------------------------------------------------------ checks


def manifest(ws) -> dict:
    import json

    return json.loads((ws.out / "pruned.json").read_text())


def all_images_used(ws):
    assert manifest(ws)["images"] == {"small": 3 * 14, "test": 3 * ws.images.test_per_class}


def broken_files_skipped(ws):
    m = manifest(ws)
    assert sorted(Path(p).name for p in m["skipped_images"]) == ["notes.jpg", "zz-truncated.png"]
    assert m["images"]["test"] == 3 * ws.images.test_per_class


def every_mode_loaded(ws):
    m = manifest(ws)
    assert m["skipped_images"] == [] and m["images"]["test"] == 3 * 6


def no_layer_emptied(ws):
    m = manifest(ws)
    assert m["curve"][-1]["rate"] >= 0.95
    convs = [spec["out_channels"] for spec in m["layers"].values() if spec["type"] == "Conv2d"]
    assert len(convs) == 3 and min(convs) == 1


def evidence_kept(ws):
    import json

    record = json.loads((ws.out / "dense.parity.json").read_text())
    assert record["passed"] is False and record["failed_path"] == str(ws.out / "dense.failed.onnx")


# ------------------------------------------------------------------------------------------------ the rows

DATA, MODELS, PRUNING, EXPORT, RUNS, CLI = "data", "models", "pruning", "export and bench", "runs", "command line"
INTERRUPTED = "finished outputs are complete, nothing half-written was kept"

CATALOGUE = [
    # Data.
    Fault("data_missing", DATA, "`--data` names no folder", prune(), "error: {data}: no such folder",
          setup=missing_folder),
    Fault("data_not_a_folder", DATA, "`--data` names a file", prune(), "error: {data}: not a folder",
          setup=a_file_as_folder),
    Fault("data_no_class_folders", DATA, "images straight in the folder, no class folders", prune(),
          "error: {data}: no class folders (expected {data}/<class>/<image>)", setup=loose_images),
    Fault("data_empty_class", DATA, "a class folder without images", prune(),
          "error: {data}/zebra: class folder has no images", setup=empty_class),
    Fault("data_fewer_than_shots", DATA, "fewer images in a class than `--shots`", prune("--shots", "20"),
          "error: {data}/blue: 14 images, fewer than --shots 20 (use --allow-fewer to proceed)"),
    Fault("data_fewer_allowed", DATA, "the same with `--allow-fewer`", prune("--shots", "20", "--allow-fewer"),
          "warning: 3 classes with fewer images than --shots 20 (first: {data}/blue: 14 images); all of their "
          "images are in the small set", 0, outcome="the run goes on", keeps=ARTIFACT, check=all_images_used),
    Fault("data_fewer_nothing_to_test", DATA, "`--allow-fewer` takes all of a class, and no `--test-data`",
          prune("--allow-fewer", test=False),
          "error: {data}/red: all 3 images are in the small set (--shots 4), none is left to test on; "
          "give --test-data", setup=red_has_three),
    Fault("data_unreadable_skipped", DATA, "a truncated PNG and a text file named .jpg", prune(),
          "warning: skipped 2 unreadable image files (first: {test}/blue/zz-truncated.png); --strict stops on "
          "them instead", 0, setup=unreadable_files, outcome="the run goes on without them (listed in pruned.json)",
          keeps=ARTIFACT, check=broken_files_skipped),
    Fault("data_unreadable_strict", DATA, "the same with `--strict`", prune("--strict"),
          "error: {test}/blue/zz-truncated.png: not a readable image ({any})", setup=unreadable_files),
    Fault("data_class_unreadable", DATA, "a class whose only image is unreadable", prune(),
          "error: {test}/red: class folder has no readable images (all 1 skipped)", setup=class_all_unreadable),
    Fault("data_image_modes", DATA, "grey, grey + alpha, RGBA, palette, 16-bit and CMYK images", prune(), None, 0,
          setup=image_modes, keeps=ARTIFACT, check=every_mode_loaded,
          outcome="converted to RGB (16-bit by its own value range) and used, all 18"),
    Fault("data_test_classes_differ", DATA, "`--test-data` with other classes than `--data`", prune(),
          "error: {test}: test classes differ from {data}: missing [red], extra [yellow]", setup=other_classes),
    # Models.
    Fault("model_unknown_name", MODELS, "a misspelt torchvision name", prune("--model", "resnet81"),
          "error: --model resnet81: not a torchvision classification model; did you mean resnet18, {any}?"),
    Fault("model_factory_missing", MODELS, "a factory file that does not exist", prune("--model", "{factory}:build"),
          "error: {factory}: no such model file", setup=missing_factory),
    Fault("model_factory_import_fails", MODELS, "a factory file whose import fails", prune("--model", "{factory}:build"),
          "error: {factory}: importing it raised ModuleNotFoundError: No module named 'no_such_module_for_edgeprune'",
          setup=factory_import_fails),
    Fault("model_factory_raises", MODELS, "a factory that raises", prune("--model", "{factory}:build_raising"),
          "error: {factory}: build_raising() raised ValueError: width must be positive", setup=factory),
    Fault("weights_missing_keys", MODELS, "weights that lack a parameter", prune("--weights", "{weights}"),
          "error: {weights}: weights do not match the model: 1 missing (first: 12.weight)", setup=without_head_weight),
    Fault("weights_unexpected_keys", MODELS, "weights with a parameter the model lacks", prune("--weights", "{weights}"),
          "error: {weights}: weights do not match the model: 1 unexpected (first: 13.weight)", setup=with_extra_key),
    Fault("weights_shape_mismatch", MODELS, "weights of other shapes", prune("--weights", "{weights}"),
          "error: {weights}: weights do not match the model: 2 shape mismatches (first: 12.weight (5, 32) vs "
          "(3, 32), 12.bias (5,) vs (3,))", setup=with_five_classes),
    Fault("weights_random_bytes", MODELS, "a weights file of random bytes", prune("--weights", "{weights}"),
          "error: {weights}: not a readable weights file ({any})", setup=random_bytes),
    Fault("weights_truncated", MODELS, "a truncated weights file", prune("--weights", "{weights}"),
          "error: {weights}: not a readable weights file ({any})", setup=truncated_weights),
    Fault("weights_corrupt_safetensors", MODELS, "a corrupt .safetensors file", prune("--weights", "{weights}"),
          "error: {weights}: not a readable safetensors file ({any})", setup=corrupt_safetensors),
    Fault("weights_pickled_module", MODELS, "a pickled model (needs `weights_only=False`)",
          prune("--weights", "{weights}"),
          "error: {weights}: refused: it holds pickled objects that only load with weights_only=False, which can "
          "run arbitrary code; save model.state_dict() or a .safetensors file instead", setup=pickled_module),
    Fault("model_returns_tuple", MODELS, "a model that returns a tuple", prune("--model", "{factory}:build"),
          "error: --model {factory}:build: returns tuple, not a tensor of class logits; pick one with "
          "--output INDEX|KEY", setup=factory),
    Fault("model_output_no_such_entry", MODELS, "`--output` picks an entry the output lacks",
          prune("--model", "{factory}:build", "--output", "5"),
          "error: --output 5: the model returns a tuple of 2; no such entry", setup=factory),
    Fault("model_output_not_logits", MODELS, "a model that returns feature maps", prune("--model", "{factory}:features"),
          "error: --model {factory}:features: output has shape (2, 8, 30, 30), not (batch, classes) class logits",
          setup=factory),
    Fault("model_wrong_input_size", MODELS, "a model that cannot take `--image-size`",
          prune("--model", "{factory}:fixed_size"),
          "error: --model {factory}:fixed_size: a batch of shape (2, 3, 32, 32) makes it raise RuntimeError: {any} "
          "(check --image-size)", setup=factory),
    # Pruning.
    *[Fault(f"rate_{rate}", PRUNING, f"`--rate {rate}`", prune("--rate", rate),
            f"error: --rate {float(rate)}: must be between 0 and 1 (a fraction of conv filters)")
      for rate in ("1.5", "0", "-0.1")],
    Fault("step_zero", PRUNING, "`--step 0`", prune("--step", "0"), "error: --step 0.0: must be in (0, 1]"),
    Fault("round_to_zero", PRUNING, "`--round-to 0`", prune("--round-to", "0"),
          "error: --round-to 0: must be a positive integer (1 turns rounding off)"),
    Fault("rate_unreachable", PRUNING, "a rate no legal pruning reaches (`--rate 0.9 --round-to 8`)",
          prune("--rate", "0.9", "--round-to", "8"),
          "error: --rate 0.9: cannot be reached: at most 62.5% of the conv filters can be removed with --round-to 8 "
          "(each layer keeps at least 8 channels); lower --rate or --round-to", outcome="said before any scoring"),
    *[Fault(f"max_drop_{value}", PRUNING, f"`--max-drop {value}`", prune("--max-drop", value),
            f"error: --max-drop {float(value)}: must be in [0, 1) (an accuracy drop; 0.01 is one point)")
      for value in ("1", "-0.01")],
    *[Fault(f"max_macs_{value}", PRUNING, f"`--max-macs {value}`", prune("--max-macs", value),
            f"error: --max-macs {float(value)}: must be in (0, 1] (a fraction of the dense model's MACs)")
      for value in ("0", "1.5")],
    Fault("max_macs_unreachable", PRUNING, "a MACs budget below what the smallest legal model has (`--max-macs 0.001`)",
          prune("--max-macs", "0.001"),
          "error: --max-macs 0.001: the dense model cannot be brought that low: with every layer at its minimum of 4 "
          f"channels it still has {ANY} of its MACs ({ANY})", outcome="said before any scoring"),
    Fault("max_drop_dense_fails", PRUNING, "an accuracy budget on a kept head that never predicts one class "
          "(`--head keep --max-drop 0.01`)",
          prune("--model", f"{TINY_CNN.rsplit(':', 1)[0]}:blind_to_last_class", "--head", "keep", "--max-drop", "0.01"),
          "error: --max-drop 0.01: the dense model itself cannot meet it: its small-set estimate has class blue at 0, "
          "so the harmonic mean is 0 before any pruning (more --shots, or --max-macs)"),
    Fault("cost_latency_no_runtime", PRUNING, "`--cost latency` without a runtime to profile on",
          prune("--cost", "latency"),
          "error: --cost latency: needs a runtime to profile per-layer latency on: give --profile-backend (e.g. ort-cpu)"),
    Fault("profile_backend_unknown", PRUNING, "`--cost latency --profile-backend tpu`",
          prune("--cost", "latency", "--profile-backend", "tpu"),
          "error: --profile-backend tpu: choose from ort-cpu"),
    Fault("holdout_folds_one", PRUNING, "`--holdout-folds 1`", prune("--holdout-folds", "1"),
          "error: --holdout-folds 1: must be 0 (off) or an integer >= 2"),
    Fault("holdout_folds_no_budget", PRUNING, "`--holdout-folds 3` with no accuracy budget",
          prune("--holdout-folds", "3"),
          "error: --holdout-folds 3: cross-validates the budget's estimate: needs --max-drop, the re-fitted ridge "
          "head and a method other than dpx (the controller judges its candidates in-sample)"),
    Fault("refit_head_keep", PRUNING, "`--refit-head` with `--head keep`", prune("--refit-head", "--head", "keep"),
          "error: --refit-head: needs --head fit (--head keep keeps the model's own head)"),
    Fault("no_layer_emptied", PRUNING, "a rate that would empty layers (`--rate 0.95 --round-to 1`)",
          prune("--rate", "0.95", "--round-to", "1"), None, 0, keeps=ARTIFACT, check=no_layer_emptied,
          outcome="pruned to 95%, every layer keeps at least one channel"),
    # Export and bench.
    Fault("export_not_pruned", EXPORT, "`edgeprune export` of a folder never pruned", ("export", "{out}"),
          "error: {out}/pruned.json: no such file (run 'edgeprune prune ... --out {out}' first)", setup=empty_out),
    Fault("export_parity_fails", EXPORT, "an ONNX file that disagrees with PyTorch (an exporter bug, simulated)",
          ("export", "{out}", "--exporter", "torchscript"),
          "error: {out}/dense.onnx: parity gate failed: top-1 agreement {any} (need 1.0), max |diff| {any} "
          "(0.0001 x logit range); evidence kept in {out}/dense.failed.onnx", 3, setup=exporter_disagrees,
          keeps=(*ARTIFACT, "dense.failed.onnx", "dense.parity.json"), check=evidence_kept,
          outcome="no model written; the failed file and its parity record are kept"),
    Fault("int8_budget_out_of_range", EXPORT, "`--precision int8 --max-drop 1.5`",
          ("export", "{out}", "--precision", "int8", "--max-drop", "1.5"),
          "error: --max-drop 1.5: must be in [0, 1) (an accuracy drop; 0.01 is one point)", setup=pruned_out,
          keeps=ARTIFACT, outcome="before any export"),
    Fault("bench_missing_onnx", EXPORT, "`edgeprune bench` of a file that does not exist", bench(),
          "error: {model}: no such file", setup=missing_onnx),
    Fault("bench_truncated_onnx", EXPORT, "`edgeprune bench` of a truncated ONNX file", bench(),
          "error: {model}: not a loadable ONNX model ({any})", setup=truncated_onnx),
    Fault("bench_backend_missing", EXPORT, "`--backend ort-cuda` without onnxruntime-gpu",
          bench("--backend", "ort-cuda"),
          "error: backend 'ort-cuda' needs the package onnxruntime-gpu (pip install onnxruntime-gpu)",
          setup=onnx_model, skip=onnxruntime_gpu_installed),
    # Runs.
    Fault("disk_full_prune", RUNS, "the disk is full when the pruned weights are written", prune(),
          "error: {out}/pruned.safetensors: no space left on the device; nothing was written",
          setup=disk_too_small_for_the_weights),
    Fault("disk_full_export", RUNS, "the disk fills up during the export", ("export", "{out}"),
          "error: {out}/dense.onnx: no space left on the device; nothing was written",
          setup=disk_full_after_pruning, keeps=ARTIFACT),
    Fault("ctrl_c", RUNS, "Ctrl-C during `edgeprune deploy`", message=f"error: interrupted; {INTERRUPTED}", exit=130,
          runner="stopped_runs"),
    Fault("sigterm", RUNS, "`kill` (SIGTERM) during the rerun", message=f"error: terminated; {INTERRUPTED}", exit=143,
          runner="stopped_runs"),
    Fault("sigkill", RUNS, "`kill -9` during the next rerun", exit=137, runner="stopped_runs",
          outcome="no file under its final name is partial; temporary files stay until the next run removes them"),
    Fault("rerun", RUNS, "the same command once more", message="reusing {out}/pruned.json: same config hash {any}",
          exit=0, runner="stopped_runs",
          outcome="the finished stages are reused (pruning by config hash, export by the pruned weights' hash)"),
    # The command line.
    Fault("unknown_flag", CLI, "an unknown flag", prune("--bogus-flag"),
          "error: edgeprune: unrecognized arguments: --bogus-flag"),
    Fault("no_command", CLI, "no command", (), "error: edgeprune: the following arguments are required: command"),
    Fault("config_unknown_option", CLI, "a config file with an unknown option", prune("--config", "{config}"),
          "error: {config}: unknown option(s) colour", setup=bad_config),
    Fault("cli_fuzz", CLI, "any combination of arguments (hypothesis, 150 generated command lines)", runner="fuzz",
          outcome="one line `error: ...`, never a traceback, nothing written"),
]


def fault(fault_id: str) -> Fault:
    return next(f for f in CATALOGUE if f.id == fault_id)


def catalogue_markdown() -> str:
    lines = ["| area | case | what the user sees | exit code |", "| --- | --- | --- | --- |"]
    for f in CATALOGUE:
        lines.append(f"| {f.area} | {f.case} | {f.shown().replace('|', chr(92) + '|')} | {f.exit} |")
    return "\n".join(lines)
