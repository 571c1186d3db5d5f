"""The command line end to end: smoke matrix, resume, plugins, leaderboard, bad input."""

from __future__ import annotations

import json
import sqlite3
import textwrap

import pytest

from mixbench.cli import main
from mixbench.config import load_preset
from mixbench.methods import list_methods

from .conftest import TINY, cnn_methods, run_cli


def _rows(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT method, status, metrics, config FROM cells").fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_smoke_matrix_trains_stores_and_leaderboards_every_method(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--out", str(out), *TINY]) == 0
    rows = _rows(out / "results.db")
    assert sorted(r[0] for r in rows) == cnn_methods()  # TransMix: skipped, needs a ViT
    assert all(r[1] == "done" for r in rows)
    for _, _, metrics, config in rows:
        m, c = json.loads(metrics), json.loads(config)
        assert 0.0 <= m["top1"] <= 1.0 and m["nll"] > 0 and 0 <= m["ece"] <= 1
        assert c["schedule"]["epochs"] == 1 and c["preset"] == "smoke"
    board = (out / "LEADERBOARD.md").read_text()
    for name in cnn_methods():
        assert f"| `{name}`" in board
    assert "Δ ERM" in board and "ECE" in board
    plots = list((out / "plots").glob("*.png"))
    assert plots and all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    checkpoints = list((out / "cells").glob("*/checkpoint_1.pt"))
    assert len(checkpoints) == len(cnn_methods())

    # The same command again trains nothing (no checkpoint written again, every cell said to be
    # done) and leaves the results as they were.
    before = _rows(out / "results.db")
    written = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["run", "--preset", "smoke", "--out", str(out), *TINY]) == 0
    assert _rows(out / "results.db") == before
    assert {p: p.stat().st_mtime_ns for p in written} == written
    err = capsys.readouterr().err
    n = len(cnn_methods())
    assert f"{n} of {n} cells already done: skipped" in err
    assert f"{n} cells: 0 run now, {n} already done, 0 failed" in err


@pytest.mark.slow
def test_interrupted_cell_resumes_from_checkpoint_bit_for_bit(tmp_path, monkeypatch):
    """A cell interrupted after epoch 1 of 2 resumes at epoch 2 and ends exactly as a run
    that was never interrupted."""
    from ignite.handlers import Checkpoint

    args = ["run", "--preset", "smoke", "--methods", "cutmix", *TINY, "--epochs", "2"]
    reference = tmp_path / "reference"
    assert main([*args, "--out", str(reference)]) == 0

    out = tmp_path / "run"
    original = Checkpoint.__call__

    def save_then_interrupt(self, engine):
        original(self, engine)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "__call__", save_then_interrupt)
    assert main([*args, "--out", str(out)]) == 130
    status = sqlite3.connect(out / "results.db").execute("SELECT status FROM cells").fetchone()
    assert status == ("interrupted",)
    monkeypatch.setattr(Checkpoint, "__call__", original)

    assert main([*args, "--out", str(out)]) == 0
    con = sqlite3.connect(out / "results.db")
    timings, metrics, attempts = con.execute(
        "SELECT timings, metrics, attempts FROM cells"
    ).fetchone()
    ref = sqlite3.connect(reference / "results.db").execute("SELECT metrics FROM cells").fetchone()
    assert json.loads(timings)["resumed_from_epoch"] == 1 and attempts == 2
    resumed, uninterrupted = json.loads(metrics), json.loads(ref[0])
    for name in ("top1", "nll", "ece", "history"):
        assert resumed[name] == uninterrupted[name], name


PLUGIN = textwrap.dedent(
    '''
    """An outside package adding a method through the mixbench.methods entry point group."""
    import torch.nn.functional as F

    from mixbench.methods import MixMethod


    class LabelSmoothing(MixMethod):
        """Label smoothing with epsilon 0.1, a plugin defined outside mixbench."""

        def loss(self, model, images, labels):
            return F.cross_entropy(model(images), labels, label_smoothing=0.1)
    '''
)


@pytest.mark.slow
def test_plugin_method_from_entry_point_is_trained_stored_and_listed(tmp_path):
    site = tmp_path / "site"
    (site / "mixplugin").mkdir(parents=True)
    (site / "mixplugin" / "__init__.py").write_text(PLUGIN)
    dist = site / "mixplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mixplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mixbench.methods]\nsmoothing = mixplugin:LabelSmoothing\n"
    )
    env = {"PYTHONPATH": str(site)}
    listed = run_cli("methods", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    info = {m["name"]: m for m in json.loads(listed.stdout)}
    assert info["smoothing"]["description"].startswith("Label smoothing with epsilon 0.1")
    assert info["smoothing"]["params"] == {}

    out = tmp_path / "run"
    proc = run_cli("run", "--out", str(out), "--methods", "smoothing,erm", *TINY, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r[0]: r for r in _rows(out / "results.db")}
    assert rows["smoothing"][1] == "done"
    assert 0 <= json.loads(rows["smoothing"][2])["top1"] <= 1
    assert "| `smoothing`" in (out / "LEADERBOARD.md").read_text()


def test_methods_json_lists_every_method_with_params(capsys):
    assert main(["methods", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in data]
    assert names == list_methods()
    mixup = next(m for m in data if m["name"] == "mixup")
    assert mixup["params"]["alpha"] == {
        "default": 1.0,
        "type": "float",
        "help": mixup["params"]["alpha"]["help"],
    }
    assert "1710.09412" in mixup["paper"]


def test_methods_table(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in list_methods():
        assert name in out


def test_dry_run_needs_no_data(capsys, tmp_path):
    assert (
        main(
            [
                "run",
                "--preset",
                "smoke",
                "--dry-run",
                "--data-root",
                str(tmp_path / "none"),
                "--seeds",
                "0,1",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = captured.out
    n = 2 * len(cnn_methods())
    assert "skipping method 'transmix' on model 'preactresnet18': TransMix needs a Vision" in (
        captured.err
    )
    smoke = load_preset("smoke")
    images = smoke.schedule.epochs * smoke.dataset_options["synthetic"]["n_train"]
    assert f"{n} cells, about {n * images:,} training images" in out


def test_unreadable_preset_file(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_text("x = 1")
    path.chmod(0)
    try:
        code = main(["run", "--preset", str(path), "--out", str(tmp_path / "o")])
    finally:
        path.chmod(0o644)
    err = capsys.readouterr().err
    assert code == 2
    # root can read anything: then the unknown key is what is refused.
    assert "cannot read preset file" in err or "unknown key 'x'" in err


def test_bad_input_through_the_console_gives_exit_2_without_traceback():
    proc = run_cli("run", "--methods", "nosuch")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_methods_json_shows_versions_and_the_ce_sets(capsys):
    assert main(["methods", "--json"]) == 0
    info = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    for name in ("multimix", "dense_multimix"):
        assert info[name]["params"]["clean_weight"]["default"] == 0.0
        assert info[name]["param_sets"]["ce"]["clean_weight"] == 1.0
        assert info[name]["version"] == 2 and "2" in info[name]["changes"]
    assert info["cutmix"]["version"] == 2 and info["erm"]["version"] == 1
    assert all(isinstance(m["version"], int) for m in info.values())
