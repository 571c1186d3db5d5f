"""Moving finished cells between databases: JSON Lines export and import.

One JSON object per finished cell (resolved config, metrics, timings, versions, host, dates),
sorted by key so that exporting the same results twice gives the same bytes. Importing skips
cells whose key is already present, so results from machines that share no database merge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mixbench.bench.run.store import DONE, ResultStore
from mixbench.errors import UsageError
from mixbench.fileio import atomic_write_text

EXPORTED_FIELDS = (
    "key",
    "preset",
    "method",
    "dataset",
    "model",
    "seed",
    "params",
    "config",
    "status",
    "metrics",
    "timings",
    "versions",
    "host",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
)
REQUIRED_FIELDS = (
    "key",
    "preset",
    "method",
    "dataset",
    "model",
    "seed",
    "params",
    "config",
    "metrics",
)


def export_records(store: ResultStore, *, preset: str | None = None) -> list[dict[str, Any]]:
    """The finished cells of ``store`` (optionally of one preset) as exportable dicts."""
    out = []
    for record in store.records(status=DONE):
        if preset is not None and record.preset != preset:
            continue
        data = asdict(record)
        out.append({name: data[name] for name in EXPORTED_FIELDS})
    return sorted(out, key=lambda r: r["key"])


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    """Write ``records`` to ``path`` as JSON Lines (atomically); returns how many."""
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines), private=True)
    return len(lines)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Cells from a JSON Lines export; a malformed line is a UsageError naming file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if not isinstance(record, dict) or missing:
            raise UsageError(f"{path}:{number}: not an exported mixbench cell (missing {missing})")
        record.setdefault("status", DONE)
        records.append(record)
    return records


def read_results_path(path: Path) -> list[dict[str, Any]]:
    """Cells from one ``.jsonl`` file or every ``*.jsonl`` file of a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise UsageError(f"no *.jsonl files in {path}: export results with `mixbench export`")
        return [r for f in files for r in read_jsonl(f)]
    if not path.is_file():
        raise UsageError(f"{path} does not exist: expected a .jsonl file or a folder of them")
    return read_jsonl(path)


def import_records(store: ResultStore, records: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Insert exported cells not yet in ``store``; returns (added, skipped)."""
    added = skipped = 0
    for record in records:
        values = {name: record.get(name) for name in EXPORTED_FIELDS}
        values["status"] = DONE
        values["attempts"] = values.get("attempts") or 0
        values["created_at"] = values.get("created_at") or values.get("finished_at") or 0.0
        if store.insert_record(values):
            added += 1
        else:
            skipped += 1
    return added, skipped
