"""Leaderboard tables from stored cells: grouping, statistics, formatting, plots."""

from __future__ import annotations

import copy
import json
import re
import statistics

from mixbench.bench.run.cells import build_cells
from mixbench.config import load_preset, to_dict
from mixbench.leaderboard import build_tables, write_leaderboard
from mixbench.leaderboard.markdown import render_table
from mixbench.leaderboard.plots import row_labels
from mixbench.leaderboard.tables import confidence_gap

from .records import finished_record


def _record(method, seed, top1, *, params=None, lr=0.1, preset="smoke"):
    matrix = load_preset("smoke")
    matrix.methods = [method]
    matrix.seeds = [seed]
    matrix.schedule.lr = lr
    matrix.name = preset
    if params:
        matrix.method_params = {method: params}
    cell = build_cells(matrix)[0]
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


# ----------------------------------------------------------------------------- evaluators (issue 5)


def _bins(conf: float, acc: float, count: int) -> list[dict]:
    bins = []
    for k in range(15):
        lower, upper = k / 15, (k + 1) / 15
        inside = lower < conf <= upper
        bins.append(
            {
                "lower": lower,
                "upper": upper,
                "count": count if inside else 0,
                "confidence": conf if inside else None,
                "accuracy": acc if inside else None,
            }
        )
    return bins


SETTINGS = {
    "evaluators": ["calibration", "fgsm", "pgd", "generated_corruptions", "embedding"],
    "attack": {
        "fgsm_eps": 8 / 255,
        "pgd_eps": 8 / 255,
        "pgd_step_size": 2 / 255,
        "pgd_steps": 10,
        "examples": 2000,
        "amp": None,
    },
    "generated_corruptions": {
        "corruptions": ["contrast", "jpeg"],
        "severities": [1, 2, 3, 4, 5],
        "examples": 1000,
    },
    "official_corruptions": {"skipped": "CIFAR-10-C not found under /data"},
    "embedding": {"examples": 2048, "t": 2.0},
}


def _evaluated(method, seed, top1, *, fgsm, pgd, seconds, embedding=True):
    rec = _record(method, seed, top1)
    rec["metrics"].update(
        {
            "fgsm_top1": fgsm,
            "pgd_top1": pgd,
            "attack_clean_top1": top1,
            "corruption_generated_top1": top1 - 0.1,
            "corruption_official_note": "official corruptions skipped: CIFAR-10-C not found",
            "eval_settings": copy.deepcopy(SETTINGS),
            "reliability": _bins(0.9, top1, 100),
            "history": [{"epoch": 1, "top1": top1 / 2}, {"epoch": 2, "top1": top1}],
        }
    )
    if embedding:
        rec["metrics"].update({"alignment": 0.5 + seed, "uniformity": -2.0 - top1})
    rec["timings"]["train_seconds"] = seconds
    return rec


def _evaluated_records():
    return [
        _evaluated("erm", 0, 0.80, fgsm=0.10, pgd=0.02, seconds=10.0),
        _evaluated("erm", 1, 0.82, fgsm=0.12, pgd=0.04, seconds=12.0),
        _evaluated("mixup", 0, 0.85, fgsm=0.20, pgd=0.05, seconds=22.0),
    ]


