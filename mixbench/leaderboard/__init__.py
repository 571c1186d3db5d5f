"""The auto-generated leaderboard: ``LEADERBOARD.md`` and its plots, from stored results."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mixbench.fileio import atomic_write_text
from mixbench.leaderboard.markdown import render_leaderboard
from mixbench.leaderboard.tables import Table, build_tables

__all__ = ["Table", "build_tables", "records_from_store", "write_leaderboard"]


def records_from_store(url: str) -> list[dict[str, Any]]:
    """Finished cells of a results database as plain dicts."""
    from mixbench.bench.run.store import DONE, ResultStore

    store = ResultStore(url)
    try:
        return [asdict(r) for r in store.records(status=DONE)]
    finally:
        store.close()


def write_leaderboard(records: Iterable[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``out_dir/LEADERBOARD.md`` and ``out_dir/plots/*.png``; returns the Markdown path."""
    from mixbench.leaderboard.plots import write_plots

    tables = build_tables(records)
    plots = write_plots(tables, out_dir)
    path = out_dir / "LEADERBOARD.md"
    atomic_write_text(path, render_leaderboard(tables, plots))
    return path
