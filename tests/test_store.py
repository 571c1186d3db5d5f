"""The results store: idempotent inserts, exclusive claims, reclaiming abandoned cells."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mixbench.bench.run.cells import build_cells
from mixbench.bench.run.store import DONE, FAILED, RUNNING, ResultStore, redact_url, sqlite_url
from mixbench.config import load_preset
from mixbench.errors import UsageError


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
    # Pretend the holder was another process of this host that has exited.
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(proc.stdout)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE cells SET pid = ? WHERE key = ?", (dead_pid, key))
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