def _cells(text: str, method: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = dict(zip(headers, (c.strip() for c in line.strip("|").split("|"))))
        if cells["method"] == f"`{method}`":
            return cells
    raise AssertionError(f"no row {method}")


def test_evaluator_columns_values_best_marks_and_cost_relative_to_erm():
    second_mixup = _evaluated("mixup", 1, 0.85, fgsm=0.20, pgd=0.05, seconds=22.0)
    second_mixup["metrics"]["alignment"] = 0.5  # as seed 0's: the means stay those of seed 0
    (table,) = build_tables([*_evaluated_records(), second_mixup])
    text = render_table(table)
    erm, mixup = _cells(text, "erm"), _cells(text, "mixup")
    assert erm["FGSM (%)"] == "11.00" and mixup["FGSM (%)"] == "**20.00**"
    assert erm["PGD (%)"] == "3.00" and mixup["PGD (%)"] == "**5.00**"
    assert mixup["corr. generated (%)"] == "**75.00**"
    # No official numbers anywhere: a dash, never zero; the generated ones in their own column.
    assert erm["corr. official (%)"] == "—" and mixup["corr. official (%)"] == "—"
    assert erm["cost ×ERM"] == "**1.00**" and mixup["cost ×ERM"] == "2.00"  # 22 s / 11 s
    assert erm["align."] == "1.000"  # mean of 0.5 and 1.5 over the seeds
    assert mixup["unif."] == "**-2.850**"  # lower is more uniform
    assert mixup["align."] == "**0.500**"  # lower is tighter


def test_alignment_columns_only_where_present_and_missing_values_are_dashes():
    records = [
        _evaluated("erm", 0, 0.8, fgsm=0.1, pgd=0.0, seconds=5.0, embedding=False),
        _record("mixup", 0, 0.85),  # a cell stored before the evaluators existed
    ]
    (table,) = build_tables(records)
    text = render_table(table)
    assert "align." not in text and "unif." not in text
    mixup = _cells(text, "mixup")
    for header in ("FGSM (%)", "PGD (%)", "corr. official (%)", "corr. generated (%)", "cost ×ERM"):
        assert mixup[header] == "—", header
    assert _cells(text, "erm")["PGD (%)"] == "0.00"  # a measured zero stays a zero


def test_legend_states_attack_and_corruption_settings_from_the_stored_results(tmp_path):
    write_leaderboard(_evaluated_records(), tmp_path)
    text = (tmp_path / "LEADERBOARD.md").read_text()
    assert "FGSM eps 8/255; PGD eps 8/255, step 2/255, 10 steps from a random start" in text
    assert "on 2,000 test images" in text
    assert "*generated* corruptions" in text and "not the official benchmark" in text
    assert "contrast, jpeg at severities 1–5 on 1,000 test images" in text
    assert "- official corruptions skipped: CIFAR-10-C not found" in text
    assert "2,048 test images, t = 2" in text
    assert "15 equal-width bins" in text
    assert "conf. − acc.: mean confidence (top softmax probability) minus accuracy" in text


def test_every_plot_is_written_top1_first_and_deterministic(tmp_path):
    records = _evaluated_records()
    write_leaderboard(copy.deepcopy(records), tmp_path / "a")
    write_leaderboard(copy.deepcopy(records[::-1]), tmp_path / "b")  # another order: same bytes
    text = (tmp_path / "a" / "LEADERBOARD.md").read_text()
    links = re.findall(r"\]\((plots/[^)]+)\)", text)
    kinds = [link.rsplit("-", 1)[-1] for link in links]
    assert kinds == ["top1.png", "reliability.png", "robustness.png", "cost.png", "curves.png"]
    for link in links:
        a, b = (tmp_path / "a" / link).read_bytes(), (tmp_path / "b" / link).read_bytes()
        assert a[:4] == b"\x89PNG" and a == b, link
    assert text == (tmp_path / "b" / "LEADERBOARD.md").read_text()


def test_plots_without_their_data_are_left_out(tmp_path):
    write_leaderboard([_record("erm", 0, 0.8)], tmp_path)
    names = sorted(p.name.rsplit("-", 1)[-1] for p in (tmp_path / "plots").glob("*.png"))
    assert names == ["top1.png"]


def test_pooled_reliability_bins_and_learning_curve():
    (table,) = build_tables(_evaluated_records())
    erm = table.rows[0]
    (filled,) = [b for b in erm.reliability_bins() if b["count"]]
    assert filled["count"] == 200 and abs(filled["accuracy"] - 0.81) < 1e-12
    assert abs(filled["confidence"] - 0.9) < 1e-12
    assert erm.curve() == [(1, 0.405), (2, 0.81)]


def test_confidence_gap_is_signed_and_weighted_by_the_bin_counts():
    bins = _bins(0.9, 0.8, 300) + _bins(0.3, 0.6, 100)  # 300 overconfident, 100 under
    # (300 * 0.9 + 100 * 0.3) / 400 - (300 * 0.8 + 100 * 0.6) / 400 = 0.75 - 0.75 = 0
    assert abs(confidence_gap(bins)) < 1e-12
    assert abs(confidence_gap(_bins(0.6, 0.75, 50)) - (-0.15)) < 1e-12
    assert confidence_gap(_bins(0.6, 0.75, 0)) is None  # no example in any bin


def test_confidence_gap_column_tells_under_from_overconfidence():
    records = _evaluated_records()
    records[2]["metrics"]["reliability"] = _bins(0.65, 0.85, 100)  # mixup: underconfident
    records.append(_record("cutmix", 0, 0.8))  # stored without reliability bins
    (table,) = build_tables(records)
    text = render_table(table)
    # ERM: confidence 0.9 against accuracies 0.80 and 0.82 (pooled: 0.81); never marked best.
    assert _cells(text, "erm")["conf. − acc. (pp)"] == "+9.00"
    assert _cells(text, "mixup")["conf. − acc. (pp)"] == "-20.00"
    assert _cells(text, "cutmix")["conf. − acc. (pp)"] == "—"
    assert "**" not in "".join(_cells(text, m)["conf. − acc. (pp)"] for m in ("erm", "mixup"))
    (bare,) = build_tables([_record("erm", 0, 0.8), _record("mixup", 0, 0.85)])
    assert "conf. − acc." not in render_table(bare)  # no bins anywhere: no column


def test_fractions_of_255():
    from mixbench.bench.evaluators.builtin.adversarial import fraction_of_255

    assert fraction_of_255(8 / 255) == "8/255"
    assert fraction_of_255(0.5 / 255) == "0.5/255"
    assert fraction_of_255(0.01) == "0.01"


def test_rows_say_whether_parameters_were_tuned():
    from mixbench.leaderboard.markdown import describe_params

    default = _record("mixup", 0, 0.8)
    tuned = _record("mixup", 0, 0.82, params={"alpha": 0.3})
    tuned["config"]["param_set"] = "best:smoke/synthetic/preactresnet18/mixup"
    (table,) = build_tables([default, tuned])
    texts = [describe_params(r) for r in table.rows]
    assert texts[0] == "alpha=0.3 (tuned: study `smoke/synthetic/preactresnet18/mixup`)"
    assert texts[1] == "alpha=1.0"
    assert "(tuned: study" in render_table(table)


def test_plot_labels_are_the_rows_names_in_the_table_and_never_collide():
    from mixbench.leaderboard.markdown import method_label

    base = {"alpha": 1.0, "m": 0, "clean_weight": 0.0}
    ce = _record("multimix", 0, 0.78, params={**base, "clean_weight": 1.0})
    ce["config"]["param_set"] = "ce"
    old = _record("cutmix", 0, 0.77)
    old["config"]["method_version"] = 1  # an exported cell of version 1
    old["key"] = "old-version-cell"
    doubled = _record("erm", 0, 0.81)
    doubled["config"]["epochs_scale"] = 2  # the equal-compute reference
    doubled["key"] = "doubled"
    records = [
        _record("erm", 0, 0.80),
        doubled,
        _record("cutmix", 0, 0.79),
        old,
        _record("multimix", 0, 0.70, params=base),
        _record("multimix", 0, 0.75, params={**base, "alpha": 0.2}),
        _record("multimix", 0, 0.78, params={**base, "clean_weight": 0.5}),
        _record("multimix", 1, 0.79, params={**base, "clean_weight": 0.5}),
        ce,
    ]
    (table,) = build_tables(records)
    labels = row_labels(table)
    assert labels == [method_label(r, code=False) for r in table.rows]
    means = dict(zip(labels, (r.mean("top1") for r in table.rows)))
    assert len(means) == len(table.rows)  # no two rows share a label
    assert set(means) == {
        "erm",
        "erm [2× epochs]",
        "cutmix",
        "cutmix v1",
        "multimix",
        "multimix [alpha=0.2]",
        "multimix [clean_weight=0.5]",
        "multimix [ce]",
    }
    assert abs(means["multimix [clean_weight=0.5]"] - 0.785) < 1e-12
    assert abs(means["multimix [ce]"] - 0.78) < 1e-12
    assert abs(means["multimix"] - 0.70) < 1e-12
    assert abs(means["erm [2× epochs]"] - 0.81) < 1e-12


# ----------------------------------------------------------------------------- reading the page


def _body_methods(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.startswith("|")][2:]
    return [[c.strip() for c in line.strip("|").split("|")][1] for line in lines]


def test_rows_are_ranked_by_top1_with_a_rank_column():
    records = [
        _record("cutmix", 0, 0.81),
        _record("erm", 0, 0.80),
        _record("mixup", 0, 0.86),
        _record("alignmixup", 0, 0.83),
    ]
    (table,) = build_tables(records)
    text = render_table(table)
    assert _body_methods(text) == ["`mixup`", "`alignmixup`", "`cutmix`", "`erm`"]
    assert [_cells(text, m)["#"] for m in ("mixup", "alignmixup", "cutmix", "erm")] == [
        "1", "2", "3", "4",
    ]  # fmt: skip


def test_one_seed_rows_are_never_marked_best():
    """A one-seed lead (the smoke table's "+17.60 pp") is noise: nothing bold."""
    one_seed = [_record("erm", 0, 0.60), _record("mixup", 0, 0.78), _record("cutmix", 0, 0.7)]
    (table,) = build_tables(one_seed)
    assert "**" not in render_table(table)
    # With several seeds the best of them is bold; a one-seed row beside them is not.
    several = [
        _record("erm", 0, 0.80), _record("erm", 1, 0.80),
        _record("mixup", 0, 0.84), _record("mixup", 1, 0.86),
        _record("cutmix", 0, 0.95),
    ]  # fmt: skip
    (table,) = build_tables(several)
    text = render_table(table)
    assert _cells(text, "mixup")["top-1 (%)"] == "**85.00 ± 1.41**"
    assert _cells(text, "cutmix")["top-1 (%)"] == "95.00"


def test_smoke_tables_say_their_numbers_only_check_the_path(tmp_path):
    write_leaderboard([_record("erm", 0, 0.6), _record("mixup", 0, 0.78)], tmp_path)
    text = (tmp_path / "LEADERBOARD.md").read_text()
    assert "These numbers only check the path; they compare nothing." in text
    # two of the smoke preset's planned cells: the contents line says both
    assert re.search(r"3 epochs \(checks the path only; 2 of \d+ planned cells\)", text)
    assert "Short CPU runs" not in text  # the path notice replaces the short-run warning


def test_tuned_values_are_rounded_for_display():
    from mixbench.leaderboard.markdown import format_params

    assert format_params({"alpha": 0.37512049, "prob": 0.5, "n": 1000}) == (
        "alpha=0.3751, n=1000, prob=0.5"
    )
    assert format_params({"alpha": 1.0, "size": (8, 8)}) == "alpha=1.0, size=(8,8)"
    assert format_params({"lr": 1.23456e-05}) == "lr=1.235e-05"


def test_paper_reference_only_where_its_data_set_is_on_the_page(tmp_path):
    write_leaderboard([_record("erm", 0, 0.6)], tmp_path)  # synthetic data only
    assert "Paper reference" not in (tmp_path / "LEADERBOARD.md").read_text()


def _captured_figures(monkeypatch) -> list:
    from mixbench.leaderboard import plots

    figures: list = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    return figures


def test_top1_bars_start_at_zero_best_first_with_the_erm_line(monkeypatch, tmp_path):
    from mixbench.leaderboard.plots import top1_bar_chart

    figures = _captured_figures(monkeypatch)
    records = [_record("erm", 0, 0.80), _record("mixup", 0, 0.86), _record("cutmix", 0, 0.70)]
    (table,) = build_tables(records)
    top1_bar_chart(table, tmp_path / "x.png")
    (ax,) = figures[0].axes
    assert ax.get_xlim()[0] == 0
    # barh draws bottom-up: the last tick is the top bar, the best row.
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cutmix", "erm", "mixup"]
    assert any(t.get_text().strip() == "ERM" for t in ax.texts)
    assert "mean ± standard deviation over seeds" in ax.get_xlabel()


def test_top1_bars_of_equal_means_are_ordered_by_name_whatever_their_seeds(monkeypatch, tmp_path):
    """A one-seed row has no standard deviation; a tie with a two-seed row once raised."""
    from mixbench.leaderboard.plots import top1_bar_chart

    figures = _captured_figures(monkeypatch)
    records = [_record("mixup", 0, 0.80), _record("erm", 0, 0.80), _record("erm", 1, 0.80)]
    (table,) = build_tables(records)
    top1_bar_chart(table, tmp_path / "x.png")
    (ax,) = figures[0].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["erm", "mixup"]


def test_scatter_plots_name_rows_in_a_legend_and_the_cost_axis_names_the_hardware(
    monkeypatch, tmp_path
):
    from mixbench.leaderboard.plots import accuracy_vs_cost, accuracy_vs_robustness

    figures = _captured_figures(monkeypatch)
    records = _evaluated_records()
    for rec in records:
        rec["versions"]["hardware"] = {"cpu": "Test CPU", "cpus": 2, "torch_threads": 2}
    (table,) = build_tables(records)
    assert accuracy_vs_robustness(table, tmp_path / "r.png")
    assert accuracy_vs_cost(table, tmp_path / "c.png")
    robustness, cost = figures
    for fig in (robustness, cost):
        assert all(not ax.texts for ax in fig.axes)  # no names printed over the points
        (legend,) = fig.legends
        assert sorted(t.get_text() for t in legend.get_texts()) == ["erm", "mixup"]
    xlabel = cost.axes[0].get_xlabel()
    assert "wall time" in xlabel and "Test CPU, 2 CPUs, 2 torch threads, no GPU" in xlabel


def test_rows_name_their_parameter_set_and_an_old_version():
    from mixbench.leaderboard.markdown import method_label, version_notes

    default = _record("multimix", 0, 0.70)
    ce = _record("multimix", 0, 0.78, params={"clean_weight": 1.0})
    ce["config"]["param_set"] = "ce"
    old = _record("multimix", 0, 0.79, params={"clean_weight": 1.0})
    old["config"]["method_version"] = 1  # an exported cell of version 1
    old["key"] = "old-version-cell"
    (table,) = build_tables([default, ce, old])
    labels = sorted(method_label(r) for r in table.rows)
    assert labels == ["`multimix`", "`multimix` [ce]", "`multimix` v1 [clean_weight=1.0]"]
    assert len(table.rows) == 3  # versions and parameter sets are never pooled
    (note,) = version_notes(table)
    assert note.startswith("`multimix` v1: cells computed by version 1") and "v2:" in note
    assert _body_methods(render_table(table)) == [
        "`multimix` v1 [clean_weight=1.0]", "`multimix` [ce]", "`multimix`",
    ]  # fmt: skip


def test_a_stored_cell_with_its_defaults_is_named_bare_though_json_made_its_tuples_lists():
    from mixbench.leaderboard.markdown import method_label

    stored = json.loads(json.dumps(_record("manifold_mixup", 0, 0.75)))  # an exported cell
    assert stored["params"]["layers"] == [0, 1, 2]  # the default, (0, 1, 2), as JSON has it
    changed = json.loads(json.dumps(_record("manifold_mixup", 1, 0.75, params={"layers": [1]})))
    rows = {r.seeds[0]: r for r in build_tables([stored, changed])[0].rows}
    assert method_label(rows[0]) == "`manifold_mixup`"
    assert method_label(rows[1]) == "`manifold_mixup` [layers=(1)]"
    assert method_label(rows[0], code=False) == "manifold_mixup"


def test_parameters_given_one_by_one_that_make_a_named_set_are_named_by_it():
    """A row whose parameters differ from the defaults exactly as a named set of the current
    version does is that set (``[ce]``); anything more or an older version keeps its list."""
    from mixbench.leaderboard.markdown import method_label

    given = {"clean_weight": 1.0}
    as_set = _record("multimix", 0, 0.7, params=given)
    more = _record("multimix", 1, 0.7, params={**given, "alpha": 0.5})
    old = _record("multimix", 2, 0.7, params=given, preset="old")
    old["config"]["method_version"] = 1
    labels = sorted(method_label(r) for t in build_tables([as_set, more, old]) for r in t.rows)
    assert labels == [
        "`multimix` [alpha=0.5, clean_weight=1.0]", "`multimix` [ce]",
        "`multimix` v1 [clean_weight=1.0]",
    ]  # fmt: skip


def test_cost_is_relative_to_erm_only_on_the_same_kind_of_machine():
    records = _evaluated_records()
    for rec in records:
        rec["versions"]["hardware"] = {"cpu": "CPU A", "cpus": 2}
    other = _evaluated("cutmix", 0, 0.8, fgsm=0.1, pgd=0.0, seconds=11.0)
    other["versions"] = {**other["versions"], "hardware": {"cpu": "CPU B", "cpus": 2}}
    (table,) = build_tables([*records, other])
    text = render_table(table)
    assert _cells(text, "mixup")["cost ×ERM"] == "2.00"  # 22 s / 11 s, both on CPU A
    assert _cells(text, "cutmix")["cost ×ERM"] == "—"  # 11 s on CPU B says nothing against A


def test_cost_on_a_cpu_is_the_ratio_of_cpu_times_where_the_cells_measured_them():
    from mixbench.leaderboard.markdown import cost_basis_notes

    records = _evaluated_records()  # wall: ERM 10 and 12 s, mixup 22 s
    for rec in records:
        rec["versions"]["hardware"] = {"cpu": "CPU A", "cpus": 2, "gpu": None}
    slowed = _evaluated("cutmix", 0, 0.8, fgsm=0.1, pgd=0.0, seconds=16.5)  # beside a job
    slowed["versions"]["hardware"] = {"cpu": "CPU A", "cpus": 2, "gpu": None}
    for rec, cpu in zip([*records, slowed], [9.0, 13.0, 21.0, 11.0]):
        rec["timings"]["train_cpu_seconds"] = cpu
    (table,) = build_tables([*records, slowed])
    text = render_table(table)
    assert _cells(text, "mixup")["cost ×ERM"] == "1.91"  # 21 / 11 (CPU), not 22 / 11 (wall)
    assert _cells(text, "cutmix")["cost ×ERM"] == "1.00"  # its waiting does not count
    assert cost_basis_notes(table) == []  # one measure throughout: no note
    # A row whose cells predate CPU time: wall time, and a note under the table says so.
    del slowed["timings"]["train_cpu_seconds"]
    (table,) = build_tables([*records, slowed])
    assert _cells(render_table(table), "cutmix")["cost ×ERM"] == "1.50"
    (note,) = cost_basis_notes(table)
    assert "except for `cutmix`: wall time there" in note
    slowed["timings"]["train_cpu_seconds"] = 11.0
    # Without ERM's CPU time the ratio falls back to wall time; on a GPU wall time is the cost.
    for rec in records[:2]:
        del rec["timings"]["train_cpu_seconds"]
    assert (
        _cells(render_table(build_tables([*records, slowed])[0]), "cutmix")["cost ×ERM"] == "1.50"
    )
    for rec in [*records, slowed]:
        rec["timings"]["train_cpu_seconds"] = 1.0
        rec["versions"]["hardware"] = {"cpu": "CPU A", "cpus": 2, "gpu": "GPU B"}
    assert _cells(render_table(build_tables([*records, slowed])[0]), "mixup")["cost ×ERM"] == "2.00"


def test_times_are_compared_only_between_cells_of_the_machine_of_most_of_erms_cells():
    """Machines of one kind differ in speed: a row's times come from its cells on the machine
    that trained most of ERM's, never from a faster one or a cell resumed across machines;
    the work counted (passes per step) comes from every cell; a note says what was left out."""
    from mixbench.leaderboard.markdown import timing_machine_notes

    records = _evaluated_records()  # ERM seeds 0 and 1 (10 and 12 s), mixup seed 0 (22 s)
    faster = _evaluated("mixup", 1, 0.85, fgsm=0.2, pgd=0.0, seconds=11.0)
    cutmix = [_evaluated("cutmix", s, 0.84, fgsm=0.2, pgd=0.0, seconds=5.0) for s in (0, 1)]
    for rec, machines in zip(
        [*records, faster, *cutmix], [["m1"], ["m1"], ["m1"], ["m2"], ["m2"], ["m1", "m2"]]
    ):
        rec["timings"].update(train_machines=machines, passes_per_step=1.0)
    (table,) = build_tables([*records, faster, *cutmix])
    text = render_table(table)
    assert _cells(text, "mixup")["cost ×ERM"] == "2.00"  # 22 / 11: its m2 cell's 11 s left out
    assert _cells(text, "cutmix")["cost ×ERM"] == "—"
    assert _cells(text, "cutmix")["train img/s"] == "—"
    assert _cells(text, "cutmix")["passes/step"] == "1.00"
    (note,) = timing_machine_notes(table)
    assert "3 of the table's 6 cells; 3 cells trained elsewhere" in note
    assert "most of ERM's cells:" in note and "count as one machine" not in note
    assert note.endswith("`cutmix` (0 of 2), `mixup` (1 of 2).")

    # Cells stored before machines were named count as one machine: ERM's, here.
    for rec in records:
        del rec["timings"]["train_machines"]
    (table,) = build_tables([*records, faster, *cutmix])
    assert _cells(render_table(table), "mixup")["cost ×ERM"] == "2.00"
    (note,) = timing_machine_notes(table)
    assert "count as one machine" in note and "3 of the table's 6 cells" in note
    # Every cell on one machine: the times of all of them, and nothing to note.
    (table,) = build_tables(_evaluated_records())
    assert timing_machine_notes(table) == []
    assert _cells(render_table(table), "mixup")["cost ×ERM"] == "2.00"


def test_cost_is_the_median_over_seeds_so_one_slowed_cell_does_not_move_a_row():
    records = _evaluated_records()  # ERM seeds 0 and 1 (10 and 12 s), mixup seed 0 (22 s)
    records.append(_evaluated("erm", 2, 0.81, fgsm=0.1, pgd=0.0, seconds=40.0))  # beside a job
    for seed, seconds in ((1, 23.0), (2, 21.0)):
        records.append(_evaluated("mixup", seed, 0.85, fgsm=0.2, pgd=0.0, seconds=seconds))
    (table,) = build_tables(records)
    assert _cells(render_table(table), "mixup")["cost ×ERM"] == "1.83"  # 22 / 12, not 22 / 20.7


def test_a_note_states_how_far_apart_one_rows_cpu_times_lie():
    from mixbench.leaderboard.markdown import cost_spread_notes, render_leaderboard

    records = _evaluated_records()  # ERM seeds 0 and 1, mixup seed 0
    for rec in records:
        rec["versions"]["hardware"] = {"cpu": "CPU A", "cpus": 2, "gpu": None}
    assert cost_spread_notes(build_tables(records)[0]) == []  # no CPU times: nothing to say
    for rec, cpu in zip(records, [1722.0, 1933.0, 1709.0]):
        rec["timings"]["train_cpu_seconds"] = cpu
    (table,) = build_tables(records)
    (note,) = cost_spread_notes(table)
    assert (
        "took up to 12 % more CPU time than each other (`erm`: 1,722 to 1,933 s over 2 cells)"
        in note
    )
    assert note in render_leaderboard([table], {})
    records[1]["timings"]["train_cpu_seconds"] = None  # one cell a row: no spread to state
    assert cost_spread_notes(build_tables(records)[0]) == []


def test_a_row_whose_timings_were_measured_again_says_which_seeds_and_when():
    from mixbench.leaderboard.markdown import remeasured_notes, render_leaderboard

    records = _evaluated_records()  # ERM seeds 0 and 1, mixup seed 0
    assert remeasured_notes(build_tables(records)[0]) == []
    records[0]["timings"]["remeasured_at"] = 1796601600.0  # 2026-12-07 UTC
    records[1]["timings"]["remeasured_at"] = 1796601600.0 + 3600
    (table,) = build_tables(records)
    (note,) = remeasured_notes(table)
    assert note.startswith(
        "`erm`: the timings of seeds 0, 1 are those of a rerun from scratch on 2026-12-07"
    )
    assert note in render_leaderboard([table], {})


def test_stored_names_cannot_leave_the_folder_or_break_the_markdown(tmp_path):
    """Cells stored before names were checked (a preset ``../../../../elsewhere/evil``, a newline
    or a ``|`` in a name): the leaderboard's files stay in its folder and its Markdown keeps
    its headings and tables (issue 22)."""
    from mixbench.bench.run.store import ResultStore, sqlite_url
    from mixbench.cli import main

    out = tmp_path / "a" / "b" / "c" / "d" / "run"
    store = ResultStore(sqlite_url(out / "results.db"))
    evil = _record("erm", 0, 0.5)
    evil.update(preset="../../../../elsewhere/evil", model="preactresnet18\n# injected")
    piped = _record("mixup", 0, 0.6)
    piped.update(method="mixup|x", preset="smoke\n## injected too")
    for record in (evil, piped):
        record["created_at"] = 1.0
        assert store.insert_record(record)
    store.close()
    before = sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out)
    assert main(["leaderboard", "--out", str(out)]) == 0
    after = sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out)
    assert after == before  # nothing written outside the folder
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert len(plots) == 2 and not any(p.startswith(".") for p in plots), plots
    assert "_.._.._.._elsewhere_evil-synthetic-preactresnet18_injected-" in plots[0]
    text = (out / "LEADERBOARD.md").read_text()
    assert not any(line.startswith(("# injected", "## injected")) for line in text.splitlines())
    assert "`mixup\\|x`" in text
    for line in text.splitlines():
        if line.startswith("| 1 "):
            header = next(h for h in text.splitlines() if h.startswith("| #"))
            assert line.replace("\\|", "").count("|") == header.count("|")


