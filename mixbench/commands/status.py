"""``mixbench status``: every cell of a results database and where it stands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mixbench.commands.options import add_db_argument, store_url

if TYPE_CHECKING:
    from mixbench.bench.run.store import CellRecord


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The run folder or ``--db``, and ``--json``."""
    p.add_argument("--out", type=Path, default=Path("runs/smoke"), help="a run's folder")
    add_db_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of cells")


#: The cell fields of the table (a last column, ``detail``, says how each cell stands).
TABLE_FIELDS = ("key", "preset", "method", "dataset", "model", "seed", "status", "attempts")
#: What `mixbench status --json` shows of each cell (plus its row's ``label``, the ``epoch``
#: of its newest checkpoint and ``epochs`` to train, and the metrics of finished ones).
STATUS_FIELDS = (*TABLE_FIELDS, "worker", "started_at", "heartbeat", "error")


def row_label(record: CellRecord) -> str:
    """The cell's row as the leaderboard names it: ``multimix [ce]``, ``erm [2× epochs]``,
    ``multimix [alpha=0.2, prob=1.0]``, so that two cells of one method tell apart."""
    from mixbench.leaderboard.markdown import method_label
    from mixbench.leaderboard.tables import Row

    return method_label(Row.blank(record.method, record.params, record.config), code=False)


def training_epochs(record: CellRecord) -> int | None:
    """How many epochs the cell trains (its schedule's, times ``epochs_scale``)."""
    epochs = (record.config.get("schedule") or {}).get("epochs")
    if not isinstance(epochs, int):
        return None
    return epochs * int(record.config.get("epochs_scale") or 1)


def checkpoint_epoch(out_dir: Path, key: str) -> int | None:
    """The epoch of the cell's newest checkpoint in the run folder ``out_dir``, or None."""
    from mixbench.bench.train.engine import checkpoint_file_epoch, latest_checkpoint

    folder = out_dir / "cells" / key
    found = latest_checkpoint(folder) if folder.is_dir() else None
    return checkpoint_file_epoch(found) if found is not None else None


def run(args: argparse.Namespace) -> int:
    """Print every cell of the database and where it stands."""
    import datetime as dt

    from tabulate import tabulate

    from mixbench.bench.run.store import ResultStore

    store = ResultStore(store_url(args))
    try:
        records = store.records()
    finally:
        store.close()
    cells = [
        {name: getattr(r, name) for name in STATUS_FIELDS}
        | {
            "label": row_label(r),
            "epoch": checkpoint_epoch(args.out, r.key) if r.status != "done" else None,
            "epochs": training_epochs(r),
            "metrics": r.metrics if r.status == "done" else None,
        }
        for r in records
    ]
    if args.json:
        print(json.dumps(cells, indent=2, default=str))
        return 0

    def when(ts: float | None) -> str:
        return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""

    rows = []
    for c in cells:
        top1 = (c["metrics"] or {}).get("top1")
        if c["status"] == "done":
            detail = f"top-1 {100 * top1:.2f}%" if isinstance(top1, (int, float)) else ""
        elif c["status"] == "running":
            detail = f"on {c['worker']} since {when(c['started_at'])}"
        else:
            detail = (c["error"] or "").splitlines()[0][:80] if c["error"] else ""
        if c["epoch"] is not None and c["epochs"]:
            detail = f"epoch {c['epoch']}/{c['epochs']}" + (f", {detail}" if detail else "")
        rows.append([c["label"] if name == "method" else c[name] for name in TABLE_FIELDS])
        rows[-1].append(detail)
    print(tabulate(rows, headers=[*TABLE_FIELDS, "detail"]))
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "no cells")
    return 0
