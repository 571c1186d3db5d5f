"""Finished cells as ``mixbench run`` stores them, for the leaderboard's tests."""

from __future__ import annotations

from typing import Any

from mixbench.config import CellConfig, to_dict


def finished_record(cell: CellConfig, top1: float, **fields: Any) -> dict[str, Any]:
    """The stored form of ``cell`` finished with last-epoch ``top1`` (best-epoch top-1 the
    same, fixed NLL and calibration errors); ``fields`` replace whole entries (``metrics``,
    ``timings``, ``versions``...)."""
    record = {
        "key": cell.key,
        "preset": cell.preset,
        "method": cell.method,
        "dataset": cell.dataset,
        "model": cell.model,
        "seed": cell.seed,
        "params": to_dict(cell.params),
        "config": to_dict(cell),
        "status": "done",
        "metrics": {"top1": top1, "nll": 1.0, "ece": 0.05, "oe": 0.01, "best_top1": top1},
        "timings": {},
        "versions": {"mixbench": "0.1.0"},
        "host": "h",
        "finished_at": 1_700_000_000.0,
    }
    record.update(fields)
    return record