# ------------------------------------------------------- equal compute and convergence checks


def _scaled(method, seed, top1, *, epochs, scale=1, preset="long", passes=1.0):
    """A finished cell of the smoke preset trained for ``epochs`` (times ``scale``)."""
    matrix = load_preset("smoke")
    matrix.name = preset
    matrix.seeds = [seed]
    matrix.schedule.epochs = epochs
    matrix.variants = [{"method": method, "epochs_scale": scale}]
    cell = build_cells(matrix)[0]
    rec = _record(method, seed, top1, preset=preset)
    rec.update(key=cell.key, config=to_dict(cell), dataset="imagefolder")
    rec["config"]["dataset"] = "imagefolder"
    rec["metrics"]["data"] = {
        "name": "CIFAR-10", "num_classes": 10, "train_images": 5000, "test_images": 10000,
        "image_size": [32, 32],
    }  # fmt: skip
    rec["versions"]["hardware"] = {"cpu": "CPU A", "cpus": 2}
    rec["timings"] = {"train_images_per_s": 1000.0, "passes_per_step": passes}
    return rec


def test_equal_compute_erm_is_its_own_labelled_row_and_not_the_reference(tmp_path):
    records = [
        _scaled("erm", 0, 0.80, epochs=4),
        _scaled("erm", 1, 0.82, epochs=4),
        _scaled("erm", 0, 0.84, epochs=4, scale=2),
        _scaled("erm", 1, 0.86, epochs=4, scale=2),
        _scaled("mixup", 0, 0.83, epochs=4, passes=2.0),
        _scaled("mixup", 1, 0.85, epochs=4, passes=2.0),
    ]
    (table,) = build_tables(records)  # one table: the scaled row shares the schedule's key
    assert table.reference().epochs_scale == 1
    text = render_table(table)
    lines = [line for line in text.splitlines() if "`erm` [2× epochs]" in line]
    assert len(lines) == 1 and "| **+4.00** " in lines[0]  # 85 against the 4-epoch ERM's 81
    assert _cells(text, "mixup")["Δ ERM (pp)"] == "+3.00"
    assert _cells(text, "erm")["Δ ERM (pp)"] == "+0.00"
    write_leaderboard(records, tmp_path)
    page = (tmp_path / "LEADERBOARD.md").read_text()
    assert (
        "- `erm` [2× epochs]: trained for 2× the table's 4 epochs (8), as its own row: the "
        "equal-compute reference, as many network passes as the row with the most passes per "
        "step (`mixup`: 2.00)"
    ) in page


