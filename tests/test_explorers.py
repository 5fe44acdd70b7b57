"""The explorers behind the notebooks' sliders: the numbers of the static path at the same settings, and a changed
control recomputes only what it changes (counted, not timed)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from tsbd_utils import explorer_plots, explorers, metrics, session, shortcut, zoo
from tsbd_utils.defenses import TSBDConfig, zero_reinit


@pytest.fixture(scope="module")
def S(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explorers")
    return session.start("04", profile="smoke", cache_dir=str(tmp / "cache"), figures_dir=str(tmp / "fig"),
                         run_dir=str(tmp / "run"))


def test_trigger_view_is_the_attack_the_model_was_trained_with_at_its_default(S):
    ex = explorers.TriggerExplorer(S, ["badnets", "blended", "wanet"], image_index=3)
    view = ex.view("blended")
    bd = zoo.backdoored_model(S, "blended", progress=False)
    x = S.splits.test.x[3:4].float() / 255
    assert view.strength == bd.attack.config.alpha
    assert torch.equal(view.poisoned, bd.attack.apply(x)[0])
    assert view.predicted == int(metrics.predict(bd.model, bd.attack.apply(x))[0])
    assert ex.calls == {"load": 1, "predict": 1}
    ex.view("blended", 0.4)  # a new strength: one attack prepared, one prediction, no model loaded again
    assert ex.calls == {"load": 1, "predict": 2, "prepare": 1}
    ex.view("blended", 0.4)
    ex.view("blended")
    assert ex.calls == {"load": 1, "predict": 2, "prepare": 1}  # both remembered
    patch = ex.view("badnets", 6).residual
    assert int((patch > 0).sum()) > int((ex.view("badnets").residual > 0).sum())  # a bigger square
    with pytest.raises(ValueError, match="wanet has no strength control; attacks with one: badnets, blended, sig"):
        ex.view("wanet", 0.5)
    with pytest.raises(ValueError, match="unknown attack 'sig'; allowed: badnets, blended, wanet"):
        ex.view("sig")
    fig = explorer_plots.trigger_figure(view, S.splits.spec.classes, "Blended")
    assert fig.axes[1].get_title().startswith("poisoned: predicted")
    plt.close(fig)


def test_stage1_view_matches_zero_reinit_and_recomputes_only_a_new_setting(S):
    ex = explorers.Stage1Explorer(S, "badnets", eval_images=300)
    n, m = 0.2, 0.7
    view = ex.view(n, m)
    config = TSBDConfig.for_profile(S.profile)
    unlearned = zoo.unlearned_model(S, "badnets", "clean", config.unlearn).model
    model, record = zero_reinit(ex.backdoored.model, unlearned, n, m)
    test = zoo.evaluation_set(S).head(300)
    x_bd, _ = ex.backdoored.attack.backdoor_test(test)
    assert view.acc == metrics.accuracy(metrics.predict(model, test.x), test.y)
    assert view.asr == metrics.attack_success_rate(metrics.predict(model, x_bd), 0, num_classes=10)
    assert view.zeroed == record["zeroed_weights"] > 0
    assert sum(c for _, c in view.per_layer.values()) == view.zeroed
    assert view.images == 300 and 0 < view.acc_se < 0.03
    assert ex.calls == {"weight_changes": 1, "evaluate": 1}
    ex.view(n, 0.3)
    ex.view(n, m)
    assert ex.calls == {"weight_changes": 1, "evaluate": 2}
    assert ex.view(0.0, m).zeroed == 0
    fig = explorer_plots.stage1_figure(view, "BadNets")
    assert "weights zeroed" in fig.axes[0].get_title()
    plt.close(fig)


def test_brightness_view_matches_target_rate_and_remembers_each_offset(S):
    ex = explorers.BrightnessExplorer(S, "badnets", images=200)
    view = ex.view(0.1)
    clean = zoo.clean_model(S, progress=False).model
    expected = shortcut.target_rate(clean, ex.probe, shortcut.uniform_offset(0.1), 0, seed=S.seed)
    assert view.rates["clean model"] == expected and len(view.rates) == 3 and view.images == 200
    assert ex.calls == {"predict": 3}
    ex.view(0.1)
    ex.view(0.0)
    assert ex.calls == {"predict": 6}  # the new offset only
    with pytest.raises(ValueError, match="offset must be in"):
        ex.view(1.5)
    fig = explorer_plots.brightness_figure(view, "BadNets")
    assert "+0.10" in fig.axes[0].get_title()
    plt.close(fig)


def test_interact_builds_a_widget_that_calls_the_explorer_once_per_value():
    import ipywidgets

    seen = []
    w = explorers.interact(lambda n: seen.append(n), n=ipywidgets.FloatSlider(value=0.2, min=0, max=1, step=0.05))
    assert isinstance(w, ipywidgets.interactive) and seen == [0.2]
    assert w.children[0].continuous_update is False
    w.children[0].value = 0.5
    assert seen == [0.2, 0.5]
