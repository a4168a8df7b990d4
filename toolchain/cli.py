"""`edgeprune`: thin command line over the library.

  edgeprune assets [--out DIR]                       the packaged default model weights and images
  edgeprune prune --model M --data SMALL ... --out OUT
  edgeprune export OUT [--tensorrt fp16 ...]         OUT/dense.onnx and OUT/model.onnx, parity-gated
                                                     (and TensorRT engines of both)
  edgeprune export OUT --precision int8              also OUT/model.int8.onnx, gated per class on the small set
  edgeprune bench MODEL.onnx [MODEL2.onnx] --data TEST --json FILE
  edgeprune deploy [--config FILE] [--out OUT] [--device USER@HOST]   all of it, from a YAML config
  edgeprune remote-bench OUT --device USER@HOST[:PORT]   OUT/bundle benchmarked on a device over SSH

Exit codes: 0 done, 2 bad input or usage, 3 a check failed (parity gate) or the device connection did,
130 interrupted (Ctrl-C), 143 terminated (kill).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import signal
import sys
import threading
import time
import warnings

from runtime_bench.errors import EdgePruneError, InputError, first_line

DEFAULT_CONFIG = pathlib.Path("configs/default.yaml")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 like every other bad input."""

    def error(self, message):
        raise InputError(f"{self.prog}: {message}")


def _optional_float(text: str):
    """A number, or 'none': a flag that can also switch off what a config file set."""
    if text.lower() == "none":
        return NO_VALUE
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number or 'none': {text!r}") from None


NO_VALUE = object()  # a flag given as 'none': None in the config, which an absent flag (None) cannot say


def _prune_options(parser: argparse.ArgumentParser) -> None:
    # Defaults are None so that a flag given on the command line is distinguishable from the config's value.
    add = parser.add_argument
    add("--model", help="torchvision name (mobilenet_v2) or path/to/file.py:factory")
    add("--weights", help="weights enum name (IMAGENET1K_V1, DEFAULT (the default), none) or a .pt/.pth/.safetensors file")
    add("--output", help="INDEX or KEY of the class logits when the model returns a tuple or dict")
    add("--data", help="image folder root/<class>/<image>: the small labelled set is drawn from it")
    add("--test-data", help="image folder with the same classes (default: the images of --data not drawn)")
    add("--test-size", type=int, help="use at most this many test images (balanced)")
    add("--shots", type=int, help="images per class in the small labelled set (default 10)")
    add("--allow-fewer", action="store_true", default=None, help="proceed when a class has fewer than --shots")
    add("--strict", action="store_true", default=None, help="fail on unreadable images instead of skipping them")
    # No argparse `choices`: every value is checked by the config against the registries, with their names.
    add("--head", help="fit a new linear head (default) or keep the model's")
    add("--head-solver",
        help="how the head is fitted: ridge (default; closed form, leave-one-out estimates) or logistic (L-BFGS)")
    add("--refit-head", action="store_true", default=None,
        help="re-fit the head on the small set after every pruning step (default with --head fit)")
    add("--no-refit-head", dest="refit_head", action="store_false", default=None,
        help="keep the head fitted on the dense model (the paper's setting)")
    add("--image-size", type=int, help="input resolution (default: the weights' own, 224)")
    add("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation mean, 0..1 pixel scale")
    add("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation std, 0..1 pixel scale")
    add("--method", help="lrp (Yeom), dpx (accuracy-aware controller over LRP), taylor, l1, random")
    add("--rate", type=float, help="fraction of conv filters to remove, in (0, 1); with a budget, the most to remove "
        "(default 0.9 with a budget, else 0.3)")
    add("--max-drop", type=_optional_float, metavar="D",
        help="accuracy budget: prune as far as the small-set estimates of accuracy and of the harmonic mean of "
             "class accuracies stay within D of the dense model's (0.01: one point); keeps the last state within it; "
             "'none' turns off a config file's budget")
    add("--max-macs", type=_optional_float, metavar="F",
        help="compute budget: prune until the MACs are at most F x the dense model's, in (0, 1]")
    add("--patience", type=int, help="with --max-drop (not dpx): steps tried past the last state within budget "
        "before stopping (default 2); the last state within budget is kept")
    add("--compensate", action="store_true", default=None,
        help="re-fit the layers that read removed channels, in closed form, so that their outputs on the small set "
             "stay close to the dense model's (no training)")
    add("--no-compensate", dest="compensate", action="store_false", default=None, help="turn off a config file's --compensate")
    add("--holdout-folds", type=int, metavar="K",
        help="with --max-drop: the budget's estimate cross-validated over the whole procedure by K shadow copies, "
             "each pruning, compensating and re-fitting on the other folds (3 is what was measured); 0 (default): "
             "leave-one-out of the head")
    add("--cost",
        help="rank channels by relevance alone (filters, default) or by relevance / the MACs or measured latency "
             "their removal saves")
    add("--profile-backend", help="--cost latency: the runtime the per-layer latency profile is measured on (ort-cpu)")
    add("--step", type=float, help="filters removed per step, as a fraction of the original count (0.05)")
    add("--round-to", type=int, help="keep channel counts multiples of N (default 8; 1 turns it off)")
    add("--head-rule", help="LRP rule on linear layers: epsilon (default) or zplus")
    add("--allow-fallback", action="store_true", default=None,
        help="use gradient x input (with a warning) for ops that have no LRP rule, instead of failing")
    add("--batch-size", type=int, help="images per relevance batch (default 32)")
    add("--seed", type=int, help="seed of the small-set draw (default 0)")
    dpx = parser.add_argument_group("accuracy-aware controller (--method dpx; --step is s_max, --rate p_max)")
    dpx.add_argument("--delta", type=float, help="accept a step if A drops by at most this (default 0)")
    dpx.add_argument("--tau", type=float, help="instead accept if A >= tau x A of the dense model")
    dpx.add_argument("--m", type=int, help="units tried by a change of pruning order (default 8; wider finds better units, "
                     "each costs a partial forward: see the README's study)")
    dpx.add_argument("--s-min-units", type=int, help="smallest step, in units (default 1)")
    dpx.add_argument("--rescore",
                     help="recompute relevance after each commit (accepted), after each s_max of filters (step), never")
    dpx.add_argument("--signal", help="A(M): refit (default with --refit-head), small-accuracy (as specified), "
                     "crossfit-accuracy, crossfit-probability (default without --refit-head)")
    dpx.add_argument("--paper", action="store_true", default=None,
                     help="the paper's exact setting: A = small-set accuracy of the head, delta 0, m 8, relevance "
                          "after every commit, no head re-fit")
    dpx.add_argument("--class-weighted", action="store_true", default=None,
                     help="start each sample's relevance at 1 / (its class's A value): the weakest classes' filters rank higher")


