"""SSBA: an invisible, sample-specific trigger hidden by a steganographic encoder trained here."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..rng import generator
from ..settings import in_range, non_negative, settings
from .base import Attack, AttackConfig, AttackContext
from .nets import BitDecoder, UNet, load_module, module_state


@settings
class SSBAConfig(AttackConfig):
    bits: int = 16  # length of the secret string (StegaStamp uses 100 bits on 400x400 images)
    max_residual: float = 0.05  # L-infinity bound of the residual once trained: PSNR >= 26 dB by construction
    start_residual: float = 0.3  # looser bound while the decoder first learns to read the bits
    warmup: float = 0.4  # share of the steps with the bit loss alone, before the bound tightens
    image_weight: float = 10.0  # final weight of the image MSE against the bit loss
    steps: int = 3000  # encoder training steps at the paper profile (scaled by the profile's epoch_scale)
    batch_size: int = 64
    lr: float = 1e-3  # Adam
    width: int = 8  # channels of the encoder U-Net

    limits = {
        "max_residual": in_range(0, 1, low_open=True),
        "start_residual": in_range(0, 1, low_open=True),
        "warmup": in_range(0, 1, high_open=True),
        "image_weight": non_negative,
    }


class SecretEncoder(nn.Module):
    """StegaStamp-style encoder: image + secret bits -> the image plus a bounded residual."""

    def __init__(self, channels: int, size: int, bits: int, width: int, bound: float) -> None:
        super().__init__()
        self.side = math.ceil(size / 4)
        self.size = size
        self.bound = bound  # L-infinity bound of the residual (tightened during training)
        self.secret = nn.Linear(bits, 3 * self.side * self.side)  # the secret as a coarse 3-channel image
        self.unet = UNet(channels + 3, channels, width)

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        s = self.secret(bits).view(len(bits), 3, self.side, self.side)
        s = F.interpolate(s, size=(self.size, self.size), mode="nearest")
        residual = self.bound * torch.tanh(self.unet(torch.cat([x, s], 1)))
        return (x + residual).clamp(0, 1)


class SSBA(Attack):
    """SSBA (Li, Li, Wu, Li, He, Lyu, ICCV 2021): invisible, sample-specific triggers.

    Paper: *Invisible Backdoor Attack with Sample-Specific Triggers*, https://arxiv.org/abs/2012.03816.
    A StegaStamp-style encoder hides a fixed secret string in each poisoned image; the residual
    differs from image to image, and stays under a small L-infinity bound. BackdoorBench ships no
    encoded images (users must download them); this suite trains the encoder and its bit decoder
    on the attacker's training images (bit loss + image MSE), caches them, then encodes one fixed
    secret into the poisoned images. Dirty-label, 10% from all classes.
    """

    name = "ssba"
    title = "SSBA"
    state_keys = ("encoder.", "decoder.", "secret")
    citation = (
        "Li et al., Invisible Backdoor Attack with Sample-Specific Triggers, ICCV 2021 "
        "(https://arxiv.org/abs/2012.03816)"
    )
    config_class = SSBAConfig
    invisible = True
    profile_scaled = ("steps",)

    def _encoder(self) -> SecretEncoder:
        c, h, _ = self.shape
        return SecretEncoder(c, h, self.config.bits, self.config.width, self.config.max_residual)

    def _prepare(self, context: AttackContext) -> None:
        steps = self.scaled_settings(context.profile)["steps"]
        fields = {"resource": "ssba-encoder", "config": self.config, "steps": steps}
        state = context.cached("resource", fields, lambda: self._fit(context, steps))
        secret = torch.randint(0, 2, (1, self.config.bits), generator=generator(context.seed, "ssba-secret"))
        self.state = {**state, "secret": secret.float()}
        self._loaded()

    def _fit(self, context: AttackContext, steps: int) -> dict[str, torch.Tensor]:
        """Train encoder and decoder on random secrets: bits first, then invisibility.

        The decoder only starts to read bits once the residual is strong enough to notice, so the
        first ``warmup`` share of steps uses the bit loss alone under a loose bound; then the bound
        shrinks linearly to ``max_residual`` while the image loss ramps up (StegaStamp ramps its
        image losses the same way).
        """
        cfg, device = self.config, context.device
        c, _, _ = self.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            encoder, decoder = self._encoder().to(device), BitDecoder(c, cfg.bits).to(device)
        optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=cfg.lr)
        g = generator(context.seed, "ssba-train")
        images = context.train.x
        bit_acc = torch.zeros(())
        for step in range(steps):
            tighten = max(0.0, (step / steps - cfg.warmup) / (1 - cfg.warmup))
            encoder.bound = cfg.start_residual + (cfg.max_residual - cfg.start_residual) * tighten
            x = images[torch.randint(0, len(images), (cfg.batch_size,), generator=g)].to(device).float() / 255
            bits = torch.randint(0, 2, (cfg.batch_size, cfg.bits), generator=g).float().to(device)
            encoded = encoder(x, bits)
            logits = decoder(encoded)
            loss = F.binary_cross_entropy_with_logits(logits, bits) + tighten * cfg.image_weight * F.mse_loss(
                encoded, x
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bit_acc = ((logits > 0).float() == bits).float().mean().detach().cpu()
        return {**module_state("encoder", encoder), **module_state("decoder", decoder), "bit_accuracy": bit_acc}

    def _loaded(self) -> None:
        c, _, _ = self.shape
        self.encoder = load_module("encoder", self._encoder(), self.state)
        self.decoder = load_module("decoder", BitDecoder(c, self.config.bits), self.state)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        encoder = self.encoder.to(x.device)
        return encoder(x, self.state["secret"].to(x.device, x.dtype).expand(len(x), -1))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The bits the trained decoder reads from images (to show the secret is really there)."""
        with torch.no_grad():
            return (self.decoder.to(x.device)(x) > 0).float()
