"""What the notebooks' sliders compute, on cached models, in about a second on a CPU.

Each explorer loads its models once and remembers every answer, so moving a control recomputes only what that
control changes (``calls`` counts the expensive steps; the tests check them). The notebooks draw the same
figure once at the default settings (what papermill and the book show) and then wire ipywidgets controls to
``view`` (:func:`interact`), which shows nothing new where widgets cannot render.

* :class:`TriggerExplorer` (notebook 01): an attack's trigger at a chosen strength on one test image, and what
  the backdoored model predicts for it;
* :class:`Stage1Explorer` (notebook 04): TSBD's stage 1 at any n and m on an attack's cached models: the neurons
  zeroed per layer and ACC / ASR right after it, on a fixed evaluation subset;
* :class:`BrightnessExplorer` (notebook 05): how often the clean, backdoored and TSBD-defended models send
  non-target images to the target class as a uniform brightness offset grows.

Example:
    >>> explorer = Stage1Explorer(S, "badnets")
    >>> view = explorer.view(0.25, 0.7)
    >>> view.acc, view.asr, view.zeroed
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import metrics, probes, shortcut, zoo
from .attacks import ATTACKS
from .defenses import TSBDConfig
from .defenses.reinit import reinitialize
from .observations import nwc_layers, weight_changes
from .session import Session

# The attacks whose trigger has a strength a learner can move: the config field, and its largest value.
STRENGTHS: dict[str, tuple[str, float]] = {
    "badnets": ("size", 32),  # side of the white square on a 32-pixel image (an int)
    "blended": ("alpha", 0.99),  # blend weight of the photograph (below 1)
    "sig": ("delta", 1.0),  # amplitude of the sine signal, in [0, 1] pixels
}


def standard_error(p: float, n: int) -> float:
    """The binomial standard error of a rate ``p`` measured on ``n`` images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


