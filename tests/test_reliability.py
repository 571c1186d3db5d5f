"""Reliability: bad input changes nothing, crashes lose nothing, failures are contained."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from mixbench.cli import main

from .conftest import ROOT, TINY


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run: results.db and LEADERBOARD.md that bad input must not touch."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", "--preset", "smoke", "--methods", "erm", *TINY, "--out", str(out)]) == 0
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def _bad_layouts(tmp: Path) -> dict[str, Path]:
    wrong = tmp / "wrong-layout"
    (wrong / "images").mkdir(parents=True)
    empty = tmp / "empty-class"
    for cls in ("cat", "dog"):
        (empty / "train" / cls).mkdir(parents=True)
        (empty / "test" / cls).mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32), (255, 0, 0)).save(empty / "train" / "cat" / "0.png")
    Image.new("RGB", (32, 32), (255, 0, 0)).save(empty / "test" / "cat" / "0.png")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(empty / "test" / "dog" / "0.png")
    bad_preset = tmp / "bad.toml"
    bad_preset.write_text('methods = ["erm"]\n[schedule]\nepochz = 3\n')
    broken_preset = tmp / "broken.toml"
    broken_preset.write_text("[schedule\nepochs = 3\n")
    a_file = tmp / "a-file"
    a_file.write_text("not a folder")
    # Presets that include each other: a -> b -> a.
    (tmp / "cycle-a.toml").write_text(f'include = ["{tmp / "cycle-b.toml"}"]\n')
    (tmp / "cycle-b.toml").write_text(f'include = ["{tmp / "cycle-a.toml"}"]\n')
    control_name = tmp / "control.toml"  # a name PostgreSQL cannot store (NUL), SQLite can
    control_name.write_text(
        'name = "smoke\\u0000x"\nmethods = ["erm"]\n[schedule]\nepochs = 1\nbatch_size = 64\n'
        "[dataset_options.synthetic]\nn_train = 128\nn_test = 64\n"
        '[model_options.preactresnet18]\nwidth = 8\n[eval]\nevaluators = ["calibration"]\n'
    )
    return {"wrong": wrong, "empty": empty, "bad_preset": bad_preset,
            "broken_preset": broken_preset, "a_file": a_file, "cycle": tmp / "cycle-a.toml",
            "control_name": control_name, **_bad_records(tmp)}  # fmt: skip


def _committed_record() -> dict:
    """A real exported cell (the first of results/short-cifar10.jsonl)."""
    lines = (ROOT / "results" / "short-cifar10.jsonl").read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0])


def _rekeyed(record: dict, **config: object) -> dict:
    """``record`` with fields set in it and in its config alike, and its key recomputed: only
    what was set is wrong."""
    from mixbench.config import CellConfig, from_dict

    record = {**record, **config, "config": {**record["config"], **config}}
    record["key"] = from_dict(CellConfig, record["config"]).key
    return record


#: Exported cells with one thing wrong each: (file name, the bad record).
def _bad_record_cases() -> dict[str, dict]:
    good = _committed_record()
    tampered = {**good, "config": {**good["config"], "schedule": {**good["config"]["schedule"],
                                                                 "lr": 0.5}}}  # fmt: skip
    return {
        "metrics_list": {**good, "metrics": [0.9]},
        "params_text": {**good, "params": "alpha=1"},
        "seed_text": {**good, "seed": "one"},
        "config_list": {**good, "config": [good["config"]]},
        "created_text": {**good, "created_at": "yesterday"},
        "tampered": tampered,
        "evil_preset": _rekeyed(good, preset="../../../../elsewhere/evil"),
        "newline_model": _rekeyed(good, model="preactresnet18\n## injected"),
        "nul_method": _rekeyed(good, method="cutmix\x00"),
        "huge_seed": _rekeyed(good, seed=2**64),
        "wide_seed": _rekeyed(good, seed=2**40),
        "big_metric": {**good, "metrics": {**good["metrics"], "best_epoch": 2**70}},
        "nul_host": {**good, "host": "vm\x00"},
        "nan_metric": {**good, "metrics": {**good["metrics"], "nll": float("nan")}},
    }


def _bad_records(tmp: Path) -> dict[str, Path]:
    paths = {}
    for name, record in _bad_record_cases().items():
        paths[name] = tmp / f"{name}.jsonl"
        paths[name].write_text(json.dumps(record) + "\n", encoding="utf-8")
    return paths


# (arguments after `mixbench`, with {out} = the finished run's folder; expected text)
BAD_INPUTS = [
    ("run --out {out} --methods mixpu", "unknown method 'mixpu'"),
    ("run --out {out} --models resnet9000", "unknown model 'resnet9000'"),
    ("run --out {out} --datasets cifar1000", "unknown data set 'cifar1000'"),
    ("run --out {out} --preset nosuchpreset", "unknown preset 'nosuchpreset'"),
    ("run --out {out} --preset {bad_preset}", "unknown key 'epochz'"),
    ("run --out {out} --preset {broken_preset}", "not valid TOML"),
    ("run --out {out} --param mixup.alpha", "malformed --param"),
    ("run --out {out} --param mixup.alpha=abc", "must be of type float"),
    ("run --out {out} --param mixup.alpha=0", "must be > 0"),
    ("run --out {out} --param multimix.n=0", "'n' must be >= 1"),
    ("run --out {out} --param mixup.beta=1", "has no parameter 'beta'"),
    ("run --out {out} --epochs -1", "epochs must be >= 1"),
    ("run --out {out} --seeds a,b", "--seeds takes comma-separated integers"),
    ("run --out {out} --set schedule.lrr=1", "unknown key 'lrr'"),
    ("run --out {out} --datasets imagefolder", "--data-root"),
    ("run --out {out} --datasets imagefolder --data-root /nonexistent/mixbench", "/nonexistent"),
    ("run --out {out} --datasets imagefolder --data-root {wrong}", "train"),
    ("run --out {out} --datasets imagefolder --data-root {empty}", "dog"),
    ("run --out {out} --datasets cifar10 --data-root /nonexistent/mixbench", "--download"),
    ("run --out {out} --models resnet50", "needs images of at least"),
    ("run --out {out} --device cuda:7", "cuda"),
    ("run --out {out} --db postgresql+psycopg://u:secretpw@127.0.0.1:1/x", "cannot reach"),
    ("run --out {a_file}/sub", "cannot create output folder"),
    ("leaderboard --out /nonexistent/mixbench", "no results database"),
    ("status --out /nonexistent/mixbench", "no results database"),
    ("verify --out /nonexistent/mixbench", "no results database"),
    ("verify --out {out} --methods mixup", "no finished cell in the database matches"),
    ("run --out {out} --bogus", "unrecognized arguments"),
    ("run --out {out} --methods foo*", "no registered method matches the pattern 'foo*'"),
    ("run --out {out} --dry-run --models resnet50", "needs images of at least"),
    ("run --out {out} --plugin no_such_plugin_module", "cannot load plugin"),
    ("run --out {out} --set eval.options.ood.sizes=3", "unknown key 'sizes' in eval.options.ood"),
    ("run --out {out} --set eval.options.ood.in_subset=0", "in_subset must be >= 1"),
    ("run --out {out} --set eval.evaluators=['robustnes']", "unknown evaluator 'robustnes'"),
    # Exported cells with one thing wrong (issue 22: one bad record must not brick the database)
    ("import --out {out} {metrics_list}", "metrics must be a JSON object"),
    ("import --out {out} {params_text}", "params must be a JSON object"),
    ("import --out {out} {seed_text}", "seed must be an integer"),
    ("import --out {out} {config_list}", "config must be a JSON object"),
    ("import --out {out} {created_text}", "created_at must be a date"),
    ("import --out {out} {tampered}", "is not the hash of its config"),
    ("import --out {out} {evil_preset}", "preset '../../../../elsewhere/evil' is not a valid name"),
    ("leaderboard --out {out} --from {evil_preset}", "'../../../../elsewhere/evil'"),
    ("import --out {out} {newline_model}", "model 'preactresnet18\\n## injected' is not a"),
    ("import --out {out} {nul_method}", "method 'cutmix\\x00' is not a valid name"),
    ("import --out {out} {huge_seed}", "got 18446744073709551616"),
    ("import --out {out} {wide_seed}", "got 1099511627776"),
    ("import --out {out} {big_metric}", "best_epoch is an integer beyond 64 bits"),
    ("import --out {out} {nul_host}", "host holds a NUL character"),
    ("import --out {out} {nan_metric}", "metrics.nll is nan"),
    # Values that used to end in a traceback, or in failed cells, refused when the preset and
    # the command line are read (the same for SQLite and PostgreSQL). ``--methods erm`` keeps
    # them quick where an older mixbench trains them.
    ("run --out {out} --preset {cycle}", "presets include each other"),
    ("run --out {out} --preset {control_name}", "holds a control character"),
    ("run --out {out} --methods erm --set name=" + "x" * 201, "names have at most 200"),
    ("run --out {out} --methods erm --seeds 2147483648", "seed 2147483648 is not an integer"),
    ("run --out {out} --methods erm --seeds 0,-1", "seed -1 is not an integer in 0..2147483647"),
    (
        "run --out {out} --methods erm --set dataset_options.synthetic.n_train=many",
        "option 'n_train' must be of type int",
    ),
    (
        "run --out {out} --methods erm --set dataset_options.synthetic.n_train=1000000000000",
        "synthetic n_train=1000000000000 of 32x32 images is too large",
    ),
    ("run --out {out} --methods erm --set schedule.lr=nan", "lr must be a finite number > 0"),
    ("run --out {out} --methods erm --set schedule.lr=inf", "got inf"),
    ("run --out {out} --methods erm --set schedule.momentum=-0.9", "momentum must be a finite"),
    ("run --out {out} --methods erm --set schedule.weight_decay=-1e-4", "weight_decay must be"),
    (
        "run --out {out} --methods erm --set schedule.batch_size=512",
        "batch_size 512 is larger than the 256 training images of data set 'synthetic'",
    ),
    (
        "run --out {out} --methods erm --set eval.calibration_bins=100000",
        "calibration_bins must be in 1..10000",
    ),
]


@pytest.mark.parametrize(("template", "needle"), BAD_INPUTS, ids=[t for t, _ in BAD_INPUTS])
def test_bad_input_one_line_exit_2_and_nothing_changed(
    template, needle, finished_run, tmp_path, capsys
):
    paths = _bad_layouts(tmp_path)
    argv = template.format(out=finished_run, **paths).split()
    before = _snapshot(finished_run)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixbench: error: ") and err.count("\n") == 1, err
    assert needle in err
    assert "Traceback" not in err and "secretpw" not in err
    assert _snapshot(finished_run) == before


def test_at_least_fifteen_distinct_bad_inputs():
    assert len({needle for _, needle in BAD_INPUTS}) >= 15


@pytest.mark.slow
def test_sigkill_mid_cell_then_rerun_equals_an_uninterrupted_run(tmp_path):
    args = ["--preset", "smoke", "--methods", "manifold_mixup", *TINY, "--epochs", "3"]
    reference = tmp_path / "reference"
    assert main(["run", *args, "--out", str(reference)]) == 0

    out = tmp_path / "run"
    # The victim computes with as many threads as this process (conftest sets them), whatever
    # OMP_NUM_THREADS says: float sums over other thread counts differ in the last bits.
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    victim = subprocess.Popen(
        [sys.executable, "-m", "mixbench", "run", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 300
    while not list(out.glob("cells/*/checkpoint_1.pt")):
        assert time.time() < deadline and victim.poll() is None, "no checkpoint appeared"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert main(["run", *args, "--out", str(out)]) == 0

    def row(folder):
        con = sqlite3.connect(folder / "results.db")
        return con.execute("SELECT metrics, timings, attempts FROM cells").fetchall()

    ((resumed, timings, attempts),) = row(out)
    ((uninterrupted, _, _),) = row(reference)
    assert attempts == 2 and json.loads(timings)["resumed_from_epoch"] >= 1
    resumed, uninterrupted = json.loads(resumed), json.loads(uninterrupted)
    for name in ("top1", "nll", "ece", "oe", "history", "reliability"):
        assert resumed[name] == uninterrupted[name], name


@pytest.mark.slow
def test_sigterm_marks_the_cell_interrupted_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--preset", "smoke", "--methods", "erm", *TINY, "--epochs", "3",
            "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "mixbench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not list(out.glob("cells/*/checkpoint_1.pt")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "rerun the same command to resume" in err and "checkpoint_" in err
    status = sqlite3.connect(out / "results.db").execute("SELECT status FROM cells").fetchone()
    assert status in {("interrupted",), ("done",)}  # done if the signal came after the end
    assert main(args) == 0


def test_nan_cell_fails_with_reason_the_matrix_goes_on_and_retry(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--preset", "smoke", "--methods", "erm,mixup", *TINY, "--out", str(out),
            "--param", "mixup.alpha=1e-12"]  # fmt: skip
    # A learning rate that overflows makes every method's loss NaN at once.
    assert main([*args, "--set", "schedule.lr=1e30"]) == 1
    rows = dict(sqlite3.connect(out / "results.db").execute("SELECT method, status FROM cells"))
    assert rows == {"erm": "failed", "mixup": "failed"}
    capsys.readouterr()
    assert main(["status", "--out", str(out), "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)
    assert all("NaN" in c["error"] for c in cells)
    con = sqlite3.connect(out / "results.db")
    assert all("Traceback" in t for (t,) in con.execute("SELECT traceback FROM cells"))
    # Without --retry-failed the failed cells stay failed; with it they run again.
    assert main([*args, "--set", "schedule.lr=1e30"]) == 1
    attempts = [
        a for (a,) in sqlite3.connect(out / "results.db").execute("SELECT attempts FROM cells")
    ]
    assert attempts == [1, 1]
    assert main([*args, "--set", "schedule.lr=1e30", "--retry-failed"]) == 1
    attempts = [
        a for (a,) in sqlite3.connect(out / "results.db").execute("SELECT attempts FROM cells")
    ]
    assert attempts == [2, 2]


def test_truncated_checkpoint_restarts_with_a_warning(tmp_path):
    from mixbench.bench.train.engine import load_checkpoint

    folder = tmp_path / "cell"
    folder.mkdir()
    good = torch.nn.Linear(2, 2)
    from ignite.engine import Engine

    trainer = Engine(lambda e, b: None)
    trainer.run([0, 1], max_epochs=1)
    torch.save({"model": good.state_dict(), "trainer": trainer.state_dict()},
               folder / "checkpoint_1.pt")  # fmt: skip
    data = (folder / "checkpoint_1.pt").read_bytes()
    (folder / "checkpoint_2.pt").write_bytes(data[: len(data) // 2])
    target = torch.nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epoch = load_checkpoint(folder, {"model": target, "trainer": Engine(lambda e, b: None)})
    assert epoch == 1
    assert any("checkpoint_2.pt is unreadable" in str(w.message) for w in caught)
    assert (folder / "checkpoint_2.pt.corrupt").exists()
    assert torch.equal(target.weight, good.weight)


def test_checkpoints_load_with_weights_only(finished_run):
    (checkpoint,) = finished_run.glob("cells/*/checkpoint_*.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "trainer", "method", "progress"} <= set(state)


def test_database_password_never_reaches_results_or_output(tmp_path, capsys):
    out = tmp_path / "run"
    url = "sqlite:///" + str(out / "results.db")
    assert main(["run", "--preset", "smoke", "--methods", "erm", *TINY, "--out", str(out),
                 "--db", url]) == 0  # fmt: skip
    capsys.readouterr()
    from mixbench.bench.run.store import redact_url

    secret = "postgresql+psycopg://bob:hunter2@db.example:5432/bench"
    assert "hunter2" not in redact_url(secret)
    for path in out.rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes()


# -- imported records (issue 22) ---------------------------------------------------------------


def test_import_refuses_every_bad_line_with_one_line_each_and_commits_nothing(
    finished_run, tmp_path, capsys
):
    """A file with bad records among good ones: every bad line named on its own line, exit 2,
    and nothing of the files imported (not even the good records, nor another good file)."""
    cases = _bad_record_cases()
    good = _committed_record()
    mixed = tmp_path / "mixed.jsonl"
    lines = [good, cases["metrics_list"], cases["config_list"], cases["evil_preset"]]
    mixed.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    other_good = tmp_path / "good.jsonl"
    other_good.write_text(json.dumps(_committed_record()) + "\n", encoding="utf-8")
    before = _snapshot(finished_run)
    assert main(["import", str(other_good), str(mixed), "--out", str(finished_run)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert all(line.startswith("mixbench: error: ") for line in err)
    where = [line.removeprefix("mixbench: error: ").split(": ", 1)[0] for line in err]
    assert where == [f"{mixed}:{n}" for n in (2, 3, 4)], err
    assert "Traceback" not in "\n".join(err)
    assert _snapshot(finished_run) == before


def test_the_committed_results_import_and_their_keys_are_their_configs_hashes(tmp_path, capsys):
    from mixbench.bench.run.records import record_problems
    from mixbench.config import CellConfig, from_dict

    files = sorted((ROOT / "results").rglob("*.jsonl"))
    assert files
    keys = set()
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            assert from_dict(CellConfig, record["config"]).key == record["key"]
            assert record_problems(record) == [], (path, record["key"])
            if path.parent == ROOT / "results":  # results/retired/ is not imported
                keys.add(record["key"])
    out = tmp_path / "imported"
    assert main(["import", str(ROOT / "results"), "--out", str(out)]) == 0
    # Every committed cell of results/, each once (54 before the `long` pilot and campaign).
    assert f"imported {len(keys)} cells, skipped 0" in capsys.readouterr().err
    assert len(keys) >= 54
    assert main(["status", "--out", str(out)]) == 0
    assert main(["leaderboard", "--out", str(out)]) == 0


def test_records_one_backend_cannot_store_are_refused_alike_on_both(tmp_path, capsys):
    """A NUL in a name, a seed beyond PostgreSQL's 32-bit integers, NaN in JSON: SQLite could
    store them, PostgreSQL cannot; both refuse them up front with the same line."""
    pg = os.environ.get("MIXBENCH_TEST_POSTGRES_URL")
    if not pg:
        pytest.skip("no PostgreSQL server: set MIXBENCH_TEST_POSTGRES_URL (.ci/run starts one)")
    paths = _bad_records(tmp_path)
    for name in ("nul_method", "wide_seed", "huge_seed", "nan_metric", "nul_host", "big_metric"):
        errors = []
        for db in (f"sqlite:///{tmp_path / name}.db", pg):
            assert main(["import", str(paths[name]), "--db", db]) == 2, (name, db)
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "Traceback" not in err
            errors.append(err)
        assert errors[0] == errors[1]


def _small_cell(seed: int = 0, epochs: int = 3):
    """A cell of a few tiny steps per epoch, no evaluators (seconds to train)."""
    import dataclasses

    from mixbench.bench.perf.data import bench_cell
    from mixbench.config import ScheduleConfig

    cell = bench_cell(device="cpu", method="mixup", batch_size=8, steps_per_epoch=2,
                      width=4, image_size=32, num_classes=4)  # fmt: skip
    schedule = ScheduleConfig(epochs=epochs, batch_size=8, schedule="onecycle")
    return dataclasses.replace(cell, seed=seed, schedule=schedule)


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no except Exception catches it)."""


