"""Cost of one LRP relevance pass against a plain forward pass on the same batch (issue 3 target: <= 3x).

    python benchmarks/relevance_cost.py [--image-size 112] [--batch 32] [--repeats 3]

All are timed in the same process, alternately, on VGG16 (HED weights) and MobileNetV2 (ImageNet); prints
the medians and the ratio. The relevance pass runs channels-last (toolchain/lrp_graph.py), so the forward
pass is timed both in torch's default layout and channels-last, and the ratio is taken against the faster.
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
sys.path.insert(0, str(ROOT))

from toolchain.models import ModelSource, build_model  # noqa: E402
from toolchain.relevance import lrp_filter_scores  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    models = {
        "mobilenet_v2": ModelSource("mobilenet_v2", "IMAGENET1K_V1"),
        "vgg16_hed": ModelSource(str(ROOT / "benchmarks" / "hed_vgg16.py") + ":build"),
    }
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 1000, (args.batch,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.image_size} px")
    for name, source in models.items():
        model = build_model(source)
        last = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x_last = x.contiguous(memory_format=torch.channels_last)
        runs = {
            "forward": lambda: model(x),
            "forward channels-last": lambda: last(x_last),
            "relevance": lambda: lrp_filter_scores(model, x, labels, batch_size=args.batch),
        }
        times = {k: [] for k in runs}
        for _ in range(args.repeats + 1):  # the first round warms up
            for label, run in runs.items():
                start = time.perf_counter()
                with torch.no_grad():
                    run()
                times[label].append(time.perf_counter() - start)
        f, f_last, r = (statistics.median(t[1:]) for t in times.values())
        print(f"{name}: forward {f * 1000:.0f} ms (channels-last {f_last * 1000:.0f} ms), relevance pass "
              f"{r * 1000:.0f} ms, ratio {r / min(f, f_last):.2f}x the faster forward (target <= 3x; "
              f"{r / f:.2f}x the default-layout one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
