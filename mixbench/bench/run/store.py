"""The results store: one row per cell, in SQLite (default) or PostgreSQL, through SQLAlchemy.

A row holds the cell's resolved config and its hash (the primary key), its status
(``pending``, ``running``, ``done``, ``failed``, ``interrupted``), the metrics, timings,
software versions and host. Cells are claimed in a transaction so that several processes
sharing one database never run the same cell twice.

Each claim carries a token (column ``claim``): the claiming process's boot id and PID namespace and
a random part. The token, not the worker's name, says who holds a cell: a heartbeat or a
finish of a worker whose claim was taken over changes nothing (the heartbeat raises
:class:`ClaimLost`), and a process's PID is judged only by a process of the same boot and PID
namespace; elsewhere the heartbeat decides. The SQLite file is created readable by its owner
only (``mixbench.fileio``'s rule for private files).
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mixbench.config import CellConfig, to_dict
from mixbench.errors import UsageError
from mixbench.fileio import create_private_file

PENDING, RUNNING, DONE, FAILED, INTERRUPTED = "pending", "running", "done", "failed", "interrupted"
STATUSES = (PENDING, RUNNING, DONE, FAILED, INTERRUPTED)

#: JSON columns (SQLAlchemy's JSON type: a JSON document on PostgreSQL, JSON text on SQLite);
#: ``None`` is stored as SQL NULL.
_JSON = sa.JSON(none_as_null=True)

metadata = sa.MetaData()
cells_table = sa.Table(
    "cells",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("preset", sa.String(200), nullable=False),
    sa.Column("method", sa.String(200), nullable=False),
    sa.Column("dataset", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("params", _JSON, nullable=False),
    sa.Column("config", _JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("metrics", _JSON),
    sa.Column("timings", _JSON),
    sa.Column("versions", _JSON),
    sa.Column("host", sa.String(255)),
    sa.Column("worker", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("heartbeat", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("traceback", sa.Text),
    # Added later: databases made before it gain the column when opened (_add_claim_column).
    sa.Column("claim", sa.String(255)),
)

_JSON_COLUMNS = ("params", "config", "metrics", "timings", "versions")


@dataclass
class CellRecord:
    """One row of the store, JSON columns decoded."""

    key: str
    preset: str
    method: str
    dataset: str
    model: str
    seed: int
    params: dict[str, Any]
    config: dict[str, Any]
    status: str
    metrics: dict[str, Any] | None
    timings: dict[str, Any] | None
    versions: dict[str, Any] | None
    host: str | None
    worker: str | None
    pid: int | None
    attempts: int
    heartbeat: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    traceback: str | None
    #: The token of the claim that holds the cell (see the module docstring).
    claim: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> CellRecord:
        data = dict(row._mapping)
        for col in _JSON_COLUMNS:
            if isinstance(data[col], str):  # a PostgreSQL table made when these were text
                data[col] = json.loads(data[col]) if data[col] else None
        return cls(**data)


#: A query parameter that holds a secret (``password``, ``sslpassword``, ``passwd``, ``pwd``)
#: and its value, in the text of a URL.
_SECRET_QUERY = re.compile(r"(?i)([?&][^=&#]*(?:password|passwd|pwd)[^=&#]*=)[^&#]*")


#: Seconds without a heartbeat after which a running cell counts as abandoned (a worker beats
#: every 30 s or so, in training and in evaluation).
STALE_AFTER_SECONDS = 300.0


class ClaimLost(RuntimeError):
    """This worker no longer holds the cell it runs: another worker took it over (e.g. after
    judging it abandoned). The worker stops the cell and records nothing."""


@functools.cache
def process_identity() -> str:
    """``boot=<boot id> pidns=<PID namespace>`` of this process: two processes can judge each
    other's PIDs only when these are equal (empty parts where the system does not say)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"boot={boot} pidns={namespace}"


def new_claim_token() -> str:
    """A claim's token: this process's :func:`process_identity` and a random part."""
    return f"{process_identity()} {uuid.uuid4().hex}"


def redact_url(url: str) -> str:
    """The database URL with every password replaced by ``***`` (safe to print).

    The password of the user part and query parameters such as ``?password=`` are hidden; a
    URL that SQLAlchemy cannot parse, or that holds several ``@`` (an unencoded ``@`` in a
    password), shows nothing between ``://`` and its last ``@``.
    """
    parsed = parse_db_url(url)
    if parsed is None:
        if "://" not in url:
            return "<database url>"
        scheme, rest = url.split("://", 1)
        if "@" in rest:
            rest = "***" + rest[rest.rindex("@") :]
        return _SECRET_QUERY.sub(r"\1***", f"{scheme}://{rest}")
    return _SECRET_QUERY.sub(r"\1***", parsed.render_as_string(hide_password=True))


