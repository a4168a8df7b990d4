"""README's table of faults, from the rows the tests run (tests/fault_cases.py), never typed.

    python scripts/fault_catalogue.py [README.md]

tests/test_faults.py checks every row, and fails while README's table differs from the catalogue.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

from fault_cases import catalogue_markdown  # noqa: E402
from readme_blocks import update_readme  # noqa: E402


def main(argv) -> int:
    return update_readme(argv[1] if len(argv) > 1 else ROOT / "README.md", "faults", catalogue_markdown())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
