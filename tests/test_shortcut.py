"""The background-shortcut tools: LF's brightening pattern, generic perturbations, the photometric lift."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from tsbd_utils import config, data, models, shortcut, unlearning
from tsbd_utils.attacks import ATTACKS, AttackContext
from tsbd_utils.attacks.lf import LFConfig, gaussian_blur, rescale
from tsbd_utils.defenses import TSBDConfig, activeness_aware_finetune


class Brightness(nn.Module):
    """Predicts class 0 when an image's mean brightness exceeds ``threshold``, else class 1."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.dummy = nn.Parameter(torch.zeros(()))  # so predict() finds a device

    def forward(self, x):
        above = (x.mean(dim=(1, 2, 3)) > self.threshold).float()
        return torch.stack([above, 1 - above], 1) + 0 * self.dummy


def _dark_images(n=40):
    """Garment-like uint8 images: a bright square on a black background (mean brightness about 0.08)."""
    x = torch.zeros(n, 1, 12, 12, dtype=torch.uint8)
    x[:, :, 4:8, 4:8] = 180
    return x


# ------------------------------------------------------------------ LF, as BackdoorBench builds it


def test_gaussian_blur_is_a_normalised_low_pass_and_rescale_spans_zero_to_eps():
    flat = torch.ones(1, 2, 40, 40)
    blurred = gaussian_blur(flat, 2.0)
    assert blurred.shape == flat.shape
    assert torch.allclose(blurred[..., 10:30, 10:30], flat[..., 10:30, 10:30], atol=1e-5)  # unit gain inside
    assert blurred[0, 0, 0, 0] < 0.5  # zero padding pulls the corners down
    noise = torch.randn(1, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    assert gaussian_blur(noise, 2.0).std() < 0.3 * noise.std()  # high frequencies removed
    pattern = rescale(noise, 0.2)
    assert pattern.min().item() == 0.0 and abs(pattern.max().item() - 0.2) < 1e-6
    assert torch.equal(rescale(torch.full((1, 1, 4, 4), 3.0), 0.2), torch.zeros(1, 1, 4, 4))


@pytest.fixture(scope="module")
def lf_context():
    spec = data.DATASETS["fashion_mnist"]
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(96, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    y = torch.arange(96) % 10
    model = models.build_model(
        "preactresnet18", num_classes=10, in_channels=1, width=2, mean=(0.3,), std=(0.3,), seed=0
    ).eval()
    profile = config.resolve("smoke")
    return AttackContext(spec=spec, train=data.ImageData(x, y), profile=profile, seed=0, clean_model=lambda: model)


def test_lf_pattern_only_brightens_within_its_bound_and_is_smooth(lf_context):
    attack = ATTACKS["lf"](steps=100).prepare(lf_context)  # smoke scale: 2 updates
    pattern = attack.state["pattern"]
    assert pattern.shape == (1, 1, 28, 28)
    assert pattern.min().item() == pytest.approx(0.0, abs=1e-7)
    assert pattern.max().item() == pytest.approx(0.2, abs=1e-6)  # BackdoorBench's range, [0, 51/255]
    neighbours = (pattern[..., 1:, :] - pattern[..., :-1, :]).abs().max()
    assert neighbours < 0.05  # smooth: no pixel differs from its neighbour by a quarter of the range
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    poisoned = attack.apply(x)
    assert (poisoned >= x - 1e-7).all()  # never darkens a pixel
    assert ((poisoned - x) <= 0.2 + 1e-6).all()
    wider = ATTACKS["lf"](steps=100, eps=0.1).prepare(lf_context).state["pattern"]
    assert wider.max().item() == pytest.approx(0.1, abs=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [("eps", 0.0, r"LFConfig\.eps must be in \(0, 1\], got 0\.0"), ("eps", 1.5, r"eps must be in \(0, 1\]"),
     ("sigma_at_32", -1.0, "sigma_at_32"), ("steps", 0, "steps must be an int > 0"),
     ("images", True, "images must be an int > 0")],
)
def test_lf_config_refuses_bad_settings_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message):
        LFConfig(**{field: value})


# ------------------------------------------------------------------ generic perturbations


def test_generic_perturbations_lift_the_background_and_keep_the_range():
    x = _dark_images().float() / 255
    gen = torch.Generator().manual_seed(0)
    for name, perturb in shortcut.PERTURBATIONS.items():
        out = perturb(x, gen)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1, name
        assert out[:, :, 0, 0].mean() > 0, f"{name} leaves the black background black"
    assert torch.allclose(shortcut.uniform_offset(0.1)(x, gen)[:, :, 0, 0], torch.full((40, 1), 0.1))
    assert torch.allclose(shortcut.gray_blend(0.2)(x, gen)[:, :, 0, 0], torch.full((40, 1), 0.1))
    with pytest.raises(ValueError, match="unknown perturbation 'offset'"):
        shortcut.PERTURBATIONS["offset"]


def test_target_rate_counts_images_sent_to_the_target_after_a_perturbation():
    model, x = Brightness(threshold=0.15), _dark_images()
    assert shortcut.target_rate(model, x, None, 0) == 0.0  # dark images: class 1
    assert shortcut.target_rate(model, x, shortcut.uniform_offset(0.1), 0) == 1.0  # lifted background: class 0
    assert shortcut.target_rate(model, x, shortcut.uniform_offset(0.1), 1) == 0.0
    with pytest.raises(ValueError, match="uint8"):
        shortcut.target_rate(model, x.float(), None, 0)


def test_response_by_layer_measures_the_relative_change_of_each_output():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    x = _dark_images(8)
    same = shortcut.response_by_layer(net, x, lambda v, g: v, ["0", "2"])
    assert same == {"0": 0.0, "2": 0.0}
    moved = shortcut.response_by_layer(net, x, shortcut.uniform_offset(0.2), ["0", "2"])
    assert all(v > 0 for v in moved.values())
    with pytest.raises(ValueError, match="unknown layer"):
        shortcut.response_by_layer(net, x, shortcut.uniform_offset(0.2), ["layer4.1.conv2"])


# ------------------------------------------------------------------ the photometric lift


def test_photometric_lift_changes_images_not_labels_and_is_reproducible():
    x, y = _dark_images(200).float() / 255, torch.arange(200) % 10
    lift = shortcut.PhotometricLift()
    out, labels = lift(x, y, torch.Generator().manual_seed(0))
    again, _ = lift(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(labels, y) and torch.equal(out, again)
    assert out.min() >= 0 and out.max() <= 1
    changed = (out - x).abs().flatten(1).amax(1) > 0
    assert 0.3 < changed.float().mean() < 0.7  # about half of the batch (prob 0.5)
    background = out[:, 0, 0, 0]
    assert (background[changed] > 0).all() and (background[~changed] == 0).all()
    assert (background <= 0.3 + 1e-6).all()  # offsets up to 0.3, blends up to 0.3 x a gray of at most 1
    none, _ = shortcut.PhotometricLift(shortcut.PhotometricConfig(prob=0.0))(x, y, torch.Generator())
    assert torch.equal(none, x)


@pytest.mark.parametrize(
    "field, value, allowed",
    [("prob", 1.5, "in [0, 1]"), ("max_offset", -0.1, "in [0, 1]"), ("max_blend", True, "a finite number in [0, 1]")],
)
def test_photometric_config_refuses_bad_values(field, value, allowed):
    with pytest.raises(ValueError, match=re.escape(f"PhotometricConfig.{field} must be {allowed}, got {value!r}")):
        shortcut.PhotometricConfig(**{field: value})


def test_stage_2_passes_every_clean_batch_through_the_lift(tiny_images):
    x, y = tiny_images

    class Counting(shortcut.PhotometricLift):
        calls = 0

        def __call__(self, xb, yb, generator):
            Counting.calls += 1
            return super().__call__(xb, yb, generator)

    spec = dataclasses.replace(data.DATASETS["fashion_mnist"], mean=(0.3,), std=(0.3,), crop_pad=1)

    def tiny():
        return models.build_model(
            "preactresnet18", num_classes=2, in_channels=1, width=2, mean=(0.3,), std=(0.3,), seed=0
        )

    cfg, clean = TSBDConfig(epochs=2, batch_size=16), data.ImageData(x, y)
    plain = activeness_aware_finetune(tiny(), clean, cfg, spec=spec, seed=0)
    lifted = activeness_aware_finetune(tiny(), clean, cfg, spec=spec, seed=0, batch_transform=Counting())
    assert Counting.calls == 2 * 4  # 2 epochs of 64 / 16 batches
    assert plain.epochs[-1]["loss"] != lifted.epochs[-1]["loss"]  # the lift changed what the model saw


def test_unlearning_and_stage_2_run_in_float32_on_every_device():
    assert unlearning.UnlearnConfig().train_config().amp is False
    assert TSBDConfig().finetune_config().amp is False
