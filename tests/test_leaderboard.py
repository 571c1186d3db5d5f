"""Leaderboard tables from stored cells: grouping, statistics, formatting, plots."""

from __future__ import annotations

import copy
import re
import statistics

from mixbench.config import load_preset, to_dict
from mixbench.leaderboard import build_tables, write_leaderboard
from mixbench.leaderboard.markdown import render_table


def _record(method, seed, top1, *, params=None, lr=0.1, preset="smoke"):
    matrix = load_preset("smoke")
    matrix.methods = [method]
    matrix.seeds = [seed]
    matrix.schedule.lr = lr
    matrix.name = preset
    if params:
        matrix.method_params = {method: params}
    cell = matrix.cells()[0]
    return {
        "key": cell.key,
        "preset": cell.preset,
        "method": method,
        "dataset": cell.dataset,
        "model": cell.model,
        "seed": seed,
        "params": cell.params,
        "config": to_dict(cell),
        "status": "done",
        "metrics": {"top1": top1, "nll": 1.0, "ece": 0.05, "oe": 0.01, "best_top1": top1},
        "timings": {"train_images_per_s": 1000.0},
        "versions": {"mixbench": "0.1.0", "torch": "2", "ignite": "0.5"},
        "host": "h",
        "finished_at": 1_700_000_000.0,
    }


def test_rows_per_method_and_params_never_pooled():
    records = [
        _record("erm", 0, 0.80),
        _record("erm", 1, 0.82),
        _record("mixup", 0, 0.85),
        _record("mixup", 1, 0.87),
        _record("mixup", 0, 0.70, params={"alpha": 0.2}),
    ]
    (table,) = build_tables(records)
    assert [(r.method, r.params.get("alpha"), r.seeds) for r in table.rows] == [
        ("erm", None, [0, 1]),
        ("mixup", 0.2, [0]),
        ("mixup", 1.0, [0, 1]),
    ]
    mixup = table.rows[2]
    assert abs(mixup.mean("top1") - 0.86) < 1e-12
    assert abs(mixup.std("top1") - statistics.stdev([0.85, 0.87])) < 1e-12
    text = render_table(table)
    assert re.search(r"`mixup` +\| alpha=1.0 ", text)
    assert "**86.00 ± 1.41**" in text  # best top-1 in bold
    assert "+5.00" in text  # 86.00 - 81.00 to ERM


def test_different_schedules_and_presets_give_separate_tables():
    records = [
        _record("erm", 0, 0.8),
        _record("erm", 0, 0.7, lr=0.05),
        _record("erm", 0, 0.6, preset="other"),
    ]
    tables = build_tables(records)
    assert len(tables) == 3
    assert len({t.schedule_key for t in tables}) == 2


def test_missing_values_are_dashes_not_zero():
    rec = _record("erm", 0, 0.8)
    del rec["metrics"]["ece"]
    (table,) = build_tables([rec])
    line = render_table(table).splitlines()[-1]
    assert "—" in line and "0.00" not in line.split("|")[8]


def test_written_leaderboard_is_deterministic(tmp_path):
    records = [_record("erm", 0, 0.8), _record("mixup", 0, 0.85)]
    write_leaderboard(copy.deepcopy(records), tmp_path / "a")
    write_leaderboard(copy.deepcopy(records), tmp_path / "b")
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "LEADERBOARD.md").read_text() == (b / "LEADERBOARD.md").read_text()
    pngs = sorted(p.name for p in (a / "plots").glob("*.png"))
    assert pngs and pngs == sorted(p.name for p in (b / "plots").glob("*.png"))
    for name in pngs:
        assert (a / "plots" / name).read_bytes() == (b / "plots" / name).read_bytes()
    text = (a / "LEADERBOARD.md").read_text()
    assert "2023-11-14" in text  # the stored finishing date, not today's
    assert f"]({'plots/'}" in text
