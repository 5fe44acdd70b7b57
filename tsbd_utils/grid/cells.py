"""The cells of the reproduction grid: what each computes, what it needs first, and how a worker runs one.

A cell is one cacheable step behind the tables: the clean model, an attack's backdoored model, its clean
unlearning (TSBD's stage 1 input), a defense on a backdoored model, or one of notebook 07's labelled
extras. Each cell calls the same zoo function a notebook calls, so it stores its models and evaluations
under the keys the notebooks ask for, and the notebooks then read them back. A finished cell leaves a small
``grid-cell`` marker in the cache (written after everything it computed was stored), so a resumed grid
skips it without loading anything.

Example:
    >>> cells = plan(["badnets"], baselines=["ft"], extras=False)
    >>> [c.name for c in cells]
    ['clean', 'attack/badnets', 'unlearn/badnets', 'defense/ft/badnets', 'tsbd/badnets']
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import probes, zoo
from ..attacks import ATTACKS
from ..cache import canonical
from ..defenses import TSBDConfig
from ..registry import Registry
from ..session import Session, start
from ..zoo.table1 import check_baselines

MARKER = "grid-cell"  # the cache kind of the markers of finished cells


@dataclass(frozen=True)
class Settings:
    """What a worker needs to rebuild the driver's session: the notebooks' parameters, plus the CPU threads
    each cell may use. Frozen and small: it travels with every cell to the workers."""

    profile: str = "quick"
    dataset: str | None = None
    seed: int = 0
    device: str = "auto"
    cache_dir: str | None = None
    data_dir: str | None = None
    threads: int = 1  # intra-op threads of one cell (workers x threads <= cores on a CPU)


@dataclass(frozen=True)
class Cell:
    """One step of the grid: ``kind`` (a key of :data:`CELL_KINDS`), the attack and defense it concerns, and
    the names of the cells that must finish first."""

    kind: str
    attack: str | None = None
    defense: str | None = None
    needs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "/".join(p for p in (self.kind, self.defense, self.attack) if p is not None) or self.kind


CellRun = Callable[[Session, Cell], dict[str, Any]]
CELL_KINDS: Registry[CellRun] = Registry("grid cell kind")


def _scores(ev: dict[str, float]) -> dict[str, float]:
    return {k: float(ev[k]) for k in ("acc", "asr", "ra")}


def _trained(trained: zoo.Trained) -> dict[str, Any]:
    return {"epochs": len(trained.history.epochs), "train_acc": trained.history.epochs[-1]["train_acc"]}


@CELL_KINDS.register("clean")
def _clean(S: Session, cell: Cell) -> dict[str, Any]:
    return _trained(zoo.clean_model(S, progress=False))


@CELL_KINDS.register("attack")
def _attack(S: Session, cell: Cell) -> dict[str, Any]:
    zoo.backdoored_model(S, cell.attack, progress=False)
    return _scores(zoo.backdoor_evaluation(S, cell.attack))


@CELL_KINDS.register("unlearn")
def _unlearn(S: Session, cell: Cell) -> dict[str, Any]:
    run = zoo.unlearned_model(S, cell.attack, "clean", TSBDConfig.for_profile(S.profile).unlearn)
    return {"epochs": len(run.history.epochs), "diverged": bool(run.diverged)}


def _evaluated(S: Session, cell: Cell, defended: zoo.Defended) -> dict[str, Any]:
    attack = zoo.backdoored_model(S, cell.attack, progress=False).attack
    return _scores(zoo.evaluate_cached(S, defended.fields, defended.model, attack))


@CELL_KINDS.register("defense")
def _defense(S: Session, cell: Cell) -> dict[str, Any]:
    return _evaluated(S, cell, zoo.defended_model(S, cell.attack, cell.defense))


@CELL_KINDS.register("tsbd")
def _tsbd(S: Session, cell: Cell) -> dict[str, Any]:
    config = TSBDConfig.for_profile(S.profile)  # Table 1's TSBD column, as zoo.main_runs asks for it
    return _evaluated(S, cell, zoo.tsbd_model(S, cell.attack, config, curve_size=zoo.CURVE_IMAGES))


@CELL_KINDS.register("floor")
def _floor(S: Session, cell: Cell) -> dict[str, Any]:
    """The clean model's trigger floor, and how often generic perturbations alone (a brightness offset, a blend,
    noise) send the backdoored model's images to the target: the shortcut probe notebooks 05 and 07 show."""
    bd = zoo.backdoored_model(S, cell.attack, progress=False)
    rates = probes.generic_rates(S, zoo.backdoor_fields(S, cell.attack, bd.attack.config), bd.model,
                                 target=bd.attack.config.target)
    return {**_scores(zoo.trigger_floor(S, cell.attack)), "generic_rates": rates}


@CELL_KINDS.register("stage2")
def _stage2(S: Session, cell: Cell) -> dict[str, Any]:
    """Notebook 05's four stage-2 runs (07 reads its vanilla control); TSBD itself is the ``tsbd`` cell's."""
    return {label: _evaluated(S, cell, d) for label, d in zoo.tsbd_runs(S, cell.attack).items()}


@CELL_KINDS.register("found")
def _found(S: Session, cell: Cell) -> dict[str, Any]:
    """What NC's reverse engineering and i-BAU's perturbation find on the backdoored model (notebook 06's galleries)."""
    found = zoo.nc_reversed_trigger(S, cell.attack)
    zoo.ibau_perturbation(S, cell.attack)
    return {k: v for k, v in found.items() if isinstance(v, (int, float, str, bool))}


