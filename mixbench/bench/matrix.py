"""The resumable matrix runner: expand a preset into cells, run those not done, store results.

Every cell is claimed from the results store in a transaction, so a rerun of the same command
skips finished cells and resumes an interrupted one from its checkpoint, and several processes
sharing one database never run the same cell twice.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.bench.store import DONE, FAILED, ResultStore, sqlite_url
from mixbench.config import CellConfig
from mixbench.errors import UsageError


@dataclass
class MatrixSummary:
    """What a call of :func:`run_matrix` did."""

    total: int = 0
    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: int = 0


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


def validate_matrix(cells: list[CellConfig], bundle_cache: dict[Any, Any]) -> None:
    """Load every data set of the matrix and check every model fits it, before any write."""
    from mixbench.bench.data import check_model_fits, load_bundle
    from mixbench.bench.engine import resolve_device

    seen: set[tuple[str, str]] = set()
    for cell in cells:
        resolve_device(cell.runtime.device)
        bundle = load_bundle(cell, cache=bundle_cache)
        if (cell.dataset, cell.model) not in seen:
            check_model_fits(cell.model, cell.model_options, bundle)
            seen.add((cell.dataset, cell.model))


def describe_cell(cell: CellConfig) -> str:
    """``method/dataset/model/seedN`` for messages."""
    return f"{cell.method}/{cell.dataset}/{cell.model}/seed{cell.seed}"


def run_matrix(
    cells: list[CellConfig],
    out_dir: Path,
    db_url: str | None = None,
    *,
    retry_failed: bool = False,
    worker: str | None = None,
    log: Any = sys.stderr,
) -> MatrixSummary:
    """Run every cell of ``cells`` (a matrix) not done yet; returns a summary."""
    from mixbench.bench.engine import CellFailed, software_versions, train_cell

    bundle_cache: dict[Any, Any] = {}
    validate_matrix(cells, bundle_cache)
    check_out_dir(out_dir)
    store = ResultStore(db_url or default_db_url(out_dir))
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    by_key = {c.key: c for c in cells}
    summary = MatrixSummary(total=len(cells))
    try:
        store.add_cells(cells)
        already = {r.key for r in store.records(status=DONE, keys=by_key)}
        summary.skipped = len(already)
        if already:
            print(f"{len(already)} of {len(cells)} cells already done: skipped", file=log)
        versions = software_versions()
        while (record := store.claim(list(by_key), worker, retry_failed=retry_failed)) is not None:
            cell = by_key[record.key]
            index = list(by_key).index(record.key) + 1
            start = time.perf_counter()
            print(f"[{index}/{len(cells)}] {describe_cell(cell)} ({cell.key})", file=log)
            try:
                result = train_cell(
                    cell,
                    cell_dir(out_dir, cell),
                    heartbeat=lambda key=record.key: store.heartbeat(key, worker),
                    bundle_cache=bundle_cache,
                )
            except KeyboardInterrupt:
                store.interrupt(record.key, worker, "interrupted by the user")
                raise
            except (CellFailed, UsageError) as exc:
                store.fail(record.key, worker, str(exc), traceback.format_exc())
                summary.failed.append(record.key)
                print(f"    failed: {exc}", file=log)
                continue
            except Exception as exc:
                store.fail(record.key, worker, f"{type(exc).__name__}: {exc}", traceback.format_exc())
                summary.failed.append(record.key)
                print(f"    failed: {type(exc).__name__}: {exc}", file=log)
                continue
            timings = dict(result.timings, wall_seconds=time.perf_counter() - start)
            store.finish(record.key, worker, metrics=result.metrics, timings=timings,
                         versions=versions)
            summary.ran.append(record.key)
            print(
                f"    top-1 {100 * result.metrics['top1']:.2f}%  "
                f"({timings['train_images_per_s']:.0f} train img/s, {timings['wall_seconds']:.1f} s)",
                file=log,
            )
        summary.failed = sorted(
            {r.key for r in store.records(status=FAILED, keys=by_key)} | set(summary.failed)
        )
    finally:
        store.close()
    return summary
