"""The fault catalogue (tests/fault_cases.py), row by row: the exact line on stderr, the exit code, no
traceback, and an output folder that holds exactly what the row says (nothing half-written); interrupted
and killed runs; and README's table, which must be the catalogue's.

The `cli` rows call `toolchain.cli.main` in this process (a process of its own per row would spend ~3 s
importing torch); a few of them run again as `python -m toolchain`, which must give the same result.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from cli_helpers import cli_command, cli_env, run_cli
from fault_cases import CATALOGUE, TINY_CNN, Workspace, catalogue_markdown, fault, prune

from runtime_bench.atomic import TEMP_NAME, remove_stale_temp_files
from toolchain.cli import main

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_ROWS = ("data_missing", "weights_pickled_module", "bench_truncated_onnx")
# Python's own default filters hide these from users; anything else a run warns is on their screen.
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


class Outcome(NamedTuple):
    code: int
    stdout: str
    stderr: str


def run_main(argv: list[str], capfd) -> Outcome:
    """`main` as the console sees it: stderr at the file-descriptor level, plus the warnings and log records
    that pytest would otherwise swallow (outside pytest they go to stderr)."""
    capfd.readouterr()
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                code = main(["--quiet", *argv])
            except SystemExit as exc:
                code = exc.code
    finally:
        logging.getLogger().removeHandler(handler)
    out, err = capfd.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                   for w in caught if not issubclass(w.category, HIDDEN_WARNINGS))
    return Outcome(code, out, err)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, image_data) -> Path:
    """A finished `edgeprune prune` of tiny_cnn, copied by the rows that need one."""
    out = tmp_path_factory.mktemp("pruned") / "out"
    paths = {"tiny": TINY_CNN, "data": image_data.small, "test": image_data.test, "out": out}
    assert main(["--quiet", *[arg.format(**paths) for arg in prune()]]) == 0
    return out


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


RUNS = [pytest.param(f, "main", id=f.id) for f in CATALOGUE if f.runner == "cli"] + [
    pytest.param(f, "subprocess", id=f"{f.id}-subprocess") for f in CATALOGUE if f.id in SUBPROCESS_ROWS]


@pytest.mark.parametrize("row, how", RUNS)
def test_fault(row, how, tmp_path, image_data, write_images, pruned, monkeypatch, capfd):
    reason = row.skip() if row.skip is not None else None
    if reason:
        pytest.skip(reason)
    ws = Workspace(tmp_path, {"tiny": TINY_CNN, "data": str(image_data.small), "test": str(image_data.test),
                              "out": str(tmp_path / "out")}, image_data, write_images, pruned, monkeypatch)
    try:
        if row.setup is not None:
            row.setup(ws)
        argv = row.command(ws.paths)
        if how == "main":
            result = run_main(argv, capfd)
        else:
            done = run_cli(argv, tmp_path)
            result = Outcome(done.returncode, done.stdout, done.stderr)
        shown = f"exit {result.code}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
        assert "Traceback" not in result.stdout + result.stderr, shown
        assert result.code == row.exit, shown
        lines = result.stderr.splitlines()
        if row.message is None:
            assert lines == [], shown
        else:
            assert len(lines) == 1 and row.pattern(ws.paths).fullmatch(lines[0]), \
                f"expected {row.message.format(any='...', **ws.paths)!r}\n{shown}"
        assert files_in(ws.out) == sorted(row.keeps)
        if row.check is not None:
            row.check(ws)
    finally:
        ws.close()


# ------------------------------------------------------------------------------- interrupted and killed runs


def run_and_stop(command: list, cwd: Path, stop: signal.Signals, ready) -> tuple[int, str]:
    """Start `command`, send `stop` as soon as `ready(stderr so far)`; the exit code as a shell shows it."""
    err_path = cwd / f"stderr-{stop.name}.txt"
    with open(err_path, "w") as err, open(os.devnull, "w") as null:
        process = subprocess.Popen(command, cwd=cwd, env=cli_env(), stdout=null, stderr=err)
        deadline = time.monotonic() + 120
        while not ready(err_path.read_text()):
            assert process.poll() is None, f"it finished before it could be stopped: {err_path.read_text()}"
            assert time.monotonic() < deadline, "never got ready to be stopped"
            time.sleep(0.01)
        process.send_signal(stop)
        code = process.wait(timeout=120)
    return (128 - code if code < 0 else code), err_path.read_text()


def read_back(path: Path) -> None:
    """Fails unless `path` is a complete file of its kind."""
    import numpy as np
    import onnx
    from PIL import Image
    from safetensors.numpy import load_file

    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".yaml":
        yaml.safe_load(path.read_text())
    elif suffix == ".safetensors":
        load_file(str(path))
    elif suffix == ".onnx":
        onnx.checker.check_model(str(path))
    elif suffix == ".npz":
        with np.load(path) as arrays:
            [arrays[name] for name in arrays.files]
    elif suffix == ".png":
        with Image.open(path) as image:
            image.load()
    else:
        assert suffix in (".md", ".py"), f"{path}: no way to tell whether it is complete"
        path.read_text()


def assert_nothing_partial(out: Path, temporary_allowed: bool) -> None:
    for path in sorted(out.rglob("*")):
        if any(TEMP_NAME.match(part) for part in path.relative_to(out).parts):
            assert temporary_allowed, f"temporary file left behind: {path}"
        elif path.is_file():
            read_back(path)


def writing_onnx(out: Path) -> bool:
    """The export is under way: an ONNX file is being written under its temporary name."""
    return out.is_dir() and any(TEMP_NAME.match(p.name) and ".onnx" in p.name for p in out.iterdir())


@pytest.mark.slow
def test_stopped_runs_leave_nothing_partial_and_a_rerun_reuses_finished_stages(tmp_path, image_data):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": TINY_CNN, "data": str(image_data.small), "test_data": str(image_data.test), "shots": 4,
        "image_size": 32, "method": "l1", "rate": 0.3, "round_to": 4, "export": {"exporter": "torchscript"},
        "bench": {"min_runs": 5, "min_seconds": 0.2, "warmup_runs": 2},
    }))
    out = tmp_path / "out"
    command = cli_command(["deploy", "--config", config, "--out", out])
    reusing = fault("rerun").pattern({"out": out})

    # Ctrl-C in the middle of writing an ONNX file, pruning done.
    code, stderr = run_and_stop(command, tmp_path, signal.SIGINT, lambda err: writing_onnx(out))
    assert (code, stderr.splitlines()) == (fault("ctrl_c").exit, [fault("ctrl_c").message]), stderr
    assert_nothing_partial(out, temporary_allowed=False)
    weights_written = (out / "pruned.safetensors").stat().st_mtime_ns

    # The rerun reuses the pruning; `kill` while it writes an ONNX file.
    code, stderr = run_and_stop(command, tmp_path, signal.SIGTERM, lambda err: writing_onnx(out))
    lines = stderr.splitlines()
    assert code == fault("sigterm").exit and len(lines) == 2 and reusing.fullmatch(lines[0]), stderr
    assert lines[1] == fault("sigterm").message, stderr
    assert_nothing_partial(out, temporary_allowed=False)

    # `kill -9` leaves no chance to clean up: temporary files may stay, no file under its own name is partial.
    code, stderr = run_and_stop(command, tmp_path, signal.SIGKILL, lambda err: writing_onnx(out))
    assert code == fault("sigkill").exit, stderr
    assert_nothing_partial(out, temporary_allowed=True)

    # Once more: it completes, reuses the pruning and removes what the killed run left.
    done = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    lines = done.stderr.splitlines()
    assert done.returncode == fault("rerun").exit and reusing.fullmatch(lines[0]), done.stderr
    # Besides the reuse lines, only the one line that says why no TensorRT engine was built.
    assert all(line.startswith(("reusing ", "skipped TensorRT engine: ")) for line in lines), done.stderr
    assert (out / "pruned.safetensors").stat().st_mtime_ns == weights_written
    assert (out / "report.json").is_file()
    assert_nothing_partial(out, temporary_allowed=False)


def test_only_the_temporary_files_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    names = {f".model.onnx.tmp-{dead_pid}": False, f".dense.x1y2.tmp-{dead_pid}.onnx": False,
             f".runtime_bench.tmp-{dead_pid}": False, f".report.json.tmp-{os.getpid()}": True,
             "model.onnx": True, ".hidden": True, "notes.tmp-12": True}
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / f".bundle.tmp-{dead_pid}").mkdir()
    (tmp_path / f".bundle.tmp-{dead_pid}" / "eval.npz").write_text("x")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted([n for n, kept in names.items() if not kept]
                                                     + [f".bundle.tmp-{dead_pid}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, kept in names.items() if kept)


# ------------------------------------------------------------------------------------------------ README


def test_every_row_is_checked_by_a_test():
    runners = {"cli", "stopped_runs", "fuzz"}
    assert {f.runner for f in CATALOGUE} <= runners
    assert len({f.id for f in CATALOGUE}) == len(CATALOGUE)


def test_readme_table_is_the_catalogue():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- faults:begin -->\n", "\n<!-- faults:end -->"
    assert readme.count(begin) == 1 and readme.count(end) == 1
    block = readme.split(begin, 1)[1].split(end, 1)[0]
    assert block == catalogue_markdown(), "README's fault table is stale: python scripts/fault_catalogue.py"
