"""Graph cuts on grid graphs with GCO (``mixbench[graphcut]``), in-process or over a pool.

Shared by PuzzleMix (one cut per example) and Co-Mixup (one solve per chunk).

``gco`` is imported here, inside the functions, and nowhere else: importing it adds the removed
aliases ``numpy.int`` and ``numpy.float`` to ``numpy``, a process-wide side effect that must
not happen when mixbench is merely imported. A process pool of ``workers`` processes (started
with ``spawn``, kept for the life of the process, one per size) solves independent cuts in
parallel; a cut is deterministic, so the pool never changes a result.
"""

from __future__ import annotations

import atexit
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

__all__ = ["cut_grid_graph", "cut_grid_graphs", "process_pool", "shutdown_pools"]

GridGraph = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_POOLS: dict[int, ProcessPoolExecutor] = {}


def cut_grid_graph(graph: GridGraph) -> np.ndarray:
    """One alpha-beta swap to convergence on a 4-connected grid: ``graph`` is ``(unary (h,
    w, L), distance (L, L), cost_v (h - 1, w), cost_h (h, w - 1))`` as GCO's
    ``cut_grid_graph`` takes them (dtypes passed as they are); returns the labels (h * w,)."""
    import gco

    unary, distance, cost_v, cost_h = graph
    return np.asarray(
        gco.cut_grid_graph(unary, distance, cost_v, cost_h, n_iter=-1, algorithm="swap")
    )


def process_pool(workers: int) -> ProcessPoolExecutor:
    """The process pool of ``workers`` processes (``spawn``: nothing of this process's threads
    or devices), started on first use and kept for the life of the process."""
    pool = _POOLS.get(workers)
    if pool is None:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        _POOLS[workers] = pool
    return pool


def cut_grid_graphs(graphs: Sequence[GridGraph], workers: int = 0) -> list[np.ndarray]:
    """:func:`cut_grid_graph` of every graph, in order: in this process when ``workers`` is
    0, else spread over a pool of ``workers`` processes (the same labels either way)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0 or len(graphs) < 2:
        return [cut_grid_graph(graph) for graph in graphs]
    chunk = max(1, len(graphs) // (4 * workers))
    return list(process_pool(workers).map(cut_grid_graph, graphs, chunksize=chunk))


def shutdown_pools() -> None:
    """Stop every pool this process started (also run at exit)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(cancel_futures=True)


atexit.register(shutdown_pools)
