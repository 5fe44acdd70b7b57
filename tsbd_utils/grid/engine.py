"""Where the grid's cells run: Dask distributed workers (a local cluster, or a cluster at an address), or inline.

Dask, not Ray: the grid is a fixed graph of long, coarse tasks whose results are small dicts (models travel
through the shared cache, never through the engine), which ``Client.submit`` with futures as arguments
expresses directly. Dask is pure Python (distributed and dask are 1.0 and 1.5 MB wheels; Ray 2.60 is a 79 MB
binary wheel with its own object store, which the grid would not use), starts two local workers in 3 s here,
and a cluster is one ``dask scheduler`` and one ``dask worker`` per GPU with the same pinned environment.
GPUs are a worker *resource*: a worker started with ``--resources GPU=1`` runs one cell at a time on its GPU.

On a CPU machine the local workers share the cores: each gets ``threads`` intra-op threads and
``workers x threads`` never exceeds the cores this process may use. On a CUDA machine each local worker sees one
GPU (``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cells import Cell, Settings, run_cell

ADDRESS = re.compile(r"^(?:(?P<scheme>[a-z]+)://)?(?P<host>[A-Za-z0-9._\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d+)$")
SCHEMES = ("tcp", "tls")


class GridError(RuntimeError):
    """The grid cannot start, or some of its cells failed; the message says which and why."""


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_address(address: str) -> str:
    """``HOST:PORT`` or ``tcp://HOST:PORT`` (also ``tls://``) as Dask's ``tcp://HOST:PORT``; anything else fails
    here, naming the bad value and the allowed forms."""
    match = ADDRESS.match(address.strip()) if isinstance(address, str) else None
    scheme = (match.group("scheme") or "tcp") if match else None
    if match is None or scheme not in SCHEMES or not 1 <= int(match.group("port")) <= 65535:
        raise ValueError(
            f"scheduler address {address!r} is not understood; allowed: HOST:PORT or tcp://HOST:PORT (also tls://), "
            "port 1-65535, such as 10.0.0.5:8786 (what `dask scheduler` prints)"
        )
    return f"{scheme}://{match.group('host')}:{int(match.group('port'))}"


@dataclass(frozen=True)
class LocalPlan:
    """How many local workers, the threads of each, and the GPU each sees (None on a CPU machine)."""

    workers: int
    threads: int
    gpus: tuple[int, ...] | None = None


def local_plan(workers: int | None, threads: int | None, device: str = "auto") -> LocalPlan:
    """Check the local worker count and threads against this machine: on CUDA one worker per GPU at most (default:
    all GPUs), on a CPU ``workers x threads <= cores`` (default: one worker with every core)."""
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    n_cores = cores()
    on_gpu = device != "cpu" and torch.cuda.is_available() and device.startswith(("auto", "cuda"))
    if on_gpu:
        gpus = torch.cuda.device_count()
        workers = gpus if workers is None else workers
        if workers > gpus:
            raise ValueError(
                f"--workers {workers}: this machine has {gpus} GPU(s); allowed: 1-{gpus} (one GPU per cell)"
            )
        threads = max(1, n_cores // workers) if threads is None else threads
        return LocalPlan(workers, threads, tuple(range(workers)))
    workers = 1 if workers is None else workers
    if workers > n_cores:
        raise ValueError(
            f"--workers {workers}: this machine has {n_cores} CPU core(s); allowed: 1-{n_cores} (more would "
            "oversubscribe the cores)"
        )
    threads = n_cores // workers if threads is None else threads
    if workers * threads > n_cores:
        raise ValueError(
            f"--workers {workers} x --threads {threads} = {workers * threads} threads on {n_cores} core(s); "
            f"allowed: at most {n_cores // workers} thread(s) per worker with {workers} worker(s)"
        )
    return LocalPlan(workers, threads)


@dataclass
class Outcome:
    """What a grid run did: each cell's record (``grid-cell`` marker values), the cells that failed and why, and
    its wall time."""

    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


Report = Callable[[str], None]


def _blocked(cell: Cell, failed: dict[str, str]) -> str | None:
    bad = [n for n in cell.needs if n in failed]
    return f"not run: it needs {', '.join(bad)}, which failed" if bad else None


def run_inline(cells: Sequence[Cell], settings: Settings, report: Report = print) -> Outcome:
    """Every cell in this process, one after another in the plan's order (the reference the engine must match)."""
    outcome, start = Outcome(), time.perf_counter()
    for i, cell in enumerate(cells, 1):
        blocked = _blocked(cell, outcome.failed)
        if blocked:
            outcome.failed[cell.name] = blocked
            continue
        try:
            outcome.done[cell.name] = run_cell(settings, cell)
        except Exception as err:  # noqa: BLE001 - reported with the cell's name; the other cells go on
            outcome.failed[cell.name] = f"{type(err).__name__}: {err}"
            report(f"[{i}/{len(cells)}] {cell.name} FAILED: {outcome.failed[cell.name]}")
            continue
        report(f"[{i}/{len(cells)}] {cell.name} done in {outcome.done[cell.name]['seconds']:.1f} s")
    outcome.seconds = time.perf_counter() - start
    return outcome


