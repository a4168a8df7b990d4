"""Atomic file output: write to a temporary name in the same folder, rename when complete.

An interrupted run (Ctrl-C, kill, disk full) never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
from typing import Iterator

from .errors import InputError


@contextlib.contextmanager
def atomic_output(path: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on any error it is removed."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InputError(f"{path}: no space left on the device; nothing was written") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
