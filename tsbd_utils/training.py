"""One training loop for every model trained from scratch in the suite.

Data stays on the device as uint8; each step indexes a batch, converts it to float, augments it
with batched tensor ops and, for attacks that poison on the fly (WaNet, Input-aware), hands it to
a :class:`BatchTransform`. No DataLoader, no workers: on 2 CPU cores they only compete with the
compute threads, and on a GPU the whole dataset fits in memory anyway.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn
from tqdm.auto import tqdm

from .augment import augment
from .config import TrainConfig
from .data import DatasetSpec, ImageData
from .rng import generator
from .schedules import SCHEDULES


class BatchTransform:
    """Per-batch hook of the training loop, for attacks that poison on the fly.

    ``training.py`` never imports an attack; an attack hands the loop one of these. The loop calls
    ``transform(x, y, generator)`` on every augmented float batch, adds ``extra_loss()`` (if not
    None) to the classification loss, and calls ``after_step()`` after the optimizer step (for
    example to step a jointly trained trigger generator).
    """

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def extra_loss(self) -> torch.Tensor | None:
        return None

    def after_step(self) -> None:
        return None


class Step:
    """How one batch updates the model; the loop's default is a cross-entropy SGD step.

    Unlearning (gradient ascent) and TSBD's activeness-aware fine-tuning pass their own step to
    :func:`train`, so every loop in the suite shares one batching, augmentation and bookkeeping path.
    ``__call__`` computes the loss, steps ``optimizer`` and returns the (detached) loss and logits.
    """

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), logits.detach()


@dataclass
class History:
    """A training run: per-epoch metrics, and per-epoch wall time kept apart.

    ``epochs`` holds what the seed determines (loss, accuracy, lr, images seen) and is what gets
    cached and compared; ``seconds`` varies from run to run and machine to machine, so it is
    reported beside the metrics (``timing()``), never inside them.
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    stopped: bool = False  # the stopping rule fired (the run may have ended before its last epoch)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds)

    @property
    def images_per_s(self) -> float:
        images = sum(e["images"] for e in self.epochs[: len(self.seconds)])
        return images / self.total_seconds if self.total_seconds > 0 else 0.0

    def timing(self) -> dict[str, Any]:
        return {
            "train_seconds": self.total_seconds,
            "images_per_s": self.images_per_s,
            "epoch_seconds": list(self.seconds),
        }

    def to_dict(self) -> dict[str, Any]:
        """The metrics only (JSON-able); wall time is in :meth:`timing`."""
        return {"epochs": [dict(e) for e in self.epochs]}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> History:
        return cls(epochs=[dict(e) for e in value["epochs"]])


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (bf16 on CPUs without AMX is slower)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


CHANNELS_LAST_MIN_WIDTH = 16