def _local_cluster(plan: LocalPlan):
    """A Dask cluster of ``plan.workers`` worker processes on this machine, listening on localhost only."""
    from distributed import Nanny, Scheduler, SpecCluster

    def env(i: int) -> dict[str, str]:  # set in the worker before it first touches CUDA
        return {"CUDA_VISIBLE_DEVICES": str(plan.gpus[i])} if plan.gpus is not None else {}

    workers = {
        f"worker-{i}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,  # one cell at a time per worker; the cell itself uses plan.threads torch threads
                "env": env(i),
                "memory_limit": 0,  # cells hold a dataset and a few models; let the OS, not Dask, police memory
                "resources": {"GPU": 1} if plan.gpus is not None else {},
                "silence_logs": logging.ERROR,
            },
        }
        for i in range(plan.workers)
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False, "port": 0}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)


def _worker_environ(threads: int) -> dict[str, str | None]:
    """What a nanny sets before it spawns a local worker (Dask's ``distributed.nanny.pre-spawn-environ``).

    Dask's default sets MALLOC_TRIM_THRESHOLD_=65536, which makes glibc hand freed memory back to the OS almost
    at once: PyTorch's many short-lived activation buffers then cost an munmap / mmap pair each, and a cell ran
    2-3x slower than in a plain process, most of it system time. None unsets it (Dask's convention). The thread
    limits are the cell's share of the cores, read by the math libraries when the worker imports them."""
    limits = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return {"MALLOC_TRIM_THRESHOLD_": None, **limits}


def _connect(address: str, timeout: float):
    from distributed import Client

    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as err:
        raise GridError(
            f"no Dask scheduler answered at {address} within {timeout:g} s ({type(err).__name__}: {err}); start one "
            "with `dask scheduler` on that host, and one "
            "`dask worker <address> --nthreads 1 --no-nanny --resources GPU=1` per GPU "
            "(see README.md, 'The grid on a cluster')"
        ) from None


