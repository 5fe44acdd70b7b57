"""The reproduction grid: the cells behind Table 1 computed in parallel on Dask workers, through the cache.

* :mod:`.cells`: what each cell computes (the notebooks' own zoo calls), what it needs first, its marker;
* :mod:`.engine`: Dask workers (local, or a cluster at an address) or inline, and the checks before a start;
* :mod:`.report`: the tables, read back from the cache as notebook 07 reads them;
* ``python -m tsbd_utils.grid``: the command line (``--help``).

Example:
    >>> from tsbd_utils import grid
    >>> cells = grid.plan(["badnets", "wanet"], baselines=["ft", "anp"])
    >>> outcome = grid.run_dask(cells, grid.Settings("smoke", cache_dir="/tmp/c"), plan=grid.local_plan(2, 1, "cpu"))
"""

from __future__ import annotations

from .cells import CELL_KINDS, Cell, Settings, finished, plan, run_cell
from .engine import GridError, LocalPlan, Outcome, check_address, local_plan, run_dask, run_inline
from .report import GridTables, build_tables

__all__ = [
    "CELL_KINDS",
    "Cell",
    "GridError",
    "GridTables",
    "LocalPlan",
    "Outcome",
    "Settings",
    "build_tables",
    "check_address",
    "finished",
    "local_plan",
    "plan",
    "run_cell",
    "run_dask",
    "run_inline",
]
