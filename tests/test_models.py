import pytest
import torch
from torch import nn

from tsbd_utils import models


def conv_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_paper_width_matches_backdoorbench_counts():
    model = models.PreActResNet18(num_classes=10, in_channels=3, width=64)
    assert models.count_parameters(model) == 11_171_146  # BackdoorBench's PreActResNet18 on CIFAR-10
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n}
    assert len(convs) == 17 and sum(m.out_channels for m in convs.values()) == 3904  # TSBD's NWC neurons
    assert convs["layer4.1.conv2"].out_channels == 512


def test_module_names_follow_backdoorbench():
    names = conv_names(models.PreActResNet18(width=8))
    assert names[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert [n for n in names if "shortcut" in n] == [
        "layer2.0.shortcut.0",
        "layer3.0.shortcut.0",
        "layer4.0.shortcut.0",
    ]
    model = models.PreActResNet18(width=8)
    assert [n for n, _ in model.named_children()] == [
        "normalize",
        "conv1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "linear",
    ]
    assert isinstance(model.layer3[1].bn2, nn.BatchNorm2d) and model.linear.in_features == 64
    stem = model.conv1
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_forward_on_grayscale_and_rgb(channels, size):
    model = models.PreActResNet18(num_classes=43, in_channels=channels, width=4).eval()
    assert model(torch.rand(3, channels, size, size)).shape == (3, 43)
    assert model.features(torch.rand(3, channels, size, size)).shape == (3, 32)


def test_normalization_is_the_first_module():
    mean, std = (0.5,), (0.25,)
    model = models.PreActResNet18(in_channels=1, width=4, mean=mean, std=std).eval()
    x = torch.rand(2, 1, 28, 28)
    plain = models.PreActResNet18(in_channels=1, width=4).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("normalize")}, strict=False)
    assert torch.allclose(model(x), plain((x - 0.5) / 0.25), atol=1e-5)
    assert "normalize.mean" in model.state_dict()
    with pytest.raises(ValueError, match="has 1 channels, the model takes 3"):
        models.PreActResNet18(in_channels=3, mean=(0.5,), std=(0.2,))


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    kwargs = dict(num_classes=10, in_channels=1, width=4, mean=(0.5,), std=(0.5,))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = models.build_model("preactresnet18", seed=0, **kwargs)
    after = torch.rand(1)
    b = models.build_model("preactresnet18", seed=0, **kwargs)
    c = models.build_model("preactresnet18", seed=1, **kwargs)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    with pytest.raises(ValueError, match="unknown model 'vgg'; allowed: preactresnet18"):
        models.build_model("vgg", seed=0, **kwargs)