def test_equal_compute_note_says_when_the_passes_do_not_match(tmp_path):
    records = [
        _scaled("erm", 0, 0.80, epochs=4),
        _scaled("erm", 0, 0.84, epochs=4, scale=3),
        _scaled("mixup", 0, 0.83, epochs=4, passes=2.0),
    ]
    write_leaderboard(records, tmp_path)
    page = (tmp_path / "LEADERBOARD.md").read_text()
    assert (
        "trained for 3× the table's 4 epochs (12), as its own row: the equal-compute "
        "reference, not as many network passes" in page
    )


def _pilot(top1_by_epochs: dict[int, tuple[float, float]]) -> list[dict]:
    """ERM and mixup, seed 0, of a pilot preset at each length: (ERM top-1, mixup top-1)."""
    out = []
    for epochs, (erm, mixup) in top1_by_epochs.items():
        preset = f"pilot-e{epochs}"
        out += [
            _scaled("erm", 0, erm, epochs=epochs, preset=preset),
            _scaled("mixup", 0, mixup, epochs=epochs, preset=preset),
        ]
    return out


def _protocol_block(page: str, preset: str) -> str:
    start = page.index(f"## `{preset}`")
    return page[start : page.index("| #", start)]


def test_convergence_check_states_the_pilots_figures_and_its_verdict(tmp_path):
    campaign = [_scaled("erm", s, 0.80 + s / 100, epochs=4) for s in (0, 1)] + [
        _scaled("mixup", s, 0.81, epochs=4) for s in (0, 1)
    ]
    pilot = _pilot({2: (0.70, 0.68), 4: (0.8010, 0.8100), 8: (0.8040, 0.8140)})
    write_leaderboard([*campaign, *pilot], tmp_path)
    page = (tmp_path / "LEADERBOARD.md").read_text()
    block = _protocol_block(page, "long")
    # The values at the table's own length come from the pilot (80.10), not from the table.
    assert (
        "- convergence check: last-epoch top-1 (%) of the same settings trained for other "
        "numbers of epochs, and the change from 4 to 8 epochs: `erm` seed 0 (2: 70.00, "
        "4: 80.10, 8: 80.40; +0.30); `mixup` seed 0 (2: 68.00, 4: 81.00, 8: 81.40; +0.40); "
        "every change within 0.5 points: trained to convergence at this size; the "
        "difference to `erm` of the same seed at 4 and 8 epochs: `mixup` seed 0 +0.90 → +1.00"
    ) in block
    assert (
        "**Small CPU runs, not the papers' protocol.** 4 epochs on 5,000 training images on a "
        "CPU; the papers' protocol for CIFAR-10 is 2,000 epochs on GPUs. Doubling the epochs "
        "moved no checked top-1 by more than 0.5 points"
    ) in block
    contents = page[: page.index("## ")]
    assert "`long` · CIFAR-10 · preactresnet18" in contents
    assert "epochs (small runs, converged)" in contents
    assert "**Short CPU runs, not the papers' protocol.**" in _protocol_block(page, "pilot-e2")
    # The pilot's 2-epoch table is checked against the 4-epoch cells, and fails; a length
    # that two tables have comes from the first other table in leaderboard order (`long`).
    block = _protocol_block(page, "pilot-e2")
    assert "`erm` seed 0 (2: 70.00, 4: 80.00, 8: 80.40; +10.00)" in block
    assert "a change of up to 13.00 points, more than 0.5: not fully converged" in block
    assert "`mixup` seed 0 -2.00 → +1.00" in block  # at 2 and 4 epochs
    # Nothing to double the longest run with: no check.
    assert "convergence check" not in _protocol_block(page, "pilot-e8")


