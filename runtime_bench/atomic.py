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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_folder(path: str | os.PathLike) -> None:
    """The folder `path` would be written into exists (checked before work whose result goes there)."""
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on any error it is removed."""
    check_output_folder(path)
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # an ordinary file's mode, not a private temp file's
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InputError(f"{path}: no space left on the device; nothing was written") from None
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
