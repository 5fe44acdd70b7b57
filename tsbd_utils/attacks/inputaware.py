"""Input-aware dynamic backdoor: a generator draws a different trigger for every image."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ..config import Profile, TrainConfig
from ..rng import generator
from ..settings import in_range, non_negative, settings
from ..training import BatchTransform
from .base import Attack, AttackConfig, AttackContext, split_batch
from .nets import UNet, load_module, module_state


@settings
class InputAwareConfig(AttackConfig):
    cross_ratio: float = 1.0  # cross-trigger samples per poisoned sample in a batch
    mask_density: float = 0.032  # the share of pixels a mask may cover (BackdoorBench: 0.032)
    lambda_div: float = 1.0  # weight of the diversity loss (BackdoorBench: 1)
    lambda_norm: float = 100.0  # weight of the mask-density penalty (BackdoorBench: 100)
    mask_epochs: int = 25  # mask-generator warm-up epochs at the paper profile (BackdoorBench: 25; scaled)
    short_run_factor: float = 1.6  # more classifier epochs in shortened profiles: the generator needs time to settle
    lr: float = 0.01  # Adam lr of both generators (BackdoorBench: 0.01, betas (0.5, 0.9))
    width: int = 16  # channels of the pattern generator's U-Net
    mask_width: int = 8  # channels of the mask generator's U-Net (it only has to pick a few pixels)

    limits = {
        "cross_ratio": non_negative,
        "mask_density": in_range(0, 1, low_open=True),
        "lambda_div": non_negative,
        "lambda_norm": non_negative,
    }


def diversity(x1: torch.Tensor, x2: torch.Tensor, out1: torch.Tensor, out2: torch.Tensor) -> torch.Tensor:
    """Input distance over output distance: small when different images get different outputs."""
    d_in = (x1 - x2).pow(2).mean(dim=(1, 2, 3)).sqrt()
    # The epsilon inside the root keeps the gradient finite when two outputs coincide.
    d_out = (out1 - out2).pow(2).mean(dim=(1, 2, 3)).add(1e-12).sqrt()
    return (d_in / (d_out + 1e-6)).mean()


class InputAware(Attack):
    """Input-aware dynamic backdoor (Nguyen, Tran, NeurIPS 2020).

    Paper: *Input-Aware Dynamic Backdoor Attack*, https://arxiv.org/abs/2010.08138.
    A mask generator M picks a few pixels of each image (at most ``mask_density`` of them) and a
    pattern generator G paints them: x' = (1 - M(x)) x + M(x) G(x). M is trained first, alone,
    to be sparse and diverse; then G and the classifier are trained together, on the fly. In each
    batch a ``ratio`` share gets its own trigger and the target label, and as many "cross" samples
    get the trigger generated for *another* image and keep their label, so that a trigger only
    works on the image it was made for.
    """

    name = "inputaware"
    title = "Input-aware"
    state_keys = ("pattern.", "mask.")
    citation = "Nguyen and Tran, Input-Aware Dynamic Backdoor Attack, NeurIPS 2020 (https://arxiv.org/abs/2010.08138)"
    config_class = InputAwareConfig
    on_the_fly = True
    constant_lr = True  # BackdoorBench's classifier milestones lie past the last epoch
    profile_scaled = ("mask_epochs",)  # scaled like the defenses' epochs (quick: 5): fewer left the masks too dense

    def _nets(self) -> tuple[UNet, UNet]:
        c = self.shape[0]
        # channels_last: about 1.5x faster convolutions on the CPU (the mask warm-up is the costly part).
        nets = UNet(c, c, self.config.width), UNet(c, 1, self.config.mask_width)
        return tuple(net.to(memory_format=torch.channels_last) for net in nets)

    def _prepare(self, context: AttackContext) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            self.pattern_net, self.mask_net = (net.to(context.device) for net in self._nets())
        self._train_masks(context, self.scaled_settings(context.profile)["mask_epochs"])

    def pattern(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pattern_net.to(x.device)(x)) / 2 + 0.5

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mask_net.to(x.device)(x)) / 2 + 0.5

    def stamp(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``x`` with the trigger generated for ``source`` (``source`` is ``x`` itself for a real trigger)."""
        m = self.mask(source)
        return x * (1 - m) + self.pattern(source) * m

    def _train_masks(self, context: AttackContext, epochs: int) -> None:
        cfg, device = self.config, context.device
        optimizer = torch.optim.Adam(self.mask_net.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        g = generator(context.seed, "inputaware-masks")
        images, batch = context.train.x, context.profile.train.batch_size
        self.mask_net.train()
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=g)
            for start in range(0, len(images) - 2 * batch + 1, 2 * batch):
                x = images[order[start : start + 2 * batch]].to(device).float() / 255
                x1, x2 = x[:batch], x[batch:]
                m1, m2 = self.mask(x1), self.mask(x2)
                loss = cfg.lambda_norm * F.relu(m1.mean() - cfg.mask_density) + cfg.lambda_div * diversity(
                    x1, x2, m1, m2
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.mask_net.eval().requires_grad_(False)  # M stays fixed from here on

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.state = {**module_state("pattern", self.pattern_net), **module_state("mask", self.mask_net)}
        return super().state_dict()

    def _loaded(self) -> None:
        pattern_net, mask_net = self._nets()
        self.pattern_net = load_module("pattern", pattern_net, self.state)
        self.mask_net = load_module("mask", mask_net, self.state).requires_grad_(False)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        self.pattern_net.eval()
        return self.stamp(x, x)

    def train_config(self, profile: Profile) -> TrainConfig:
        if profile.attack_overrides:
            return super().train_config(profile)
        # In a shortened run (quick: 5 epochs) a fixed trigger is learned in time, but the classifier and the
        # pattern generator chase each other for longer: on the quick profile 5 and 7 epochs left the ASR at
        # 87-91%, 8 epochs reached 92%.
        return dataclasses.replace(profile.train, epochs=math.ceil(profile.train.epochs * self.config.short_run_factor))

    def batch_transform(self) -> BatchTransform:
        self._require_prepared()
        return InputAwarePoisoning(self)


class InputAwarePoisoning(BatchTransform):
    """Joint training of the pattern generator with the classifier, batch by batch."""

    def __init__(self, attack: InputAware) -> None:
        self.attack = attack
        self.optimizer = torch.optim.Adam(attack.pattern_net.parameters(), lr=attack.config.lr, betas=(0.5, 0.9))
        self._div: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        cfg, attack = self.attack.config, self.attack
        attack.pattern_net.train()
        n_bd, n_cross = split_batch(len(x), cfg.ratio, cfg.cross_ratio)
        # Cross samples borrow the triggers of other images: the batch rolled by a random non-zero shift.
        shift = int(torch.randint(1, len(x), (1,), generator=generator, device=x.device)) if len(x) > 1 else 0
        sources = x.roll(shift, 0)[n_bd : n_bd + n_cross]
        own, borrowed = attack.pattern(x[:n_bd]), attack.pattern(sources)
        m_own, m_borrowed = attack.mask(x[:n_bd]), attack.mask(sources)
        poisoned = x[:n_bd] * (1 - m_own) + own * m_own
        crossed = x[n_bd : n_bd + n_cross] * (1 - m_borrowed) + borrowed * m_borrowed
        n = min(n_bd, n_cross)
        self._div = cfg.lambda_div * diversity(x[:n], sources[:n], own[:n], borrowed[:n]) if n else None
        x = torch.cat([poisoned, crossed, x[n_bd + n_cross :]])
        y = torch.cat([torch.full_like(y[:n_bd], cfg.target), y[n_bd:]])
        return x, y

    def extra_loss(self) -> torch.Tensor | None:
        return self._div

    def after_step(self) -> None:
        # The classification loss reached the generator through the poisoned images: step it too.
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