def test_convergence_check_needs_the_same_settings_but_length(tmp_path):
    campaign = [_scaled("erm", 0, 0.80, epochs=4), _scaled("mixup", 0, 0.81, epochs=4)]
    other_lr = _pilot({8: (0.8040, 0.8140)})
    for rec in other_lr:
        rec["config"]["schedule"]["lr"] = 0.05
    write_leaderboard([*campaign, *other_lr], tmp_path)
    assert "convergence check" not in (tmp_path / "LEADERBOARD.md").read_text()


def test_a_table_that_mixes_cpu_and_gpu_cells_says_so_per_row():
    def on(rec, gpu):
        hardware = {"cpu": "CPU A", "cpus": 2, **({"gpu": gpu, "gpus": 1} if gpu else {})}
        rec["versions"] = {**rec["versions"], "hardware": hardware}
        return rec

    cpu_only = [on(_record("erm", s, 0.8), None) for s in (0, 1)]
    text = render_table(build_tables(cpu_only)[0])
    assert "(CPU)" not in text and "| `erm` " in text  # one kind of device: nothing to say
    mixed = [
        *cpu_only,
        on(_record("mixup", 0, 0.81), "NVIDIA H100"),
        on(_record("cutmix", 0, 0.82), "NVIDIA H100"),
        on(_record("cutmix", 1, 0.83), None),
    ]
    text = render_table(build_tables(mixed)[0])
    assert "| `erm` (CPU) " in text and "| `mixup` (GPU) " in text
    assert "| `cutmix` (CPU + GPU) " in text