def channels_last_safe(model: nn.Module, device: torch.device) -> bool:
    """Whether training ``model`` in channels_last is safe here.

    torch 2.14.1's CPU kernels corrupt the heap in channels_last backward passes when a BatchNorm
    has fewer than 16 channels and the batch size is odd (reproduced with PreActResNet18 at widths
    4, 8 and 12, batches of 33, 101 and 117; widths 16 and 32 ran clean). Narrow models (the
    smoke profile) therefore train in the default layout on the CPU.
    """
    if device.type != "cpu":
        return True
    widths = [m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return not widths or min(widths) >= CHANNELS_LAST_MIN_WIDTH


def epoch_steps(images: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of :func:`train` over ``images`` images (at least 1).

    A final batch of one image breaks BatchNorm in train mode, so it is folded into the previous one.
    """
    if images % batch_size == 1:
        return max(1, images // batch_size)
    return max(1, math.ceil(images / batch_size))


def train(
    model: nn.Module,
    data: ImageData,
    config: TrainConfig,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    batch_transform: BatchTransform | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    step: Step | None = None,
    stop: Callable[[dict[str, float]], bool] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> History:
    """Train ``model`` in place with SGD on ``data``; return its :class:`History`.

    Args:
        model: any classifier taking [0, 1] images; moved to ``device``, left in eval mode.
        data: uint8 training images and labels (a poisoned set for data-poisoning attacks).
        config: optimizer, schedule, epochs, batch size, augmentation and precision.
        spec: the dataset, for its augmentation (crop padding, flips).
        seed: seeds batch order and augmentation (model initialisation is seeded where it is built).
        batch_transform: on-the-fly poisoning, see :class:`BatchTransform`.
        eval_fn: called after each epoch on the model in eval mode; its numbers join the epoch's record.
        step: how a batch updates the model (default: a cross-entropy step); a custom step computes
            its own loss, so a batch transform's ``extra_loss`` is not used with it.
        stop: called with each epoch's record (after ``eval_fn``); True ends training there, and
            ``History.stopped`` says so. ``config.epochs`` is then a cap.
        progress: show tqdm bars (``TQDM_DISABLE=1`` also silences them).

    Example:
        >>> history = train(model, splits.train, profile.train, spec=splits.spec, seed=0)
        >>> history.epochs[-1]["train_acc"]
    """
    device = torch.device(device)
    if len(data) == 0:
        raise ValueError("no training images")
    schedule = SCHEDULES[config.schedule]
    model.to(device)
    channels_last = config.channels_last and device.type in ("cpu", "cuda") and channels_last_safe(model, device)
    # Set the layout both ways: a model loaded in channels_last must not train in it where unsafe.
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x_all, y_all = data.x.to(device), data.y.to(device)
    # The same parameters behind a compiled forward (its first steps compile; later train() calls reuse the code).
    forward = torch.compile(model) if config.compile else model
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    order_gen = generator(seed, "train-order")
    aug_gen = generator(seed, "train-augment", device)
    n = len(data)
    steps_per_epoch = epoch_steps(n, config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    history = History()
    steps_done = 0
    for epoch in tqdm(range(config.epochs), desc=desc, disable=not progress):
        model.train()
        order = torch.randperm(n, generator=order_gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        start = time.perf_counter()
        for b in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
            end = n if b == steps_per_epoch - 1 else (b + 1) * config.batch_size
            index = order[b * config.batch_size : end]
            x = x_all[index].float().div_(255)
            y = y_all[index]
            if config.augment:
                x = augment(x, spec.crop_pad, spec.flip, aug_gen)
            if batch_transform is not None:
                x, y = batch_transform(x, y, aug_gen)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = config.lr * schedule(steps_done, total_steps, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if step is not None:
                with autocast(device, config.amp):
                    loss, logits = step(forward, x, y, optimizer)
            else:
                with autocast(device, config.amp):
                    logits = forward(x)
                    loss = F.cross_entropy(logits.float(), y)
                extra = batch_transform.extra_loss() if batch_transform is not None else None
                total = loss if extra is None else loss + extra
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
            if batch_transform is not None:
                batch_transform.after_step()
            # Accumulate on the device; one synchronisation per epoch instead of one per step.
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            steps_done += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        history.seconds.append(time.perf_counter() - start)
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum.item() / seen,
            "train_acc": correct.item() / seen,
            "lr": lr,
            "images": seen,
        }
        if eval_fn is not None:
            model.eval()
            record.update(eval_fn(model))
        history.epochs.append(record)
        if stop is not None and stop(record):
            history.stopped = True
            break
    model.eval()
    return history


def recalibrate_batchnorm(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 250, device: str | torch.device = "cpu"
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on ``images`` (uint8, N x C x H x W).

    Forward passes only, no weight changes: ``torch.optim.swa_utils.update_bn`` (running statistics reset,
    then averaged over all batches equally). The copy is returned in eval mode; ``model`` is left as it was.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} of shape {tuple(images.shape)}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be an int > 0, got {batch_size!r}")
    device = torch.device(device)
    copy_ = copy.deepcopy(model).to(device)
    batches = [images[i : i + batch_size].to(device).float().div(255) for i in range(0, len(images), batch_size)]
    update_bn(batches, copy_)
    return copy_.eval()
