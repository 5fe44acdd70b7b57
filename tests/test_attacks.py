"""Every attack through the registry, on grayscale 28x28 and RGB 32x32 images."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tsbd_utils import config, data, metrics, models
from tsbd_utils.attacks import ATTACKS, AttackContext

SHAPES = {"gray28": "fashion_mnist", "rgb32": "cifar10"}


def smooth_images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 images (blurred noise): enough structure for warps and encoders to act on."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, size // 4, size // 4, generator=g)
    return (
        (F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)
    )


@pytest.fixture(scope="module", params=list(SHAPES))
def context(request) -> AttackContext:
    spec = data.DATASETS[SHAPES[request.param]]
    x = smooth_images(120, spec.channels, spec.size)
    y = torch.arange(120) % spec.num_classes
    model = models.build_model(
        "preactresnet18",
        num_classes=spec.num_classes,
        in_channels=spec.channels,
        width=2,
        mean=spec.mean,
        std=spec.std,
        seed=0,
    ).eval()
    profile = config.resolve("smoke", train={"batch_size": 32})
    return AttackContext(spec=spec, train=data.ImageData(x, y), profile=profile, seed=0, clean_model=lambda: model)


@pytest.fixture(scope="module")
def clean_reads() -> set[str]:
    """The attacks whose ``prepare`` asked the context for the clean model."""
    return set()


@pytest.fixture(scope="module")
def prepared(context, clean_reads):
    """Each attack prepared once per image shape (SSBA and Input-aware train small networks)."""

    def watched(name: str) -> AttackContext:
        def clean_model():
            clean_reads.add(name)
            return context.clean_model()

        return dataclasses.replace(context, clean_model=clean_model)

    return {name: cls().prepare(watched(name)) for name, cls in ATTACKS.items()}


def test_uses_clean_model_names_exactly_the_attacks_whose_prepare_reads_it(prepared, clean_reads):
    # The grid runs an attack's cell before the clean model's only where the attack says it does not need it.
    assert clean_reads == {n for n, cls in ATTACKS.items() if cls.uses_clean_model} == {"lf", "trojan"}


def test_the_registry_holds_the_eight_attacks_of_table_1():
    assert list(ATTACKS) == ["badnets", "blended", "inputaware", "lf", "sig", "ssba", "trojan", "wanet"]
    with pytest.raises(
        ValueError, match="unknown attack 'badnet'; allowed: badnets, blended, inputaware, lf, sig, ssba, trojan, wanet"
    ):
        ATTACKS["badnet"]
    for cls in ATTACKS.values():
        assert cls.__doc__ and "https://" in cls.__doc__ + cls.citation
        assert cls().config.target == 0 and cls().config.ratio == 0.1


@pytest.mark.parametrize("name", list(ATTACKS))
def test_apply_keeps_shape_dtype_range_and_input(name, prepared, context):
    attack = prepared[name]
    x = context.train.x[:16].float() / 255
    before = x.clone()
    out = attack.apply(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(x, before)
    changed = (out - x).abs().flatten(1).amax(1) > 1 / 255
    # SSBA's encoder gets 60 training steps here and may leave an odd image almost untouched;
    # notebook 01 reports its real strength (PSNR, pixels changed) in the quick profile.
    required = 0.9 if name == "ssba" else 1.0
    assert changed.float().mean() >= required, f"{name} left {int((~changed).sum())} images unchanged"
    assert torch.equal(attack.apply(x), out)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_same_seed_same_trigger_and_state_round_trip(name, prepared, context):
    x = context.train.x[:8].float() / 255
    again = ATTACKS[name]().prepare(context)
    assert torch.allclose(again.apply(x), prepared[name].apply(x), atol=1e-6)
    restored = ATTACKS[name]().load_state_dict(prepared[name].state_dict())
    assert torch.allclose(restored.apply(x), prepared[name].apply(x), atol=1e-6)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_poisoning_is_exact_and_labels_follow_the_threat_model(name, prepared, context):
    attack, train = prepared[name], context.train
    x_before, y_before = train.x.clone(), train.y.clone()
    poisoned, index = attack.poison_train(train, seed=0)
    assert torch.equal(train.x, x_before) and torch.equal(train.y, y_before)
    if attack.on_the_fly:
        assert poisoned is train and len(index) == 0
        transform = attack.batch_transform()
        xb, yb = train.x[:40].float() / 255, train.y[:40]
        out_x, out_y = transform(xb, yb, torch.Generator().manual_seed(0))
        n_bd = int(40 * attack.config.ratio)
        assert out_x.shape == xb.shape and (out_y[:n_bd] == attack.config.target).all()
        assert torch.equal(out_y[n_bd:], yb[n_bd:]) and 0 <= out_x.min() and out_x.max() <= 1
        return
    unchanged = torch.ones(len(train), dtype=torch.bool)
    unchanged[index] = False
    assert torch.equal(poisoned.x[unchanged], train.x[unchanged]) and torch.equal(
        poisoned.y[unchanged], train.y[unchanged]
    )
    assert torch.equal(index, attack.poison_train(train, seed=0)[1])
    if attack.clean_label:
        target_images = int((train.y == attack.config.target).sum())
        assert len(index) == min(round(0.1 * len(train)), target_images)
        assert (train.y[index] == attack.config.target).all() and torch.equal(poisoned.y, train.y)
    else:
        assert len(index) == round(0.1 * len(train)) == 12
        assert (poisoned.y[index] == attack.config.target).all()
        assert len(set(train.y[index].tolist())) > 1  # drawn from all classes
    assert not torch.equal(poisoned.x[index], train.x[index])


@pytest.mark.parametrize("name", list(ATTACKS))
def test_backdoor_test_set_excludes_the_target_class(name, prepared, context):
    attack = prepared[name]
    x_bd, y_true = attack.backdoor_test(context.train)
    assert x_bd.dtype == torch.uint8 and len(x_bd) == int((context.train.y != 0).sum())
    assert (y_true != attack.config.target).all()


def test_invisible_attacks_stay_above_a_psnr_bound(context):
    """On real Fashion-MNIST images (grayscale) or smooth RGB images: SSBA and WaNet stay faint."""
    if context.spec.channels == 1:
        train, _, _ = data.load("fashion_mnist", download=False)
        real = dataclasses.replace(context, train=data.ImageData(train.x[:256], train.y[:256]))
    else:
        real = context
    x = real.train.x[:64].float() / 255
    for name, bound in (("ssba", 26.0), ("wanet", 20.0)):
        attack = ATTACKS[name]().prepare(real)
        assert ATTACKS[name].invisible
        assert metrics.psnr(x, attack.apply(x)).min() >= bound, name
    # The visible ones are visibly stronger, for contrast.
    assert metrics.psnr(x, ATTACKS["blended"]().prepare(real).apply(x)).mean() < 26.0


def test_bad_images_and_configs_fail_clearly(prepared, context):
    attack = prepared["badnets"]
    c, h, w = attack.shape
    pixels_in_0_255 = torch.zeros(1, c, h, w)
    pixels_in_0_255[0, 0, 0, 0] = 255.0
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values in \[0, 255\]"):
        attack.apply(pixels_in_0_255)
    with pytest.raises(ValueError, match="float tensor"):
        attack.apply(torch.zeros(1, c, h, w, dtype=torch.uint8))
    with pytest.raises(ValueError, match=rf"images of shape \({c}, {h + 1}, {w + 1}\); this attack was prepared for"):
        attack.apply(torch.zeros(1, c, h + 1, w + 1))
    with pytest.raises(RuntimeError, match="call prepare"):
        ATTACKS["badnets"]().apply(torch.zeros(1, c, h, w))
    with pytest.raises(ValueError, match=r"unknown blended setting\(s\) alfa; allowed: target, ratio, alpha, image"):
        ATTACKS["blended"](alfa=0.3)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\), got 0"):
        ATTACKS["blended"](ratio=0)
    with pytest.raises(ValueError, match="target 99 is not a class"):
        ATTACKS["sig"](target=99).prepare(context)


def test_training_recipes_follow_backdoorbench_where_the_profile_asks():
    paper, quick = config.PROFILES["paper"], config.PROFILES["quick"]
    for name, cls in ATTACKS.items():
        assert cls().train_config(paper).schedule == ("constant" if name in ("wanet", "inputaware") else "cosine"), name
        assert cls().train_config(paper).epochs == 100
        if name == "inputaware":  # the jointly trained generator needs more epochs in a shortened run
            assert cls().train_config(quick) == dataclasses.replace(quick.train, epochs=8)
        else:
            assert cls().train_config(quick) == quick.train


@pytest.mark.parametrize(
    "name, setting, message",
    [
        ("badnets", {"size": 0}, r"BadNetsConfig\.size must be an int > 0, got 0"),
        ("badnets", {"value": float("nan")}, r"BadNetsConfig\.value must be a finite number in \[0, 1\], got nan"),
        ("badnets", {"value": 2.0}, r"BadNetsConfig.value must be in \[0, 1\], got 2.0"),
        ("badnets", {"target": True}, r"BadNetsConfig\.target must be an int >= 0, got True"),
        ("blended", {"alpha": float("nan")}, r"BlendedConfig\.alpha must be a finite number in \(0, 1\), got nan"),
        ("blended", {"alpha": 1.0}, r"BlendedConfig.alpha must be in \(0, 1\), got 1.0"),
        ("sig", {"frequency": 2.5}, r"SIGConfig\.frequency must be an int > 0, got 2\.5"),
        ("wanet", {"k": True}, r"WaNetConfig\.k must be an int > 0, got True"),
        ("ssba", {"warmup": 1.0}, r"SSBAConfig.warmup must be in \[0, 1\), got 1.0"),
        ("inputaware", {"mask_density": -0.1}, r"InputAwareConfig.mask_density must be in \(0, 1\], got -0.1"),
        ("trojan", {"iterations": 0}, r"TrojanConfig\.iterations must be an int > 0, got 0"),
        ("blended", {"image": "kitty.png"}, r"BlendedConfig.image 'kitty.png' is not a sample image .*grace_hopper"),
    ],
)
def test_out_of_range_settings_are_refused_when_the_attack_is_built(name, setting, message):
    with pytest.raises(ValueError, match=message):
        ATTACKS[name](**setting)


def test_images_with_nan_or_infinite_values_are_refused():
    from tsbd_utils.attacks.base import check_images

    x = torch.rand(2, 1, 28, 28)
    x[0, 0, 0, 0], x[1, 0, 1, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"images hold 2 NaN or infinite values; allowed: \[0, 1\]"):
        check_images(x)


def test_apply_uint8_refuses_float_images():
    attack = ATTACKS["badnets"]()
    with pytest.raises(ValueError, match=r"apply_uint8 takes uint8 images .* got torch.float32; use apply for floats"):
        attack.apply_uint8(torch.rand(2, 1, 28, 28))


def test_a_state_without_the_attacks_tensors_is_refused_by_name(prepared, context):
    with pytest.raises(ValueError, match=r"BadNets state lacks shape, mask; it holds nothing"):
        ATTACKS["badnets"]().load_state_dict({})
    with pytest.raises(ValueError, match=r"BadNets state lacks mask; it holds pattern, shape \(is it another attack"):
        ATTACKS["badnets"]().load_state_dict(prepared["blended"].state_dict())
    with pytest.raises(ValueError, match=r"SSBA state lacks encoder\.\*, decoder\.\*, secret"):
        ATTACKS["ssba"]().load_state_dict(prepared["trojan"].state_dict())
    for name, attack in prepared.items():  # every attack's own state passes its check (state_keys are right)
        ATTACKS[name]().load_state_dict(attack.state_dict())


def test_apply_uint8_refuses_a_batch_size_below_one(prepared):
    x = torch.zeros(2, *prepared["badnets"].shape, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        prepared["badnets"].apply_uint8(x, batch_size=0)
