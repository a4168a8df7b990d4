"""The public Python API: `import toolchain` stays light, and the README's example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = f"{REPO_ROOT / 'tests' / 'models_for_tests.py'}:tiny_cnn"


def readme_example() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (example,) = [b for b in blocks if "toolchain.run_prune(" in b]
    return example


def test_import_toolchain_exposes_the_api_without_importing_torch():
    code = ("import sys, toolchain; assert 'torch' not in sys.modules; "
            "print(' '.join(name for name in toolchain.__all__ if getattr(toolchain, name) is not None))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {"PruneConfig", "run_prune", "export_models", "bench_folder", "deploy", "BenchSettings"} <= set(
        done.stdout.split())


def test_readme_python_example_runs(image_data, tmp_path, monkeypatch):
    """The README's example as written, with only the model, image size and folders swapped for tiny ones
    (each swap must match the README exactly once, so the example cannot drift from what is tested)."""
    import toolchain

    swaps = {
        'toolchain.prepare_default_assets("artifacts/data/fashion-mnist")': "None",
        'model="mobilenet_v2", weights="IMAGENET1K_V1", image_size=112': f'model="{TINY}", image_size=32, shots=10, '
                                                                        'round_to=1, rate=0.5',
        '"artifacts/data/fashion-mnist/train"': repr(str(image_data.small)),
        '"artifacts/data/fashion-mnist/test"': repr(str(image_data.test)),
        "BenchSettings(min_runs=100)": "BenchSettings(min_runs=5, min_seconds=0.0, warmup_runs=1)",
    }
    code = readme_example()
    for old, new in swaps.items():
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md example", "exec"), namespace)
    out = tmp_path / "artifacts" / "notebook"
    for name in ("pruned.json", "pruned.safetensors", "dense.onnx", "model.onnx"):
        assert (out / name).is_file(), name
    assert namespace["manifest"]["chosen"]["macs_reduction"] >= 1.0
    assert namespace["exported"]["pruned"]["top1_agreement"] == 1.0
    assert set(namespace["report"]["models"]) == {"dense", "pruned"}
    assert toolchain.run_prune is namespace["toolchain"].run_prune
