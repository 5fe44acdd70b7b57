
import pytest
import torch
import torch.nn.functional as F

from tsbd_utils import augment, config, data, models, schedules, training
from tsbd_utils.rng import generator

from .helpers import tiny_spec


def test_random_crop_cuts_a_window_of_the_padded_image():
    x = torch.rand(16, 3, 6, 6)
    out = augment.random_crop(x, 2, generator(0, "t"))
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, x)  # 16 images, 25 offsets: some moved
    assert torch.equal(out, augment.random_crop(x, 2, generator(0, "t")))  # seeded
    assert augment.random_crop(x, 0, generator(0, "t")) is x


def test_random_flip_mirrors_about_half():
    x = torch.rand(400, 1, 4, 4)
    out = augment.random_flip(x, generator(0, "f"))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | kept).all()) and 150 < int(flipped.sum()) < 250


@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_schedules_start_high_and_end_low(name):
    f = schedules.SCHEDULES[name]
    values = [f(s, 100, 10) for s in range(100)]
    assert all(0 <= v <= 1 for v in values)
    if name == "constant":
        assert set(values) == {1.0}
    else:
        assert max(values) == 1.0 and values[-1] < 0.1
    if name == "cosine":  # stepped per epoch, as BackdoorBench's CosineAnnealingLR
        assert values[0] == values[9] == 1.0 and values[10] < 1.0


def _fit(tiny_images, seed=0, epochs=4, **kw):
    x, y = tiny_images
    model = models.build_model(
        "preactresnet18", num_classes=2, in_channels=1, width=4, mean=(0.3,), std=(0.3,), seed=seed
    )
    cfg = config.TrainConfig(epochs=epochs, batch_size=16, lr=0.05, schedule="onecycle", **kw)
    history = training.train(model, data.ImageData(x, y), cfg, spec=tiny_spec(), seed=seed, progress=False)
    return model, history


def test_training_learns_and_records_history(tiny_images):
    model, history = _fit(tiny_images)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4]
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert history.epochs[-1]["train_acc"] >= 0.9 and not model.training
    assert history.images_per_s > 0 and len(history.seconds) == 4 and history.timing()["train_seconds"] > 0
    restored = training.History.from_dict(history.to_dict())
    assert restored.epochs == history.epochs and restored.seconds == []  # wall time is not part of the value
    assert "seconds" not in history.epochs[0]


def test_training_is_deterministic_for_a_seed(tiny_images):
    a, _ = _fit(tiny_images, seed=3, epochs=1)
    torch.manual_seed(999)  # the global RNG must not matter
    b, _ = _fit(tiny_images, seed=3, epochs=1)
    c, _ = _fit(tiny_images, seed=4, epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_a_final_batch_of_one_is_folded_into_the_previous(tiny_images):
    x, y = tiny_images
    model = models.PreActResNet18(num_classes=2, in_channels=1, width=4)
    cfg = config.TrainConfig(epochs=1, batch_size=21, lr=0.01)  # 64 = 3 * 21 + 1
    history = training.train(model, data.ImageData(x, y), cfg, spec=tiny_spec(), seed=0, progress=False)
    assert history.epochs[0]["images"] == 64


class Recorder(training.BatchTransform):
    """Relabels every batch to class 1 and counts the hooks the loop calls."""

    def __init__(self):
        self.calls = {"transform": 0, "extra": 0, "after": 0}

    def __call__(self, x, y, generator):
        self.calls["transform"] += 1
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        return x, torch.ones_like(y)

    def extra_loss(self):
        self.calls["extra"] += 1
        return torch.zeros(())

    def after_step(self):
        self.calls["after"] += 1


def test_batch_transform_hooks_are_called_every_step(tiny_images):
    x, y = tiny_images
    model = models.PreActResNet18(num_classes=2, in_channels=1, width=4)
    hook = Recorder()
    cfg = config.TrainConfig(epochs=2, batch_size=16, lr=0.05)
    training.train(model, data.ImageData(x, y), cfg, spec=tiny_spec(), seed=0, batch_transform=hook, progress=False)
    assert hook.calls == {"transform": 8, "extra": 8, "after": 8}
    pred = model(x.float() / 255).argmax(1)
    assert (pred == 1).float().mean() > 0.9  # it learned the transformed labels


def test_eval_fn_results_join_the_history(tiny_images):
    x, y = tiny_images
    model = models.PreActResNet18(num_classes=2, in_channels=1, width=4)
    cfg = config.TrainConfig(epochs=1, batch_size=32)
    history = training.train(
        model,
        data.ImageData(x, y),
        cfg,
        spec=tiny_spec(),
        seed=0,
        eval_fn=lambda m: {"in_eval_mode": float(not m.training)},
        progress=False,
    )
    assert history.epochs[0]["in_eval_mode"] == 1.0


def test_narrow_models_train_in_the_default_layout_on_the_cpu():
    # torch 2.14.1 corrupts the heap in channels_last backward passes of narrow BatchNorms at odd batch
    # sizes (width 4, batch 117 crashed the process); train() must keep such models in NCHW on the CPU.
    narrow = models.PreActResNet18(num_classes=10, in_channels=1, width=4)
    assert not training.channels_last_safe(narrow, torch.device("cpu"))
    assert training.channels_last_safe(
        models.PreActResNet18(num_classes=10, in_channels=1, width=16), torch.device("cpu")
    )
    narrow = narrow.to(memory_format=torch.channels_last)  # as a cached model comes back
    g = torch.Generator().manual_seed(0)
    images = data.ImageData(
        torch.randint(0, 256, (117, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(117) % 10
    )
    cfg = config.TrainConfig(epochs=6, batch_size=117, lr=0.01, schedule="constant")
    history = training.train(narrow, images, cfg, spec=tiny_spec(), seed=0, progress=False)
    assert len(history.epochs) == 6
    assert narrow.conv1.weight.is_contiguous()  # back in the default layout


def test_recalibrate_batchnorm_re_estimates_the_statistics_of_a_copy_and_nothing_else():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    images = torch.full((10, 1, 2, 2), 51, dtype=torch.uint8)  # every pixel 0.2 after scaling
    fresh = training.recalibrate_batchnorm(model, images, batch_size=3)
    assert torch.allclose(fresh[1].running_mean, torch.full((2,), 0.2)) and not fresh.training
    assert torch.allclose(fresh[1].running_var, torch.zeros(2), atol=1e-6)
    assert torch.equal(model[1].running_mean, torch.zeros(2))  # the original is untouched
    assert torch.equal(fresh[0].weight, model[0].weight)  # no weight moved
    with pytest.raises(ValueError, match="images must be uint8"):
        training.recalibrate_batchnorm(model, images.float())
    with pytest.raises(ValueError, match="batch_size must be an int > 0, got 0"):
        training.recalibrate_batchnorm(model, images, batch_size=0)
