"""Errors the user can act on. Every layer raises these; the CLIs turn them into one line and an exit code.

They live in runtime_bench, the lowest layer, so that toolchain and exporters can raise the same types
without runtime_bench ever importing them.
"""

from __future__ import annotations


class EdgePruneError(Exception):
    """Base class: the message is one line that names the file or value and what is wrong."""

    exit_code = 2


class InputError(EdgePruneError):
    """Bad input or usage (exit code 2)."""

    exit_code = 2


class CheckFailed(EdgePruneError):
    """A verification failed, e.g. the ONNX parity gate (exit code 3)."""

    exit_code = 3


def first_line(error: BaseException | str, limit: int | None = None, typed: bool = False) -> str:
    """The first non-empty line of an exception's message (or of a text), for one-line errors: runtime errors
    can be pages long. Cut to `limit` characters; `typed` puts the exception's type name in front. An
    exception without a message gives its type's name."""
    line = next((part.strip() for part in str(error).splitlines() if part.strip()), "")
    if limit is not None and len(line) > limit:
        line = line[: limit - 3] + "..."
    if isinstance(error, BaseException) and (typed or not line):
        return f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line or "no details"
