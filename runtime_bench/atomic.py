"""Atomic file output: write to a temporary name in the same folder, rename when complete.

An interrupted run (Ctrl-C, kill, disk full) never leaves a half-written file under the final name.
Temporary names carry the writer's process id (`.NAME.tmp-PID...`), so that a later run can remove what
a killed one left (`remove_stale_temp_files`) without touching the files of a run still in progress.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import re
import shutil
from typing import Any, Iterator

import numpy as np

from .errors import InputError

TEMP_NAME = re.compile(r"^\..+\.tmp-(?P<pid>\d+)(\.[A-Za-z0-9.]+)?$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_folder(path: str | os.PathLike) -> None:
    """The folder `path` would be written into exists (checked before work whose result goes there)."""
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")


def temp_name(name: str, suffix: str = "") -> str:
    """The temporary name of `name` for this process (matched by TEMP_NAME)."""
    return f".{name}.tmp-{os.getpid()}{suffix}"


def is_disk_full(exc: BaseException | None) -> bool:
    """True when `exc`, or an exception it was raised from, is ENOSPC (writers often wrap the OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full(path: str | os.PathLike) -> InputError:
    return InputError(f"{path}: no space left on the device; nothing was written")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on any error it is removed."""
    check_output_folder(path)
    path = pathlib.Path(path)
    tmp = path.with_name(temp_name(path.name))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # an ordinary file's mode, not a private temp file's
        os.replace(tmp, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Remove the temporary files and folders that killed runs left in `folder` (not recursive); return them.

    Only names of the TEMP_NAME form whose process is gone are touched.
    """
    folder = pathlib.Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = TEMP_NAME.match(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink()
        removed.append(entry)
    return removed


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays sneak in from stats; JSON wants plain Python values.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_json_atomic(obj: Any, path: Any) -> None:
    """Write `obj` as JSON so that readers see either the old file or the complete new one."""
    # Serialize first: a non-serializable value must not leave anything behind.
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n"
    write_text_atomic(text, path)


def write_text_atomic(text: str, path: Any) -> None:
    """Write `text` so that readers see either the old file or the complete new one."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