def resolve_config(args: argparse.Namespace, config_file: pathlib.Path | None):
    """PruneConfig from defaults < YAML file < command-line flags; plus the deploy config's sections (typed)."""
    from .config import DeploySettings, PruneConfig, read_config_file

    data, sections = read_config_file(config_file) if config_file else ({}, {})
    for f in dataclasses.fields(PruneConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            data[f.name] = None if value is NO_VALUE else value
    settings = DeploySettings.from_sections(sections, str(config_file))
    config = PruneConfig(**data)
    config.check()
    return config, settings


def _out_dir(path: str) -> pathlib.Path:
    from .stages.deploy import output_folder

    return output_folder(path)


def cmd_assets(args) -> int:
    from .assets import prepare_default_assets

    paths = prepare_default_assets(pathlib.Path(args.out))
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def cmd_prune(args) -> int:
    from .stages.prune import run_prune

    config, _ = resolve_config(args, pathlib.Path(args.config) if args.config else None)
    out = _out_dir(args.out)
    manifest = run_prune(config, out, progress=not args.quiet)
    last, chosen = manifest["curve"][-1], manifest["chosen"]
    print(f"pruned {last['rate']:.1%} of conv filters ({chosen['why']}): test accuracy "
          f"{manifest['curve'][0]['accuracy']:.3f} -> {last['accuracy']:.3f} (small-set estimate "
          f"{chosen['dense_estimate']['accuracy']:.3f} -> {chosen['estimate']['accuracy']:.3f}), MACs "
          f"{manifest['curve'][0]['macs'] / 1e6:.1f}M -> {last['macs'] / 1e6:.1f}M ({chosen['macs_reduction']:.2f}x); "
          f"wrote {out}/pruned.json, pruned.safetensors")
    return 0


def cmd_export(args) -> int:
    from .config import INT8_MAX_DROP, ExportSettings, TensorRTSettings
    from .stages.export import export_models, parity_line

    given = {k: getattr(args, k) for k in ("exporter", "precision", "simplifier") if getattr(args, k) is not None}
    settings = ExportSettings.from_section(given, "edgeprune export")
    out = _out_dir(args.out)
    engines = None
    if args.tensorrt:
        from exporters.tensorrt import detect

        try:  # before minutes of export: an engine that cannot be built is an error here, not a skip
            detect()
        except InputError as exc:
            raise InputError(f"--tensorrt {' '.join(args.tensorrt)}: {exc}") from None
        engines = TensorRTSettings.from_section({"precisions": args.tensorrt}, "--tensorrt")
    max_drop = None
    if settings.precision == "int8":
        from .control.controller import check_max_drop

        max_drop = check_max_drop(args.max_drop if args.max_drop is not None else INT8_MAX_DROP)
    for record in export_models(out, settings, progress=not args.quiet).values():
        print(parity_line(record))
    if max_drop is not None:
        from .stages.precision import int8_stage, int8_summary

        print(int8_summary(int8_stage(out, max_drop, progress=not args.quiet)))
    if engines is not None:
        from .artifact import read_manifest
        from .stages.engines import build_engines

        for r in build_engines(out, engines, read_manifest(out), progress=not args.quiet).values():
            print(f"{r['engine']}: TensorRT {r['tensorrt_version']} {r['precision']} engine for {r['gpu']} "
                  f"({r['method']}{'; from the engine cache' if r['cache_hit'] else ''}), {r['bytes'] / 1e6:.1f} MB")
    return 0


def cmd_bench_compare(args) -> int:
    from runtime_bench.atomic import write_text_atomic
    from runtime_bench.compare import compare_files

    if len(args.models) != 3:
        raise InputError("edgeprune bench compare: give exactly two reports: compare A.json B.json")
    _, markdown = compare_files(args.models[1], args.models[2])
    if args.md:
        write_text_atomic(markdown, args.md)
    print(markdown)
    return 0


def _print_bench_summary(report: dict) -> None:
    for label, m in report["models"].items():
        print(f"{label}: p50 {m['latency']['p50_ms']:.2f} ms, accuracy {m['accuracy']['accuracy']:.3f}")
    for c in report.get("comparisons") or ([report["comparison"]] if report.get("comparison") else []):
        print(f"speedup {c['candidate']} vs {c['baseline']} {c['speedup_p50']:.2f}x ({c['low']:.2f}-{c['high']:.2f})")


def cmd_bench(args) -> int:
    from runtime_bench.atomic import check_output_folder, write_json_atomic, write_text_atomic
    from runtime_bench.bench import model_labels
    from runtime_bench.report import to_markdown
    from runtime_bench.settings import BenchSettings

    from .stages.bench import bench_data, bench_models

    if args.models[0] == "compare" and not pathlib.Path("compare").exists():
        return cmd_bench_compare(args)
    for flag, value in (("--data", args.data), ("--json", args.json)):
        if value is None:
            raise InputError(f"edgeprune bench: {flag} is required")
    settings = BenchSettings().replace(backend=args.backend, threads=args.threads, batch_size=args.bench_batch_size,
                                       min_runs=args.min_runs, min_seconds=args.min_seconds,
                                       warmup_runs=args.warmup_runs)
    for target in (args.json, args.md, args.png):  # before minutes of measuring, not after
        if target:
            check_output_folder(target)
    for model in args.models:
        if not pathlib.Path(model).is_file():
            raise InputError(f"{model}: no such file")
    images, labels, num_classes = bench_data(args.data, args.models, args.image_size, args.mean, args.std,
                                             progress=not args.quiet)
    models = dict(zip(model_labels(args.models), args.models))
    report = bench_models(models, images, labels, num_classes, settings, progress=not args.quiet)
    write_json_atomic(report, args.json)
    if args.md:
        write_text_atomic(to_markdown(report), args.md)
    if args.png:
        from .stages.report import plot_bench

        plot_bench(report, pathlib.Path(args.png), args.json)
    _print_bench_summary(report)
    return 0


def _device_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("benchmark on a device over SSH (results in OUT/device/HOST/: bench.json, "
                                      "bench.md, bench.png)")
    group.add_argument("--device", required=required, metavar="[USER@]HOST[:PORT]",
                       help="copy OUT/bundle there with the system ssh (keys or an agent; never a password prompt), "
                            "run runtime_bench there and fetch the report")
    group.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                       help="passed to ssh as -o KEY=VALUE, e.g. IdentityFile=~/.ssh/id_device or "
                            "UserKnownHostsFile=FILE; repeatable")
    group.add_argument("--remote-python", metavar="PYTHON",
                       help="Python on the device that has numpy and onnxruntime (default python3)")
    group.add_argument("--remote-dir", metavar="DIR",
                       help="folder on the device; each bundle goes to DIR/<bundle hash> (default ~/edgeprune)")
    group.add_argument("--rerun", action="store_true",
                       help="measure again even when the device has a finished result for this bundle")


