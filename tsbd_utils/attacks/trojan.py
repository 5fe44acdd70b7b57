"""Trojan (TrojanNN): a patch optimized to excite the neurons the clean model relies on most."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..settings import settings
from .base import Attack, AttackConfig, AttackContext, corner_mask


@settings
class TrojanConfig(AttackConfig):
    mask_size: int = 10  # side of the square trigger region on a 32-pixel image, bottom-right (scaled)
    neurons: int = 2  # penultimate neurons to excite: the ones with the largest outgoing weights (BackdoorBench: 2)
    activation: float = 100.0  # value the chosen neurons are driven towards (BackdoorBench: 100)
    iterations: int = 1000  # sign-gradient steps on the trigger at the paper profile (BackdoorBench: 1000; scaled)
    step_size: float = 0.01  # step per iteration, pixels stay in [0, 1]


class Trojan(Attack):
    """TrojanNN (Liu, Ma, Aafer, Lee, Zhai, Wang, Zhang, NDSS 2018), as BackdoorBench runs it.

    Paper: *Trojaning Attack on Neural Networks*, https://doi.org/10.14722/ndss.2018.23291.
    On a trained clean model, pick the penultimate neurons (inputs of ``linear``) with the largest
    summed outgoing weights, then optimize a trigger inside a mask so that it drives them to a high
    activation. BackdoorBench's mask is an apple logo it ships; this suite uses a square in the
    bottom-right corner (nothing to download). The pattern is added to the image inside the mask
    (BackdoorBench adds it too; its uint8 wrap-around is not reproduced). Dirty-label, 10%; the
    backdoored model is trained from scratch on the poisoned set.
    """

    name = "trojan"
    title = "Trojan"
    state_keys = ("mask", "pattern")
    citation = "Liu et al., Trojaning Attack on Neural Networks, NDSS 2018 (https://doi.org/10.14722/ndss.2018.23291)"
    config_class = TrojanConfig
    uses_clean_model = True  # prepare() fits its trigger against the clean model
    profile_scaled = ("iterations",)

    def _prepare(self, context: AttackContext) -> None:
        mask = corner_mask(self.shape, self.config.mask_size)
        iterations = self.scaled_settings(context.profile)["iterations"]
        fields = {"resource": "trojan-trigger", "config": self.config, "iterations": iterations}
        fitted = context.cached("resource", fields, lambda: self._fit(context, mask, iterations))
        self.state = {"mask": mask, "pattern": fitted["pattern"]}

    def _fit(self, context: AttackContext, mask: torch.Tensor, iterations: int) -> dict:
        cfg, device = self.config, context.device
        model = context.get_clean_model().to(device).eval()
        if not hasattr(model, "features") or not hasattr(model, "linear"):
            raise TypeError("Trojan needs a model with .features(x) and a .linear head (PreActResNet18)")
        neurons = model.linear.weight.abs().sum(0).topk(cfg.neurons).indices
        mask = mask.to(device)
        pattern = torch.full((1, *self.shape), 0.5, device=device)
        goal = torch.full((1, cfg.neurons), cfg.activation, device=device)
        for _ in range(iterations):
            pattern.requires_grad_(True)
            # The trigger alone, on a black image, as TrojanNN generates it.
            loss = F.mse_loss(model.features(pattern * mask)[:, neurons], goal)
            (grad,) = torch.autograd.grad(loss, pattern)
            with torch.no_grad():
                pattern = (pattern - cfg.step_size * grad.sign()).clamp(0, 1)
        return {"pattern": (pattern * mask).detach().cpu(), "neurons": neurons.cpu()}

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.state["pattern"].to(x.device, x.dtype)
