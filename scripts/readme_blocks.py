"""Generated blocks of README.md: the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` is
replaced by what a script measured, so that no result table is ever typed by hand."""

from __future__ import annotations

import pathlib
import re
import sys


def replace_block(readme: str | pathlib.Path, name: str, text: str) -> None:
    """Put `text` into the README block `name`; raises ValueError unless there is exactly one."""
    readme = pathlib.Path(readme)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = readme.read_text()
    new, count = re.subn(re.escape(begin) + r".*?" + re.escape(end), lambda _: f"{begin}\n{text}\n{end}", content,
                         flags=re.S)
    if count != 1:
        raise ValueError(f"{readme}: needs exactly one {begin} ... {end} block")
    readme.write_text(new)


def update_readme(readme: str | pathlib.Path, name: str, text: str) -> int:
    """`replace_block` for a script's main: its exit status, and a one-line error when the block is wrong."""
    try:
        replace_block(readme, name, text)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
