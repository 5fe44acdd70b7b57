"""FP: Fine-Pruning (Liu, Dolan-Gavitt & Garg, RAID 2018, https://arxiv.org/abs/1805.12185).

Backdoor neurons tend to stay dormant on clean inputs. Fine-Pruning removes the features that
clean images activate least, then fine-tunes to recover accuracy (and to erase what pruning left).

As BackdoorBench runs it (``defense/fp.py``): the pruned units are the *inputs of the final
linear layer* (for PreActResNet18 the pooled 512-d features at width 64), not the conv channels
of the original paper. Features are ranked by their mean activation on the clean images and
pruned in ascending order, ``prune_step`` (1%) of them per step, by masking the head's weight
columns; the mask stays on during fine-tuning.

NWC-FP (the TSBD paper's Figure 8, notebook 08): the same pruning and fine-tuning, with the features ranked by
the neuron weight change of the conv layer that produces them (:func:`nwc_order`, largest first) instead of
their activation: ``defend(..., order=nwc_order(model, unlearned))``.

How much to prune. BackdoorBench stops at the last step whose *test* accuracy stays within 10%
(relative) of the unpruned model's: a test-set choice. The suite's default asks the same of the
accuracy on the defender's clean images (``choice="clean"``); ``choice="oracle"`` with
``oracle=OracleData(...)`` reproduces BackdoorBench and is labelled an oracle wherever shown.

Defender holds: the backdoored model and 5% clean training data.
Defaults (``config/defense/fp/cifar10.yaml``): ``once_prune_ratio`` 0.01, ``acc_ratio`` 0.1, then
BackdoorBench's fine-tuning (100 epochs, SGD 0.01, momentum 0.9, wd 5e-4, cosine), scaled by
``Profile.defense_scale``.

Example:
    >>> result = DEFENSES["fp"](model, splits.clean, FPConfig.for_profile(profile),
    ...                         spec=splits.spec, seed=0, device="cpu")
    >>> result.record["pruned"], result.record["features"]
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from .. import metrics
from ..config import Profile
from ..data import DatasetSpec, ImageData
from ..observations import neuron_weight_change, nwc_layers
from ..settings import check_ranges, in_range, one_of, replace_checked, settings
from .base import Budget, DefenseResult, DefenseSpec, OracleData, register
from .common import PRUNING_CHOICES, FineTuning, check_choice, fine_tune, select_amount, working_copy


@settings
class FPConfig:
    """Fine-Pruning settings (BackdoorBench's FP)."""

    prune_step: float = 0.01  # share of the head's input features pruned per step (once_prune_ratio)
    acc_ratio: float = 0.1  # the largest relative accuracy drop pruning may cause
    choice: str = "clean"  # "clean": the defender's clean accuracy decides; "oracle": the test set (BackdoorBench)
    finetune: FineTuning = field(default_factory=FineTuning)

    def __post_init__(self) -> None:
        check_ranges(self, prune_step=in_range(0, 1, low_open=True), acc_ratio=in_range(0, 1, high_open=True),
                     choice=one_of(PRUNING_CHOICES))

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> FPConfig:
        return replace_checked(cls(finetune=FineTuning().scaled(profile)), **overrides)


def head_of(model: nn.Module) -> nn.Linear:
    """The model's last child, which FP requires to be the linear classifier."""
    name, last = list(model.named_children())[-1]
    if not isinstance(last, nn.Linear):
        raise ValueError(f"FP prunes the inputs of a final nn.Linear; the last child {name!r} is {type(last).__name__}")
    return last


def head_inputs(model: nn.Module, images: torch.Tensor, device: str | torch.device, batch_size: int = 256):
    """The features entering the final linear layer for ``images`` (N, C_features), on the CPU."""
    head, captured = head_of(model), []
    handle = head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach().float().cpu()))
    try:
        metrics.predict(model, images, batch_size, device)
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.empty(0)


