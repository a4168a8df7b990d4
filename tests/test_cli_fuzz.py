"""Fuzz the command line: whatever the arguments, no traceback escapes, only a one-line error and exit 2
(the catalogue's row `cli_fuzz`, tests/fault_cases.py).

Every generated command points at inputs that do not exist, so no real work starts; what is fuzzed is the
parsing, the config resolution and the validation in front of the work.
"""

from __future__ import annotations

import contextlib
import io

from fault_cases import fault
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolchain.cli import main

VALUES = st.one_of(
    st.sampled_from(["0", "1", "-1", "0.5", "1.5", "nan", "inf", "", "abc", "x.py:f", "none", "DEFAULT", "8"]),
    st.text(alphabet="abc-_.:/0123456789", max_size=8),
)
FLAGS = ["--model", "--weights", "--output", "--test-data", "--test-size", "--shots", "--head", "--image-size",
         "--method", "--rate", "--step", "--round-to", "--head-rule", "--batch-size", "--seed", "--delta", "--tau",
         "--m", "--s-min-units", "--rescore", "--signal", "--config"]


@st.composite
def commands(draw, missing: str):
    command = draw(st.sampled_from(["prune", "deploy", "export", "bench", "families", "nonsense"]))
    argv = [command]
    if command in ("prune", "deploy"):
        argv += ["--data", f"{missing}/data", "--out", f"{missing}/out"]
        for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=5, unique=True)):
            argv += [flag, draw(VALUES)]
        if draw(st.booleans()):
            argv += ["--mean", draw(VALUES), draw(VALUES)]  # one value short: a usage error
    elif command == "export":
        argv += [f"{missing}/out"]
    elif command == "bench":
        argv += [f"{missing}/m.onnx", "--data", f"{missing}/d", "--json", f"{missing}/r.json"]
    if draw(st.booleans()):
        argv.append(draw(st.sampled_from(["--bogus", "-x", "--rate"])))
    return argv


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_traceback_ever_escapes(tmp_path, data):
    argv = data.draw(commands(str(tmp_path / "missing")))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["--quiet"] + argv)
        except SystemExit as exc:  # argparse's --help would exit 0; anything else is a bug
            code = exc.code
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    if argv[0] == "families" and len(argv) == 1:
        assert code == 0
        return
    assert code == fault("cli_fuzz").exit, (argv, stderr.getvalue())
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, stderr.getvalue())
    assert "Traceback" not in stderr.getvalue()
    assert not (tmp_path / "missing").exists()  # nothing written for a command that failed
