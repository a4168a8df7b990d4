"""Running the `edgeprune` command line from tests: as a subprocess, and checking the one-line error contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SUBPROCESS_TIMEOUT_S = 300


def cli_command(args: list, quiet: bool = True) -> list[str]:
    return [sys.executable, "-m", "toolchain"] + (["--quiet"] if quiet else []) + [str(a) for a in args]


def cli_env() -> dict:
    env = dict(os.environ)
    env.pop("EDGEPRUNE_DEBUG", None)  # that would turn an internal error into a traceback on purpose
    return env


def run_cli(args: list, cwd: Path, quiet: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(args, quiet), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