def check_db_url(url: str, what: str = "database") -> sa.engine.URL:
    """``url`` parsed; a malformed URL, or one whose password holds an unencoded ``@`` (which
    would send the password's tail to the server as a host name), is a :class:`UsageError`."""
    parsed = parse_db_url(url)
    if parsed is None:
        hint = " (percent-encode '@' in a password as %40)" if url.count("@") > 1 else ""
        raise UsageError(
            f"malformed {what} URL {redact_url(url)!r}{hint}: expected e.g. "
            "sqlite:///results.db or postgresql+psycopg://user@host/db"
        )
    return parsed


def scrub_url(text: str, url: str) -> str:
    """``text`` (e.g. a driver's error message) with the password and query secrets of
    ``url`` replaced by ``***``."""
    text = text.replace(url, redact_url(url))
    secrets: set[str] = set()
    parsed = parse_db_url(url)
    if parsed is not None:
        secrets.add(str(parsed.password or ""))
        for key, value in parsed.query.items():
            if _SECRET_QUERY.match(f"?{key}="):
                secrets.update([value] if isinstance(value, str) else value)
    secrets.discard("")
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def parse_db_url(url: str) -> sa.engine.URL | None:
    """SQLAlchemy's parse of ``url``; None when it fails or is ambiguous (an ``@`` left in the
    host: the password held an unencoded ``@``)."""
    try:
        parsed = sa.engine.make_url(url)
    except Exception:
        return None
    if "@" in (parsed.host or ""):
        return None
    return parsed


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{Path(path).resolve()}"


