"""The paper-width model on a GPU (make test-paper): opt-in, skipped without CUDA.

CIFAR-10 cannot be downloaded on the build machines, so this checks correctness at paper width
(64) on Fashion-MNIST; benchmarks/train_throughput.py times the CIFAR-shaped model.
"""

from __future__ import annotations

import pytest
import torch

from tsbd_utils import config, data, metrics, models, training

pytestmark = [
    pytest.mark.paper,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the paper profile needs a CUDA GPU"),
]


def test_paper_width_trains_on_the_gpu_with_bf16():
    profile = config.resolve(
        "paper",
        dataset="fashion_mnist",
        train_size=20000,
        train={"epochs": 3, "lr": 0.05, "nesterov": True, "schedule": "onecycle"},
    )
    splits = data.prepare_for(profile, seed=0)
    model = models.model_for(profile, splits.spec, seed=0)
    assert models.count_parameters(model) > 11_000_000
    history = training.train(
        model, splits.train, profile.train, spec=splits.spec, seed=0, device="cuda", progress=False
    )
    acc = metrics.accuracy(metrics.predict(model, splits.test.x, device="cuda"), splits.test.y)
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert acc >= 0.88, acc


def test_the_in_place_stage2_step_never_waits_for_the_gpu():
    """The activeness-aware step keeps its per-tensor scales on the device: no host synchronisation in a step."""
    from tsbd_utils.defenses.activeness import ActivenessAwareStep

    model = models.PreActResNet18(10, 3, 64).cuda().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(256, 3, 32, 32, device="cuda"), torch.randint(0, 10, (256,), device="cuda")
    step = ActivenessAwareStep(0.05, 0.7)
    step(model, x, y, optimizer)  # the first step allocates its buffers
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(model, x, y, optimizer)
    finally:
        torch.cuda.set_sync_debug_mode("default")