def _planned(cell, top1=0.8):
    """A finished cell of a shipped preset's own plan (as ``mixbench run`` stores it)."""
    return finished_record(cell, top1, timings={"train_images_per_s": 1000.0})


def _long_plan():
    from mixbench.bench.run.cells import drop_unsupported

    return drop_unsupported(build_cells(load_preset("long")))[0]


def test_a_table_of_a_shipped_preset_says_which_of_its_planned_cells_it_lacks(tmp_path):
    plan = _long_plan()
    assert len(plan) == 63
    erm = [c for c in plan if c.method == "erm" and c.epochs_scale == 1]
    mixup0 = next(c for c in plan if c.method == "mixup" and c.seed == 0)
    # A run may add data-set options (the data's name) without leaving the plan.
    records = [_planned(c) for c in [*erm, mixup0]]
    for rec in records:
        rec["config"]["dataset_options"]["name"] = "CIFAR-10"
    write_leaderboard(records, tmp_path)
    page = (tmp_path / "LEADERBOARD.md").read_text()
    contents = page[: page.index("## ")]
    assert "100 epochs (short runs; 4 of 63 planned cells)" in contents
    block = _protocol_block(page, "long")
    line = next(x for x in block.splitlines() if x.startswith("- cells:"))
    assert line.startswith(
        "- cells: 4 of the 63 that preset `long` plans (21 rows × 3 seeds); incomplete: rows "
        "with no cell yet: `cutmix`, "
    )
    assert "`multimix` [ce], `dense_multimix` [ce], `erm` [2× epochs]; " in line
    assert "; rows short of seeds: `mixup` (1 of 3); left out: `transmix` (TransMix needs" in line
    assert "`erm`," not in line and "`erm` (" not in line  # ERM has its 3 seeds


