"""Many workers on one matrix: SQLite and a real PostgreSQL server, crashes, launchers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mixbench.bench.run.store import ResultStore, sqlite_url

from .conftest import TINY, hand_cell_to_exited_process

PG_URL = os.environ.get("MIXBENCH_TEST_POSTGRES_URL")
MATRIX = ["--preset", "smoke", "--methods", "erm,mixup,cutmix", "--seeds", "0,1", *TINY]


def _fresh_pg_url() -> str:
    """A new, empty database on the test server (one per test)."""
    import sqlalchemy as sa

    name = f"mixbench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return PG_URL.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "shared.db")
    if not PG_URL:
        pytest.skip("no PostgreSQL server: set MIXBENCH_TEST_POSTGRES_URL (.ci/run starts one)")
    return _fresh_pg_url()


def _worker(args: list[str], name: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "mixbench", "worker", *args, "--worker-name", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _records(url):
    store = ResultStore(url)
    try:
        return store.records()
    finally:
        store.close()


@pytest.mark.slow
def test_parallel_workers_run_each_cell_exactly_once(db_url, tmp_path):
    args = [*MATRIX, "--db", db_url, "--out", str(tmp_path / "out")]
    procs = [_worker(args, f"w{i}") for i in range(3)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    records = _records(db_url)
    assert len(records) == 6
    assert all(r.status == "done" and r.attempts == 1 for r in records)
    ran = [int(err.rsplit("worker done: ", 1)[1].split()[0]) for _, err in outputs]
    assert sum(ran) == 6
    workers = {r.worker for r in records}
    assert workers <= {"w0", "w1", "w2"}
    assert len(workers) >= 2, "the cells were not shared between the workers"


@pytest.mark.slow
def test_killed_worker_loses_nothing(db_url, tmp_path):
    out = tmp_path / "out"
    args = ["--preset", "smoke", "--methods", "mixup", *TINY, "--epochs", "3",
            "--db", db_url, "--out", str(out)]  # fmt: skip
    victim = _worker(args, "victim")
    deadline = time.time() + 300
    while not list(out.glob("cells/*/checkpoint_1.pt")):
        assert time.time() < deadline and victim.poll() is None, "no checkpoint appeared"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (record,) = _records(db_url)
    assert record.status == "running" and record.worker == "victim"

    # Same host, dead process: the next worker reclaims the cell at once and resumes it.
    rescuer = _worker(args, "rescuer")
    _, err = rescuer.communicate(timeout=600)
    assert rescuer.returncode == 0, err
    (record,) = _records(db_url)
    assert record.status == "done" and record.worker == "rescuer" and record.attempts == 2
    assert record.timings["resumed_from_epoch"] >= 1
    assert [h["epoch"] for h in record.metrics["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_local_launcher_runs_the_matrix_and_writes_the_leaderboard(tmp_path):
    from mixbench.cli import main

    out = tmp_path / "out"
    code = main(["run", *MATRIX, "--out", str(out), "--launcher", "local", "--workers", "2"])
    assert code == 0
    records = _records(sqlite_url(out / "results.db"))
    assert len(records) == 6 and all(r.status == "done" and r.attempts == 1 for r in records)
    assert "| `cutmix`" in (out / "LEADERBOARD.md").read_text()


@pytest.mark.slow
def test_local_launcher_job_files_are_owner_only_and_hold_no_password(tmp_path, capsys):
    """The launcher's job files (pickled cells and results, logs) are written 0600 in a 0700
    folder; with PostgreSQL, neither the results database's password nor the tuning storage's
    reaches them or the output (issue 22)."""
    from mixbench.cli import main

    out = tmp_path / "out"
    db = sqlite_url(out / "results.db")
    extra = []
    if PG_URL:  # a password the server (trust authentication) ignores
        db = _fresh_pg_url().replace("://mixbench@", "://mixbench:hunter2@")
        extra = ["--param-set", "best", "--tuning-storage", db + "?password=hunter2"]
    code = main(["run", "--preset", "smoke", "--methods", "mixup", *TINY, "--out", str(out),
                 "--db", db, *extra, "--launcher", "local", "--workers", "1"])  # fmt: skip
    assert code == 0
    logs = out / "launcher-logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any(p.name.endswith("_submitted.pkl") for p in files)
    assert any(p.name.endswith("_result.pkl") for p in files)
    assert logs.stat().st_mode & 0o777 == 0o700
    for path in [*files, *(p for p in logs.rglob("*") if p.is_dir())]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
        if path.is_file():
            assert b"hunter2" not in path.read_bytes()
    assert "hunter2" not in "".join(capsys.readouterr())


@pytest.mark.slow
def test_local_launcher_exits_non_zero_when_a_cell_fails(tmp_path):
    from mixbench.cli import main

    out = tmp_path / "out"
    code = main(["run", "--preset", "smoke", "--methods", "erm", *TINY, "--out", str(out),
                 "--set", "schedule.lr=1e30", "--launcher", "local", "--workers", "1"])  # fmt: skip
    assert code == 1
    (record,) = _records(sqlite_url(out / "results.db"))
    assert record.status == "failed" and "NaN" in record.error


def _wrong_mixbench(folder: Path) -> Path:
    """A folder holding another ``mixbench/`` package, which fails when imported."""
    (folder / "mixbench").mkdir(parents=True)
    (folder / "mixbench" / "__init__.py").write_text("raise ImportError('the wrong mixbench')\n")
    return folder


def test_launched_python_imports_the_launching_mixbench_from_any_folder(tmp_path, monkeypatch):
    import mixbench
    from mixbench.bench.run.launch import same_package_environment

    monkeypatch.chdir(_wrong_mixbench(tmp_path))
    env = dict(os.environ, **same_package_environment())
    probe = "import mixbench, sys; sys.stdout.write(mixbench.__file__)"
    found = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert Path(found).resolve() == Path(mixbench.__file__).resolve()


@pytest.mark.slow
def test_local_launcher_workers_import_the_launching_mixbench(tmp_path, monkeypatch):
    from mixbench.cli import main

    monkeypatch.chdir(_wrong_mixbench(tmp_path / "checkout"))
    out = tmp_path / "out"
    code = main(["run", "--preset", "smoke", "--methods", "erm", *TINY, "--out", str(out),
                 "--no-leaderboard", "--launcher", "local", "--workers", "1"])  # fmt: skip
    assert code == 0
    (record,) = _records(sqlite_url(out / "results.db"))
    assert record.status == "done"


def test_status_json_lists_cells(tmp_path, capsys):
    from mixbench.cli import main

    out = tmp_path / "out"
    assert main(["run", "--preset", "smoke", "--methods", "erm", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["status", "--out", str(out), "--json"]) == 0
    (cell,) = json.loads(capsys.readouterr().out)
    assert {"key", "method", "dataset", "model", "seed", "status", "worker", "attempts",
            "metrics"} <= set(cell)  # fmt: skip
    assert cell["status"] == "done" and cell["attempts"] == 1
    assert 0 <= cell["metrics"]["top1"] <= 1


def test_status_names_each_cell_by_its_row_and_shows_the_epoch_it_has_reached(tmp_path, capsys):
    from mixbench.bench.run.cells import build_cells
    from mixbench.cli import main
    from mixbench.config import load_preset

    matrix = load_preset("smoke")
    matrix.seeds = [0]
    matrix.variants = [
        {"method": "erm"},
        {"method": "erm", "epochs_scale": 2},
        {"method": "multimix", "param_set": "ce"},
        {"method": "multimix", "params": {"alpha": 0.2}},
    ]
    cells = build_cells(matrix)
    out = tmp_path / "out"
    store = ResultStore(sqlite_url(out / "results.db"))
    try:
        store.add_cells(cells)
    finally:
        store.close()
    doubled = next(c for c in cells if c.epochs_scale == 2)
    folder = out / "cells" / doubled.key
    folder.mkdir(parents=True)
    (folder / "checkpoint_1.pt").write_bytes(b"")  # an interrupted cell's newest checkpoint
    (folder / "checkpoint_3.pt").write_bytes(b"")
    assert main(["status", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for label in ("erm ", "erm [2× epochs]", "multimix [ce]", "multimix [alpha=0.2]"):
        assert f"  {label}" in table
    epochs = 2 * matrix.schedule.epochs
    (line,) = [x for x in table.splitlines() if "2× epochs" in x]
    assert line.rstrip().endswith(f"epoch 3/{epochs}")
    assert main(["status", "--out", str(out), "--json"]) == 0
    by_label = {c["label"]: c for c in json.loads(capsys.readouterr().out)}
    assert set(by_label) == {"erm", "erm [2× epochs]", "multimix [ce]", "multimix [alpha=0.2]"}
    assert (by_label["erm [2× epochs]"]["epoch"], by_label["erm [2× epochs]"]["epochs"]) == (
        3,
        epochs,
    )
    assert by_label["erm"]["epoch"] is None and by_label["erm"]["epochs"] == epochs // 2


def test_status_marks_a_running_cell_whose_worker_is_gone(tmp_path, capsys):
    from mixbench.bench.run.cells import build_cells
    from mixbench.cli import main
    from mixbench.config import load_preset

    cells = build_cells(load_preset("smoke"))[:2]
    out = tmp_path / "out"
    store = ResultStore(sqlite_url(out / "results.db"))
    try:
        store.add_cells(cells)
        store.claim([cells[0].key], "w-alive")  # this process: alive, fresh heartbeat
        store.claim([cells[1].key], "w-gone")
        hand_cell_to_exited_process(store, cells[1].key)
    finally:
        store.close()
    assert main(["status", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    (alive_line,) = [x for x in text.splitlines() if cells[0].key in x]
    (gone_line,) = [x for x in text.splitlines() if cells[1].key in x]
    assert "on w-alive since" in alive_line and "abandoned" not in alive_line
    assert "abandoned by w-gone" in gone_line and "the next worker takes it over" in gone_line
    assert "2 running (1 abandoned: their workers are gone)" in text
    assert main(["status", "--out", str(out), "--json"]) == 0
    by_key = {c["key"]: c for c in json.loads(capsys.readouterr().out)}
    assert by_key[cells[0].key]["abandoned"] is False
    assert by_key[cells[1].key]["abandoned"] is True


def test_export_import_round_trip(tmp_path, capsys):
    from mixbench.cli import main

    out = tmp_path / "out"
    assert main(["run", "--preset", "smoke", "--methods", "erm,mixup", *TINY,
                 "--out", str(out)]) == 0  # fmt: skip
    exported = tmp_path / "cells.jsonl"
    assert main(["export", "--from", str(out), "--out", str(exported)]) == 0
    lines = exported.read_text().splitlines()
    assert len(lines) == 2
    cell = json.loads(lines[0])
    assert {"config", "metrics", "versions", "timings", "key"} <= set(cell)
    assert main(["export", "--from", str(out), "--out", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_text() == exported.read_text()

    other = tmp_path / "other"
    assert main(["import", str(exported), "--out", str(other)]) == 0
    assert main(["import", str(exported), "--out", str(other)]) == 0
    err = capsys.readouterr().err
    assert "imported 2 cells" in err and "imported 0 cells, skipped 2" in err
    records = _records(sqlite_url(other / "results.db"))
    assert sorted(r.method for r in records) == ["erm", "mixup"]
    # A rerun of the matrix into the imported database trains nothing.
    assert main(["run", "--preset", "smoke", "--methods", "erm,mixup", *TINY,
                 "--out", str(other)]) == 0  # fmt: skip
    assert "2 of 2 cells already done" in capsys.readouterr().err
    # The leaderboard built from the exported file equals the one from the database.
    assert main(["leaderboard", "--out", str(tmp_path / "from-file"), "--from", str(exported)]) == 0
    assert main(["leaderboard", "--out", str(other)]) == 0
    from_file = (tmp_path / "from-file" / "LEADERBOARD.md").read_text()
    assert from_file == (other / "LEADERBOARD.md").read_text()


def test_export_of_a_preset_that_includes_others_takes_their_cells(tmp_path, capsys):
    """``export --preset`` of a preset made of others (as ``long-pilot`` is of its three
    lengths) exports the cells stored under the included presets' names; a stored name that
    is no preset file exports its own cells."""
    from mixbench.cli import main

    base = 'datasets = ["synthetic"]\nmodels = ["preactresnet18"]\nseeds = [0]\n'
    parts = []
    for name, method in (("part-a", "erm"), ("part-b", "mixup")):
        path = tmp_path / f"{name}.toml"
        path.write_text(f'{base}methods = ["{method}"]\n')
        parts.append(str(path))
    whole = tmp_path / "whole.toml"
    whole.write_text(f"include = {json.dumps(parts)}\n")
    out = tmp_path / "out"
    assert main(["run", "--preset", str(whole), *TINY, "--out", str(out), "--no-leaderboard"]) == 0
    exported = tmp_path / "cells.jsonl"
    assert main(["export", "--from", str(out), "--preset", str(whole), "--out", str(exported)]) == 0
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert sorted((r["preset"], r["method"]) for r in lines) == [
        ("part-a", "erm"), ("part-b", "mixup"),
    ]  # fmt: skip
    assert main(["export", "--from", str(out), "--preset", "part-b", "--out", str(exported)]) == 0
    assert [json.loads(line)["method"] for line in exported.read_text().splitlines()] == ["mixup"]


def test_bad_import_file_names_the_line(tmp_path, capsys):
    from mixbench.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "x"}\nnot json\n')
    assert main(["import", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("mixbench: error: ") and "bad.jsonl:1: " in err
    assert "bad.jsonl:2: not valid JSON" in err and err.count("\n") == 2  # one line per bad line
    assert not Path(tmp_path / "o" / "results.db").exists()


def test_a_launched_job_runs_its_pickled_cells_against_the_database_of_the_environment(
    tmp_path, monkeypatch
):
    """What submitit runs in each job: the resolved cells (pickled, no command line rebuilt)
    and the database URL from the environment, never from the job's arguments."""
    import functools
    import pickle

    from mixbench.bench.run import DB_ENV
    from mixbench.bench.run.launch import run_worker
    from mixbench.cli import make_parser
    from mixbench.commands.matrices import all_cells

    args = make_parser().parse_args(["run", "--preset", "smoke", "--methods", "erm", *TINY])
    cells = all_cells(args)
    url = sqlite_url(tmp_path / "shared.db")
    job = functools.partial(run_worker, cells=cells, out_dir=tmp_path / "out")
    job = pickle.loads(pickle.dumps(job))
    assert url not in pickle.dumps(job).decode("latin-1")
    monkeypatch.setenv(DB_ENV, url)
    assert job(0) == 0
    (record,) = _records(url)
    assert record.status == "done" and record.key == cells[0].key
    assert not (tmp_path / "out" / "results.db").exists()