def nwc_order(model: nn.Module, unlearned: nn.Module) -> torch.Tensor:
    """The head's input features, largest neuron weight change first: NWC-FP's pruning order.

    Each input of the final linear layer is one channel of the last conv layer (pooled), so its NWC is that
    channel's L1 weight change from ``model`` to ``unlearned`` (clean unlearning, TSBD's stage 1).
    """
    head = head_of(model)
    modules = dict(model.named_modules())
    convs = [name for name in nwc_layers(model) if modules[name].out_channels == head.in_features]
    if not convs:
        raise ValueError(f"no conv layer of this model has {head.in_features} output channels, one per head input")
    nwc = neuron_weight_change(model, unlearned, [convs[-1]])[convs[-1]]
    return torch.argsort(nwc, descending=True, stable=True)


def _predict_pruned(head: nn.Linear, features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # Masking the head's weight columns = zeroing those features: one matrix product per step
    # instead of a forward pass of the whole network per step.
    logits = (features * keep) @ head.weight.detach().float().cpu().T + head.bias.detach().float().cpu()
    return logits.argmax(1)


def defend(
    model: nn.Module,
    clean: ImageData,
    config: FPConfig | None = None,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    oracle: OracleData | None = None,
    order: torch.Tensor | None = None,
    progress: bool = False,
) -> DefenseResult:
    """Prune the head's least active inputs of a copy of ``model``, then fine-tune it.

    ``order`` (all the head's input features, first pruned first) replaces the ranking by activation: NWC-FP
    passes :func:`nwc_order`.
    """
    config = config or FPConfig()
    check_choice(config.choice, oracle)
    repaired = working_copy(model, device)
    head = head_of(repaired)
    given = order is not None
    if given and sorted(order.tolist()) != list(range(head.in_features)):
        raise ValueError(f"order must be a permutation of the head's {head.in_features} input features")
    clean_feats = head_inputs(repaired, clean.x, device)
    activation = clean_feats.mean(0)
    order = order.cpu() if given else torch.argsort(activation)  # default: least active first
    n_features = len(order)
    step = max(1, round(config.prune_step * n_features))
    if config.choice == "oracle":
        test_feats = head_inputs(repaired, oracle.x_test, device)
        bd_feats = head_inputs(repaired, oracle.x_bd, device)
    rows: list[dict[str, Any]] = []
    for count in range(0, n_features, step):
        keep = torch.ones(n_features)
        keep[order[:count]] = 0
        row = {"amount": count, "clean_acc": metrics.accuracy(_predict_pruned(head, clean_feats, keep), clean.y)}
        if config.choice == "oracle":
            row["test_acc"] = metrics.accuracy(_predict_pruned(head, test_feats, keep), oracle.y_test)
            row["test_asr"] = metrics.attack_success_rate(_predict_pruned(head, bd_feats, keep), oracle.target)
        rows.append(row)
    pruned = int(select_amount(rows, choice=config.choice, acc_ratio=config.acc_ratio, oracle_rule="largest"))

    mask = torch.ones_like(head.weight)
    mask[:, order[:pruned].to(mask.device)] = 0
    # torch's pruning reparametrisation keeps the pruned columns at zero through fine-tuning.
    prune.custom_from_mask(head, "weight", mask)
    history = fine_tune(repaired, clean, config.finetune, spec=spec, seed=seed, device=device, progress=progress)
    prune.remove(head, "weight")  # back to a plain nn.Linear with the zeros baked in
    record = {
        "features": n_features,
        "pruned": pruned,
        "pruned_share": pruned / n_features,
        "choice": config.choice,
        "activation": activation.tolist(),
        **({"order": order.tolist()} if given else {}),
        "sweep": rows,
        "epochs": config.finetune.epochs,
        "history": history.to_dict(),
        "config": dataclasses.asdict(config),
    }
    return DefenseResult(repaired.eval(), record)


def budget(config: FPConfig, images: int, record: dict[str, Any] | None = None) -> Budget:
    """FP's budget: a pruning sweep (forward passes only), then its fine-tuning epochs."""
    return config.finetune.budget(f"pruning sweep + {config.finetune.epochs} fine-tuning epochs", images)


register(
    DefenseSpec(
        name="fp",
        title="FP",
        paper=(
            'Liu, Dolan-Gavitt and Garg, '
            '"Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks", RAID 2018'
        ),
        url="https://arxiv.org/abs/1805.12185",
        config=FPConfig,
        defend=defend,
        holds="5% clean training data",
        options=("oracle",),
        paper_average=(91.84, 54.67, 71.19),
        budget=budget,
    )
)
