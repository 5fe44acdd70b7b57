"""Training throughput: the suite's loop against a conventional per-image pipeline, in one run.

    python benchmarks/train_step.py                        # quick-profile shape: 1x28x28, width 16, CPU
    python benchmarks/train_step.py --shape 3 32 --width 64 --device cuda   # paper shape (timing only)

Times one SGD step (batch fetch, augmentation, forward, backward, update) three ways on the same
model and prints images/s and ratios against the baseline measured in this same run:

- baseline: a DataLoader over per-image torchvision transforms (random crop, flip), NCHW;
- batched: the suite's in-memory uint8 data with batched on-device augmentation, NCHW;
- batched + channels_last: the suite's default.

The images are random tensors of the requested shape: this measures speed, not learning.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from tsbd_utils.augment import augment
from tsbd_utils.models import PreActResNet18
from tsbd_utils.rng import generator
from tsbd_utils.device import configure_threads, resolve_device


class PerImage(Dataset):
    """The conventional pipeline: one image at a time through torchvision transforms."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad: int, flip: bool) -> None:
        self.x, self.y = x, y
        steps = [v2.ToDtype(torch.float32, scale=True), v2.RandomCrop(x.shape[-1], padding=pad)]
        self.transform = v2.Compose(steps + ([v2.RandomHorizontalFlip()] if flip else []))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, batches, warmup: int, device: torch.device) -> list[float]:
    times = []
    for i, batch in enumerate(batches):
        sync(device)
        start = time.perf_counter()
        step(*batch)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs=2, type=int, default=[1, 28], metavar=("CHANNELS", "SIZE"))
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (after 3 warm-up steps)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    threads = configure_threads()
    channels, size = args.shape
    n = args.batch_size * (args.steps + 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    pad, flip = (2, False) if channels == 1 else (4, True)

    def make(channels_last: bool):
        model = PreActResNet18(10, channels, args.width).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(xb, yb):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    # Baseline: per-image transforms collated by a DataLoader (no workers: on 2 cores they compete with training).
    loader = DataLoader(PerImage(x, y, pad, flip), batch_size=args.batch_size, shuffle=True, num_workers=0)
    step = make(channels_last=False)
    baseline = time_steps(lambda xb, yb: step(xb, yb), iter(loader), 3, device)

    x_dev, y_dev = x.to(device), y.to(device)
    gen = generator(0, "bench", device)

    def batches():
        order = torch.randperm(n, device=device)
        for b in range(args.steps + 3):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            yield augment(x_dev[idx].float().div_(255), pad, flip, gen), y_dev[idx]

    results = {"baseline: DataLoader + per-image transforms": baseline}
    for label, cl in (("batched on-device augmentation", False), ("batched + channels_last (suite default)", True)):
        step = make(channels_last=cl)
        results[label] = time_steps(step, batches(), 3, device)

    base = statistics.median(baseline)
    print(
        f"device {device}, {threads} threads, shape {channels}x{size}x{size}, width {args.width}, "
        f"batch {args.batch_size}, median of {args.steps} steps"
    )
    for label, times in results.items():
        med = statistics.median(times)
        print(
            f"{label:45s} {1000 * med:8.1f} ms/step {args.batch_size / med:9.0f} images/s   speed-up x{base / med:.2f}"
        )


if __name__ == "__main__":
    main()
