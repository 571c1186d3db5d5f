"""``mixbench status``: every cell of a results database and where it stands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
#: of its newest checkpoint and ``epochs`` to train, whether a running cell is ``abandoned``,
#: and the metrics and timings of finished ones).
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


def _pace(cell: dict[str, Any]) -> tuple[float, float] | None:
    """(training seconds per epoch, evaluation seconds) of a finished cell, from its timings."""
    timings = cell.get("timings") or {}
    seconds, epochs = timings.get("train_seconds"), cell.get("epochs")
    if not isinstance(seconds, (int, float)) or not epochs:
        return None
    return float(seconds) / epochs, float(timings.get("evaluators_seconds") or 0.0)


def work_left(cells: list[dict[str, Any]]) -> tuple[float, int] | None:
    """Seconds of work left for one worker, from the pace of the finished cells, and how many
    of the cells left were estimated without a finished cell of their own row.

    Each cell not done needs its epochs left (from its newest checkpoint) at the mean pace per
    epoch of its row's finished cells, else of its method's, else the median pace of all
    finished cells, plus their mean evaluation time. None when nothing is left or no finished
    cell has timings. ``cells`` are the dicts :func:`run` builds (``label``, ``method``,
    ``status``, ``epoch``, ``epochs``, ``timings``).
    """
    import statistics

    paces: dict[str, list[tuple[float, float]]] = {}
    for cell in cells:
        pace = _pace(cell) if cell["status"] == "done" else None
        if pace is not None:
            for name in (f"row {cell['label']}", f"method {cell['method']}", "all"):
                paces.setdefault(name, []).append(pace)
    left = [c for c in cells if c["status"] != "done" and c.get("epochs")]
    if not left or "all" not in paces:
        return None

    def mean_pace(found: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.fmean(p for p, _ in found), statistics.fmean(e for _, e in found)

    median = (
        statistics.median(p for p, _ in paces["all"]),
        statistics.median(e for _, e in paces["all"]),
    )
    seconds, unmatched = 0.0, 0
    for cell in left:
        found = paces.get(f"row {cell['label']}") or paces.get(f"method {cell['method']}")
        if found is None:
            unmatched += 1
        per_epoch, evaluation = mean_pace(found) if found else median
        seconds += (cell["epochs"] - (cell.get("epoch") or 0)) * per_epoch + evaluation
    return seconds, unmatched


def describe_work_left(estimate: tuple[float, int] | None) -> str:
    """The status line of :func:`work_left`'s estimate (empty without one)."""
    if estimate is None:
        return ""
    seconds, unmatched = estimate
    text = f"about {seconds / 3600:.1f} h of work left for one worker at the finished cells' pace"
    if unmatched:
        text += (
            f" ({unmatched} cell{'s' if unmatched != 1 else ''} of methods with no finished "
            "cell counted at the median pace: an expensive method takes longer)"
        )
    return text


def run(args: argparse.Namespace) -> int:
    """Print every cell of the database and where it stands."""
    import datetime as dt

    from tabulate import tabulate

    from mixbench.bench.run.store import ResultStore, is_abandoned

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
            "abandoned": is_abandoned(r),
            "metrics": r.metrics if r.status == "done" else None,
            "timings": r.timings if r.status == "done" else None,
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
        elif c["abandoned"]:
            detail = (
                f"abandoned by {c['worker']} (last heartbeat {when(c['heartbeat']) or 'none'}): "
                "the next worker takes it over"
            )
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
    abandoned = sum(1 for c in cells if c["abandoned"])
    gone = f" ({abandoned} abandoned: their workers are gone)" if abandoned else ""
    summary = ", ".join(
        f"{n} {s}" + (gone if s == "running" else "") for s, n in sorted(counts.items())
    )
    print("\n" + summary if counts else "no cells")
    estimate = describe_work_left(work_left(cells))
    if estimate:
        print(estimate)
    return 0
