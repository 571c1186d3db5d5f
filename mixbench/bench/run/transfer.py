"""Moving finished cells between databases: JSON Lines export and import.

One JSON object per finished cell (resolved config, metrics, timings, versions, host, dates),
sorted by key so that exporting the same results twice gives the same bytes. Importing skips
cells whose key is already present, so results from machines that share no database merge.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mixbench.bench.run.records import record_problems
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


def export_records(
    store: ResultStore, *, presets: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """The finished cells of ``store`` (optionally only those of the named ``presets``) as
    exportable dicts."""
    out = []
    for record in store.records(status=DONE):
        if presets is not None and record.preset not in presets:
            continue
        data = asdict(record)
        out.append({name: data[name] for name in EXPORTED_FIELDS})
    return sorted(out, key=lambda r: r["key"])


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    """Write ``records`` to ``path`` as JSON Lines (atomically); returns how many."""
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines), private=True)
    return len(lines)


def read_jsonl(path: Path, *, storable: bool = False) -> list[dict[str, Any]]:
    """Cells from a JSON Lines export, each checked (:func:`record_problems`; ``storable``:
    also that both database backends can store it).

    A file with bad lines is a :class:`UsageError` with one line per bad line, naming the file,
    the line and the problem: nothing of it is used.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path} is not UTF-8 text ({exc.reason}): not a mixbench export"
        ) from None
    records, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(f"{path}:{number}: not valid JSON ({exc.msg})")
            continue
        except RecursionError:
            bad.append(f"{path}:{number}: JSON nested too deeply")
            continue
        if isinstance(record, dict):
            record = _decode_json_text(record)
        problems = record_problems(record, storable=storable)
        if problems:
            bad.append(f"{path}:{number}: {'; '.join(problems)}")
            continue
        record.setdefault("status", DONE)
        records.append(record)
    if bad:
        raise UsageError("\n".join(bad))
    return records


def _decode_json_text(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with JSON columns held as JSON text (as older exports did) decoded; text
    that is not JSON is kept, for the check to refuse."""
    out = dict(record)
    for name in ("params", "config", "metrics", "timings", "versions"):
        if isinstance(out.get(name), str):
            with contextlib.suppress(json.JSONDecodeError, RecursionError):
                out[name] = json.loads(out[name])
    return out


def read_results_path(path: Path, *, storable: bool = False) -> list[dict[str, Any]]:
    """Cells from one ``.jsonl`` file or every ``*.jsonl`` file of a folder (sorted by name),
    checked as :func:`read_jsonl` does; every bad line of every file is reported."""
    return read_results_paths([path], storable=storable)


def read_results_paths(
    paths: Iterable[Path | str], *, storable: bool = False
) -> list[dict[str, Any]]:
    """:func:`read_results_path` over several paths: every path and every line is checked
    before the one :class:`UsageError` that lists all the problems, one a line."""
    records, bad = [], []
    for path in map(Path, paths):
        try:
            files = _results_files(path)
        except UsageError as exc:
            bad.append(str(exc))
            continue
        for file in files:
            try:
                records += read_jsonl(file, storable=storable)
            except UsageError as exc:
                bad.append(str(exc))
    if bad:
        raise UsageError("\n".join(bad))
    return records


def _results_files(path: Path) -> list[Path]:
    """``path`` itself, or the ``*.jsonl`` files of the folder ``path`` (sorted by name)."""
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise UsageError(f"no *.jsonl files in {path}: export results with `mixbench export`")
        return files
    if path.is_file():
        return [path]
    raise UsageError(f"{path} does not exist: expected a .jsonl file or a folder of them")


def import_records(store: ResultStore, records: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Insert exported cells not yet in ``store`` in one transaction (all or nothing); returns
    (added, skipped). Check them first (:func:`read_jsonl` with ``storable=True``)."""
    rows = []
    for record in records:
        values = {name: record.get(name) for name in EXPORTED_FIELDS}
        values["status"] = DONE
        values["attempts"] = values.get("attempts") or 0
        values["created_at"] = values.get("created_at") or values.get("finished_at") or 0.0
        rows.append(values)
    added = store.insert_records(rows)
    return added, len(rows) - added
