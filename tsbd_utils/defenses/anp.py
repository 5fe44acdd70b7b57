"""ANP: Adversarial Neuron Pruning (Wu & Wang, "Adversarial Neuron Pruning Purifies Backdoored
Deep Models", NeurIPS 2021, https://arxiv.org/abs/2110.14430).

Backdoor neurons are the ones whose small perturbation flips the model's predictions. ANP gives
every BatchNorm channel ("neuron") a mask m in [0, 1] and adversarial noise of size eps
(multiplicative on the BN weight and, separately, on the bias), and learns the masks
to keep the clean loss low even under the worst noise; neurons that only survive with a low
mask are pruned.

Per batch (official code and BackdoorBench ``defense/anp.py``): draw the noise uniformly in
[-eps, eps], take ``steps`` signed ascent steps of size eps / steps on it (both codes never
project it back into [-eps, eps], so it may reach 2 eps), then one SGD step on the masks for
``alpha * L(m) + (1 - alpha) * L(m + noise)`` and clamp them to [0, 1]. Batches are drawn with
replacement, with the training augmentation. Finally every neuron of the *original* model whose
mask is below a threshold gets BN weight 0; the threshold is swept from 0 to 0.9 by 0.05.

Defender holds: the backdoored model and 5% clean training data (BackdoorBench ``ratio 0.05``).
Defaults (BackdoorBench ``config/defense/anp/cifar10.yaml``): eps 0.4, 1 noise step, alpha 0.2,
mask SGD lr 0.01 with momentum 0.9 (the official ANP code uses lr 0.2), 2000 iterations of batch
256, thresholds 0 to 0.9 by 0.05, acc_ratio 0.1. Profiles scale the iterations by
``Profile.defense_scale`` (quick: 200, smoke: 2). Cost: an iteration is 3 forward and 2 backward
passes (no weight gradients), about 0.65 s at batch 256 for the quick model (width 16, 1x28x28)
on 2 CPU cores, so about 2 minutes for the quick profile's 200 iterations, plus about 7 s for
the 19 clean-accuracy evaluations of the threshold sweep (``iterations=40``: about 30 s).

Choice of the threshold. BackdoorBench keeps the threshold with the lowest *test* ASR whose test
accuracy stays within 10% (relative) of the unpruned model's. That needs the test set and the
trigger, so it is offered only as a labelled oracle (``choice="oracle"`` plus ``oracle=``); the
default, ``choice="clean"``, keeps the largest threshold whose accuracy on the defender's clean
images stays within 10% of the unpruned model's (:func:`common.choose_amount`).

Deviation: a neuron is pruned when its mask is *below* the threshold (BackdoorBench: ``<=``), so
threshold 0 is the unpruned reference; masks clamped to exactly 0 are pruned from 0.05 on.

Example:
    >>> result = DEFENSES["anp"](model, splits.clean, ANPConfig.for_profile(profile),
    ...                         spec=splits.spec, seed=0, device="cpu")
    >>> result.record["threshold"], result.record["pruned"]
    >>> masks.flat_masks(result.record["masks"])   # every learned mask, for a histogram
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..augment import augment
from ..config import Profile
from ..data import DatasetSpec, ImageData
from ..rng import generator
from ..settings import at_least, check_ranges, in_range, non_negative, positive, replace_checked, settings
from ..training import channels_last_safe
from .base import Budget, DefenseResult, DefenseSpec, OracleData, register
from .common import check_choice, scaled_epochs, working_copy
from .masks import attach_masks, clip_masks, freeze_all_but_masks, mask_values
from .pruning import PRUNING_RANGES, prune_sweep, pruning_record

LOG_CHUNKS = 4  # BackdoorBench logs every 500 of its 2000 iterations: four averages per run


@settings
class ANPConfig:
    """ANP's settings; defaults are BackdoorBench's CIFAR-10 ones (``config/defense/anp/cifar10.yaml``)."""

    eps: float = 0.4  # anp_eps: range of the random noise start and size of the ascent (0: no noise)
    steps: int = 1  # anp_steps: signed ascent steps on the noise per batch (each of size eps / steps)
    alpha: float = 0.2  # anp_alpha: weight of the natural loss; 1 - alpha weighs the loss under noise
    lr: float = 0.01  # mask SGD learning rate (BackdoorBench's ``lr``; the official ANP code: 0.2)
    momentum: float = 0.9  # mask SGD momentum, no weight decay
    iterations: int = 2000  # nb_iter: mask steps, one batch each; for_profile scales it by defense_scale
    batch_size: int = 256  # images per iteration, drawn with replacement from the clean subset
    pruning_max: float = 0.9  # largest threshold tried
    pruning_step: float = 0.05  # thresholds 0, 0.05, ..., 0.9 (19 candidates)
    acc_ratio: float = 0.1  # largest relative accuracy drop a threshold may cost
    choice: str = "clean"  # "clean" (defender's data) or "oracle" (BackdoorBench's test-set choice)
    oracle_rule: str = "lowest_asr"  # the oracle's rule: BackdoorBench keeps the lowest test ASR

    def __post_init__(self) -> None:
        check_ranges(
            self, eps=non_negative, steps=at_least(1, int), alpha=in_range(0, 1), lr=positive,
            momentum=in_range(0, 1, high_open=True), iterations=at_least(1, int), batch_size=at_least(2, int),
            **PRUNING_RANGES,
        )

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> ANPConfig:
        """BackdoorBench's ANP with its iterations scaled by ``profile.defense_scale`` (and smoke's cap),
        or the profile's own count (``Profile.anp_iterations``, where scaling alone costs too much)."""
        iterations = profile.anp_iterations or scaled_epochs(profile, cls.iterations)
        return replace_checked(cls(iterations=iterations), **overrides)