def test_status_estimates_the_work_left_from_the_pace_of_finished_cells():
    from mixbench.commands.status import describe_work_left, work_left

    def cell(label, method, status, *, epochs=10, epoch=None, train=None, evaluation=0.0):
        timings = {"train_seconds": train, "evaluators_seconds": evaluation} if train else None
        return {"label": label, "method": method, "status": status, "epoch": epoch,
                "epochs": epochs, "timings": timings}  # fmt: skip

    done = [
        cell("erm", "erm", "done", train=100.0, evaluation=5.0),  # 10 s per epoch
        cell("erm", "erm", "done", train=120.0, evaluation=7.0),  # 12 s per epoch
        cell("mixup", "mixup", "done", train=300.0, evaluation=3.0),  # 30 s per epoch
    ]
    assert work_left(done) is None  # nothing left
    left = [
        cell("erm", "erm", "pending"),  # 10 epochs at 11 s + 6 s
        cell("erm [2× epochs]", "erm", "running", epochs=20, epoch=15),  # its method's pace
        cell("mixup", "mixup", "running", epoch=9),  # 1 epoch at 30 s + 3 s
        cell("cutmix", "cutmix", "pending"),  # no cell of its own: the median, 12 s and 5 s
    ]
    seconds, unmatched = work_left(done + left)
    assert seconds == 110 + 6 + 5 * 11 + 6 + 30 + 3 + 10 * 12 + 5
    assert unmatched == 1
    text = describe_work_left((seconds, unmatched))
    assert text.startswith("about 0.1 h of work left for one worker at the finished cells' pace")
    assert "(1 cell of methods with no finished cell counted at the median pace" in text
    assert work_left(left) is None  # no finished cell: no pace to go by
