"""The resumable matrix runner: expand a preset into cells, run those not done, store results.

Every cell is claimed from the results store in a transaction, so a rerun of the same command
skips finished cells and resumes an interrupted one from its checkpoint, and several processes
(or machines) sharing one database never run the same cell twice. With several processes per
cell (``--nproc-per-node`` or ``torchrun``), rank 0 claims and records; every rank trains.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist

from mixbench.bench.run.store import DONE, FAILED, ClaimLost, ResultStore, sqlite_url
from mixbench.config import CellConfig
from mixbench.errors import UsageError
from mixbench.fileio import STALE_TEMPORARY_SECONDS, remove_temporaries


@dataclass
class MatrixSummary:
    """What a call of :func:`run_matrix` did, read back from the store.

    ``ran``: cells this worker finished now; ``skipped``: cells done before it started.
    """

    total: int = 0
    ran: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    pending: int = 0


def default_db_url(out_dir: Path) -> str:
    """The default results database of an output folder: ``DIR/results.db``."""
    return sqlite_url(out_dir / "results.db")


def cell_dir(out_dir: Path, cell: CellConfig) -> Path:
    """Where a cell keeps its checkpoints."""
    return out_dir / "cells" / cell.key


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {out_dir}: {exc.strerror}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {out_dir} is not writable; choose another with --out")


def check_method_requirements(cells: list[CellConfig]) -> None:
    """Raise the one-line :class:`UsageError` of the first method of ``cells`` whose optional
    extra (``MixMethod.requires``) is not installed, before anything runs or is written."""
    from mixbench.methods import check_requirements, get_method_class

    for method in dict.fromkeys(cell.method for cell in cells):
        check_requirements(get_method_class(method))


def validate_matrix(cells: list[CellConfig], bundle_cache: dict[Any, Any]) -> None:
    """Check every method's optional extras, load every data set of the matrix and check every
    model fits it, before any write."""
    from mixbench.bench.train.data import load_bundle
    from mixbench.bench.train.engine import resolve_device

    check_method_requirements(cells)
    for cell in cells:
        resolve_device(cell.runtime.device)
        load_bundle(cell, cache=bundle_cache)


def describe_cell(cell: CellConfig) -> str:
    """``method/dataset/model/seedN`` for messages."""
    return f"{cell.method}/{cell.dataset}/{cell.model}/seed{cell.seed}"


def with_process_count(cells: list[CellConfig], nproc_per_node: int = 1) -> list[CellConfig]:
    """The cells as this launch trains them: ``processes`` is ``--nproc-per-node``, or the
    world size under ``torchrun``. It is part of a cell's key (from 2 on), so a multi-process
    cell never stands in for a single-process one, nor the other way round."""
    processes = nproc_per_node
    if nproc_per_node <= 1 and launched_by_torchrun():
        processes = int(os.environ["WORLD_SIZE"])
    return [dataclasses.replace(cell, processes=max(1, processes)) for cell in cells]


def launched_by_torchrun() -> bool:
    """True when this process is one rank of a ``torchrun`` launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def run_matrix(
    cells: list[CellConfig],
    out_dir: Path,
    db_url: str | None = None,
    *,
    retry_failed: bool = False,
    worker: str | None = None,
    nproc_per_node: int = 1,
    log: Any = None,
    notes: Sequence[str] = (),
) -> MatrixSummary:
    """Run every cell of ``cells`` (a matrix) not done yet; returns a summary from the store.

    The data sets are loaded and the output folder checked before anything is written, so that
    bad input leaves the results database untouched. ``notes`` (lines such as the cells left
    out of the matrix, and why) are printed to ``log`` once those checks have passed.
    """
    log = log or sys.stderr
    cells = with_process_count(cells, nproc_per_node)
    bundle_cache: dict[Any, Any] = {}
    validate_matrix(cells, bundle_cache)
    check_out_dir(out_dir)
    # What a crash left mid-write (a leaderboard, an export); other workers may be writing
    # here now, so only files older than any write lasts.
    remove_temporaries(out_dir, older_than=STALE_TEMPORARY_SECONDS)
    url = db_url or default_db_url(out_dir)
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    keys = [c.key for c in cells]
    store = ResultStore(url)
    try:
        store.add_cells(cells)
        done_before = {r.key for r in store.records(status=DONE, keys=keys)}
    finally:
        store.close()
    for line in notes:
        print(line, file=log)
    if done_before:
        print(f"{len(done_before)} of {len(cells)} cells already done: skipped", file=log)

    if nproc_per_node > 1 or launched_by_torchrun():
        backend = "nccl" if _cuda_requested(cells) else "gloo"
        spawn = {} if launched_by_torchrun() else {"nproc_per_node": nproc_per_node}
        from mixbench.bench.run.environment import environment, shared_cpu_environment

        cpu_env = {} if backend == "nccl" else shared_cpu_environment(nproc_per_node)
        with environment(cpu_env), idist.Parallel(backend=backend, **spawn) as parallel:
            parallel.run(_matrix_loop, cells, out_dir, url, retry_failed, worker, None)
    else:
        _matrix_loop(0, cells, out_dir, url, retry_failed, worker, bundle_cache, log)

    store = ResultStore(url)
    try:
        records = store.records(keys=keys)
    finally:
        store.close()
    ran_here = {r.key for r in records if r.status == DONE and r.worker == worker} - done_before
    return MatrixSummary(
        total=len(cells),
        ran=len(ran_here),
        skipped=len(done_before),
        failed=sorted(r.key for r in records if r.status == FAILED),
        pending=sum(r.status not in (DONE, FAILED) for r in records),
    )


