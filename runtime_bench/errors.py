"""Errors the user can act on. Every layer raises these; the CLIs turn them into one line and an exit code.

They live in runtime_bench, the lowest layer, so that toolchain and exporters can raise the same types
without runtime_bench ever importing them.
"""


class EdgePruneError(Exception):
    """Base class: the message is one line that names the file or value and what is wrong."""

    exit_code = 2


class InputError(EdgePruneError):
    """Bad input or usage (exit code 2)."""

    exit_code = 2


class CheckFailed(EdgePruneError):
    """A verification failed, e.g. the ONNX parity gate (exit code 3)."""

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
