"""Cost of one LRP relevance pass against a plain forward pass on the same batch (issue 3 target: <= 3x).

    python benchmarks/relevance_cost.py [--image-size 112] [--batch 32] [--repeats 11]

VGG16 (HED weights) and MobileNetV2 (ImageNet), each timed in one process, round after round in turn: the
plain forward `model(x)` as loaded (torch's default layout), the same forward on channels-last input, and
a relevance pass (`lrp_filter_scores`, which traces the model, folds BatchNorm and runs channels-last,
toolchain/scoring/graph_pass.py). Prints the medians, both ratios, and the floor the LRP rules themselves set: the
pass's multiply-adds over a forward's (z+ and its transpose per conv, twice on signed inputs). Writes
benchmarks/results/relevance_cost.json and the README block relevance-cost.
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from readme_blocks import update_readme  # noqa: E402

from runtime_bench.atomic import write_json_atomic  # noqa: E402
from toolchain.models import ModelSource, build_model  # noqa: E402
from toolchain.scoring.graph_pass import GraphLrp  # noqa: E402
from toolchain.scoring.lrp import lrp_filter_scores  # noqa: E402
from toolchain.surgery import filter_layers  # noqa: E402

MODELS = {
    "mobilenet_v2": ModelSource("mobilenet_v2", "IMAGENET1K_V1"),
    "vgg16_hed": ModelSource(str(ROOT / "benchmarks" / "hed_vgg16.py") + ":build"),
}


def measure(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, repeats: int) -> dict:
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    runs = {
        "forward": lambda: model(x),
        "forward_channels_last": lambda: last(x_last),
        "relevance": lambda: lrp_filter_scores(model, x, labels, batch_size=len(x)),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for round_ in range(repeats + 1):  # the first round warms up
            for label, run in runs.items():
                start = time.perf_counter()
                run()
                if round_:
                    times[label].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
    forward_macs, relevance_macs = GraphLrp.build(model, filter_layers(model)).multiply_adds(x[0])
    return {
        "ms": {k: round(v, 1) for k, v in medians.items()},
        "ratio": round(medians["relevance"] / medians["forward"], 2),
        "ratio_channels_last": round(medians["relevance"] / medians["forward_channels_last"], 2),
        "multiply_add_floor": round(relevance_macs / forward_macs, 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "relevance_cost.json"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 1000, (args.batch,))
    results = {"settings": {"argv": list(sys.argv[1:] if argv is None else argv), "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "batch": args.batch, "image_size": args.image_size,
                            "repeats": args.repeats},
               "models": {}}
    lines = [f"Command: `{' '.join(['python benchmarks/relevance_cost.py', *results['settings']['argv']])}`; "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.image_size} px, "
             f"medians of {args.repeats} rounds.", "",
             "| model | forward (ms) | forward channels-last (ms) | relevance pass (ms) | relevance / forward | "
             "relevance / channels-last forward | multiply-adds / forward's |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines))
    for name, source in MODELS.items():
        r = measure(build_model(source), x, labels, args.repeats)
        results["models"][name] = r
        ms = r["ms"]
        lines.append(f"| {name} | {ms['forward']:.0f} | {ms['forward_channels_last']:.0f} | {ms['relevance']:.0f} | "
                     f"{r['ratio']:.2f}x | {r['ratio_channels_last']:.2f}x | {r['multiply_add_floor']:.2f}x |")
        print(lines[-1], flush=True)
    write_json_atomic(results, args.out)
    return update_readme(args.readme, "relevance-cost", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