def _device_from_args(args):
    """The device (None: not given) and ssh options, checked before any work: a typo must not wait for a prune."""
    from .stages.remote import Device, check_ssh_options

    if args.device is None:
        given = [flag for flag, value in (("--ssh-option", args.ssh_option), ("--remote-python", args.remote_python),
                                          ("--remote-dir", args.remote_dir), ("--rerun", args.rerun)) if value]
        if given:
            raise InputError(f"{', '.join(given)}: only used with --device")
        return None
    check_ssh_options(args.ssh_option)
    return Device.parse(args.device)


def _progress_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _bench_on_device(args, out: pathlib.Path, device, bench_args: list) -> None:
    from .stages.remote import BENCH_HASH_CHARS, DEFAULT_PYTHON, DEFAULT_REMOTE_DIR, bench_on_device

    result = bench_on_device(out / "bundle", device, out / "device", ssh_options=args.ssh_option,
                             python=args.remote_python or DEFAULT_PYTHON,
                             remote_dir=args.remote_dir or DEFAULT_REMOTE_DIR, bench_args=bench_args,
                             rerun=args.rerun, progress=None if args.quiet else _progress_line)
    if result["measured"]:
        how = f"sent {len(result['sent'])} files ({len(result['kept'])} were there), measured there"
    else:
        how = "fetched the finished result of this bundle (--rerun measures again)"
    print(f"{device}: bundle {result['bundle_hash'][:BENCH_HASH_CHARS]} in {result['remote_dir']}: {how}")
    _print_bench_summary(result["report"])
    print(f"wrote {result['json']}, {result['markdown'].name}, {result['png'].name}")


