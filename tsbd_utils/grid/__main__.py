"""Compute the cells behind Table 1 in parallel on Dask workers, then write the tables from the cache.

    python -m tsbd_utils.grid --profile quick --workers 2             # two local workers on a 2-core CPU
    python -m tsbd_utils.grid --profile paper --device cuda           # one local worker per GPU
    python -m tsbd_utils.grid --profile paper --address 10.0.0.5:8786 --cache-dir /shared/tsbd-cache
    python -m tsbd_utils.grid --profile smoke --inline                # no engine: one cell after another here

Every cell is keyed in the cache, so a rerun or a resumed run skips the cells that finished, and notebooks 05-07
then read everything from the cache. The tables go to ``runs/<profile>/grid/`` under notebook 07's names
(``07_table1.*``, ``07_table1_extra.*``: CSV in percent, Markdown, LaTeX) with ``grid.json``: each cell's record,
what failed and the run time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from .. import cli
from ..paths import checked_path, run_dir
from ..session import start, write_json
from ..zoo import BASELINES
from .cells import Settings, finished, plan
from .engine import GridError, check_address, cores, local_plan, run_dask, run_inline
from .report import build_tables


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tsbd_utils.grid", description=__doc__.split("\n\n")[0])
    cli.add_arguments(p, run_dir_help="default: runs/<profile>/; the tables go to its grid/ folder")
    p.add_argument("--workers", type=int, default=None,
                   help="local Dask workers (default: one per GPU on CUDA, else 1); not with --address")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per cell (default: the cores divided among the local workers; 1 on a cluster)")
    p.add_argument("--address", default=None,
                   help="HOST:PORT of a running `dask scheduler`: run the cells on its workers instead")
    p.add_argument("--connect-timeout", type=float, default=None,
                   help="seconds to wait for the scheduler at --address (default 10)")
    p.add_argument("--inline", action="store_true", help="no engine: run the cells one after another in this process")
    p.add_argument("--attacks", nargs="+", default=None, metavar="NAME", help="the table's attacks (default all 8)")
    p.add_argument("--baselines", nargs="+", default=None, metavar="NAME",
                   help="the table's baseline defenses (default all 8; TSBD is always in)")
    p.add_argument("--no-extras", action="store_true",
                   help="leave out notebook 07's extras (trigger floor, same-budget controls, lift variants, oracle "
                        "choices)")
    p.add_argument("--dry-run", action="store_true", help="list the cells, what each needs and which have finished")
    return p


def _settings(args: argparse.Namespace) -> tuple[Settings, dict, Path, bool]:
    """Check every option before anything starts (a bad one fails here, naming it); the settings, the engine's
    arguments, the folder of the tables and whether the cache is read-only."""
    if args.inline and (args.address or args.workers is not None):
        raise ValueError("--inline runs every cell in this process; it takes neither --workers nor --address")
    if args.connect_timeout is not None and args.address is None:
        raise ValueError(f"--connect-timeout {args.connect_timeout} applies to a scheduler at --address; there is none "
                         "(give --address HOST:PORT, or leave --connect-timeout out)")
    if args.address is not None and args.workers is not None:
        raise ValueError(
            f"--workers {args.workers} with --address {args.address}: a cluster brings its own workers; "
            "start them with `dask worker` (see README.md), or leave out --address for local workers"
        )
    out = run_dir(args.profile, checked_path("--run-dir", args.run_dir)) / "grid"
    run = cli.check(args, outputs={"--run-dir": out})
    engine: dict = {}
    if args.address is not None:
        timeout = 10.0 if args.connect_timeout is None else args.connect_timeout
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"--connect-timeout must be a finite number of seconds > 0, got {timeout}")
        engine["address"] = check_address(args.address)
        engine["connect_timeout"] = timeout
        threads = 1 if args.threads is None else args.threads  # a GPU cell needs few CPU threads
        if threads < 1:
            raise ValueError(f"--threads must be an int >= 1, got {args.threads!r}")
    elif args.inline:
        threads = local_plan(1, args.threads, "cpu").threads
    else:
        engine["plan"] = local_plan(args.workers, args.threads, args.device)
        threads = engine["plan"].threads
    settings = Settings(run.profile, run.dataset, run.seed, run.device, str(run.cache_dir),
                        str(run.data_dir) if run.data_dir else None, threads)
    return settings, engine, run.run_dir / "grid", run.cache_read_only


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cells = plan(args.attacks, args.baselines, extras=not args.no_extras)
        settings, engine, out, read_only = _settings(args)
        S = start("07", profile=settings.profile, dataset=settings.dataset, seed=settings.seed, device=settings.device,
                  cache_dir=settings.cache_dir, figures_dir=str(out), run_dir=str(out.parent),
                  data_dir=settings.data_dir, cache_read_only=read_only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    done_before = finished(S, cells)
    todo = [c for c in cells if c.name not in done_before]
    if args.dry_run:
        for c in cells:
            state = "finished" if c.name in done_before else "to run"
            print(f"{c.name:28s} {state:9s} needs: {', '.join(c.needs) or '-'}")
        return 0
    if todo and read_only:
        print(f"error: {len(todo)} of {len(cells)} cells have not finished in the read-only cache "
              f"{settings.cache_dir}, which would keep none of what they compute; fill the cache first, or leave out "
              "--cache-read-only ($TSBD_CACHE_READ_ONLY) for this run", file=sys.stderr)
        return 2
    where = (f"the cluster at {engine['address']}" if "address" in engine else "this process" if args.inline
             else f"{engine['plan'].workers} local worker(s) x {settings.threads} thread(s)")
    print(f"grid: {len(cells)} cells ({args.profile} profile), {len(done_before)} finished before, "
          f"{len(todo)} to run on {where}", flush=True)
    try:
        outcome = run_inline(todo, settings) if args.inline else run_dask(todo, settings, **engine)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(cores())
    record = {"cells": {**done_before, **outcome.done}, "failed": outcome.failed, "seconds": outcome.seconds,
              "finished_before": sorted(done_before), "engine": where, "threads": settings.threads,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(out / "grid.json", record)
    if outcome.failed:
        print(f"{len(outcome.failed)} cell(s) failed; the others are in the cache (rerun to retry the failed ones):",
              file=sys.stderr)
        for name, why in outcome.failed.items():
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    attacks = [c.attack for c in cells if c.kind == "attack"]
    baselines = [d for d in BASELINES if args.baselines is None or d in args.baselines]
    tables_ = build_tables(S, attacks, baselines, not args.no_extras, out)
    print(f"grid: {len(todo)} cells in {outcome.seconds:.1f} s; tables from the cache "
          f"({tables_.hits} of {tables_.lookups} lookups were hits): {', '.join(map(str, tables_.paths.values()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
