"""The figures of the explorers (:mod:`tsbd_utils.explorers`): the same figure for the static default and for
every position of the sliders."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .galleries import show_image


def trigger_figure(view, classes: Sequence[str], title: str) -> Figure:
    """Clean image, poisoned image (titled with the backdoored model's prediction) and the amplified residual."""
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
    gain = 1.0 / max(float(view.residual.max()), 1e-8)
    hit = "the target" if view.predicted == view.target else "not the target"
    show_image(axes[0], view.clean, "clean")
    show_image(axes[1], view.poisoned, f"poisoned: predicted {classes[view.predicted]}\n"
                                        f"({view.confidence:.0%}, {hit})")
    show_image(axes[2], (view.residual * gain).clamp(0, 1), f"|residual| x{gain:.0f}")
    strength = "" if view.strength is None else f" at strength {view.strength:.3g}"
    fig.suptitle(f"{title}{strength}")
    fig.tight_layout()
    return fig


def stage1_figure(view, title: str) -> Figure:
    """Neurons zeroed per layer (bars) beside ACC and ASR right after stage 1, with their standard errors."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 1]})
    layers = list(view.per_layer)
    neurons = [view.per_layer[name][0] for name in layers]
    left.bar(np.arange(len(layers)), neurons, color="tab:red")
    left.set_xticks(np.arange(len(layers)), [name.replace("layer", "L") for name in layers], rotation=90, fontsize=7)
    left.set(xlabel="convolution layer", ylabel="neurons with zeroed weights",
             title=f"n = {view.neuron_ratio:g}, m = {view.weight_ratio:g}: {view.zeroed:,} weights zeroed")
    values = [100 * view.acc, 100 * view.asr]
    errors = [100 * view.acc_se, 100 * view.asr_se]
    right.bar(["ACC", "ASR"], values, yerr=errors, capsize=4, color=["tab:blue", "tab:orange"])
    right.set(ylim=(0, 100), ylabel="%", title=f"after stage 1 ({view.images} test images)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def brightness_figure(view, title: str) -> Figure:
    """For each model, the share of non-target images predicted as the target after the offset, with errors."""
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    labels = list(view.rates)
    values = [100 * view.rates[k] for k in labels]
    ax.barh(labels, values, xerr=[100 * view.se(k) for k in labels], capsize=4,
            color=["tab:gray", "tab:red", "tab:green"][: len(labels)])
    ax.set(xlim=(0, 100), xlabel=f"% of {view.images} non-target test images predicted as the target",
           title=f"{title}\nbrightness offset +{view.offset:.2f}")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