def _kill_while_writing_the_second_checkpoint(cell, folder, monkeypatch, half_written: bool):
    """Trains ``cell`` into ``folder`` until the second checkpoint is saved, and kills it there
    (the file half written, or not yet opened)."""
    from mixbench.bench.train.engine import train_cell

    real_save, saves = torch.save, []

    def save_then_die(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) == 2:
            if half_written and hasattr(f, "write"):  # ignite's DiskSaver passes an open file
                f.write(b"half")
            elif half_written:
                Path(f).write_bytes(b"half")
            raise _Killed
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(_Killed):
        train_cell(cell, folder)
    monkeypatch.setattr(torch, "save", real_save)


def test_a_kill_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path, monkeypatch):
    from mixbench.bench.train.engine import train_cell

    cell, folder = _small_cell(), tmp_path / "cell"
    _kill_while_writing_the_second_checkpoint(cell, folder, monkeypatch, half_written=True)
    assert [p.name for p in folder.glob("checkpoint_*.pt")] == ["checkpoint_1.pt"]
    result = train_cell(cell, folder)
    assert result.timings["resumed_from_epoch"] == 1
    assert [p.name for p in folder.glob("checkpoint_*.pt")] == ["checkpoint_3.pt"]


def test_a_resumed_cells_training_timings_cover_every_attempt(tmp_path, monkeypatch):
    """train_seconds and train_images add the killed attempt's epochs to the last one's, so a
    resumed cell reports the images of every epoch and the seconds they took."""
    from mixbench.bench.train.engine import train_cell

    cell = _small_cell()
    whole = train_cell(cell, tmp_path / "whole").timings
    folder = tmp_path / "cell"
    _kill_while_writing_the_second_checkpoint(cell, folder, monkeypatch, half_written=False)
    first = torch.load(folder / "checkpoint_1.pt", weights_only=False)["progress"]
    resumed = train_cell(cell, folder).timings
    assert resumed["resumed_from_epoch"] == 1
    assert 0 < first["train_images"] < resumed["train_images"] == whole["train_images"]
    assert 0 < first["train_seconds"] < resumed["train_seconds"]
    ratio = resumed["train_images"] / resumed["train_seconds"]
    assert resumed["train_images_per_s"] == pytest.approx(ratio)


