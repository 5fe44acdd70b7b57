"""NAD: Neural Attention Distillation (Li et al., ICLR 2021, https://arxiv.org/abs/2101.05930).

A teacher is made by briefly fine-tuning the backdoored model on clean data; the backdoored model
(the student) is then fine-tuned with cross-entropy plus an attention-transfer loss that pulls
its intermediate attention maps towards the teacher's. The attention map of a feature map f
(N, C, H, W) is mean_c |f_c|^p, flattened and L2-normalised; the loss per point is the mean
squared difference of the student's and teacher's maps (Zagoruyko & Komodakis, ICLR 2017).

As BackdoorBench runs it (``defense/nad.py``) on PreActResNet18: the teacher is fine-tuned for
``teacher_epochs`` (10) with the fine-tuning recipe; the student is trained for 100 epochs
(SGD 0.01, momentum 0.9, wd 5e-4, cosine) with p = 2 and betas 500 / 1000 / 1000 at the outputs
of ``layer3``, ``layer4`` and the average pool; the teacher stays in eval mode.

One flaw not kept: at the average pool the feature map is 1 x 1, so its attention map is a single
positive number per image, which normalises to exactly 1 for student and teacher alike; that
third term is always zero. The suite keeps the two spatial points (``points``) and says so.

Defender holds: the backdoored model and 5% clean training data.
Profiles scale both epoch counts by ``Profile.defense_scale`` (quick: 1 and 10; smoke: 1 and 2).

Example:
    >>> result = DEFENSES["nad"](model, splits.clean, NADConfig.for_profile(profile),
    ...                          spec=splits.spec, seed=0, device="cpu")
    >>> result.record["student"]["epochs"][-1]["attention_loss"]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Profile
from ..data import DatasetSpec, ImageData
from ..settings import Rule, at_least, check_ranges, each, non_negative, positive, replace_checked, settings
from ..training import Step
from .base import Budget, DefenseResult, DefenseSpec, register
from .common import FineTuning, fine_tune, scaled_epochs, working_copy

# BackdoorBench's betas for PreActResNet18: layer3 output, layer4 output (the pooled point is dropped, see above).
DEFAULT_POINTS: tuple[tuple[str, float], ...] = (("layer3", 500.0), ("layer4", 1000.0))
POINT = Rule(lambda p: isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and non_negative(p[1]),
             "a (name, beta >= 0) pair", "(name, beta >= 0) pairs")


@settings
class NADConfig:
    """NAD settings (BackdoorBench's ``config/defense/nad/cifar10.yaml``)."""

    teacher_epochs: int = 10  # te_epochs: the teacher's fine-tuning
    points: tuple[tuple[str, float], ...] = DEFAULT_POINTS  # (module name, beta) pairs of the attention loss
    power: float = 2.0  # p of the attention map mean_c |f_c|^p
    finetune: FineTuning = field(default_factory=FineTuning)  # the student's training

    def __post_init__(self) -> None:
        check_ranges(self, teacher_epochs=at_least(1, int), points=each(POINT, nonempty=True), power=positive)

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> NADConfig:
        base = cls(teacher_epochs=scaled_epochs(profile, cls.teacher_epochs), finetune=FineTuning().scaled(profile))
        return replace_checked(base, **overrides)

    def teacher_recipe(self) -> FineTuning:
        return dataclasses.replace(self.finetune, epochs=self.teacher_epochs)


def attention_map(features: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): mean over channels of |f|^p, flattened and L2-normalised per image."""
    return F.normalize(features.abs().pow(power).mean(1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """Attention-transfer loss: mean squared difference of the two normalised attention maps."""
    return (attention_map(student, power) - attention_map(teacher, power)).pow(2).mean()


def named_modules(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """``model``'s modules by name; a name it does not have is an error listing the ones it has."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"no modules named {missing}; allowed: {', '.join(n for n in modules if n)}")
    return modules


@contextmanager
def capture(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the outputs of the named modules during the forward passes inside the block."""
    modules = named_modules(model, names)
    out: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o)) for n in names]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


class AttentionDistillationStep(Step):
    """Cross-entropy plus beta-weighted attention transfer from a frozen teacher, one SGD step."""

    def __init__(self, teacher: nn.Module, points: tuple[tuple[str, float], ...], power: float) -> None:
        self.teacher, self.points, self.power = teacher.eval(), points, power
        self.last_attention = torch.zeros(())

    def __call__(self, model, x, y, optimizer):
        names = [n for n, _ in self.points]
        with torch.no_grad(), capture(self.teacher, names) as taught:
            self.teacher(x)
        with capture(model, names) as seen:
            logits = model(x)
        ce = F.cross_entropy(logits.float(), y)
        at = sum(beta * attention_loss(seen[n].float(), taught[n].float(), self.power) for n, beta in self.points)
        optimizer.zero_grad(set_to_none=True)
        (ce + at).backward()
        optimizer.step()
        self.last_attention = at.detach()
        return ce.detach(), logits.detach()


def defend(
    model: nn.Module,
    clean: ImageData,
    config: NADConfig | None = None,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> DefenseResult:
    """Fine-tune a teacher, then distil its attention into a copy of ``model``; ``model`` is untouched."""
    config = config or NADConfig()
    named_modules(model, [name for name, _ in config.points])  # a point naming no module fails before any training
    teacher = working_copy(model, device)
    common = {"spec": spec, "seed": seed, "device": device, "progress": progress}
    teacher_history = fine_tune(teacher, clean, config.teacher_recipe(), desc="NAD teacher", **common)
    teacher.eval()
    student = working_copy(model, device)
    step = AttentionDistillationStep(teacher, config.points, config.power)
    student_history = fine_tune(
        student,
        clean,
        config.finetune,
        step=step,
        desc="NAD student",
        eval_fn=lambda _m: {"attention_loss": float(step.last_attention)},  # the epoch's last batch
        **common,
    )
    record = {
        "teacher": teacher_history.to_dict(),
        "student": student_history.to_dict(),
        "points": [name for name, _ in config.points],
        "config": dataclasses.asdict(config),
    }
    return DefenseResult(student.eval(), record)


def budget(config: NADConfig, images: int, record: dict[str, Any] | None = None) -> Budget:
    """NAD's budget: the teacher's fine-tuning epochs, then the student's."""
    teacher = config.teacher_recipe().budget("", images)
    passes = f"{config.teacher_epochs} teacher + {config.finetune.epochs} student epochs"
    return config.finetune.budget(passes, images, before=(teacher.steps, teacher.examples))


register(
    DefenseSpec(
        name="nad",
        title="NAD",
        paper=(
            'Li, Lyu, Koren, Lyu, Li and Ma, '
            '"Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural Networks", ICLR 2021'
        ),
        url="https://arxiv.org/abs/2101.05930",
        config=NADConfig,
        defend=defend,
        holds="5% clean training data",
        options=(),
        paper_average=(91.82, 33.01, 81.76),
        budget=budget,
    )
)
