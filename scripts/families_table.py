"""README's families tables, from the end-to-end test results (relevance + conservation, shrink, export):
torchvision families (tests/test_families.py) and timm architectures (tests/test_timm_corpus.py).

    EDGEPRUNE_CORPUS=all EDGEPRUNE_FAMILIES_JSON=benchmarks/results/families.json \
        .venv/bin/pytest -q tests/test_families.py tests/test_timm_corpus.py
    python scripts/families_table.py benchmarks/results/families.json [README.md]

One test per family or architecture checks every column, so a row is all passed or all failed. A timm
architecture that is not fully supported passes when it fails exactly the way its CORPUS entry says; the
status column says how.
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
    code = update_readme(readme, "families", "\n".join(lines))
    return code or update_readme(readme, "timm", "\n".join(timm_lines(results)))


def timm_lines(results: dict) -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_timm_corpus import CORPUS, NOT_RUN, timm_family

    lines = ["| architecture | timm family | what it exercises | test | status | test s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, arch in CORPUS.items():
        result = results.get(f"timm:{name}", {"outcome": "not run", "seconds": 0})
        mark = {"passed": "passed", "failed": "FAILED"}.get(result["outcome"], result["outcome"])
        status = (arch.status or "supported").replace("|", "/")
        lines.append(f"| {name} | {timm_family(name)} | {arch.what} | {mark} | {status} | {result['seconds']} |")
    for name, why in NOT_RUN.items():
        lines.append(f"| {name} | {timm_family(name)} | | not run | unsupported: {why} | |")
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv))