def _cuda_requested(cells: list[CellConfig]) -> bool:
    import torch

    device = cells[0].runtime.device
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


_NO_CELL = "-"  # broadcast when nothing is left (an empty string cannot be broadcast)


def _matrix_loop(
    local_rank: int,
    cells: list[CellConfig],
    out_dir: Path,
    url: str,
    retry_failed: bool,
    worker: str,
    bundle_cache: dict[Any, Any] | None,
    log: Any = None,
) -> None:
    """Claim, train, record, until no runnable cell is left (every rank runs this loop)."""
    from mixbench.bench.run.provenance import software_versions
    from mixbench.bench.train.engine import CellFailed, train_cell

    log = log or sys.stderr
    rank, distributed = idist.get_rank(), idist.get_world_size() > 1
    bundle_cache = {} if bundle_cache is None else bundle_cache
    by_key = {c.key: c for c in cells}
    order = list(by_key)
    tried: set[str] = set()
    store = ResultStore(url) if rank == 0 else None
    versions = software_versions()
    try:
        while True:
            key = _NO_CELL
            if store is not None:
                # Each cell at most once per call: a failed cell retried here stays failed.
                runnable = [k for k in order if k not in tried]
                record = store.claim(runnable, worker, retry_failed=retry_failed)
                key = record.key if record is not None else _NO_CELL
            if distributed:
                key = idist.broadcast(key, src=0, safe_mode=True)
            if key == _NO_CELL:
                return
            tried.add(key)
            cell = by_key[key]
            start = time.perf_counter()
            if rank == 0:
                print(
                    f"[{order.index(key) + 1}/{len(order)}] {describe_cell(cell)} ({key})",
                    file=log,
                )
            heartbeat = (lambda k=key: store.heartbeat(k, worker)) if store else None
            try:
                result = train_cell(
                    cell, cell_dir(out_dir, cell), heartbeat=heartbeat, bundle_cache=bundle_cache
                )
                if rank == 0:  # only rank 0 records; the others wait at the next broadcast
                    evaluate_trained(result, cell, heartbeat)
            except KeyboardInterrupt:
                if store is not None:
                    from mixbench.bench.train.engine import latest_checkpoint

                    last = latest_checkpoint(cell_dir(out_dir, cell))
                    where = f"from {last}" if last else "from the start (no epoch had finished)"
                    store.interrupt(key, worker, "interrupted by the user")
                    print(
                        f"interrupted: {describe_cell(cell)} is marked interrupted; rerun the "
                        f"same command to resume it {where}",
                        file=log,
                    )
                raise
            except ClaimLost as exc:
                # Another worker runs the cell now: its row is not ours to write.
                print(f"    stopped: {exc}", file=log)
                continue
            except (CellFailed, UsageError) as exc:
                _record_failure(store, key, worker, str(exc), log)
                continue
            except Exception as exc:
                _record_failure(store, key, worker, f"{type(exc).__name__}: {exc}", log)
                continue
            finally:
                release_cell_objects()
            if store is None:
                continue
            timings = dict(result.timings, wall_seconds=time.perf_counter() - start)
            if not store.finish(
                key, worker, metrics=result.metrics, timings=timings, versions=versions
            ):
                print(
                    f"    not recorded: this worker ({worker}) lost its claim on {key} to "
                    "another worker while it ran; the result of the worker holding it counts",
                    file=log,
                )
                continue
            print(
                f"    top-1 {100 * result.metrics['top1']:.2f}%  "
                f"({timings['train_images_per_s']:.0f} train img/s, "
                f"{timings['wall_seconds']:.1f} s)",
                file=log,
            )
    finally:
        if store is not None:
            store.close()


def evaluate_trained(result: Any, cell: CellConfig, heartbeat: Any = None) -> None:
    """Run the cell's evaluators on the network ``train_cell`` trained; their metrics and
    timings join the result's, and the result lets go of the network."""
    from mixbench.bench.run.evaluate import run_evaluators

    report = run_evaluators(
        result.backbone, result.bundle, cell, result.device, heartbeat=heartbeat
    )
    result.metrics.update(report.metrics)
    result.timings.update(report.timings)
    result.backbone = result.bundle = None


def release_cell_objects() -> None:
    """Free what the last cell built (model, optimizer, engines, DDP wrapper) now.

    The engines' handlers close over the model, so a finished cell lives on in reference
    cycles until the garbage collector happens to run. Under DistributedDataParallel that
    garbage holds the process group: ``destroy_process_group`` then cannot stop gloo's threads,
    and they are torn down during the interpreter's exit instead, which now and then kills the
    process with SIGABRT ("terminate called without an active exception") after a cell that
    succeeded. Collecting after every cell also keeps a long matrix's memory flat.
    """
    gc.collect()


def _record_failure(
    store: ResultStore | None, key: str, worker: str, message: str, log: Any
) -> None:
    if store is None:
        return
    store.fail(key, worker, message, traceback.format_exc())
    print(f"    failed: {message}", file=log)
