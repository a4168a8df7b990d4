"""README's families table, from the per-family test results (relevance + conservation, shrink, export).

    EDGEPRUNE_FAMILIES_JSON=benchmarks/results/families.json .venv/bin/pytest -q tests/test_families.py
    python scripts/families_table.py benchmarks/results/families.json [README.md]

One test per family checks all three columns (tests/test_families.py::test_family_end_to_end), so a
family's row is all passed or all failed.
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from readme_blocks import update_readme  # noqa: E402

from toolchain.families import families_table  # noqa: E402


def main(argv) -> int:
    results = json.loads(pathlib.Path(argv[1]).read_text())
    readme = pathlib.Path(argv[2] if len(argv) > 2 else ROOT / "README.md")
    lines = ["| family | relevance (conserved) | shrink: masked == shrunk | ONNX export + parity | test s | notes |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in families_table():
        result = results.get(row["name"], {"outcome": "not run", "seconds": 0})
        mark = {"passed": "yes", "failed": "FAILED"}.get(result["outcome"], result["outcome"])
        lines.append(f"| {row['name']} | {mark} | {mark} | {mark} | {result['seconds']} | "
                     f"{row.get('notes', '')} |")
    return update_readme(readme, "families", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