@CELL_KINDS.register("ranking")
def _ranking(S: Session, cell: Cell) -> dict[str, Any]:
    """TSBD with its neurons ranked by *poison* unlearning, an oracle (notebook 05 asks whether the ranking fails)."""
    zoo.tsbd_model(S, cell.attack, TSBDConfig.for_profile(S.profile), ranking="poison")
    return {}


@CELL_KINDS.register("control")
def _control(S: Session, cell: Cell) -> dict[str, Any]:
    """A second clean model with another training seed (notebooks 01 and 05 compare the first one with it)."""
    return _trained(zoo.clean_model(S, progress=False, train_seed=S.seed + 1))


@CELL_KINDS.register("matched")
def _matched(S: Session, cell: Cell) -> dict[str, Any]:
    epochs = TSBDConfig.for_profile(S.profile).epochs
    runs = zoo.matched_runs(S, [cell.attack], [cell.defense], epochs)
    return _evaluated(S, cell, runs[zoo.matched_label(cell.defense, epochs)][cell.attack])


@CELL_KINDS.register("oracle")
def _oracle(S: Session, cell: Cell) -> dict[str, Any]:
    runs = zoo.oracle_runs(S, [cell.attack], [cell.defense])
    return _evaluated(S, cell, runs[zoo.oracle_label(cell.defense)][cell.attack])


def plan(
    attacks: Sequence[str] | None = None,
    baselines: Sequence[str] | None = None,
    extras: bool = True,
) -> list[Cell]:
    """The grid's cells in an order where every cell comes after the cells it needs.

    ``attacks`` (default all eight) and ``baselines`` (default Table 1's eight; TSBD is always in) pick the
    table's rows and columns; ``extras`` adds what notebook 07 reads beside Table 1 (the clean model's
    trigger floor, notebook 05's stage-2 variants, FT / NAD at TSBD's epochs, FP / ANP with the oracle choice)
    and what notebooks 01, 05 and 06 compute beside it (a second clean model, TSBD with the oracle poison
    ranking, the triggers NC and i-BAU find).
    """
    attacks = list(ATTACKS) if attacks is None else [ATTACKS.check(a) for a in attacks]
    baselines = list(zoo.BASELINES) if baselines is None else check_baselines(baselines)
    if len(set(attacks)) != len(attacks) or len(set(baselines)) != len(baselines):
        raise ValueError(f"attacks and baselines must not repeat, got {attacks} and {baselines}")
    cells = [Cell("clean")] + ([Cell("control")] if extras else [])
    for a in attacks:
        bd = Cell("attack", a, needs=("clean",) if ATTACKS[a].uses_clean_model else ())
        un = Cell("unlearn", a, needs=(bd.name,))
        cells += [bd, un]
        cells += [Cell("defense", a, d, needs=(bd.name,)) for d in zoo.BASELINES if d in baselines]
        cells.append(Cell("tsbd", a, needs=(un.name,)))
        if extras:
            cells += [Cell("floor", a, needs=("clean", bd.name)), Cell("stage2", a, needs=(un.name,)),
                      Cell("found", a, needs=(bd.name,)), Cell("ranking", a, needs=(bd.name,))]
            cells += [Cell("matched", a, d, needs=(bd.name,)) for d in zoo.MATCHED]
            cells += [Cell("oracle", a, d, needs=(bd.name,)) for d in zoo.ORACLES]
    return cells


def marker_fields(S: Session, cell: Cell) -> dict[str, Any]:
    """The key of ``cell``'s marker: its name and everything in the session that shapes what it computes."""
    return {"cell": cell.name, "profile": canonical(S.profile), "seed": S.seed}


def finished(S: Session, cells: Sequence[Cell]) -> dict[str, dict[str, Any]]:
    """The cells of ``cells`` whose marker is in the cache, with what they recorded."""
    done = {}
    for cell in cells:
        loaded = S.cache.load(MARKER, marker_fields(S, cell))
        if loaded is not None:
            done[cell.name] = loaded[0]
    return done


@functools.lru_cache(maxsize=4)
def worker_session(settings: Settings) -> Session:
    """The session a worker runs cells in, built once per worker process and settings: the dataset is loaded
    once and shared by every cell the worker runs. Figures are never written by cells."""
    S = start(
        "07",
        profile=settings.profile,
        dataset=settings.dataset,
        seed=settings.seed,
        device=settings.device,
        cache_dir=settings.cache_dir,
        figures_dir=tempfile.gettempdir(),
        run_dir=tempfile.gettempdir(),
        data_dir=settings.data_dir,
    )
    return dataclasses.replace(S, threads=settings.threads)


def run_cell(settings: Settings, cell: Cell, *needed: Any) -> dict[str, Any]:
    """Run ``cell`` under ``settings`` (``needed``: the results of the cells it needs, which only order it) and
    store its marker; returns what it recorded, with its seconds and where it ran."""
    S = worker_session(settings)
    torch.set_num_threads(settings.threads)  # the engine gave this cell a share of the cores, not all of them
    start_time = time.perf_counter()
    result = CELL_KINDS[cell.kind](S, cell)
    value = {
        "cell": cell.name,
        "result": result,
        "seconds": time.perf_counter() - start_time,
        "device": str(S.device),
        "threads": settings.threads,
    }
    S.cache.store_or_warn(MARKER, marker_fields(S, cell), value)  # a failed write warns: a rerun recomputes the cell
    return value
