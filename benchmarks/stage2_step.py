"""TSBD stage 2: the activeness-aware step in place, beside the official formulation and a plain step, in one run.

    python benchmarks/stage2_step.py                         # quick-profile shape: 1x28x28, width 16, CPU
    python benchmarks/stage2_step.py --shape 3 32 --width 64 --device cuda   # paper shape (timing only)

On the same model and the same batch (256 images, TSBD's batch size), times four steps, each a whole update,
interleaved round by round so that machine noise hits all alike:

- plain: one cross-entropy SGD step (the baseline, = vanilla fine-tuning);
- in place: the suite's activeness-aware step (perturb, second pass, restore; no copy, no host synchronisation);
- copy per batch: the same update computed on a deep copy of the model;
- official: as the official code runs it: the copy per batch, plus a third, train-mode forward of the model after
  every step (it refreshes the BatchNorm statistics and builds a graph for the logged loss).

Prints the median time of each and the ratios of the in-place step to the others. The in-place step does two
forward-backward passes, so about 2x plain is its floor; against the copy it saves the deep copy (Python work per
module plus a copy of every tensor), against the official formulation also the third forward. The images are
random tensors: this measures speed, not learning.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tsbd_utils.defenses.activeness import (
    ActivenessAwareStep,
    CopyingActivenessAwareStep,
    OfficialActivenessAwareStep,
)
from tsbd_utils.device import configure_threads, resolve_device
from tsbd_utils.models import PreActResNet18
from tsbd_utils.training import Step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs=2, type=int, default=[1, 28], metavar=("CHANNELS", "SIZE"))
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=25, help="timed rounds (after 3 warm-up rounds); >= 20")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--radius", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=0.7)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    device = resolve_device(args.device)
    threads = configure_threads()
    channels, size = args.shape
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, channels, size, size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    if device.type in ("cpu", "cuda"):  # the suite's memory format on both (benchmarks/train_throughput.py)
        x = x.contiguous(memory_format=torch.channels_last)
    model = PreActResNet18(num_classes=10, in_channels=channels, width=args.width).to(device).train()
    if device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)
    # lr 0: every step starts from the same weights, so all four time the same work.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    steps = {
        "plain SGD step": Step(),
        "activeness-aware, in place": ActivenessAwareStep(args.radius, args.alpha),
        "activeness-aware, copy per batch": CopyingActivenessAwareStep(args.radius, args.alpha),
        "activeness-aware, official": OfficialActivenessAwareStep(args.radius, args.alpha),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.repeats + 3):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step(model, x, y, optimizer)
            sync(device)
            if round_ >= 3:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"device {device} ({threads} threads), input {channels}x{size}x{size}, width {args.width}, "
        f"batch {args.batch_size}, {args.repeats} rounds (medians)"
    )
    for name, value in median.items():
        print(f"  {name:34s} {value * 1000:8.1f} ms")
    plain, in_place, copying, official = median.values()
    print(f"ratio in place / plain           {in_place / plain:.2f}x  (floor about 2: two forward-backward passes)")
    print(f"ratio in place / copy per batch  {in_place / copying:.2f}x")
    print(f"ratio in place / official        {in_place / official:.2f}x")


if __name__ == "__main__":
    main()