class ResultStore:
    """Cells and their results in one relational database."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = check_db_url(url)
        self.dialect = parsed.get_backend_name()
        #: key -> token of the claims this store made and still holds.
        self._claims: dict[str, str] = {}
        if self.dialect == "sqlite" and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            create_private_file(Path(parsed.database))
        try:
            self.engine: Engine = sa.create_engine(url, future=True, **self._engine_options())
        except Exception as exc:
            raise UsageError(
                f"cannot use database {redact_url(url)}: {scrub_url(str(exc), url)}"
            ) from None
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            sa.event.listen(self.engine, "begin", _sqlite_on_begin)
        try:
            self._create_tables()
            self._add_claim_column()
            if self.dialect == "sqlite":
                self._check_sqlite()
        except sa.exc.DBAPIError as exc:
            reason = scrub_url(str(exc.orig).splitlines()[0] if exc.orig else str(exc), url)
            self.engine.dispose()
            damaged = isinstance(exc, sa.exc.DatabaseError) and not isinstance(
                exc, sa.exc.OperationalError
            )
            if self.dialect == "sqlite" and damaged:
                raise UsageError(
                    f"database {redact_url(url)} is damaged ({reason}); move it aside and "
                    "rerun, or restore it from a backup or an export (mixbench import)"
                ) from None
            if isinstance(exc, sa.exc.OperationalError):
                raise UsageError(
                    f"cannot reach database {redact_url(url)}: {reason}; check the URL and the "
                    "server"
                ) from None
            raise UsageError(f"cannot use database {redact_url(url)}: {reason}") from None

    def _create_tables(self) -> None:
        # Several workers starting at once on a new PostgreSQL database race to create the
        # table; the losers see "already exists" and find it there on the next try.
        for attempt in range(5):
            try:
                metadata.create_all(self.engine)
                return
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _add_claim_column(self) -> None:
        # A database made before claims had tokens: add the column (NULL on old rows, which
        # keep the old rule: same host and a dead PID).
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns("cells")}
        if "claim" in columns:
            return
        exists = "IF NOT EXISTS " if self.dialect == "postgresql" else ""
        try:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE cells ADD COLUMN {exists}claim VARCHAR(255)")
        except sa.exc.OperationalError as exc:  # another worker added it first (SQLite)
            if "duplicate column" not in str(exc.orig):
                raise

    def _check_sqlite(self) -> None:
        # A truncated or overwritten file fails here, not in the middle of a command.
        with self.engine.connect() as conn:
            result = conn.exec_driver_sql("PRAGMA quick_check").scalar()
        if result != "ok":
            raise sa.exc.DatabaseError("PRAGMA quick_check", None, Exception(result))

    def _engine_options(self) -> dict[str, Any]:
        # JSON columns written with sorted keys: the stored text is canonical.
        serializer = {"json_serializer": functools.partial(json.dumps, sort_keys=True)}
        if self.dialect == "sqlite":
            return {"connect_args": {"timeout": 60, "isolation_level": None}, **serializer}
        return {"pool_pre_ping": True, **serializer}

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    # -- writing ------------------------------------------------------------------------
    def add_cells(self, cells: Iterable[CellConfig]) -> int:
        """Insert the cells not yet present as ``pending``; returns how many were added."""
        cells = list(cells)
        added = 0
        with self.engine.begin() as conn:
            existing = {
                r[0]
                for r in conn.execute(
                    sa.select(cells_table.c.key).where(
                        cells_table.c.key.in_([c.key for c in cells])
                    )
                )
            }
            now = time.time()
            for cell in cells:
                if cell.key in existing:
                    continue
                conn.execute(self._insert_ignore(_row_for(cell, now)))
                added += 1
        return added

    def _insert_ignore(self, values: dict[str, Any]) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            return insert(cells_table).values(**values).on_conflict_do_nothing()
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert

            return insert(cells_table).values(**values).on_conflict_do_nothing()
        return cells_table.insert().values(**values)

    def claim(
        self,
        keys: Iterable[str],
        worker: str,
        *,
        stale_after: float = STALE_AFTER_SECONDS,
        retry_failed: bool = False,
    ) -> CellRecord | None:
        """Atomically take the next runnable cell among ``keys``, or None.

        The claim is a compare-and-set: the row is updated only if its status and heartbeat
        are still what was read, so of several processes racing for a cell exactly one wins
        (PostgreSQL re-checks the condition after a concurrent update commits; SQLite takes the
        write lock at BEGIN IMMEDIATE), and the losers move on to the next cell.

        Runnable: pending or interrupted; running but abandoned (its process on this host, of
        this boot and PID namespace, is gone, or its heartbeat is older than ``stale_after``
        seconds); failed when ``retry_failed``. The claimed row becomes ``running`` for
        ``worker`` under a new claim token, which this store's heartbeat, finish, fail and
        interrupt of the cell then require.
        """
        keys = list(keys)
        host, pid = socket.gethostname(), os.getpid()
        token = new_claim_token()
        with self.engine.begin() as conn:
            query = (
                sa.select(cells_table)
                .where(cells_table.c.key.in_(keys))
                .where(cells_table.c.status != DONE)
            )
            rows = [CellRecord.from_row(r) for r in conn.execute(query)]
            order = {k: i for i, k in enumerate(keys)}
            rows.sort(key=lambda r: order[r.key])
            now = time.time()
            for row in rows:
                if not _runnable(row, now, host, stale_after, retry_failed):
                    continue
                result = conn.execute(
                    cells_table.update()
                    .where(cells_table.c.key == row.key)
                    .where(cells_table.c.status == row.status)
                    .where(
                        cells_table.c.heartbeat.is_(None)
                        if row.heartbeat is None
                        else cells_table.c.heartbeat == row.heartbeat
                    )
                    .values(
                        status=RUNNING,
                        worker=worker,
                        host=host,
                        pid=pid,
                        heartbeat=now,
                        started_at=now,
                        attempts=row.attempts + 1,
                        error=None,
                        traceback=None,
                        claim=token,
                    )
                )
                if result.rowcount == 1:
                    row.status, row.worker, row.attempts = RUNNING, worker, row.attempts + 1
                    row.host, row.pid, row.heartbeat, row.claim = host, pid, now, token
                    self._claims[row.key] = token
                    return row
        return None

    def _holder(self, key: str, worker: str) -> Any:
        """The condition "this worker, and the claim this store made, hold ``key``"."""
        condition = sa.and_(cells_table.c.key == key, cells_table.c.worker == worker)
        if key in self._claims:
            condition = sa.and_(condition, cells_table.c.claim == self._claims[key])
        return condition

    def heartbeat(self, key: str, worker: str) -> None:
        """Refresh the heartbeat of a cell this worker runs; :class:`ClaimLost` when it no
        longer holds it (another worker took it over)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                cells_table.update()
                .where(self._holder(key, worker))
                .where(cells_table.c.status == RUNNING)
                .values(heartbeat=time.time())
            )
        if result.rowcount != 1:  # the token stays: nothing this claim writes lands now
            raise ClaimLost(
                f"this worker ({worker}) lost its claim on cell {key}: another worker took it "
                "over; stopping it here without recording anything"
            )

    def finish(
        self,
        key: str,
        worker: str,
        *,
        metrics: dict[str, Any],
        timings: dict[str, Any],
        versions: dict[str, Any],
    ) -> bool:
        """Mark a cell done with its results, only if this worker's claim still holds it;
        returns whether it did."""
        return self._set(
            key,
            worker,
            status=DONE,
            metrics=metrics,
            timings=timings,
            versions=versions,
            finished_at=time.time(),
        )

    def fail(self, key: str, worker: str, error: str, traceback: str | None = None) -> bool:
        """Mark a cell failed with the reason and the traceback (if this worker holds it)."""
        return self._set(key, worker, status=FAILED, error=error, traceback=traceback)

    def interrupt(self, key: str, worker: str, reason: str = "interrupted") -> bool:
        """Mark a cell interrupted (it resumes from its checkpoint on the next run)."""
        return self._set(key, worker, status=INTERRUPTED, error=reason)

    def replace_timings(self, key: str, timings: dict[str, Any]) -> bool:
        """Replace a finished cell's timings with ``timings`` (a fresh measurement of the same
        result, see :mod:`mixbench.bench.run.verify`); returns whether a finished cell ``key``
        was there to update. Metrics, versions and dates stay as they were."""
        with self.engine.begin() as conn:
            result = conn.execute(
                cells_table.update()
                .where(cells_table.c.key == key, cells_table.c.status == DONE)
                .values(timings=timings)
            )
        return result.rowcount == 1

    def _set(self, key: str, worker: str, **values: Any) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                cells_table.update()
                .where(self._holder(key, worker))
                .values(heartbeat=time.time(), **values)
            )
        if result.rowcount != 1:
            return False
        self._claims.pop(key, None)
        return True

    def insert_record(self, record: dict[str, Any]) -> bool:
        """Insert a finished cell exported elsewhere; False if its key is already present."""
        return self.insert_records([record]) == 1

    def insert_records(self, records: Iterable[dict[str, Any]]) -> int:
        """Insert finished cells exported elsewhere in one transaction (all or none); cells
        whose key is already present are skipped. Returns how many were added."""
        added = 0
        with self.engine.begin() as conn:
            for record in records:
                values = dict(record)
                for col in _JSON_COLUMNS:
                    if isinstance(values.get(col), str):  # JSON text, as older exports held it
                        values[col] = json.loads(values[col])
                present = conn.execute(
                    sa.select(cells_table.c.key).where(cells_table.c.key == values["key"])
                ).first()
                if present is None:
                    conn.execute(self._insert_ignore(values))
                    added += 1
        return added

    # -- reading ------------------------------------------------------------------------
    def records(
        self, *, status: str | None = None, keys: Iterable[str] | None = None
    ) -> list[CellRecord]:
        """Rows, optionally filtered by status and key, in a stable order."""
        query = sa.select(cells_table)
        if status is not None:
            query = query.where(cells_table.c.status == status)
        if keys is not None:
            query = query.where(cells_table.c.key.in_(list(keys)))
        query = query.order_by(
            cells_table.c.preset,
            cells_table.c.dataset,
            cells_table.c.model,
            cells_table.c.method,
            cells_table.c.seed,
            cells_table.c.key,
        )
        with self.engine.connect() as conn:
            return [CellRecord.from_row(r) for r in conn.execute(query)]

    def __iter__(self) -> Iterator[CellRecord]:
        return iter(self.records())


