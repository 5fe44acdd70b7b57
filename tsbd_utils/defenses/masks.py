"""BatchNorm neuron masks, shared by the two mask-pruning baselines, ANP and RNP.

Both defenses learn one mask value per BatchNorm channel ("neuron") of a *copy* of the model and
then prune the *original* model's neurons whose mask is low, as their papers do:

* ANP (Wu & Wang, NeurIPS 2021, https://arxiv.org/abs/2110.14430) learns the masks on the
  backdoored model under adversarial neuron noise (:mod:`.anp`);
* RNP (Li et al., ICML 2023, https://arxiv.org/abs/2305.14876) learns them on an unlearned copy
  to recover its clean accuracy (:mod:`.rnp`).

A :class:`MaskedBatchNorm2d` scales BN's weight (gamma) by its mask and, where noise is on, by
``mask + noise`` with the bias scaled by ``1 + noise_bias`` (ANP's ``NoisyBatchNorm2d``; RNP's
``MaskBatchNorm2d`` is the same without noise). Pruning a neuron, as in both official codes,
sets its BN weight to zero (the bias stays). :func:`prune_sweep` tries the thresholds 0 to
``pruning_max`` and picks one with :func:`common.choose_amount`.

Example:
    >>> masked = copy.deepcopy(model)
    >>> layers = attach_masks(masked)            # every nn.BatchNorm2d -> MaskedBatchNorm2d
    >>> ...                                      # learn layers[name].neuron_mask
    >>> values = mask_values(masked)             # {"layer1.0.bn1": tensor([...]), ...}
    >>> n = prune_neurons(model_copy, values, 0.2)  # zero the BN weight of masks < 0.2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose weight is scaled per channel by a learnable ``neuron_mask``.

    With ``noise=True`` it also holds ANP's neuron noise (``neuron_noise`` on the weight,
    ``neuron_noise_bias`` on the bias), used only while ``perturbed`` is True:
    weight * (mask + noise), bias * (1 + noise_bias). Mask 1 and no noise is plain BatchNorm.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        *,
        noise: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, True, track_running_stats, device=device, dtype=dtype)
        self.neuron_mask = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        self.neuron_noise = nn.Parameter(torch.zeros_like(self.neuron_mask)) if noise else None
        self.neuron_noise_bias = nn.Parameter(torch.zeros_like(self.neuron_mask)) if noise else None
        self.perturbed = False

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, noise: bool = False) -> MaskedBatchNorm2d:
        """A masked copy of ``bn`` (weight, bias, running statistics), mask 1, noise 0."""
        if not bn.affine:
            raise ValueError("neuron masks scale the BatchNorm weight: the layer must be affine")
        masked = cls(
            bn.num_features,
            bn.eps,
            bn.momentum,
            bn.track_running_stats,
            noise=noise,
            device=bn.weight.device,
            dtype=bn.weight.dtype,
        )
        masked.load_state_dict(bn.state_dict(), strict=False)  # the mask and noise keep their init
        masked.train(bn.training)
        return masked

    @property
    def has_noise(self) -> bool:
        return self.neuron_noise is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perturbed and self.has_noise:
            weight = self.weight * (self.neuron_mask + self.neuron_noise)
            bias = self.bias * (1.0 + self.neuron_noise_bias)
        else:
            weight, bias = self.weight * self.neuron_mask, self.bias
        # nn.BatchNorm2d's own bookkeeping (running statistics, momentum), with the masked affine.
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if use_buffers else None,
            self.running_var if use_buffers else None,
            weight,
            bias,
            batch_stats,
            factor,
            self.eps,
        )


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def attach_masks(model: nn.Module, noise: bool = False) -> dict[str, MaskedBatchNorm2d]:
    """Swap every plain ``nn.BatchNorm2d`` of ``model`` (in place: pass a copy) for a masked one.

    Returns the new modules by name (the BN names of the original model, e.g. ``layer1.0.bn1``).
    """
    names = [name for name, m in model.named_modules() if type(m) is nn.BatchNorm2d]
    if not names:
        raise ValueError(f"{type(model).__name__} has no BatchNorm2d layer to mask")
    layers = {}
    for name in names:
        layers[name] = MaskedBatchNorm2d.from_batchnorm(model.get_submodule(name), noise=noise)
        _replace(model, name, layers[name])
    return layers


def masked_layers(model: nn.Module) -> dict[str, MaskedBatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedBatchNorm2d)}


def freeze_all_but_masks(model: nn.Module) -> list[nn.Parameter]:
    """Only masks and noise keep ``requires_grad`` (backward then skips the weight gradients)."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.rpartition(".")[2].startswith("neuron_"))
    return [m.neuron_mask for m in masked_layers(model).values()]


def clip_masks(model: nn.Module) -> None:
    """Clamp every mask to [0, 1] after an optimizer step (both official codes)."""
    masks = [m.neuron_mask for m in masked_layers(model).values()]
    with torch.no_grad():
        torch._foreach_clamp_min_(masks, 0.0)
        torch._foreach_clamp_max_(masks, 1.0)


def mask_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each masked BN's mask (a detached CPU copy), by layer name."""
    layers = masked_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no masked BatchNorm layer (see attach_masks)")
    return {name: m.neuron_mask.detach().float().cpu().clone() for name, m in layers.items()}


def masks_record(masks: Mapping[str, torch.Tensor], digits: int = 4) -> dict[str, list[float]]:
    """JSON-able masks, per layer, rounded to ``digits`` (the official codes log 4 decimals)."""
    return {name: [round(v, digits) for v in values.tolist()] for name, values in masks.items()}


def flat_masks(masks: Mapping[str, Sequence[float] | torch.Tensor]) -> torch.Tensor:
    """All mask values in one 1-D tensor (for a histogram), from :func:`mask_values` or a record."""
    return torch.cat([torch.as_tensor(v, dtype=torch.float32).flatten() for v in masks.values()])


def prune_neurons(model: nn.Module, masks: Mapping[str, torch.Tensor], threshold: float) -> int:
    """Zero, in place, the BN weight of every neuron whose mask is below ``threshold``; return how many.

    ``masks`` holds one value per channel of the BN layers of ``model`` with those names.
    """
    modules = dict(model.named_modules())
    pruned = 0
    with torch.no_grad():
        for name, values in masks.items():
            bn = modules.get(name)
            if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != len(values):
                raise ValueError(f"mask {name!r} ({len(values)} values) matches no BatchNorm2d of the model")
            below = (values < threshold).to(bn.weight.device)
            bn.weight.masked_fill_(below, 0.0)
            pruned += int(below.sum())
    return pruned