def test_training_cpu_time_is_recorded_and_never_half_counted_after_a_resume(tmp_path):
    """The training process's CPU time is a timing of every cell, carried through a resume;
    a checkpoint written before it was measured leaves it unknown, never a part of it."""
    from mixbench.bench.train.engine import RunProgress, train_cell

    cell, folder = _small_cell(epochs=2), tmp_path / "cell"
    result = train_cell(cell, folder)
    cpu = result.timings["train_cpu_seconds"]
    assert 0 < cpu < math.inf
    saved = RunProgress()
    saved.train_cpu_seconds = 12.5
    resumed = RunProgress()
    resumed.load_state_dict(saved.state_dict())
    assert resumed.train_cpu_seconds == 12.5
    old = {k: v for k, v in saved.state_dict().items() if k != "train_cpu_seconds"}
    resumed.load_state_dict(old)
    assert resumed.train_cpu_seconds is None
    # A cell resumed from such a checkpoint reports no CPU time.
    checkpoint = folder / "checkpoint_1.pt"
    state = torch.load(folder / "checkpoint_2.pt", weights_only=False)
    state["progress"].pop("train_cpu_seconds")
    (folder / "checkpoint_2.pt").unlink()
    torch.save(state, checkpoint)
    again = train_cell(cell, folder)
    assert again.timings["resumed_from_epoch"] >= 1
    assert "train_cpu_seconds" not in again.timings