def is_abandoned(
    row: CellRecord,
    *,
    now: float | None = None,
    host: str | None = None,
    stale_after: float = STALE_AFTER_SECONDS,
) -> bool:
    """Whether a ``running`` cell's worker is gone, so that the next claim takes the cell over:
    its process ran on ``host`` (default: this one), in this boot and PID namespace, and has
    exited; or its heartbeat is missing or older than ``stale_after`` seconds at ``now``."""
    if row.status != RUNNING:
        return False
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    if (
        row.host == host
        and row.pid is not None
        and _same_pid_namespace(row.claim)
        and not _pid_alive(row.pid)
    ):
        return True
    return row.heartbeat is None or now - row.heartbeat > stale_after


def _runnable(row: CellRecord, now: float, host: str, stale_after: float, retry: bool) -> bool:
    if row.status in (PENDING, INTERRUPTED):
        return True
    if row.status == FAILED:
        return retry
    return is_abandoned(row, now=now, host=host, stale_after=stale_after)


def _same_pid_namespace(claim: str | None) -> bool:
    """Whether the claim was made by a process of this boot and PID namespace, whose PID this
    process can therefore judge (a claim made before tokens existed: assumed so)."""
    if claim is None:
        return True
    return claim.rsplit(" ", 1)[0] == process_identity()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _row_for(cell: CellConfig, now: float) -> dict[str, Any]:
    return {
        "key": cell.key,
        "preset": cell.preset,
        "method": cell.method,
        "dataset": cell.dataset,
        "model": cell.model,
        "seed": cell.seed,
        "params": to_dict(cell.params),
        "config": to_dict(cell),
        "status": PENDING,
        "attempts": 0,
        "created_at": now,
    }


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    # Take the write lock at the start of every transaction: claims never interleave.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
