"""The checks behind the graded exercises: a correct answer passes, each typical wrong one fails and says why."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tsbd_utils import tables
from tsbd_utils.defenses.activeness import ActivenessAwareStep, CopyingActivenessAwareStep
from tsbd_utils.exercises import activeness, der, nwc, pruning, stage1, stage2, table1, triggers
from tsbd_utils.exercises.feedback import ExerciseFailed


def verdict(module, answer, **kwargs) -> str:
    """The message of the thorough check's failure (the test fails if the check passes)."""
    with pytest.raises(ExerciseFailed) as caught:
        module.check(answer, thorough=True, **kwargs)
    message = str(caught.value)
    assert "expected:" in message and "got:" in message, message
    return message


# ----------------------------------------------------------------- answers a student might write, right and wrong
def der_right(before, after):
    return (max(0.0, before[1] - after[1]) - max(0.0, before[0] - after[0]) + 1) / 2


def blend_right(images, pattern, alpha):
    return ((1 - alpha) * images.float() / 255 + alpha * pattern).clamp(0, 1).mul(255).round().to(torch.uint8)


def nwc_from_states(before, after, norm="l1", shortcuts=False):
    out = {}
    for key, w in before.items():
        if key.endswith(".weight") and w.ndim == 4 and (shortcuts or "shortcut" not in key):
            delta = (after[key] - w).flatten(1)
            out[key[: -len(".weight")]] = delta.abs().sum(1) if norm == "l1" else delta.norm(dim=1)
    return out


def activeness_loop(model, batches, layer, lr, sign=-1.0, l2=False):
    model.train()
    conv = model.get_submodule(layer)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    norms = []
    for x, y in batches:
        optimizer.zero_grad()
        (sign * F.cross_entropy(model(x), y)).backward()
        g = conv.weight.grad.flatten(1)
        norms.append(g.norm(dim=1) if l2 else g.abs().sum(1))
        optimizer.step()
    return torch.stack(norms).mean(0)


def stage1_right(changes, n, m):
    names = list(changes)
    scores = torch.cat([changes[k].sum(1) for k in names])
    owner = [(k, i) for k in names for i in range(len(changes[k]))]
    rows = {k: [] for k in names}
    for j in scores.argsort(descending=True, stable=True)[: int(n * len(scores))].tolist():
        rows[owner[j][0]].append(owner[j][1])
    pooled = torch.cat([changes[k][rows[k]].flatten() for k in names])
    masks = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in changes.items()}
    keep = int(m * len(pooled))
    if keep:
        threshold = pooled.topk(keep).values.min()
        for k in names:
            if rows[k]:
                masks[k][rows[k]] = changes[k][rows[k]] >= threshold
    return masks


def step_updating_bn(model, x, y, optimizer, radius, alpha):
    """Per-tensor norms, but the perturbed pass is an ordinary training forward: BN statistics move twice."""
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    g1, kept = [p.grad.clone() for p in params], [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, g1):
            p.add_(radius * g / (g.norm() + 1e-12))
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p, g, w in zip(params, g1, kept):
            p.copy_(w)
            p.grad.mul_(alpha).add_(g, alpha=1 - alpha)
    optimizer.step()


def last_safe_right(sweep):
    chosen = sweep[0][0]
    for amount, acc in sweep[1:]:
        if acc < 0.9 * sweep[0][1]:
            break
        chosen = amount
    return chosen


# ----------------------------------------------------------------- the tests
def test_der_check():
    der.check(der_right, thorough=True)
    assert "no clipping" in verdict(der, lambda b, a: ((b[1] - a[1]) - (b[0] - a[0]) + 1) / 2)
    assert "percentage" in verdict(der, lambda b, a: 100 * der_right(b, a))
    assert "return statement" in verdict(der, lambda b, a: None)
    assert "ZeroDivisionError" in verdict(der, lambda b, a: 1 / 0)