def test_a_cell_records_every_machine_that_trained_it(tmp_path, monkeypatch):
    """Timings are comparable within one machine only: a cell names the machine (as booted)
    of each attempt that trained an epoch, both where a resume moved it to another; a
    checkpoint written before machines were recorded leaves them unknown, never a part."""
    from mixbench.bench.train import engine
    from mixbench.bench.train.machine import machine_boot

    here = machine_boot()
    assert here == machine_boot() and len(here) == 12
    cell, folder = _small_cell(), tmp_path / "cell"
    assert engine.train_cell(cell, tmp_path / "whole").timings["train_machines"] == [here]
    _kill_while_writing_the_second_checkpoint(cell, folder, monkeypatch, half_written=False)
    monkeypatch.setattr(engine, "machine_boot", lambda: "another0boot")
    assert engine.train_cell(cell, folder).timings["train_machines"] == [here, "another0boot"]

    state = torch.load(folder / "checkpoint_3.pt", weights_only=False)
    state["progress"].pop("machines")
    (folder / "checkpoint_3.pt").unlink()
    torch.save(state, folder / "checkpoint_1.pt")
    assert engine.train_cell(cell, folder).timings["train_machines"] is None


def test_a_machine_without_a_boot_id_is_named_by_its_host(tmp_path, monkeypatch):
    from mixbench.bench.train import machine

    with_boot = machine.machine_boot()
    monkeypatch.setattr(machine, "BOOT_ID", tmp_path / "absent")
    by_host = machine.machine_boot()
    assert by_host == machine.machine_boot() and len(by_host) == 12
    if Path("/proc/sys/kernel/random/boot_id").exists():
        assert by_host != with_boot


