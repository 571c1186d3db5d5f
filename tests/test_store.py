"""The results store: idempotent inserts, exclusive claims, reclaiming abandoned cells."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mixbench.bench.run.cells import build_cells
from mixbench.bench.run.store import DONE, FAILED, RUNNING, ResultStore, redact_url, sqlite_url
from mixbench.config import load_preset
from mixbench.errors import UsageError

from .conftest import hand_cell_to_exited_process


@pytest.fixture
def cells():
    return build_cells(load_preset("smoke"))[:3]


@pytest.fixture
def store(tmp_path):
    s = ResultStore(sqlite_url(tmp_path / "results.db"))
    yield s
    s.close()


def test_add_cells_is_idempotent(store, cells):
    assert store.add_cells(cells) == 3
    assert store.add_cells(cells) == 0
    records = store.records()
    assert sorted(r.key for r in records) == sorted(c.key for c in cells)
    assert all(r.status == "pending" for r in records)
    rec = next(r for r in records if r.key == cells[0].key)
    assert rec.config["method"] == cells[0].method
    assert rec.config["schedule"]["epochs"] == cells[0].schedule.epochs


def test_claims_are_exclusive_and_in_order(store, cells):
    store.add_cells(cells)
    keys = [c.key for c in cells]
    first = store.claim(keys, "w1")
    second = store.claim(keys, "w2")
    assert first.key == keys[0] and second.key == keys[1]
    assert first.status == RUNNING and first.attempts == 1
    store.finish(first.key, "w1", metrics={"top1": 0.5}, timings={}, versions={})
    # A worker that does not hold the cell cannot finish it.
    store.finish(second.key, "intruder", metrics={"top1": 1.0}, timings={}, versions={})
    third = store.claim(keys, "w1")
    assert third.key == keys[2]
    assert store.claim(keys, "w3") is None  # second is running and alive: not reclaimable
    done = store.records(status=DONE)
    assert [r.key for r in done] == [first.key]
    assert done[0].metrics == {"top1": 0.5}


def test_cell_of_dead_process_is_reclaimed(store, cells):
    store.add_cells(cells[:1])
    key = cells[0].key
    store.claim([key], "w1")
    hand_cell_to_exited_process(store, key)
    again = store.claim([key], "w2")
    assert again is not None and again.worker == "w2" and again.attempts == 2


def test_stale_heartbeat_is_reclaimed_and_failed_only_on_retry(store, cells):
    store.add_cells(cells[:1])
    key = cells[0].key
    store.claim([key], "w1")
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE cells SET host = 'elsewhere', heartbeat = 0 WHERE key = ?", (key,)
        )
    rec = store.claim([key], "w2")
    assert rec is not None
    store.fail(key, "w2", "boom", "Traceback ...")
    assert store.claim([key], "w3") is None
    failed = store.records(status=FAILED)[0]
    assert failed.error == "boom" and failed.traceback == "Traceback ..."
    assert store.claim([key], "w3", retry_failed=True).key == key


def test_is_abandoned_tells_a_live_worker_from_a_gone_one(store, cells):
    from mixbench.bench.run.store import STALE_AFTER_SECONDS, is_abandoned

    store.add_cells(cells[:2])
    live = store.claim([cells[0].key], "w1")
    assert not is_abandoned(live)  # this process holds it and has just beaten
    assert is_abandoned(live, now=live.heartbeat + STALE_AFTER_SECONDS + 1)  # silent too long
    elsewhere = store.claim([cells[1].key], "w2")
    elsewhere.host, elsewhere.pid = "another-host", 1
    assert not is_abandoned(elsewhere)  # another host's PID means nothing: its heartbeat is fresh
    assert is_abandoned(elsewhere, now=elsewhere.heartbeat + STALE_AFTER_SECONDS + 1)
    store.finish(live.key, "w1", metrics={}, timings={}, versions={})
    (done,) = store.records(status=DONE)
    assert not is_abandoned(done, now=1e12)  # only a running cell can be abandoned


def test_unreachable_database_and_redaction():
    with pytest.raises(UsageError, match="cannot reach database"):
        ResultStore("postgresql+psycopg://bob:secret@127.0.0.1:1/nowhere")
    assert "secret" not in redact_url("postgresql+psycopg://bob:secret@host/db")
    with pytest.raises(UsageError) as info:
        ResultStore("postgresql+psycopg://bob:secret@127.0.0.1:1/nowhere")
    assert "secret" not in str(info.value)


# Every form of a password in a database URL stays hidden (issue 22, item 5).
SECRET_URLS = [
    "postgresql+psycopg://bob:hunter2@db.example/bench",
    "postgresql+psycopg://bob@db.example/bench?password=hunter2&sslmode=require",
    "postgresql+psycopg://db.example/bench?user=bob&PASSWORD=hunter2",
    "postgresql+psycopg://bob@db.example/bench?sslpassword=hunter2",
    "postgresql+psycopg://bob:hun@ter2@db.example/bench",  # an unencoded '@' in the password
    "postgresql+psycopg://bob:hunter2@db.example:notaport/bench",  # unparseable
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_redaction_hides_every_form_of_password(url):
    shown = redact_url(url)
    assert "hunter2" not in shown and "ter2" not in shown and "***" in shown
    assert "db.example" in shown  # the rest of the URL still says where


def test_redaction_keeps_the_user_and_a_sqlite_path():
    assert redact_url("postgresql+psycopg://bob:s%40cret@host/db") == (
        "postgresql+psycopg://bob:***@host/db"
    )
    assert redact_url("sqlite:////tmp/results.db") == "sqlite:////tmp/results.db"


@pytest.mark.parametrize("url", SECRET_URLS)
def test_errors_about_a_database_url_never_show_its_password(url, capsys):
    from mixbench.cli import main

    assert main(["status", "--db", url.replace("db.example", "127.0.0.1:1")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixbench: error: ") and err.count("\n") == 1, err
    assert "hunter2" not in err and "ter2" not in err, err


def test_an_unencoded_at_in_a_password_is_refused_before_connecting():
    with pytest.raises(UsageError, match="percent-encode '@'") as info:
        ResultStore("postgresql+psycopg://bob:hun@ter2@127.0.0.1:1/nowhere")
    assert "ter2" not in str(info.value) and "hun" not in str(info.value)


def _unshare_pid_usable() -> str | None:
    """Why ``unshare --pid --fork`` cannot run here, or None when it can."""
    import os
    import shutil

    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if os.geteuid() != 0:
        return "a new PID namespace needs root (unshare --pid)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare --pid is refused here: {probe.stderr.decode().strip()}"
    return None


def test_a_worker_in_another_pid_namespace_leaves_a_live_cell_alone(store, cells, tmp_path):
    """Same host name, another PID namespace (a container on the host's network): the holder's
    PID means nothing there, so only the heartbeat may declare the cell abandoned."""
    reason = _unshare_pid_usable()
    if reason is not None:
        pytest.skip(reason)
    store.add_cells(cells[:1])
    key = cells[0].key
    assert store.claim([key], "w1") is not None  # held by this (live) process
    script = (
        "import json, os, sys\n"
        "from mixbench.bench.run.store import ResultStore\n"
        "store = ResultStore(sys.argv[1])\n"
        "record = store.claim([sys.argv[2]], 'w2')\n"
        "print(json.dumps({'pid': os.getpid(), 'claimed': record is not None}))\n"
    )
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", script, store.url, key],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["pid"] < 10  # it did run in a new PID namespace
    assert seen["claimed"] is False
    (record,) = store.records()
    assert record.status == RUNNING and record.worker == "w1" and record.attempts == 1


def test_a_worker_that_lost_its_claim_cannot_heartbeat_or_finish(tmp_path, cells):
    """Two processes with the same worker name (same host name, both PID 1 in their
    containers): only the claim that holds the cell may refresh or finish it."""
    url = sqlite_url(tmp_path / "results.db")
    first, second = ResultStore(url), ResultStore(url)
    try:
        first.add_cells(cells[:1])
        key = cells[0].key
        assert first.claim([key], "host:1") is not None
        with first.engine.begin() as conn:  # the first looks abandoned to the second
            conn.exec_driver_sql("UPDATE cells SET heartbeat = 0 WHERE key = ?", (key,))
        assert second.claim([key], "host:1") is not None
        with pytest.raises(RuntimeError, match="lost its claim"):  # store.ClaimLost
            first.heartbeat(key, "host:1")
        assert not first.finish(key, "host:1", metrics={"top1": 0.1}, timings={}, versions={})
        assert not first.fail(key, "host:1", "late failure")
        (record,) = first.records()
        assert record.status == RUNNING and record.metrics is None
        second.heartbeat(key, "host:1")
        assert second.finish(key, "host:1", metrics={"top1": 0.9}, timings={}, versions={})
        (record,) = first.records()
        assert record.status == DONE and record.metrics == {"top1": 0.9}
    finally:
        first.close()
        second.close()


def test_a_database_made_before_claim_tokens_opens_and_gains_the_column(tmp_path, cells):
    import sqlite3

    import sqlalchemy as sa

    from mixbench.bench.run.store import metadata

    path = tmp_path / "old.db"
    old = sa.MetaData()
    table = metadata.tables["cells"]
    columns = [
        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in table.columns
        if c.name != "claim"
    ]
    sa.Table("cells", old, *columns)
    engine = sa.create_engine(sqlite_url(path))
    old.create_all(engine)
    engine.dispose()
    store = ResultStore(sqlite_url(path))
    try:
        store.add_cells(cells[:1])
        record = store.claim([cells[0].key], "w1")
        assert record is not None and record.claim
        assert store.finish(record.key, "w1", metrics={"top1": 0.5}, timings={}, versions={})
    finally:
        store.close()
    names = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(cells)")]
    assert "claim" in names
    assert ResultStore(sqlite_url(path)).records()[0].status == DONE


def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path):
    import stat

    path = tmp_path / "sub" / "results.db"
    ResultStore(sqlite_url(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