def _check_workers(client, settings: Settings) -> dict[str, float]:
    """Fail at once where the cluster has no workers, or a worker cannot reach the cache folder; return the
    resources each cell must ask for (one GPU where every worker offers GPUs)."""
    workers = client.scheduler_info()["workers"]
    if not workers:
        raise GridError("the Dask cluster has no workers; start at least one `dask worker <address>`")
    problems = _shared_cache_problems(client, Path(settings.cache_dir))
    if problems:
        worker, problem = next(iter(problems.items()))
        raise GridError(
            f"{len(problems)} worker(s) cannot use the cache folder {settings.cache_dir} (first, {worker}: {problem}); "
            "every worker must see the same shared folder at that path, and write to it"
        )
    trimmed = {w: v for w, v in client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").items() if v is not None}
    if trimmed:
        warnings.warn(
            f"{len(trimmed)} worker(s) run with MALLOC_TRIM_THRESHOLD_={next(iter(trimmed.values()))} (a Dask nanny "
            "sets it), which made cells 2-3x slower on a CPU; start workers with `dask worker --no-nanny`",
            stacklevel=3,
        )
    with_gpus = [w for w in workers.values() if w.get("resources", {}).get("GPU", 0) >= 1]
    return {"GPU": 1} if len(with_gpus) == len(workers) else {}


def _shared_cache_problems(client, folder: Path) -> dict[str, str]:
    """The workers that do not see ``folder`` as this process sees it, and why: a file with a fresh token is written
    here and must be read back, with write access, on every worker (a folder of the same name that is not the
    shared one holds no such file)."""
    token = uuid.uuid4().hex
    probe = folder / f".grid-probe-{token}"
    folder.mkdir(parents=True, exist_ok=True)
    probe.write_text(token)
    try:
        answers = client.run(_probe_problem, str(probe), token)
    finally:
        probe.unlink(missing_ok=True)
    return {w: p for w, p in answers.items() if p}


def _probe_problem(probe: str, token: str) -> str | None:
    """Why this worker does not share the folder of ``probe`` (None when it does); runs on each worker."""
    path = Path(probe)
    if not path.parent.is_dir():
        return f"there is no folder {path.parent} here (is the shared folder mounted?)"
    if not path.is_file() or path.read_text() != token:
        return f"{path.parent} here is another folder than the grid's (the grid's test file is not in it)"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"{path.parent} is not writable here"
    return None


def run_dask(
    cells: Sequence[Cell],
    settings: Settings,
    *,
    plan: LocalPlan | None = None,
    address: str | None = None,
    report: Report = print,
    connect_timeout: float = 10.0,
) -> Outcome:
    """Every cell on Dask workers: a local cluster of ``plan`` or the cluster at ``address``. Each cell is
    submitted with the futures of the cells it needs, so Dask runs it as soon as they have finished; a cell that
    fails fails only the cells that need it."""
    if (plan is None) == (address is None):
        raise ValueError("give either a local plan or a scheduler address")
    import dask
    import distributed

    del distributed  # imported for its side effect: its config defaults load now and cannot fill in the value below

    start = time.perf_counter()
    saved = dict(os.environ)  # a nanny sets its pre-spawn variables in this process too: put them back afterwards
    try:
        # For the whole run: a nanny that restarts a crashed worker spawns it with this environment too.
        with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ(settings.threads)}):
            outcome = _run_on(cells, settings, plan, address, report, connect_timeout)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _run_on(cells, settings, plan, address, report, connect_timeout) -> Outcome:
    from distributed import Client, as_completed

    cluster = _local_cluster(plan) if plan is not None else None
    client = Client(cluster) if cluster is not None else _connect(check_address(address), connect_timeout)
    outcome = Outcome()
    try:
        resources = _check_workers(client, settings)
        names = {c.name for c in cells}
        futures, cell_of = {}, {}
        for i, cell in enumerate(cells):
            needed = [futures[n] for n in cell.needs if n in names]
            # Earlier cells first: attacks and unlearning before the defenses that wait on them.
            future = client.submit(
                run_cell, settings, cell, *needed, key=f"{cell.name}-{os.getpid()}-{time.time_ns()}",
                pure=False, resources=resources or None, priority=len(cells) - i,
            )
            futures[cell.name], cell_of[future.key] = future, cell
        errors: dict[str, str] = {}
        for k, future in enumerate(as_completed(futures.values()), 1):
            cell = cell_of[future.key]
            try:
                outcome.done[cell.name] = future.result()
            except Exception as err:  # noqa: BLE001 - reported with the cell's name; the others go on
                errors[cell.name] = f"{type(err).__name__}: {err}"
                report(f"[{k}/{len(cells)}] {cell.name} FAILED")
                continue
            report(f"[{k}/{len(cells)}] {cell.name} done in {outcome.done[cell.name]['seconds']:.1f} s")
        for cell in cells:  # in the plan's order, so a cell is classified after the cells it needs
            if cell.name in errors:  # a cell whose needed cell failed gets that error too: say so instead
                outcome.failed[cell.name] = _blocked(cell, outcome.failed) or errors[cell.name]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return outcome
