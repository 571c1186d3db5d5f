"""Where tuning studies live: optuna's RDB storage (SQLite or PostgreSQL) and study names."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage

from mixbench.bench.run.store import parse_db_url, redact_url, scrub_url
from mixbench.errors import UsageError

HEARTBEAT_SECONDS = 30  # a running trial's heartbeat; a silent one is failed after the grace
GRACE_SECONDS = 120

__all__ = ["create_storage", "default_storage_url", "open_storage", "study_name"]


def study_name(preset: str, dataset: str, model: str, method: str) -> str:
    """The study of one method on one data set and model: ``preset/dataset/model/method``."""
    return "/".join((preset, dataset, model, method))


def default_storage_url(out_dir: Path) -> str:
    """The default optuna storage of an output folder: SQLite ``DIR/tuning.db``."""
    from mixbench.bench.run.store import sqlite_url

    return sqlite_url(out_dir / "tuning.db")


def create_storage(url: str, attempts: int = 5) -> RDBStorage:
    """A new connection to optuna's RDB storage at ``url``, with trial heartbeats.

    Workers starting together on a fresh database race to create its tables; the losers
    retry once the winner is done.
    """
    import time

    import sqlalchemy as sa

    def connect() -> RDBStorage:
        with warnings.catch_warnings():  # the heartbeat arguments are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)

    for attempt in range(attempts - 1):
        try:
            return connect()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            time.sleep(0.2 * (attempt + 1))
    return connect()


@functools.lru_cache(maxsize=8)
def _cached_storage(url: str) -> RDBStorage:
    return create_storage(url)


def open_storage(url: str, *, must_exist: bool = False) -> RDBStorage:
    """optuna's RDB storage at ``url`` (SQLite file, PostgreSQL, ...), with trial heartbeats.

    With ``must_exist``, a SQLite file that is not there is a :class:`UsageError` instead of a
    new empty database.
    """
    parsed = parse_db_url(url)
    if parsed is None:
        hint = " (percent-encode '@' in a password as %40)" if url.count("@") > 1 else ""
        raise UsageError(
            f"malformed storage URL {redact_url(url)!r}{hint}: expected e.g. sqlite:///tuning.db "
            "or postgresql+psycopg://user@host/db"
        )
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if must_exist and not path.is_file():
            raise UsageError(
                f"no tuning storage at {path}: run `mixbench tune` first, or pass "
                "--tuning-storage URL"
            )
        if not path.parent.is_dir():
            raise UsageError(f"folder {path.parent} of the tuning storage does not exist")
    try:
        return _cached_storage(url)
    except Exception as exc:
        raise UsageError(
            f"cannot open tuning storage {redact_url(url)}: {type(exc).__name__}: "
            f"{scrub_url(str(exc).splitlines()[0], url) if str(exc) else ''}"
        ) from None
