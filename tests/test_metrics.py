import copy

import pytest
import torch
from torch import nn

from tsbd_utils import metrics, models


def test_accuracy_asr_ra():
    pred = torch.tensor([0, 0, 1, 2])
    true = torch.tensor([0, 1, 1, 3])
    assert metrics.accuracy(pred, true) == 0.5
    assert metrics.attack_success_rate(pred, 0) == 0.5
    # The image whose true class is the target does not count towards the ASR.
    assert metrics.attack_success_rate(pred, 0, true_labels=true) == pytest.approx(1 / 3)
    assert metrics.robust_accuracy(pred, true) == 0.5
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        metrics.accuracy(pred, true[:3])
    with pytest.raises(ValueError, match="no predictions"):
        metrics.accuracy(pred[:0], true[:0])


def test_der_matches_its_definition():
    der = metrics.defense_effectiveness_rating
    assert der(0.9, 0.95, 0.9, 0.95) == 0.5  # nothing changed
    assert der(0.9, 1.0, 0.9, 0.0) == 1.0  # backdoor gone, accuracy kept
    assert der(0.9, 1.0, 0.95, 0.0) == 1.0  # an accuracy gain is not rewarded
    assert der(0.9, 0.5, 0.8, 0.7) == pytest.approx(0.45)  # ASR rise is not charged, ACC drop is
    # The paper's Table 1 averages for TSBD (ACC 91.34 -> 91.70, ASR 97.29 -> 2.18) give DER 97.56.
    assert 100 * der(0.9134, 0.9729, 0.9170, 0.0218) == pytest.approx(97.555, abs=1e-3)
    with pytest.raises(ValueError, match=r"asr_bd = 97.29 is outside \[0, 1\]; pass fractions"):
        der(0.9134, 97.29, 0.9170, 0.0218)


def test_predict_batches_restores_the_mode_and_takes_uint8():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    model.train()
    x = torch.rand(10, 1, 2, 2)
    expected = model.eval()(x).argmax(1)
    model.train()
    assert torch.equal(metrics.predict(model, x, batch_size=3), expected)
    assert model.training
    as_uint8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(metrics.predict(model, as_uint8), metrics.predict(model, as_uint8.float() / 255))
    with pytest.raises(ValueError, match=r"must be \(N, C, H, W\), got shape \(10, 4\)"):
        metrics.predict(model, x.view(10, 4))
    with pytest.raises(ValueError, match="uint8 or float"):
        metrics.predict(model, torch.ones(2, 1, 2, 2, dtype=torch.int32))


@pytest.mark.parametrize("target", [-1, True, 1.0, "0"])
def test_asr_refuses_a_target_that_is_not_a_class_index(target):
    with pytest.raises(ValueError, match=r"target must be a class index \(an int >= 0\), got"):
        metrics.attack_success_rate(torch.tensor([0, 1]), target)


def test_asr_refuses_a_target_the_dataset_does_not_have():
    assert metrics.attack_success_rate(torch.tensor([9, 1]), 9, num_classes=10) == 0.5
    with pytest.raises(ValueError, match=r"target 10 is not a class of this dataset; allowed: 0 to 9"):
        metrics.attack_success_rate(torch.tensor([0, 1]), 10, num_classes=10)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.full((2, 1, 4, 4), 255.0), r"float images must lie in \[0, 1\] .*got values in \[255, 255\]"),
        (torch.full((2, 1, 4, 4), float("nan")), r"images hold 32 NaN or infinite values; allowed: finite"),
        (torch.full((2, 1, 4, 4), float("inf")), r"images hold 32 NaN or infinite values; allowed: finite"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.int32), r"images must be uint8 or float in \[0, 1\], got torch.int32"),
    ],
)
def test_predict_refuses_images_out_of_range(images, message):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match=message):
        metrics.predict(model, images)


def test_weight_distance_is_zero_only_for_unchanged_weights_and_counts_batchnorm_statistics():
    from tsbd_utils.metrics import weight_distance

    a = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    b = copy.deepcopy(a)
    assert weight_distance(a, b) == 0.0
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0] += 3.0
        b[1].running_mean[1] += 4.0  # a buffer, not a parameter
    assert weight_distance(a, b) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="differ in their tensors"):
        weight_distance(a, nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_metrics_name_inputs_they_cannot_score():
    with pytest.raises(TypeError, match=r"must be torch tensors .*got list and list"):
        metrics.accuracy([0, 1], [0, 1])
    with pytest.raises(ValueError, match=r"every true label is the target class 0: no backdoor image is left"):
        metrics.attack_success_rate(torch.tensor([0, 1]), 0, true_labels=torch.tensor([0, 0]))
    with pytest.raises(TypeError, match=r"acc_bd must be a fraction \(a number in \[0, 1\]\), got '0.9'"):
        metrics.defense_effectiveness_rating("0.9", 1.0, 0.9, 0.1)


def test_predict_refuses_a_batch_size_below_one_and_images_with_the_wrong_channels():
    model = models.build_model("preactresnet18", num_classes=10, in_channels=1, width=2, mean=(0.5,), std=(0.5,),
                               seed=0)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        metrics.predict(model, torch.rand(2, 1, 28, 28), batch_size=0)
    with pytest.raises(ValueError, match=r"images have 3 channel\(s\); this model takes 1"):
        metrics.predict(model, torch.rand(2, 3, 28, 28))
