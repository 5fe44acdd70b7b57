"""Training throughput: the suite's training loop against a per-image DataLoader pipeline, in one run.

    python benchmarks/train_throughput.py                      # quick profile's shape: Fashion-MNIST, width 16, CPU
    python benchmarks/train_throughput.py --device cuda        # paper profile's shape: CIFAR-10, width 64, a GPU
    python benchmarks/train_throughput.py --device cuda --no-compile  # skip the torch.compile variants

Both sides train the same PreActResNet18 (same width, batch, SGD recipe, random crop and flip of the dataset)
for whole epochs over the same images, interleaved round by round so that machine noise hits all alike:

- baseline: a ``DataLoader`` over per-image torchvision v2 transforms (uint8 to float, crop, flip) collated into
  NCHW float batches, fp32, a plain SGD loop; no loader workers on a CPU (they would compete with the two
  training threads), ``--loader-workers`` (default 8) and pinned memory on CUDA;
- the suite: :func:`tsbd_utils.training.train` itself, data resident on the device as uint8 and augmented in
  batches there, in each variant of its speed settings: channels_last on or off, and on CUDA bf16 autocast and
  ``torch.compile`` on or off (every combination).

Prints images/s (median over the rounds after a warm-up round) and each variant's ratio to the baseline measured
in the same run. The images are random tensors of the dataset's shape: this measures speed, not learning.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from tsbd_utils.config import TrainConfig
from tsbd_utils.data import DATASETS, ImageData
from tsbd_utils.datasets import DatasetSpec
from tsbd_utils.device import configure_threads, resolve_device
from tsbd_utils.models import PreActResNet18
from tsbd_utils.training import train


class PerImage(Dataset):
    """The conventional pipeline: one image at a time through torchvision transforms."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, spec: DatasetSpec) -> None:
        self.x, self.y = x, y
        steps = [v2.ToDtype(torch.float32, scale=True), v2.RandomCrop(spec.size, padding=spec.crop_pad)]
        self.transform = v2.Compose(steps + ([v2.RandomHorizontalFlip()] if spec.flip else []))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline_epoch(model, loader: DataLoader, config: TrainConfig, device: torch.device) -> float:
    """Seconds of one epoch of the conventional loop (the same SGD recipe, fp32, NCHW)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    model.train()
    sync(device)
    start = time.perf_counter()
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


def variants(device: torch.device, compile_: bool) -> dict[str, dict[str, bool]]:
    """The suite's speed settings to time: channels_last everywhere; bf16 autocast and torch.compile on CUDA
    (bf16 is ignored on the CPU, and compiling there is opt-in: minutes on two cores)."""
    amps = (True, False) if device.type == "cuda" else (False,)
    compiles = (True, False) if compile_ else (False,)
    out = {}
    for amp, cl, comp in itertools.product(amps, (True, False), compiles):
        name = ", ".join([("bf16" if amp else "fp32"), ("channels_last" if cl else "NCHW")]
                         + (["compiled"] if comp else []))
        out[name] = {"amp": amp, "channels_last": cl, "compile": comp}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dataset", default=None, help="fashion_mnist or cifar10 (default: cifar10 on CUDA, else "
                        "fashion_mnist): its image shape, crop and flip")
    parser.add_argument("--width", type=int, default=None, help="model width (default: 64 on CUDA, else 16)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=None,
                        help="images per epoch (default: 2560 on a CPU, 25600 on CUDA)")
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per variant, after one warm-up epoch")
    parser.add_argument("--loader-workers", type=int, default=None,
                        help="baseline DataLoader workers (default: 0 on a CPU, 8 on CUDA)")
    parser.add_argument("--compile", dest="compile_", action="store_true", default=None,
                        help="also time torch.compile (default on CUDA)")
    parser.add_argument("--no-compile", dest="compile_", action="store_false")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    spec = DATASETS[args.dataset or ("cifar10" if on_cuda else "fashion_mnist")]
    width = args.width or (64 if on_cuda else 16)
    n = args.images or (25600 if on_cuda else 2560)
    workers = args.loader_workers if args.loader_workers is not None else (8 if on_cuda else 0)
    compile_ = on_cuda if args.compile_ is None else args.compile_
    for name, value, low in (("--rounds", args.rounds, 1), ("--images", n, args.batch_size),
                             ("--batch-size", args.batch_size, 2), ("--loader-workers", workers, 0)):
        if value < low:
            parser.error(f"{name} must be >= {low}, got {value}")
    threads = configure_threads()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, spec.channels, spec.size, spec.size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, spec.num_classes, (n,), generator=g)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, schedule="constant")

    def model() -> torch.nn.Module:
        return PreActResNet18(spec.num_classes, spec.channels, width).to(device)

    loader = DataLoader(PerImage(x, y, spec), batch_size=args.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=on_cuda, persistent_workers=workers > 0)
    settings = variants(device, compile_)
    models = {"baseline": model(), **{name: model() for name in settings}}
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(args.rounds + 1):  # round 0 warms up (and compiles)
        times["baseline"].append(baseline_epoch(models["baseline"], loader, config, device))
        for name, options in settings.items():
            history = train(models[name], ImageData(x, y), dataclasses.replace(config, **options), spec=spec,
                            seed=round_, device=device, progress=False)
            times[name].append(history.seconds[0])
    rate = {name: n / statistics.median(t[1:]) for name, t in times.items()}
    where = torch.cuda.get_device_name(device) if on_cuda else f"{threads} CPU threads"
    print(f"device {device} ({where}), {spec.name} images {spec.channels}x{spec.size}x{spec.size}, width {width}, "
          f"batch {args.batch_size}, {n} images per epoch, median of {args.rounds} epochs after 1 warm-up")
    base = rate["baseline"]
    print(f"  {'baseline: DataLoader, per-image transforms':48s} {base:9.0f} images/s   1.00x "
          f"({workers} loader workers)")
    for name in settings:
        print(f"  {'suite loop, ' + name:48s} {rate[name]:9.0f} images/s   {rate[name] / base:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "where": where, "dataset": spec.name,
                                               "width": width, "batch_size": args.batch_size, "images": n,
                                               "images_per_s": rate, "seconds": times}, indent=2) + "\n")


if __name__ == "__main__":
    main()
