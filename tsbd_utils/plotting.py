"""One look for every figure, a stable way to save them, and the standard plots.

``savefig`` writes ``<figures_dir>/<NN_slug>.png``: the notebook number keeps figures sorted in
teaching order, and the name stays stable so the README and the notebooks can refer to it. Figures made of
images (galleries of triggers and datasets) are in :mod:`tsbd_utils.galleries`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .atomic import atomic_path

_NAME = re.compile(r"^\d\d_[a-z0-9_]+$")


def setup(context: str = "notebook") -> None:
    """The suite's theme: seaborn whitegrid, the colour-blind palette."""
    sns.set_theme(context=context, style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold"})


def savefig(fig: Figure, name: str, figures_dir: str | os.PathLike) -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` atomically and return the path.

    ``name`` is ``NN_slug`` (for example ``00_dataset_preview``), lower case.
    """
    if not _NAME.match(name):
        raise ValueError(f"figure name {name!r} must look like 'NN_slug' (two digits, underscore, lower-case slug)")
    path = Path(figures_dir) / f"{name}.png"
    with atomic_path(path) as tmp:
        # No "Software" metadata: the PNG then does not change with the matplotlib version.
        fig.savefig(tmp, format="png", bbox_inches="tight", metadata={"Software": None})
    return path


def show_png(path: str | os.PathLike) -> bool:
    """Display the PNG file ``path`` as a cell output when running in a Jupyter kernel (papermill included);
    elsewhere (a script, the tests' own process) do nothing. True when it was displayed."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # IPython comes with the notebooks' kernel; without it there is nowhere to show
        return False
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    display(Image(filename=str(path)))
    return True


def flow_diagram(lanes: Sequence[tuple[str, Sequence[str]]], *, title: str, width: float = 12.0) -> Figure:
    """Boxes joined by arrows, one horizontal lane per actor, the last box of a lane feeding the next lane.

    ``lanes`` is a sequence of (lane label, box texts). Used for the attack/defense pipeline.
    """
    colors = sns.color_palette("colorblind", len(lanes))
    ncols = max(len(boxes) for _, boxes in lanes)
    fig, ax = plt.subplots(figsize=(width, 1.6 * len(lanes) + 0.4))
    ax.set_xlim(-1.6, ncols * 3.0)
    ax.set_ylim(-1.6 * len(lanes) + 0.6, 1.0)
    ax.axis("off")
    previous_end = None
    for row, ((label, boxes), color) in enumerate(zip(lanes, colors)):
        y = -1.6 * row
        ax.text(-1.5, y, label, ha="left", va="center", fontsize=11, fontweight="bold", color=color)
        for col, text in enumerate(boxes):
            x = col * 3.0
            ax.add_patch(
                FancyBboxPatch(
                    (x, y - 0.5),
                    2.4,
                    1.0,
                    boxstyle="round,pad=0.05",
                    facecolor=(*color, 0.15),
                    edgecolor=color,
                    linewidth=1.5,
                )
            )
            ax.text(x + 1.2, y, text, ha="center", va="center", fontsize=9, wrap=True)
            if col > 0:
                ax.add_patch(
                    FancyArrowPatch((x - 0.6, y), (x - 0.02, y), arrowstyle="-|>", mutation_scale=14, color="0.3")
                )
        if previous_end is not None:
            # Route the hand-over through the gap between lanes: down, left, down into the first box.
            x_from, y_from = previous_end
            y_gap = y + 0.8
            ax.plot([x_from, x_from, 1.2], [y_from, y_gap, y_gap], color="0.3", linewidth=1.2)
            ax.add_patch(
                FancyArrowPatch((1.2, y_gap), (1.2, y + 0.57), arrowstyle="-|>", mutation_scale=14, color="0.3")
            )
        previous_end = ((len(boxes) - 1) * 3.0 + 1.2, y - 0.57)
    ax.set_title(title)
    return fig


def panel_grid(
    count: int,
    *,
    ncols: int = 4,
    size: float = 3.0,
    height: float | None = None,
    sharex: bool = False,
    sharey: bool = False,
):
    """A figure with ``count`` panels on a grid of ``ncols`` columns; unused panels are hidden.

    Panels are ``size`` inches wide and ``height`` (default: ``size``) high. Returns the figure and the
    ``count`` visible axes, row by row."""
    if count < 1:
        raise ValueError(f"need at least one panel, got {count}")
    ncols = min(ncols, count)
    nrows = -(-count // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, (height or size) * nrows), squeeze=False, sharex=sharex, sharey=sharey
    )
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def scatter_with_fit(
    ax,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    note: str | None = None,
    log: bool = False,
    **scatter,
) -> None:
    """One point per pair, a least-squares line (in log space when ``log``), and ``note`` in a corner."""
    import numpy as np

    xs, ys = x.double().cpu().numpy(), y.double().cpu().numpy()
    ax.scatter(xs, ys, s=scatter.pop("s", 8), alpha=scatter.pop("alpha", 0.5), linewidths=0, **scatter)
    if log:
        keep = (xs > 0) & (ys > 0)
        slope, intercept = np.polyfit(np.log10(xs[keep]), np.log10(ys[keep]), 1)
        line_x = np.geomspace(xs[keep].min(), xs[keep].max(), 50)
        ax.plot(line_x, 10**intercept * line_x**slope, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        slope, intercept = np.polyfit(xs, ys, 1)
        line_x = np.linspace(xs.min(), xs.max(), 50)
        ax.plot(line_x, intercept + slope * line_x, color="black", lw=1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    if note:
        ax.text(
            0.03,
            0.97,
            note,
            transform=ax.transAxes,
            va="top",
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )


def rate_heatmap(ax, table, *, title: str, xlabel: str, ylabel: str, vmax: float = 100.0):
    """A table of rates in percent (a pandas DataFrame) as an annotated heatmap; returns the image (for a colorbar)."""
    import numpy as np

    values = np.asarray(table, dtype=float)
    image = ax.imshow(values, cmap="Reds", vmin=0, vmax=vmax, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 * vmax else "black")
    _label_table_axes(ax, table, title=title, xlabel=xlabel, ylabel=ylabel, rotation=40, fontsize=8)
    return image


def correlation_heatmap(ax, table, *, title: str, xlabel: str, ylabel: str, fmt: str = "{:.2f}"):
    """A table of correlations in [-1, 1] (a pandas DataFrame) as an annotated diverging heatmap (0 is white).

    NaN cells stay blank (grey). Returns the image, for a colorbar.
    """
    import numpy as np

    values = np.asarray(table, dtype=float)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-1, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            colour = "white" if abs(v) > 0.6 else "black"
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=6, color=colour)
    _label_table_axes(ax, table, title=title, xlabel=xlabel, ylabel=ylabel, rotation=60, fontsize=7)
    return image


def _label_table_axes(ax, table, *, title: str, xlabel: str, ylabel: str, rotation: int, fontsize: int) -> None:
    """Ticks from a DataFrame's columns (x) and index (y), no grid, title and axis labels: the heatmaps' frame."""
    ax.set_xticks(range(table.shape[1]), list(table.columns), rotation=rotation, ha="right", fontsize=fontsize)
    ax.set_yticks(range(table.shape[0]), list(table.index), fontsize=8)
    ax.grid(False)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)


_RATIO_STEPS = (
    (1, 2, 5),
    (1, 1.2, 1.5, 2, 3, 4, 5, 6, 8),
    (1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2, 2.5, 3, 4, 5, 6, 7, 8, 9),
)


def ratio_axis(ax, axis: str = "y") -> list[float]:
    """Put ``axis`` of ``ax`` (already drawn) on a log scale labelled with plain ratios (x0.5, x1, x2, ...).

    Ticks are taken from 1-2-5 steps, finer steps when the range is narrow (three rounded ratios when
    even those leave fewer than three), within the current limits; returns them. A ratio axis on a log
    scale shows x2 and x0.5 as equally far from x1.
    """
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    ticks: list[float] = []
    for steps in _RATIO_STEPS:
        ticks = [round(m * 10**d, 10) for d in decades for m in steps if low <= m * 10**d <= high]
        if len(ticks) >= 3:
            break
    else:  # a very narrow range: three ratios inside it, to two significant digits
        inside = {float(f"{low * (high / low) ** q:.2g}") for q in (0.2, 0.5, 0.8)}
        ticks = sorted(inside | ({1.0} if low <= 1 <= high else set()))
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"x{v:g}"))
    target.set_minor_formatter(NullFormatter())
    return ticks