def cmd_remote_bench(args) -> int:
    import shlex

    from .stages.remote import check_bench_args

    device = _device_from_args(args)
    try:
        bench_args = check_bench_args(shlex.split(args.bench_args or ""))
    except ValueError as exc:
        raise InputError(f"--bench-args {args.bench_args!r}: {exc}") from None
    _bench_on_device(args, pathlib.Path(args.out), device, bench_args)
    return 0


def cmd_deploy(args) -> int:
    from .config import ExportSettings
    from .stages.deploy import deploy

    config_file = pathlib.Path(args.config) if args.config else DEFAULT_CONFIG
    config, settings = resolve_config(args, config_file)
    if args.precision is not None:
        export = ExportSettings.from_section(dict(dataclasses.asdict(settings.export), precision=args.precision),
                                             "--precision")
        settings = dataclasses.replace(settings, export=export)
    out = _out_dir(args.out)
    device = _device_from_args(args)
    started = time.perf_counter()
    report = deploy(config, settings, out, progress=not args.quiet)
    s = report["summary"]
    print(f"deploy done in {time.perf_counter() - started:.0f} s: {report['pruning']['rate_achieved']:.1%} of filters "
          f"removed, accuracy {s['accuracy_dense']:.3f} -> {s['accuracy_pruned']:.3f}, harmonic mean "
          f"{s['harmonic_mean_dense']:.3f} -> {s['harmonic_mean_pruned']:.3f}, ORT p50 {s['p50_ms_dense']:.2f} -> "
          f"{s['p50_ms_pruned']:.2f} ms ({s['speedup_p50']:.2f}x; MACs {s['macs_reduction']:.2f}x); see {out}/report.md")
    if device is not None:
        _bench_on_device(args, out, device, settings.bench.cli_args())
    return 0