def test_a_restart_deletes_temporaries_and_superseded_checkpoints(tmp_path):
    """A kill after the new checkpoint is complete but before the old one is deleted, and
    temporary files of writes killed midway (ours and ignite's): the next start cleans up."""
    from mixbench.bench.train.engine import train_cell

    cell, folder = _small_cell(epochs=2), tmp_path / "cell"
    train_cell(cell, folder)
    final = folder / "checkpoint_2.pt"
    (folder / "checkpoint_1.pt").write_bytes(final.read_bytes())  # superseded by epoch 2
    leftovers = [folder / ".checkpoint_3.pt.k2j4h5.tmp", folder / "tmpab12cd34",
                 folder / ".cell.json.x9y8z7.tmp"]  # fmt: skip
    for path in leftovers:
        path.write_bytes(b"partial")
    (folder / "notes.txt").write_text("kept")
    result = train_cell(cell, folder)
    assert result.timings["resumed_from_epoch"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["cell.json", "checkpoint_2.pt", "notes.txt"]


def test_a_checkpoint_of_another_cell_is_set_aside_with_a_warning(tmp_path):
    from mixbench.bench.train.engine import train_cell

    ours, theirs = _small_cell(seed=1, epochs=1), _small_cell(seed=0, epochs=1)
    train_cell(theirs, tmp_path / "theirs")
    folder = tmp_path / "ours"
    folder.mkdir()
    copied = folder / "checkpoint_1.pt"
    copied.write_bytes((tmp_path / "theirs" / "checkpoint_1.pt").read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_cell(ours, folder)
    assert result.timings["resumed_from_epoch"] == 0
    assert any(
        "checkpoint_1.pt is of another cell" in str(w.message) and theirs.key in str(w.message)
        for w in caught
    )
    assert (folder / "checkpoint_1.pt.foreign").exists()
    state = torch.load(folder / "checkpoint_1.pt", map_location="cpu", weights_only=True)
    assert state["cell"] == {"key": ours.key}


@pytest.mark.parametrize("lost_before", ["heartbeat", "finish"])
def test_a_worker_that_lost_its_claim_stops_and_says_so(tmp_path, capsys, monkeypatch, lost_before):
    """Mid-cell, another worker of the same name (same host name, same PID in its container)
    judges the cell abandoned and takes it over: this one's heartbeat stops it (or its finish
    does not land), it says so, and the cell stays the other's."""
    import mixbench.bench.train.engine as engine
    from mixbench.bench.run.store import ResultStore

    out = tmp_path / "run"
    real_train_cell = engine.train_cell
    other = []

    def taken_over(cell, workdir, *, heartbeat=None, **kwargs):
        with sqlite3.connect(out / "results.db") as conn:  # this worker looks gone
            conn.execute("UPDATE cells SET heartbeat = 0")
        other.append(ResultStore("sqlite:///" + str(out / "results.db")))
        assert other[0].claim([cell.key], "w", stale_after=60) is not None
        if lost_before == "heartbeat":
            heartbeat()
        return real_train_cell(cell, workdir, heartbeat=heartbeat, **kwargs)

    monkeypatch.setattr(engine, "train_cell", taken_over)
    args = ["run", "--preset", "smoke", "--methods", "erm", *TINY, "--out", str(out),
            "--worker-name", "w", "--no-leaderboard"]  # fmt: skip
    try:
        assert main(args) == 0
        err = capsys.readouterr().err
        assert "lost its claim" in err
        ((status, attempts, metrics),) = sqlite3.connect(out / "results.db").execute(
            "SELECT status, attempts, metrics FROM cells"
        )
        assert (status, attempts, metrics) == ("running", 2, None)
        other[0].finish(other[0].records()[0].key, "w", metrics={"top1": 0.5}, timings={},
                        versions={})  # fmt: skip
        assert other[0].records()[0].metrics == {"top1": 0.5}  # the holder's result lands
    finally:
        for store in other:
            store.close()


@pytest.mark.parametrize("damage", ["not-a-database", "truncated"])
@pytest.mark.parametrize("command", ["run", "status", "leaderboard", "export", "import"])
def test_a_damaged_sqlite_database_is_one_line_and_exit_2(
    finished_run, tmp_path, capsys, command, damage
):
    out = tmp_path / "run"
    out.mkdir()
    good = (finished_run / "results.db").read_bytes()
    damaged = b"these are not the bytes of a database\n" * 200
    if damage == "truncated":
        damaged = good[: len(good) // 2]
    (out / "results.db").write_bytes(damaged)
    exported = tmp_path / "cells.jsonl"
    assert main(["export", "--out", str(exported), "--db",
                 "sqlite:///" + str(finished_run / "results.db")]) == 0  # fmt: skip
    capsys.readouterr()
    argv = {
        "run": ["run", "--preset", "smoke", "--methods", "erm", *TINY, "--out", str(out)],
        "status": ["status", "--out", str(out)],
        "leaderboard": ["leaderboard", "--out", str(out)],
        "export": ["export", "--out", str(tmp_path / "x.jsonl"), "--db",
                   "sqlite:///" + str(out / "results.db")],
        "import": ["import", str(exported), "--out", str(out)],
    }[command]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "is damaged" in err and "results.db" in err
    assert (out / "results.db").read_bytes() == damaged


def test_results_checkpoints_and_exports_are_readable_by_their_owner_only(finished_run, tmp_path):
    import stat

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    exported = tmp_path / "cells.jsonl"
    assert main(["export", "--out", str(exported), "--db",
                 "sqlite:///" + str(finished_run / "results.db")]) == 0  # fmt: skip
    private = [finished_run / "results.db", exported,
               *finished_run.glob("cells/*/checkpoint_*.pt"),
               *finished_run.glob("cells/*/cell.json")]  # fmt: skip
    assert len(private) == 4  # one cell
    assert {str(p): mode(p) for p in private} == {str(p): 0o600 for p in private}
    umask = os.umask(0)
    os.umask(umask)
    assert mode(finished_run / "LEADERBOARD.md") == 0o666 & ~umask  # shared: as the umask says


def test_a_run_deletes_the_temporary_files_that_crashes_left(tmp_path, capsys):
    """Temporary files of atomic writes killed midway (a leaderboard, an export), older than
    any write lasts, are deleted by the next run in that folder; fresh ones (a write of
    another process in progress) are left alone."""
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".LEADERBOARD.md.a1b2c3.tmp", out / ".export.jsonl.d4e5f6.tmp"]
    fresh = out / ".LEADERBOARD.md.g7h8i9.tmp"
    for path in [*stale, fresh]:
        path.write_text("partial")
    for path in stale:
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    assert main(["run", "--preset", "smoke", "--methods", "erm", *TINY, "--out", str(out),
                 "--no-leaderboard"]) == 0  # fmt: skip
    assert [p.exists() for p in stale] == [False, False]
    assert fresh.exists()
