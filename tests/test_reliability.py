"""Reliability: bad input changes nothing, crashes lose nothing, failures are contained."""

from __future__ import annotations

import hashlib
import json
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

from .conftest import TINY


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
            "control_name": control_name}  # fmt: skip


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
    ("run --out {out} --bogus", "unrecognized arguments"),
    ("run --out {out} --methods foo*", "no registered method matches the pattern 'foo*'"),
    ("run --out {out} --dry-run --models resnet50", "needs images of at least"),
    ("run --out {out} --plugin no_such_plugin_module", "cannot load plugin"),
    ("run --out {out} --set eval.options.ood.sizes=3", "unknown key 'sizes' in eval.options.ood"),
    ("run --out {out} --set eval.options.ood.in_subset=0", "in_subset must be >= 1"),
    ("run --out {out} --set eval.evaluators=['robustnes']", "unknown evaluator 'robustnes'"),
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
    env = dict(os.environ, PYTHONUNBUFFERED="1")
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