def cmd_families(args) -> int:
    from .families import families_table

    rows = families_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| family | torchvision builder | notes |")
    print("| --- | --- | --- |")
    for row in rows:
        print(f"| {row['name']} | {row.get('builder', '')} | {row.get('notes', '')} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from runtime_bench.settings import BenchSettings
    from runtime_bench.timing import QUICK_MIN_RUNS, QUICK_MIN_S

    parser = OneLineParser(prog="edgeprune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("assets", help="provide the packaged default weights and Fashion-MNIST image folders")
    p.add_argument("--out", default="artifacts/data/fashion-mnist")
    p.set_defaults(func=cmd_assets)

    p = sub.add_parser("prune", help="score filters, prune and shrink a model")
    _prune_options(p)
    p.add_argument("--config", help="YAML file of defaults for these options")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("export", help="export dense and pruned models to ONNX through the parity gate")
    p.add_argument("out", help="folder written by 'edgeprune prune'")
    # Defaults and choices are ExportSettings' and TensorRTSettings' (checked there, named in the error).
    p.add_argument("--exporter", help="auto (default: dynamo, falling back to the TorchScript tracer), dynamo, torchscript")
    p.add_argument("--tensorrt", nargs="+", metavar="PRECISION",
                   help="also build TensorRT engines of both models: fp32, fp16 and/or int8 (needs TensorRT and a GPU)")
    p.add_argument("--precision",
                   help="int8: also write OUT/model.int8.onnx for ONNX Runtime's CPU int8 kernels, calibrated on the "
                        "small set and kept only if its small-set estimate of accuracy and harmonic mean stays within "
                        "--max-drop of FP32 (layers are kept in float as needed)")
    p.add_argument("--simplifier",
                   help="onnxsim (onnx-simplifier, default) or onnxslim; the parity gate judges the result either way")
    p.add_argument("--max-drop", type=float, help="the INT8 budget (default 0.01, the pruning budget's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="latency and accuracy of ONNX models (two are timed alternately); "
                                     "'bench compare A.json B.json' compares two reports")
    p.add_argument("models", nargs="+", metavar="MODEL.onnx")
    p.add_argument("--data", help="test image folder, or an .npz with images and labels (required)")
    p.add_argument("--json", help="where to write the JSON report (required)")
    p.add_argument("--md", help="also write a Markdown report")
    p.add_argument("--backend", help=f"inference backend (default {BenchSettings.backend})")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's)")
    p.add_argument("--bench-batch-size", type=int, help="images per timed call (default 1)")
    p.add_argument("--min-runs", type=int, help=f"timed runs per model at least (default {QUICK_MIN_RUNS})")
    p.add_argument("--min-seconds", type=float, help=f"timed seconds at least (default {QUICK_MIN_S:g})")
    p.add_argument("--warmup-runs", type=int, help=f"warm-up runs per model at least (default {BenchSettings.warmup_runs})")
    p.add_argument("--image-size", type=int)
    p.add_argument("--mean", type=float, nargs=3)
    p.add_argument("--std", type=float, nargs=3)
    p.add_argument("--png", help="also write a PNG: latency quantiles, block medians in timing order, accuracy")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("families", help="the torchvision CNN families covered, with what each one exercises")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_families)

    p = sub.add_parser("deploy", help="prune, export and benchmark from a config (what 'make deploy' runs)")
    _prune_options(p)
    p.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG})")
    p.add_argument("--out", default="artifacts/deploy")
    p.add_argument("--precision",
                   help="int8: also an INT8 model for ONNX Runtime's CPU kernels, gated per class on the small set "
                        "within --max-drop, timed against both FP32 models (overrides the config's export: precision)")
    _device_options(p, required=False)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("remote-bench", help="benchmark OUT/bundle on a device over SSH and fetch the report "
                                            "(what 'deploy --device' does last)")
    p.add_argument("out", help="folder written by 'edgeprune deploy' (holds bundle/)")
    _device_options(p, required=True)
    p.add_argument("--bench-args", metavar="ARGS",
                   help="options for 'python -m runtime_bench' on the device, in one string, e.g. "
                        "--bench-args=\"--min-runs 200 --threads 4\" or --bench-args=--strict")
    p.set_defaults(func=cmd_remote_bench)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that temporary files are removed on the way out as on Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings (an op scored by gradient x input, probabilities at the output) as one log line each."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    shown = warnings.showwarning
    warnings.showwarning = _warning_line
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except EdgePruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        stopped, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"error: {stopped}; finished outputs are complete, nothing half-written was kept", file=sys.stderr)
        return code
    except Exception as exc:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("EDGEPRUNE_DEBUG"):
            raise
        print(f"error: internal error {first_line(exc, typed=True)} (set EDGEPRUNE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    sys.exit(main())
