"""Response time of the notebooks' explorers: what one move of a control costs, on cached models.

    python benchmarks/explorers.py               # quick profile, the project's cache (run notebooks 00-05 first)
    python benchmarks/explorers.py --profile smoke --cache-dir /tmp/c

For each explorer, 20 changes to values not seen before (seeded), each timed from the new value to the finished
figure (the explorer's ``view`` plus drawing the figure into a PNG, as the widget shows it), after the explorer is
built (its models loaded) and one warm-up change. Prints the median and the slowest change of each. The
explorers remember every answer, so moving a control back to a value already seen costs only the drawing.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from tsbd_utils import explorer_plots, explorers, session  # noqa: E402
from tsbd_utils.attacks import ATTACKS  # noqa: E402


def timed(change) -> float:
    start = time.perf_counter()
    fig = change()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--attack", default="blended", help="the attack the explorers show")
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    if args.changes < 1:
        parser.error(f"--changes must be >= 1, got {args.changes}")
    S = session.start("04", profile=args.profile, cache_dir=args.cache_dir, figures_dir="/tmp", run_dir="/tmp")
    rng = random.Random(0)
    name, title, classes = args.attack, ATTACKS[args.attack].title, S.splits.spec.classes
    trigger = explorers.TriggerExplorer(S, list(ATTACKS), 0)
    stage1 = explorers.Stage1Explorer(S, name, eval_images=500)
    brightness = explorers.BrightnessExplorer(S, name, images=500)
    strength_attacks = list(explorers.STRENGTHS)
    cases = {
        "trigger (attack, strength)": lambda: explorer_plots.trigger_figure(
            trigger.view(a := rng.choice(strength_attacks), trigger.scaled(a, 2 ** rng.uniform(-3, 2))), classes, a),
        "stage 1 (n, m)": lambda: explorer_plots.stage1_figure(
            stage1.view(round(rng.uniform(0, 0.9), 3), round(rng.uniform(0.05, 1), 3)), title),
        "brightness (offset)": lambda: explorer_plots.brightness_figure(
            brightness.view(round(rng.uniform(0, 0.5), 4)), title),
    }
    print(f"profile {args.profile}, {S.threads} CPU threads, attack {title}; {args.changes} changes each, "
          "value to finished figure")
    for label, change in cases.items():
        timed(change)  # warm-up: the first prediction of each model, the first figure of its kind
        times = [timed(change) for _ in range(args.changes)]
        print(f"  {label:28s} median {statistics.median(times):6.2f} s   slowest {max(times):6.2f} s")


if __name__ == "__main__":
    main()