def test_the_contents_line_counts_rows_and_seeds_in_words(tmp_path):
    plan = _long_plan()
    mixup0 = next(c for c in plan if c.method == "mixup" and c.seed == 0)
    write_leaderboard([_planned(mixup0)], tmp_path)
    contents = (tmp_path / "LEADERBOARD.md").read_text().split("## ")[0]
    assert ": 1 row, 1 seed, 100 epochs (short runs; 1 of 63 planned cells)" in contents
    erm = [c for c in plan if c.method == "erm" and c.epochs_scale == 1]
    write_leaderboard([_planned(c) for c in [*erm, mixup0]], tmp_path)
    contents = (tmp_path / "LEADERBOARD.md").read_text().split("## ")[0]
    assert ": 2 rows, 3 seeds, 100 epochs (short runs; 4 of 63 planned cells)" in contents


def test_a_complete_table_says_so_and_an_old_version_or_other_schedule_is_not_the_plan(tmp_path):
    plan = _long_plan()
    write_leaderboard([_planned(c) for c in plan], tmp_path)
    page = (tmp_path / "LEADERBOARD.md").read_text()
    assert "planned cells)" not in page[: page.index("## ")]
    assert "- cells: 63 of the 63 that preset `long` plans (21 rows × 3 seeds): complete; " in page
    # A cell of an older version of its method is not the row the preset plans now.
    records = [_planned(c) for c in plan]
    old = next(r for r in records if r["method"] == "cutmix" and r["seed"] == 2)
    old["config"]["method_version"] = 1
    old["key"] = "old"
    write_leaderboard(records, tmp_path)
    page = (tmp_path / "LEADERBOARD.md").read_text()
    assert "; 62 of 63 planned cells)" in page
    assert "rows short of seeds: `cutmix` (2 of 3)" in _protocol_block(page, "long")
    # Another schedule under the preset's name, or a preset not shipped: no plan to compare.
    for rec in records:
        rec["config"]["schedule"]["epochs"] = 7
    write_leaderboard(records, tmp_path)
    assert "- cells:" not in (tmp_path / "LEADERBOARD.md").read_text()
    write_leaderboard([_record("erm", 0, 0.8, preset="mine")], tmp_path)
    assert "- cells:" not in (tmp_path / "LEADERBOARD.md").read_text()


