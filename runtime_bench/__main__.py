"""Command line, three forms:

    python -m runtime_bench MODEL.onnx [MODEL2.onnx] --data EVAL.npz --json OUT.json [--md OUT.md]
    python -m runtime_bench BUNDLE_DIR [--json OUT.json] [--md OUT.md]     (see runtime_bench.bundle)
    python -m runtime_bench compare A.json B.json [--md OUT.md]             (see runtime_bench.compare)

`compare` is taken as the keyword only when no file or folder of that name exists here. Add
`--strict` for MLPerf single-stream minimums (1024 runs and 600 s, p90 headline).

Runs on the device with only numpy and an inference runtime. Errors the user can fix print one
line `error: ...` on stderr and exit 2 (bad input) or 3 (failed check).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from runtime_bench.errors import EdgePruneError, InputError
from runtime_bench.evaldata import load_eval_npz
from runtime_bench.settings import BenchSettings
from runtime_bench.timing import QUICK_MIN_RUNS, QUICK_MIN_S, STRICT_MIN_RUNS, STRICT_MIN_S

EXIT_INTERRUPTED = 130
COMPARE = "compare"


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus a message; we want the same single error line as everywhere else."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m runtime_bench",
        description=(
            "Measure accuracy and latency of one or two ONNX models (first = baseline), or of every model "
            "in a deploy bundle folder. `python -m runtime_bench compare A.json B.json` compares two reports."
        ),
    )
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL.onnx|BUNDLE_DIR",
        help="one model, or baseline then candidate; or one bundle folder (with manifest.json)",
    )
    parser.add_argument(
        "--data",
        metavar="EVAL.npz",
        help="arrays images (N,C,H,W float32), labels (N,) int, optional class_names (not with a bundle)",
    )
    parser.add_argument(
        "--json",
        metavar="OUT.json",
        help="where to write the JSON report (required for models; a bundle defaults to BUNDLE_DIR/bench.json)",
    )
    parser.add_argument("--md", metavar="OUT.md", help="also write a Markdown summary")
    defaults = BenchSettings()
    parser.add_argument("--backend", help=f"inference backend (default: {defaults.backend})")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: runtime default)")
    parser.add_argument(
        "--batch-size", type=int, help="images per timed call (default: 1, or the bundle's fixed batch size)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="MLPerf single-stream minimums: at least 1024 runs and 600 s, p90 as the headline",
    )
    parser.add_argument(
        "--min-runs",
        type=int,
        help=f"minimum timed runs per model (default: {QUICK_MIN_RUNS}; strict: {STRICT_MIN_RUNS})",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        help=f"minimum timed duration in seconds (default: {QUICK_MIN_S:g}; strict: {STRICT_MIN_S:g})",
    )
    parser.add_argument(
        "--warmup-runs", type=int, help=f"minimum warm-up runs per model (default: {defaults.warmup_runs})"
    )
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        help=f"minimum warm-up seconds per model (default: {defaults.warmup_seconds:g})",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        help=f"split the timed runs into this many consecutive blocks to report drift (default: {defaults.blocks})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def _compare_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m runtime_bench compare",
        description="Compare two runtime_bench JSON reports (models matched by label); prints Markdown.",
    )
    parser.add_argument("a", metavar="A.json", help="the reference report")
    parser.add_argument("b", metavar="B.json", help="the report compared with it (ratios are B / A)")
    parser.add_argument("--md", metavar="OUT.md", help="also write the Markdown to this file")
    return parser


def _check_output_folders(*targets: str | None) -> None:
    for target in targets:
        if target is not None:
            folder = os.path.dirname(os.path.abspath(target))
            if not os.path.isdir(folder):
                raise InputError(f"{target}: folder {folder} does not exist")


def bench_settings(args: Any) -> BenchSettings:
    """The options given, over the defaults that every entry point shares."""
    return BenchSettings().replace(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchSettings)})


def _write(report: dict[str, Any], json_path: str, md_path: str | None, quiet: bool) -> None:
    from runtime_bench.atomic import write_json_atomic, write_text_atomic
    from runtime_bench.report import to_markdown

    write_json_atomic(report, json_path)
    if md_path:
        write_text_atomic(to_markdown(report), md_path)
    if not quiet:
        print(f"[runtime_bench] wrote {json_path}" + (f" and {md_path}" if md_path else ""), file=sys.stderr)


def _run_bundle(args: Any) -> int:
    from runtime_bench.bundle import benchmark_bundle, default_report_path

    if args.data is not None:
        raise InputError(
            f"--data is not used with a bundle folder: {args.models[0]}/manifest.json names the eval file"
        )
    json_path = args.json or default_report_path(args.models[0])
    _check_output_folders(json_path, args.md)
    report = benchmark_bundle(args.models[0], progress=not args.quiet, **bench_settings(args).run_kwargs())
    _write(report, json_path, args.md, args.quiet)
    return 0


def _run(args: Any) -> int:
    # Imported here so `--help` and argument errors stay instant.
    from runtime_bench.bench import model_labels, run_benchmark
    from runtime_bench.timing import timing_limits

    settings = bench_settings(args)
    timing_limits(settings.strict, settings.min_runs, settings.min_seconds)  # a bad --strict combination fails first
    if len(args.models) == 1 and os.path.isdir(args.models[0]):
        return _run_bundle(args)
    missing = [f"--{name}" for name in ("data", "json") if getattr(args, name) is None]
    if missing:
        raise InputError(f"the following arguments are required: {', '.join(missing)}")
    if len(args.models) > 2:
        raise InputError(f"got {len(args.models)} models; give one, or two (baseline then candidate)")
    _check_output_folders(args.json, args.md)
    images, labels, num_classes, class_names = load_eval_npz(args.data)
    for path in args.models:
        if os.path.isdir(path):
            raise InputError(
                f"{path}: is a folder; benchmark a bundle folder on its own, without other models"
            )
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such file")

    models = dict(zip(model_labels(args.models), args.models))
    report = run_benchmark(models, images, labels, num_classes, progress=not args.quiet, **settings.run_kwargs())
    report["settings"]["data"] = os.fspath(args.data)
    if class_names is not None:
        report["settings"]["class_names"] = class_names
    _write(report, args.json, args.md, args.quiet)
    return 0


def _run_compare(argv: list[str]) -> int:
    from runtime_bench.atomic import write_text_atomic
    from runtime_bench.compare import compare_files

    args = _compare_parser().parse_args(argv)
    _check_output_folders(args.md)
    _, markdown = compare_files(args.a, args.b)
    sys.stdout.write(markdown)
    if args.md:
        write_text_atomic(markdown, args.md)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == COMPARE and not os.path.exists(COMPARE):
            return _run_compare(argv[1:])
        args = build_parser().parse_args(argv)
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
