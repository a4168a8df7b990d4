"""Command line: python -m runtime_bench MODEL.onnx [MODEL2.onnx] --data EVAL.npz --json OUT.json

Runs on the device with only numpy and an inference runtime. Errors the user can fix print one
line `error: ...` on stderr and exit 2 (bad input) or 3 (failed check).
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from typing import Any

import numpy as np

from runtime_bench.errors import EdgePruneError, InputError

EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus a message; we want the same single error line as everywhere else."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m runtime_bench",
        description="Measure accuracy and latency of one or two ONNX models (first = baseline).",
    )
    parser.add_argument(
        "models", nargs="+", metavar="MODEL.onnx", help="one model, or baseline then candidate"
    )
    parser.add_argument(
        "--data",
        required=True,
        metavar="EVAL.npz",
        help="arrays images (N,C,H,W float32), labels (N,) int, optional class_names",
    )
    parser.add_argument("--json", required=True, metavar="OUT.json", help="where to write the JSON report")
    parser.add_argument("--md", metavar="OUT.md", help="also write a Markdown summary")
    parser.add_argument("--backend", default="ort-cpu", help="inference backend (default: ort-cpu)")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: runtime default)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per timed call (default: 1)")
    parser.add_argument("--min-runs", type=int, default=50, help="minimum timed runs per model (default: 50)")
    parser.add_argument(
        "--min-seconds", type=float, default=2.0, help="minimum timed duration in seconds (default: 2)"
    )
    parser.add_argument(
        "--warmup-runs", type=int, default=10, help="minimum warm-up runs per model (default: 10)"
    )
    parser.add_argument(
        "--warmup-seconds", type=float, default=0.5, help="minimum warm-up seconds per model (default: 0.5)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def load_eval_npz(path: str) -> tuple[np.ndarray, np.ndarray, int, list[str] | None]:
    """(images, labels, num_classes, class_names or None) from an evaluation .npz, checked."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
        # A plain .npy loads as one array; we need the named arrays of an .npz archive.
        if not hasattr(data, "files"):
            raise InputError(f"{path}: not an .npz archive (a single array; save with numpy.savez)")
        with data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable .npz file ({reason})") from None
    for key in ("images", "labels"):
        if key not in arrays:
            found = ", ".join(sorted(arrays)) or "nothing"
            raise InputError(f"{path}: missing array '{key}' (found: {found})")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 4:
        raise InputError(f"{path}: 'images' must have shape (N, C, H, W), got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"{path}: 'images' must be float32 (preprocessed), got {images.dtype}")
    if images.shape[0] == 0:
        raise InputError(f"{path}: 'images' is empty")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise InputError(f"{path}: 'labels' must have shape ({images.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: 'labels' must be integers, got {labels.dtype}")
    if labels.min() < 0:
        raise InputError(f"{path}: 'labels' has a negative value ({int(labels.min())})")
    class_names: list[str] | None = None
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise InputError(
                f"{path}: 'class_names' must be a 1-D string array, got {names.dtype} {names.shape}"
            )
        class_names = [str(n) for n in names.tolist()]
        num_classes = len(class_names)
        if labels.max() >= num_classes:
            raise InputError(f"{path}: label {int(labels.max())} but only {num_classes} class_names")
    else:
        num_classes = int(labels.max()) + 1
    return np.ascontiguousarray(images, dtype=np.float32), labels.astype(np.int64), num_classes, class_names


def _run(args: Any) -> int:
    # Imported here so `--help` and argument errors stay instant.
    from runtime_bench.bench import model_labels, run_benchmark
    from runtime_bench.report import to_markdown, write_json_atomic, write_text_atomic

    if len(args.models) > 2:
        raise InputError(f"got {len(args.models)} models; give one, or two (baseline then candidate)")
    for option in ("json", "md"):
        target = getattr(args, option)
        if target is not None:
            folder = os.path.dirname(os.path.abspath(target))
            if not os.path.isdir(folder):
                raise InputError(f"{target}: folder {folder} does not exist")
    images, labels, num_classes, class_names = load_eval_npz(args.data)
    for path in args.models:
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such file")

    models = dict(zip(model_labels(args.models), args.models))
    report = run_benchmark(
        models,
        images,
        labels,
        num_classes,
        backend=args.backend,
        threads=args.threads,
        batch_size=args.batch_size,
        warmup_runs=args.warmup_runs,
        warmup_s=args.warmup_seconds,
        min_runs=args.min_runs,
        min_s=args.min_seconds,
        progress=not args.quiet,
    )
    report["settings"]["data"] = os.fspath(args.data)
    if class_names is not None:
        report["settings"]["class_names"] = class_names
    write_json_atomic(report, args.json)
    if args.md:
        write_text_atomic(to_markdown(report), args.md)
    if not args.quiet:
        print(f"[runtime_bench] wrote {args.json}" + (f" and {args.md}" if args.md else ""), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return _run(args)
    except EdgePruneError as exc:
        message = " ".join(str(exc).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