def test_a_row_beyond_erms_spread_over_seeds_is_said_to_be_above_or_below_it(tmp_path):
    top1 = {
        "erm": (0.80, 0.81, 0.82),
        "mixup": (0.83, 0.84, 0.85),  # every seed above ERM's best
        "cutmix": (0.79, 0.815, 0.83),  # the ranges overlap though the mean is higher
        "fmix": (0.70, 0.71),
        "resizemix": (0.90,),  # one seed: a range of one value says nothing
    }
    records = [_record(m, s, v) for m, values in top1.items() for s, v in enumerate(values)]
    (table,) = build_tables(records)
    text = render_table(table)
    column = "vs ERM over seeds"
    assert _cells(text, "mixup")[column] == "above"
    assert _cells(text, "cutmix")[column] == "overlaps"
    assert _cells(text, "fmix")[column] == "below"
    assert _cells(text, "resizemix")[column] == "—" and _cells(text, "erm")[column] == "—"
    write_leaderboard(records, tmp_path)
    assert (
        "vs ERM over seeds: above where every seed's" in (tmp_path / "LEADERBOARD.md").read_text()
    )
    # ERM with one seed: no range to compare with, and no column.
    one_erm = [r for r in records if not (r["method"] == "erm" and r["seed"] > 0)]
    assert column not in render_table(build_tables(one_erm)[0])


def test_coverage_counts_the_seeds_each_row_of_the_preset_plans(tmp_path):
    """`short` plans its `ce` rows for one seed: one cell each is all of them."""
    from mixbench.bench.run.cells import drop_unsupported

    plan = drop_unsupported(build_cells(load_preset("short")))[0]
    assert len(plan) == 7 * 3 + 2
    records = [_planned(c) for c in plan if not (c.method == "mixup" and c.seed == 2)]
    write_leaderboard(records, tmp_path)
    block = _protocol_block((tmp_path / "LEADERBOARD.md").read_text(), "short")
    assert (
        "- cells: 22 of the 23 that preset `short` plans (9 rows of 1 to 3 seeds); incomplete: "
        "rows short of seeds: `mixup` (2 of 3)"
    ) in block
    assert "[ce] (" not in block