def _check_choice(name: str, value: Any, allowed: list[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")


@dataclass
class TriggerView:
    attack: str
    strength: float | None  # the config value used (None: an attack without a strength control)
    clean: torch.Tensor  # (C, H, W) float in [0, 1]
    poisoned: torch.Tensor
    residual: torch.Tensor  # |poisoned - clean|, max over channels, (1, H, W)
    predicted: int  # the backdoored model's class for the poisoned image
    confidence: float  # its softmax probability
    target: int


class TriggerExplorer:
    """One test image under each attack's trigger, at any strength, with the backdoored model's prediction."""

    def __init__(self, session: Session, names: list[str], image_index: int) -> None:
        for n in names:
            _check_choice("attack", n, list(ATTACKS))
        test = session.splits.test
        if not 0 <= image_index < len(test):
            raise ValueError(f"image_index {image_index} is outside the test split (0..{len(test) - 1})")
        self.session, self.names = session, list(names)
        self.image = test.x[image_index : image_index + 1].float() / 255
        self.calls: Counter[str] = Counter()
        self._models: dict[str, zoo.Backdoored] = {}
        self._attacks: dict[tuple[str, float | None], Any] = {}
        self._views: dict[tuple[str, float | None], TriggerView] = {}

    def default_strength(self, name: str) -> float | None:
        if name not in STRENGTHS:
            return None
        return float(getattr(self._backdoored(name).attack.config, STRENGTHS[name][0]))

    def scaled(self, name: str, factor: float) -> float | None:
        """``factor`` times the strength ``name``'s model was trained with (a square's side rounded, at least 1), kept
        within what the attack allows; None for an attack without a strength."""
        if name not in STRENGTHS:
            return None
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor!r}")
        field, top = STRENGTHS[name]
        value = min(self.default_strength(name) * factor, top)
        return float(max(1, round(value))) if field == "size" else value

    def _backdoored(self, name: str) -> zoo.Backdoored:
        if name not in self._models:
            self.calls["load"] += 1
            self._models[name] = zoo.backdoored_model(self.session, name, progress=False)
        return self._models[name]

    def _attack(self, name: str, strength: float | None):
        key = (name, strength)
        if key not in self._attacks:
            bd = self._backdoored(name)
            if strength is None or strength == self.default_strength(name):
                self._attacks[key] = bd.attack  # the attack the model was trained with
            else:
                self.calls["prepare"] += 1
                field = STRENGTHS[name][0]
                value = int(round(strength)) if field == "size" else float(strength)
                attack = ATTACKS[name](bd.attack.config, **{field: value})
                self._attacks[key] = attack.prepare(zoo.attack_context(self.session, progress=False))
        return self._attacks[key]

    def view(self, name: str, strength: float | None = None) -> TriggerView:
        """``name``'s trigger at ``strength`` (None: the strength its model was trained with) on the image."""
        _check_choice("attack", name, self.names)
        if strength is not None and name not in STRENGTHS:
            raise ValueError(f"{name} has no strength control; attacks with one: {', '.join(STRENGTHS)}")
        strength = self.default_strength(name) if strength is None else float(strength)
        key = (name, strength)
        if key not in self._views:
            attack, model = self._attack(name, strength), self._backdoored(name).model
            poisoned = attack.apply(self.image)
            self.calls["predict"] += 1
            device = next(model.parameters()).device
            with torch.inference_mode():
                model.eval()
                probs = model(poisoned.to(device)).softmax(1)[0].cpu()
            self._views[key] = TriggerView(
                name, strength, self.image[0], poisoned[0], (poisoned[0] - self.image[0]).abs().amax(0, keepdim=True),
                int(probs.argmax()), float(probs.max()), attack.config.target,
            )
        return self._views[key]


@dataclass
class Stage1View:
    neuron_ratio: float
    weight_ratio: float
    per_layer: dict[str, tuple[int, int]]  # layer -> (neurons chosen, weights zeroed)
    zeroed: int
    acc: float
    asr: float
    images: int  # evaluation images behind ACC (and non-target ones behind ASR: ``backdoor_images``)
    backdoor_images: int

    @property
    def acc_se(self) -> float:
        return standard_error(self.acc, self.images)

    @property
    def asr_se(self) -> float:
        return standard_error(self.asr, self.backdoor_images)


class Stage1Explorer:
    """TSBD's stage 1 (zero reinitialization) on attack ``name``'s cached backdoored and clean-unlearned models,
    at any neuron ratio n and weight ratio m, evaluated on the first ``eval_images`` of the evaluation set."""

    def __init__(self, session: Session, name: str, eval_images: int = 500) -> None:
        _check_choice("attack", name, list(ATTACKS))
        if not (isinstance(eval_images, int) and eval_images > 0):
            raise ValueError(f"eval_images must be an int > 0, got {eval_images!r}")
        self.session, self.name = session, name
        self.calls: Counter[str] = Counter()
        self.backdoored = zoo.backdoored_model(session, name, progress=False)
        config = TSBDConfig.for_profile(session.profile)
        self.defaults = (config.neuron_ratio, config.weight_ratio)
        self.unlearned = zoo.unlearned_model(session, name, "clean", config.unlearn).model
        self.layers = nwc_layers(self.backdoored.model)
        self.calls["weight_changes"] += 1  # once: every n and m ranks the same changes
        self.changes = weight_changes(self.backdoored.model, self.unlearned, self.layers)
        test = zoo.evaluation_set(session)
        test = test.head(min(eval_images, len(test)))
        self.x, self.y = test.x, test.y
        self.x_bd, _ = self.backdoored.attack.backdoor_test(test)
        self._views: dict[tuple[float, float], Stage1View] = {}

    def model(self, neuron_ratio: float, weight_ratio: float) -> tuple[nn.Module, dict[str, Any]]:
        """The backdoored model after stage 1 at (n, m) and its record (as :func:`~tsbd_utils.defenses.zero_reinit`)."""
        return reinitialize(self.backdoored.model, self.unlearned, neuron_ratio, weight_ratio, "zero",
                            layers=self.layers, changes=self.changes)

    def view(self, neuron_ratio: float, weight_ratio: float) -> Stage1View:
        key = (round(float(neuron_ratio), 6), round(float(weight_ratio), 6))
        if key not in self._views:
            model, record = self.model(*key)
            self.calls["evaluate"] += 1
            S, target = self.session, self.backdoored.attack.config.target
            acc = metrics.accuracy(metrics.predict(model, self.x, S.profile.eval_batch_size, S.device), self.y)
            pred_bd = metrics.predict(model, self.x_bd, S.profile.eval_batch_size, S.device)
            asr = metrics.attack_success_rate(pred_bd, target, num_classes=S.splits.spec.num_classes)
            chosen = record["layers"]
            per_layer = {name: (chosen.get(name, {}).get("neurons", 0), chosen.get(name, {}).get("zeroed_weights", 0))
                         for name in self.layers}
            self._views[key] = Stage1View(key[0], key[1], per_layer, record["zeroed_weights"], acc, asr,
                                          len(self.y), len(self.x_bd))
        return self._views[key]


@dataclass
class BrightnessView:
    offset: float
    rates: dict[str, float]  # model label -> share of the probe images predicted as the target
    images: int

    def se(self, label: str) -> float:
        return standard_error(self.rates[label], self.images)


class BrightnessExplorer:
    """A uniform brightness offset on non-target test images, and how often each model then predicts the
    target: the clean model, attack ``name``'s backdoored model and its TSBD-defended model (all cached)."""

    def __init__(self, session: Session, name: str, images: int = 500) -> None:
        _check_choice("attack", name, list(ATTACKS))
        self.session = session
        bd = zoo.backdoored_model(session, name, progress=False)
        self.target = bd.attack.config.target
        config = TSBDConfig.for_profile(session.profile)
        self.models = {
            "clean model": zoo.clean_model(session, progress=False).model,
            f"{ATTACKS[name].title}, backdoored": bd.model,
            f"{ATTACKS[name].title}, after TSBD": zoo.tsbd_model(session, name, config,
                                                               curve_size=zoo.CURVE_IMAGES).model,
        }
        self.probe = probes.probe_images(session, self.target, size=images).x
        self.calls: Counter[str] = Counter()
        self._rates: dict[tuple[str, float], float] = {}

    def rate(self, label: str, offset: float) -> float:
        key = (label, round(float(offset), 6))
        if key not in self._rates:
            self.calls["predict"] += 1
            perturb = shortcut.uniform_offset(key[1]) if key[1] != 0 else None
            self._rates[key] = shortcut.target_rate(self.models[label], self.probe, perturb, self.target,
                                                    seed=self.session.seed, device=self.session.device)
        return self._rates[key]

    def view(self, offset: float) -> BrightnessView:
        if not 0 <= offset <= 1:
            raise ValueError(f"offset must be in [0, 1] (a brightness added to every pixel), got {offset!r}")
        return BrightnessView(float(offset), {label: self.rate(label, offset) for label in self.models},
                              len(self.probe))


def interact(draw: Callable[..., Any], **controls: Any):
    """``ipywidgets.interactive(draw, **controls)`` with continuous updates off (a slider recomputes once, when it
    is released), or None where ipywidgets is missing; the caller displays it."""
    try:
        import ipywidgets
    except ImportError:  # the static figure above it stays
        return None
    for control in controls.values():
        if hasattr(control, "continuous_update"):
            control.continuous_update = False
    return ipywidgets.interactive(draw, **controls)
