"""The zoo's evaluation images: which test images every reported ACC / ASR / RA comes from."""

from types import SimpleNamespace

import torch

from tsbd_utils import config, data, zoo


def _session(eval_size, seed=0, n=50):
    test = data.ImageData(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), torch.arange(n) % 10)
    profile = config.resolve("smoke", eval_size=eval_size)
    return SimpleNamespace(splits=SimpleNamespace(test=test), profile=profile, seed=seed)


def test_evaluation_set_is_a_seeded_subset_of_the_test_split():
    session = _session(eval_size=20)
    first, again = zoo.evaluation_set(session), zoo.evaluation_set(session)
    assert len(first) == 20 and torch.equal(first.x, again.x)
    ids = first.x.flatten().long()
    assert len(set(ids.tolist())) == 20 and torch.equal(first.y, ids % 10)  # distinct test images, labels kept
    assert not torch.equal(ids, torch.arange(20))  # a random draw, not the first twenty
    assert not torch.equal(zoo.evaluation_set(_session(eval_size=20, seed=1)).x, first.x)


def test_evaluation_set_is_the_whole_split_without_eval_size():
    session = _session(eval_size="all")
    assert zoo.evaluation_set(session) is session.splits.test
    assert len(zoo.evaluation_set(_session(eval_size=80))) == 50  # larger than the split: all of it


def test_test_accuracy_scores_the_evaluation_set():
    session = _session(eval_size=20)
    session.profile = config.resolve(session.profile, eval_batch_size=7)
    session.device = torch.device("cpu")
    evaluated = zoo.evaluation_set(session)

    class Echo(torch.nn.Module):  # reads the image id from the pixel: right on ids 0-9, one class off after
        def forward(self, x):
            ids = (x.flatten() * 255).round().long()
            return torch.nn.functional.one_hot((ids + (ids >= 10).long()) % 10, 10).float()

    acc, pred = zoo.test_accuracy(session, Echo())
    assert len(pred) == 20
    assert acc == int((evaluated.x.flatten() < 10).sum()) / 20 != 10 / 50  # not the whole split's accuracy
