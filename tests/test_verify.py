"""``mixbench verify``: finished cells run again from scratch reproduce bit for bit; a changed
result is caught; ``--update-timings`` re-measures a reproduced cell only."""

from __future__ import annotations

import json
import sqlite3

import pytest

from mixbench.bench.run.store import ResultStore, sqlite_url
from mixbench.bench.run.verify import metric_differences, same_machine
from mixbench.cli import main

from .conftest import TINY


@pytest.fixture
def two_cells(tmp_path):
    """A finished run of ERM and mixup, one tiny cell each."""
    out = tmp_path / "run"
    argv = ["run", "--preset", "smoke", "--methods", "erm,mixup", *TINY, "--out", str(out)]
    assert main([*argv, "--no-leaderboard"]) == 0
    return out


def _records(out):
    store = ResultStore(sqlite_url(out / "results.db"))
    try:
        return {r.method: r for r in store.records()}
    finally:
        store.close()


def _set_column(out, key, column, value):
    with sqlite3.connect(out / "results.db") as conn:
        conn.execute(f"UPDATE cells SET {column} = ? WHERE key = ?", (json.dumps(value), key))


def test_finished_cells_run_again_are_identical_and_update_timings_replaces_only_timings(
    two_cells, capsys
):
    before = _records(two_cells)
    capsys.readouterr()
    assert main(["verify", "--out", str(two_cells), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("identical: 27 metrics equal bit for bit; train ") == 2, err
    assert err.count(" s CPU, ") == 4 and err.count(" s wall (stored: ") == 2, err
    assert "2 cells run again: 2 identical, 0 different" in err
    assert _records(two_cells)["erm"].timings == before["erm"].timings  # not asked to update

    args = ["verify", "--out", str(two_cells), "--methods", "mix*", "--update-timings"]
    assert main([*args, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "[1/1] mixup" in err and "timings updated" in err
    after = _records(two_cells)
    assert after["erm"].timings == before["erm"].timings  # not selected
    fresh, old = after["mixup"].timings, before["mixup"].timings
    assert fresh["remeasured_at"] > after["mixup"].finished_at  # measured after the result
    assert set(fresh) - {"remeasured_at"} == set(old) and fresh != old
    for column in ("metrics", "versions", "config", "finished_at", "status"):
        assert getattr(after["mixup"], column) == getattr(before["mixup"], column), column


def test_a_result_that_does_not_reproduce_is_named_exit_1_and_its_timings_are_kept(
    two_cells, capsys
):
    cell = _records(two_cells)["erm"]
    changed = dict(cell.metrics, top1=cell.metrics["top1"] + 1e-12)  # one bit off, about
    _set_column(two_cells, cell.key, "metrics", changed)
    capsys.readouterr()
    args = ["verify", "--out", str(two_cells), "--keys", cell.key[:6], "--update-timings"]
    assert main([*args, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "DIFFERENT: 1 of 27 metrics differ (top1)" in err
    assert "timings kept: the result did not reproduce" in err
    assert "1 cell run again: 0 identical, 1 different" in err
    assert _records(two_cells)["erm"].timings == cell.timings


def test_a_cell_that_fails_when_trained_again_counts_as_different(two_cells, capsys, monkeypatch):
    import mixbench.bench.run.verify as verify
    from mixbench.bench.train.engine import CellFailed

    def fails(record, **_):
        raise CellFailed("loss became NaN at epoch 1")

    monkeypatch.setattr(verify, "rerun_cell", fails)
    capsys.readouterr()
    assert main(["verify", "--out", str(two_cells), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("DIFFERENT: the cell failed when trained again: loss became NaN") == 2
    assert "2 cells run again: 0 identical, 2 different" in err


def test_timings_are_kept_when_the_machine_differs(two_cells, capsys):
    cell = _records(two_cells)["erm"]
    hardware = dict(cell.versions["hardware"], cpu="another CPU")
    _set_column(two_cells, cell.key, "versions", dict(cell.versions, hardware=hardware))
    capsys.readouterr()
    args = ["verify", "--out", str(two_cells), "--methods", "erm", "--update-timings"]
    assert main([*args, "--no-progress"]) == 0
    assert "timings kept: measured on another machine" in capsys.readouterr().err
    assert _records(two_cells)["erm"].timings == cell.timings


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("select nothing", "no finished cell in the database matches the filters"),
        ("config edited", "stored config hashes to"),
        ("method version", "cannot reproduce (run its preset again for version 1's cells)"),
    ],
)
def test_cells_that_cannot_be_verified_are_one_line_exit_2_before_any_training(
    two_cells, capsys, change, needle
):
    cell = _records(two_cells)["erm"]
    args = ["verify", "--out", str(two_cells), "--no-progress"]
    if change == "select nothing":
        args += ["--seeds", "7"]
    elif change == "config edited":
        _set_column(two_cells, cell.key, "config", dict(cell.config, seed=5))
    else:  # a cell of a later version of ERM, its key the hash of its config
        from mixbench.bench.run.cells import resolve_cell
        from mixbench.config import CellConfig, from_dict

        config = dict(cell.config, method_version=2)
        key = resolve_cell(from_dict(CellConfig, dict(config))).key
        _set_column(two_cells, cell.key, "config", config)
        with sqlite3.connect(two_cells / "results.db") as conn:
            conn.execute("UPDATE cells SET key = ? WHERE key = ?", (key, cell.key))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixbench: error: ") and err.count("\n") == 1, err
    assert needle in err and "identical" not in err


def test_metrics_compare_as_json_text_every_bit_and_nan_with_nan():
    stored = {"top1": 0.5, "nll": float("nan"), "history": [{"epoch": 1, "top1": 0.25}]}
    assert metric_differences(stored, dict(stored)) == []
    assert metric_differences(stored, {**stored, "top1": 0.5000000000000001}) == ["top1"]
    moved = {**stored, "history": [{"epoch": 1, "top1": 0.26}]}
    assert metric_differences(stored, moved) == ["history"]
    assert metric_differences(stored, {"top1": 0.5, "extra": 1}) == ["extra", "history", "nll"]


def test_same_machine_needs_the_processor_cpus_threads_and_gpu_to_agree():
    a = {"cpu": "AMD EPYC", "cpus": 2, "torch_threads": 1, "gpu": None, "gpus": 0}
    assert same_machine(a, dict(a))
    assert not same_machine(a, dict(a, torch_threads=2))
    assert not same_machine(a, dict(a, gpu="H100", gpus=1))
    assert not same_machine(a, None) and not same_machine({}, a)
