"""Checking an exported cell before it is trusted: its schema, its names, its key.

An exported cell (a line of a ``mixbench export`` file) is read by ``mixbench import`` into a
results database and by ``mixbench leaderboard --from``. :func:`record_problems` lists what is
wrong with one: fields of the wrong type (``metrics`` or ``params`` that are not objects, a
``seed`` that is not an integer, a ``config`` that is not a cell configuration, dates that are
not dates), names that could leave a folder or break the leaderboard's Markdown, a ``key``
that is not the hash of the config (a tampered config), and values that one database backend
stores and the other refuses (a NUL character, integers beyond the columns' range, NaN), so
that both refuse the same records up front.
"""

from __future__ import annotations

import math
import re
from typing import Any

from mixbench.config import CellConfig, from_dict, to_dict
from mixbench.errors import UsageError
from mixbench.names import name_problem
from mixbench.names import short_repr as _short

#: The fields an exported cell must have.
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
#: The fields whose values are names (they become file names and Markdown text).
NAME_FIELDS = ("preset", "method", "dataset", "model")
#: Integer columns are 32-bit on PostgreSQL (``INTEGER``): the range both backends store.
INT32 = (-(2**31), 2**31 - 1)
#: Integers inside JSON values: 64-bit, what every JSON reader keeps exact.
INT64 = (-(2**63), 2**63 - 1)
#: Dates are POSIX seconds up to the last second of year 9999 (what dates can show).
LAST_DATE = 253402300799.0
#: Text columns and their lengths.
TEXT_FIELDS = {"host": 255, "status": 20}

_KEY = re.compile(r"[0-9a-f]{16}")


def record_problems(record: Any, *, storable: bool = True) -> list[str]:
    """What is wrong with the exported cell ``record`` (empty when it can be trusted).

    With ``storable``, also the values that a results database (SQLite or PostgreSQL) cannot
    store alike: NUL characters and unpaired surrogates in text, integers beyond 64 bits,
    NaN and infinite numbers.
    """
    if not isinstance(record, dict):
        return [f"not an exported mixbench cell (a JSON object), got {type(record).__name__}"]
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        return [f"not an exported mixbench cell (missing {', '.join(missing)})"]
    problems = _field_problems(record)
    if storable:
        problems += _storable_problems(record, "")
    if problems:
        return problems
    return _config_problems(record)


def _field_problems(record: dict[str, Any]) -> list[str]:
    problems = []
    if not isinstance(record["key"], str) or not _KEY.fullmatch(record["key"]):
        problems.append(f"key must be 16 hexadecimal digits, got {_short(record['key'])}")
    for name in NAME_FIELDS:
        problem = name_problem(record[name], name)
        if problem:
            problems.append(problem)
    if not _is_int(record["seed"]) or not INT32[0] <= record["seed"] <= INT32[1]:
        problems.append(
            f"seed must be an integer from {INT32[0]} to {INT32[1]}, got {_short(record['seed'])}"
        )
    for name in ("params", "config", "metrics"):
        if not isinstance(record[name], dict):
            problems.append(f"{name} must be a JSON object, got {_short(record[name])}")
    for name in ("timings", "versions"):
        if record.get(name) is not None and not isinstance(record[name], dict):
            problems.append(f"{name} must be a JSON object or null, got {_short(record[name])}")
    for name, length in TEXT_FIELDS.items():
        value = record.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > length):
            problems.append(f"{name} must be text of at most {length} characters")
    if record.get("status", "done") != "done":
        problems.append(
            f"status must be 'done' (exports hold finished cells), got {_short(record['status'])}"
        )
    attempts = record.get("attempts")
    if attempts is not None and (not _is_int(attempts) or not 0 <= attempts <= INT32[1]):
        problems.append(f"attempts must be an integer >= 0, got {_short(attempts)}")
    for name in ("created_at", "started_at", "finished_at"):
        value = record.get(name)
        if value is not None and not _is_date(value):
            problems.append(
                f"{name} must be a date (POSIX seconds from 0 to {LAST_DATE:.0f}), "
                f"got {_short(value)}"
            )
    if isinstance(record["metrics"], dict):
        problems += _metrics_problems(record["metrics"])
    return problems


def _metrics_problems(metrics: dict[str, Any]) -> list[str]:
    """The shapes of the metrics that the status table and the leaderboard read."""
    problems = []
    top1 = metrics.get("top1")
    if top1 is not None and not _is_number(top1):
        problems.append(f"metrics.top1 must be a number, got {_short(top1)}")
    for name in ("data", "eval_settings"):
        if metrics.get(name) is not None and not isinstance(metrics[name], dict):
            problems.append(f"metrics.{name} must be a JSON object, got {_short(metrics[name])}")
    bins = metrics.get("reliability")
    if bins is not None and not (
        isinstance(bins, list)
        and all(
            isinstance(b, dict)
            and all(_is_number(b.get(k)) for k in ("lower", "upper"))
            and all(
                b.get(k) is None or _is_number(b[k]) for k in ("count", "confidence", "accuracy")
            )
            for b in bins
        )
    ):
        problems.append("metrics.reliability must be a list of bins (lower, upper, count, ...)")
    history = metrics.get("history")
    if history is not None and not (
        isinstance(history, list)
        and all(
            isinstance(p, dict)
            and _is_int(p.get("epoch"))
            and (p.get("top1") is None or _is_number(p["top1"]))
            for p in history
        )
    ):
        problems.append("metrics.history must be a list of {epoch, top1, ...} points")
    return problems


def _config_problems(record: dict[str, Any]) -> list[str]:
    """The config must be a cell configuration whose hash is the key, and agree with the
    record's own fields."""
    try:
        cell = from_dict(CellConfig, record["config"], "config")
    except UsageError as exc:
        return [str(exc)]
    except (TypeError, ValueError) as exc:  # e.g. a required field missing
        return [f"config is not a cell configuration ({exc})"]
    problems = []
    for name in (*NAME_FIELDS, "seed"):
        if getattr(cell, name) != record[name]:
            problems.append(
                f"{name} {_short(record[name])} differs from the config's "
                f"{_short(getattr(cell, name))}"
            )
    if to_dict(cell.params) != record["params"]:
        problems.append("params differ from the config's params")
    if re.search(r"[\x00-\x1f\x7f-\x9f`|]", cell.param_set):
        problems.append(
            f"config.param_set {_short(cell.param_set)} holds control characters, '`' or '|'"
        )
    if not problems and cell.key != record["key"]:
        problems.append(
            f"key {record['key']} is not the hash of its config ({cell.key}): the config was "
            "changed after export; export the cell again"
        )
    return problems


def _storable_problems(value: Any, where: str) -> list[str]:
    """Values of ``value`` (at ``where``) that SQLite and PostgreSQL do not both store."""
    if isinstance(value, str):
        if "\x00" in value:
            return [f"{where or 'a value'} holds a NUL character, which PostgreSQL cannot store"]
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return [f"{where or 'a value'} holds an unpaired surrogate (not valid UTF-8)"]
        return []
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            return [f"{where} is an integer beyond 64 bits, which the databases cannot store"]
        return []
    if isinstance(value, float):
        if not math.isfinite(value):
            return [f"{where} is {value!r}, which PostgreSQL cannot store in JSON; use null"]
        return []
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += _storable_problems(k, f"a key of {where or 'the record'}")
            out += _storable_problems(v, f"{where}.{k}" if where else str(k))
        return out
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _storable_problems(v, f"{where}[{i}]")]
    return [f"{where} is not a JSON value"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_date(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and 0 <= value <= LAST_DATE


__all__ = ["REQUIRED_FIELDS", "record_problems"]