def learn_masks(
    model: nn.Module,
    clean: ImageData,
    config: ANPConfig,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """ANP's mask optimisation on a masked, noisy copy of ``model``; returns the masks and a log.

    The log holds, for each quarter of the iterations, the mean mask loss and the accuracy of
    the un-noised forward passes on the (augmented) batches.
    """
    device = torch.device(device)
    masked = working_copy(model, device)
    layers = attach_masks(masked, noise=config.eps > 0)
    masks = freeze_all_but_masks(masked)
    noise = [p for m in layers.values() if m.has_noise for p in (m.neuron_noise, m.neuron_noise_bias)]
    optimizer = torch.optim.SGD(masks, lr=config.lr, momentum=config.momentum)
    channels_last = channels_last_safe(masked, device)  # 1.2-1.4x on CPU where it is safe
    masked.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x_all, y_all = clean.x.to(device), clean.y.to(device)
    picks, aug_gen = generator(seed, "anp-batches"), generator(seed, "anp-augment", device)
    noise_gen = generator(seed, "anp-noise", device)
    chunk = math.ceil(config.iterations / LOG_CHUNKS)
    log: list[dict[str, float]] = []
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0
    masked.train()
    for it in tqdm(range(config.iterations), desc="ANP masks", disable=not progress):
        index = torch.randint(len(clean), (config.batch_size,), generator=picks).to(device)
        x = augment(x_all[index].float().div_(255), spec.crop_pad, spec.flip, aug_gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y_all[index]
        loss_rob: torch.Tensor | float = 0.0
        if noise:
            with torch.no_grad():
                for p in noise:  # a fresh random start every batch
                    p.uniform_(-config.eps, config.eps, generator=noise_gen)
            for m in layers.values():
                m.perturbed = True
            for _ in range(config.steps):
                grads = torch.autograd.grad(F.cross_entropy(masked(x), y), noise)
                with torch.no_grad():  # ascent on the loss: the noise moves along the gradient's sign
                    torch._foreach_add_(noise, torch._foreach_sign(grads), alpha=config.eps / config.steps)
            loss_rob = F.cross_entropy(masked(x), y)
            for m in layers.values():
                m.perturbed = False
        logits = masked(x)
        loss = config.alpha * F.cross_entropy(logits, y) + (1 - config.alpha) * loss_rob
        for p, g in zip(masks, torch.autograd.grad(loss, masks)):
            p.grad = g
        optimizer.step()
        clip_masks(masked)
        # Accumulate on the device: one synchronisation per logged chunk, not per batch.
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if (it + 1) % chunk == 0 or it + 1 == config.iterations:
            log.append({"iteration": it + 1, "loss": loss_sum.item() / seen, "train_acc": correct.item() / seen})
            loss_sum.zero_()
            correct.zero_()
            seen = 0
    return mask_values(masked), log


def defend(
    model: nn.Module,
    clean: ImageData,
    config: ANPConfig | None = None,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    oracle: OracleData | None = None,
    progress: bool = False,
) -> DefenseResult:
    """ANP on a copy of ``model`` with the defender's ``clean`` images; ``model`` is left as it was.

    ``oracle`` (:class:`base.OracleData`, test set and trigger) is used only with
    ``config.choice="oracle"``: BackdoorBench's test-set choice of the threshold, an *oracle*
    no defender has. Returns the pruned original model (plain BatchNorm2d layers, eval mode).
    """
    config = config or ANPConfig()
    check_choice(config.choice, oracle)  # before the optimisation, not after it
    masks, log = learn_masks(model, clean, config, spec=spec, seed=seed, device=device, progress=progress)
    pruned, threshold, rows = prune_sweep(model, masks, config, clean=clean, device=device, oracle=oracle)
    record = pruning_record(config, masks, threshold, rows, iterations=config.iterations, log=log)
    return DefenseResult(pruned, record)


def budget(config: ANPConfig, images: int, record: dict[str, Any] | None = None) -> Budget:
    """ANP's budget: its mask iterations (each on one batch, after ``steps`` signed ascent steps on the
    neuron noise), then a threshold sweep of forward passes."""
    steps = config.iterations * (1 + config.steps)
    passes = f"{config.iterations} mask iterations (each after {config.steps} noise ascent step) + pruning sweep"
    return Budget(passes, steps, steps * config.batch_size, images)


register(
    DefenseSpec(
        name="anp",
        title="ANP",
        paper=(
            'Wu and Wang, "Adversarial Neuron Pruning Purifies Backdoored Deep Models", NeurIPS 2021'
        ),
        url="https://arxiv.org/abs/2110.14430",
        config=ANPConfig,
        defend=defend,
        holds="5% clean training data",
        options=("oracle",),
        paper_average=(91.02, 36.53, 80.2),
        budget=budget,
    )
)