def test_blend_check():
    triggers.check(blend_right, thorough=True)
    assert "alpha weighs the pattern" in verdict(triggers, lambda x, p, a: blend_right(x, p, 1 - a))
    assert "[0, 1] scale" in verdict(triggers, lambda x, p, a: (1 - a) * x.float() / 255 + a * p)

    def in_place(x, p, a):
        x.mul_(0)
        return blend_right(x, p, a)

    assert "in place" in verdict(triggers, in_place)


def test_nwc_check():
    nwc.check(nwc_from_states, thorough=True)
    assert "L2 norm" in verdict(nwc, lambda b, a: nwc_from_states(b, a, norm="l2"))
    assert "shortcut" in verdict(nwc, lambda b, a: nwc_from_states(b, a, shortcuts=True))
    with_suffix = verdict(nwc, lambda b, a: {f"{k}.weight": v for k, v in nwc_from_states(b, a).items()})
    assert "without '.weight'" in with_suffix


def test_activeness_check():
    activeness.check(activeness_loop, thorough=True)
    assert "descent" in verdict(activeness, lambda m, b, layer, lr: activeness_loop(m, b, layer, lr, sign=1.0))
    assert "L2 norm" in verdict(activeness, lambda m, b, layer, lr: activeness_loop(m, b, layer, lr, l2=True))


def test_stage1_check():
    stage1.check(stage1_right, thorough=True)
    assert "whole neurons" in verdict(stage1, stage1._whole_neurons)
    assert "all layers together" in verdict(stage1, stage1._per_layer)
    assert "within each neuron" in verdict(stage1, stage1._per_neuron_quantile)


@pytest.mark.parametrize("step", [ActivenessAwareStep, CopyingActivenessAwareStep], ids=["in-place", "copying"])
def test_stage2_check_passes_both_formulations(step):
    stage2.check(lambda m, x, y, opt, r, a: step(r, a)(m, x, y, opt), thorough=True)


def test_stage2_check_names_the_mistake():
    assert "one norm over all the parameters" in verdict(
        stage2, lambda m, x, y, opt, r, a: stage2.global_norm_step(m, x, y, r, a))
    assert "running statistics" in verdict(stage2, step_updating_bn)
    assert "optimizer.step()" in verdict(stage2, lambda m, x, y, opt, r, a: None)


def test_pruning_check():
    pruning.check(last_safe_right, thorough=True)
    for hint, wrong in pruning.MISTAKES.items():
        assert hint in verdict(pruning, wrong)


def _table(asr: dict[str, list[float]]) -> pd.DataFrame:
    attacks = ["BadNets", "Blended", "SIG"]
    columns = pd.MultiIndex.from_product([list(asr), ["ACC", "ASR", "DER"]], names=["method", "metric"])
    rows = [[v for m in asr for v in (0.9, asr[m][i], 0.5)] for i in range(len(attacks))]
    frame = pd.DataFrame(rows, index=attacks, columns=columns)
    frame.loc[tables.AVERAGE] = frame.mean()
    return frame


def test_table_question_is_graded_on_the_table_given():
    table = _table({"No defense": [1.0, 1.0, 1.0], "FT": [0.9, 0.1, 0.9], "ANP": [0.1, 0.9, 0.05],
                    "TSBD": [0.05, 0.1, 0.9]})
    for leader in ("ANP", "TSBD"):  # a tie: either is right
        table1.check(leader, 2, table, thorough=True)
    table1.check("FT", 1, table)  # the public check only asks for a defense's name and a count
    with pytest.raises(ExerciseFailed, match="one of \\['ANP', 'TSBD'\\]"):
        table1.check("FT", 1, table, thorough=True)
    with pytest.raises(ExerciseFailed, match="removed_count = 2"):
        table1.check("ANP", 3, table, thorough=True)
    with pytest.raises(ExerciseFailed, match="pick one of the defenses"):
        table1.check("No defense", 3, table)
    with pytest.raises(ExerciseFailed, match="both variables set"):
        table1.check(..., ..., table)


def test_checks_leave_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    nwc.check(nwc_from_states)
    stage2.check(lambda m, x, y, opt, r, a: ActivenessAwareStep(r, a)(m, x, y, opt))
    assert torch.equal(state, torch.random.get_rng_state())
