"""Presets, the matrix expansion, overrides and config hashes."""

from __future__ import annotations

import re

import pytest

from mixbench.bench.run.cells import build_cells
from mixbench.config import (
    MatrixConfig,
    apply_setting,
    config_hash,
    list_presets,
    load_matrices,
    load_preset,
    to_dict,
)
from mixbench.errors import UsageError
from mixbench.methods import list_methods


def test_smoke_preset_covers_every_method():
    matrix = load_preset("smoke")
    cells = build_cells(matrix)
    assert sorted({c.method for c in cells}) == list_methods()
    assert {c.dataset for c in cells} == {"synthetic"}
    assert all(c.model_options == {"width": 8} for c in cells)


def test_every_shipped_preset_loads():
    for name in list_presets():
        matrices = load_matrices(name)
        assert all(build_cells(m) for m in matrices)
        if len(matrices) == 1:
            assert matrices[0].name == name


def test_paper_preset_is_the_union_of_its_parts():
    parts = load_matrices("paper")
    assert [m.name for m in parts] == [
        "paper-cifar10",
        "paper-cifar100",
        "paper-tinyimagenet",
        "paper-imagenet",
    ]
    cells = [c for m in parts for c in build_cells(m)]
    assert {c.dataset for c in cells} == {"cifar10", "cifar100", "tinyimagenet", "imagenet"}
    assert {c.model for c in cells} == {"preactresnet18", "wrn16_8", "resnet50"}
    assert {c.seed for c in cells} == {0, 1, 2}
    # CIFAR-10/100 with two networks each, Tiny-ImageNet and ImageNet with one.
    assert len(cells) == len(list_methods()) * 6 * 3
    alone = {c.key for c in build_cells(load_preset("paper-cifar10"))}
    assert alone <= {c.key for c in cells}
    sched = load_preset("paper-cifar10").schedule
    assert (sched.epochs, sched.milestones, sched.weight_decay) == (2000, [500, 1000, 1500], 1e-4)


def test_cell_key_is_stable_and_ignores_runtime():
    a = build_cells(load_preset("smoke"))[0]
    b = build_cells(load_preset("smoke"))[0]
    assert a.key == b.key and len(a.key) == 16
    b.runtime.device = "cpu"
    b.runtime.data_root = "/elsewhere"
    assert a.key == b.key
    b.schedule.lr = 0.05
    assert a.key != b.key


def test_process_count_is_part_of_the_key_from_two_on():
    """One cell on two processes is another experiment (each process mixes within its half of
    the batch); a one-process cell keeps the key it had before the field existed."""
    import dataclasses

    from mixbench.bench.run.matrix import with_process_count

    cell = build_cells(load_preset("smoke"))[0]
    assert "processes" not in cell.identity() and cell.processes == 1
    legacy = to_dict(cell)
    del legacy["processes"], legacy["runtime"], legacy["key_defaults"], legacy["epochs_scale"]
    # nor the parameters added since as options (the decoupled loss), at their defaults
    legacy["params"] = {k: v for k, v in legacy["params"].items() if k not in cell.key_defaults}
    assert cell.key == config_hash(legacy)  # exactly the pre-existing key
    (two,) = with_process_count([cell], nproc_per_node=2)
    assert two.processes == 2 and two.key != cell.key
    assert two.schedule_key() != cell.schedule_key()  # never pooled in one table either
    assert dataclasses.replace(two, processes=1).key == cell.key


def test_thread_count_is_not_part_of_the_key(tmp_path):
    """Torch's thread count (``--launcher local`` gives each worker its share of the cores)
    changes the rounding of CPU results, not the experiment: the key stays, and the thread
    count is stored with the cell's hardware and shown in the protocol block."""
    import torch

    from mixbench.bench.run.provenance import hardware
    from mixbench.leaderboard.protocol import describe_hardware

    keys = set()
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            keys.add(build_cells(load_preset("smoke"))[0].key)
            assert hardware()["torch_threads"] == threads
            assert f"{threads} torch thread" in describe_hardware(hardware())
    finally:
        torch.set_num_threads(before)
    assert len(keys) == 1


def test_params_are_part_of_the_key():
    matrix = load_preset("smoke")
    matrix.methods = ["mixup"]
    before = build_cells(matrix)[0]
    matrix.method_params = {"mixup": {"alpha": 0.4}}
    after = build_cells(matrix)[0]
    assert after.params["alpha"] == 0.4
    assert before.key != after.key


def test_unknown_key_in_preset_file_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('methods = ["erm"]\n[schedule]\nepochz = 3\n')
    with pytest.raises(UsageError, match="unknown key 'epochz'"):
        load_preset(str(path))


def test_wrong_type_and_bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[schedule]\nepochs = "three"\n')
    with pytest.raises(UsageError, match="must be of type int"):
        load_preset(str(path))
    path.write_text("[schedule\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_preset(str(path))


def test_unknown_preset_suggests():
    with pytest.raises(UsageError, match="did you mean smoke"):
        load_preset("smok")


def test_apply_setting():
    matrix = load_preset("smoke")
    apply_setting(matrix, "schedule.lr=0.05")
    apply_setting(matrix, "dataset_options.synthetic.n_train=512")
    assert matrix.schedule.lr == 0.05
    assert matrix.dataset_options["synthetic"]["n_train"] == 512
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        apply_setting(matrix, "schedule.lr")
    with pytest.raises(UsageError, match="unknown key 'lrr'"):
        apply_setting(matrix, "schedule.lrr=1")


def test_negative_epochs_refused():
    matrix = MatrixConfig(methods=["erm"])
    matrix.schedule.epochs = -1
    with pytest.raises(UsageError, match="epochs must be >= 1"):
        build_cells(matrix)


def test_config_hash_canonical():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": (1, 2), "a": 1})
    assert to_dict(load_preset("smoke"))["schedule"]["epochs"] == 3


def test_param_set_paper_takes_each_methods_paper_set_and_shares_the_others_cells() -> None:
    from mixbench.methods import get_method_class

    default = {c.method: c for c in build_cells(load_preset("smoke"))}
    matrix = load_preset("smoke")
    matrix.param_set = "paper"
    paper = {c.method: c for c in build_cells(matrix)}
    for name in ("multimix", "dense_multimix"):
        assert paper[name].param_set == "paper"
        assert paper[name].params == get_method_class(name).param_sets["paper"]
    for name in ("erm", "mixup", "cutmix", "manifold_mixup", "alignmixup"):
        # no paper set declared: the defaults, recorded as such, so the cells are the same
        assert paper[name].param_set == "default"
        assert paper[name].key == default[name].key


def test_method_version_is_part_of_the_key_from_two_on():
    """A method whose computation changed (a bumped ``version``) gets new cell keys; cells of
    unchanged methods (version 1) keep the keys they had before versions existed."""
    import dataclasses

    matrix = load_preset("smoke")
    cells = {c.method: c for c in build_cells(matrix)}
    assert cells["erm"].method_version == 1 and "method_version" not in cells["erm"].identity()
    assert cells["cutmix"].method_version == 2 and cells["multimix"].method_version == 2
    legacy = dataclasses.replace(cells["cutmix"], method_version=1)
    assert legacy.key != cells["cutmix"].key
    old_form = to_dict(legacy)
    del old_form["method_version"], old_form["processes"], old_form["runtime"]
    del old_form["epochs_scale"]
    added = old_form.pop("key_defaults")  # options added since, at their defaults
    old_form["params"] = {k: v for k, v in old_form["params"].items() if k not in added}
    assert legacy.key == config_hash(old_form)


def test_variants_can_name_a_parameter_set():
    short = load_preset("short")
    ce = [c for c in build_cells(short) if c.param_set == "ce"]
    assert sorted((c.method, c.seed) for c in ce) == [("dense_multimix", 0), ("multimix", 0)]
    assert all(c.params["clean_weight"] == 1.0 for c in ce)
    defaults = [
        c for c in build_cells(short) if c.method == "multimix" and c.param_set == "default"
    ]
    assert [c.seed for c in defaults] == [0, 1, 2] and defaults[0].params["clean_weight"] == 0.0
    short.variants = [{"method": "erm", "param_set": "ce"}]
    with pytest.raises(UsageError, match="has no parameter set 'ce'"):
        build_cells(short)


def test_param_set_ce_from_the_command_line(capsys):
    from mixbench.cli import main

    assert main(["run", "--dry-run", "--methods", "erm,multimix", "--param-set", "ce"]) == 0
    out = capsys.readouterr().out
    assert "[ce] clean_weight=1.0" in out  # ERM has no such set: it runs its defaults
    assert main(["run", "--dry-run", "--param-set", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter set 'bogus'" in err and "ce" in err and "paper" in err


def test_presets_that_include_each_other_are_refused(tmp_path):
    for a, b in (("a", "b"), ("b", "c"), ("c", "a")):  # a -> b -> c -> a
        (tmp_path / f"{a}.toml").write_text(f'include = ["{tmp_path / b}.toml"]\n')
    with pytest.raises(UsageError, match=r"presets include each other \(.*a.toml -> .*b.toml"):
        load_matrices(str(tmp_path / "a.toml"))


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("schedule.lr=nan", "lr must be a finite number > 0, got nan"),
        ("schedule.lr=-inf", "lr must be a finite number > 0, got -inf"),
        ("schedule.momentum=-0.1", "momentum must be a finite number >= 0"),
        ("schedule.weight_decay=inf", "weight_decay must be a finite number >= 0"),
        ("schedule.gamma=0", "gamma must be a finite number > 0"),
        ("seeds=[2147483648]", "seed 2147483648 is not an integer in 0..2147483647"),
        ("seeds=[-1]", "seed -1 is not an integer"),
        ('methods=["mix\\u0000up"]', "holds a control character"),
        ('param_set="de\\tfault"', "holds a control character"),
        ("variants=[{method='mixup',seeds=[4294967296]}]", "variant 1 of preset 'smoke'"),
        ("dataset_options.synthetic.noise='loud'", "option 'noise' must be of type float"),
        ("dataset_options.synthetic.train_subset=1.5", "'train_subset' must be of type int | None"),
    ],
)
def test_values_no_run_or_database_can_take_are_refused_when_cells_are_built(setting, needle):
    matrix = load_preset("smoke")
    apply_setting(matrix, setting)
    with pytest.raises(UsageError, match=re.escape(needle)):
        build_cells(matrix)


def test_a_batch_larger_than_the_declared_training_set_is_refused():
    from mixbench.bench.run.cells import check_batch_fits

    matrix = load_preset("smoke")  # 256 training images
    check_batch_fits(matrix)
    apply_setting(matrix, "schedule.batch_size=256")
    check_batch_fits(matrix)
    apply_setting(matrix, "schedule.batch_size=257")
    with pytest.raises(UsageError, match="batch_size 257 is larger than the 256 training images"):
        check_batch_fits(matrix)
    apply_setting(matrix, "dataset_options.synthetic.train_subset=200")
    with pytest.raises(UsageError, match="larger than the 200 training images"):
        check_batch_fits(matrix)
    matrix = load_preset("paper-cifar10")  # the registered size: 50,000
    apply_setting(matrix, "schedule.batch_size=50001")
    with pytest.raises(UsageError, match="larger than the 50000 training images of data set"):
        check_batch_fits(matrix)


def test_absurd_calibration_bins_are_refused_when_the_preset_is_read():
    with pytest.raises(UsageError, match=r"calibration_bins must be in 1\.\.10000"):
        apply_setting(load_preset("smoke"), "eval.calibration_bins=100000")


def test_synthetic_refuses_sizes_it_cannot_hold_before_generating():
    from mixbench.datasets import create_dataset

    with pytest.raises(UsageError, match="n_train=1000000000000 of 32x32 images is too large"):
        create_dataset("synthetic", n_train=10**12)
    with pytest.raises(UsageError, match="n_test=100000 of 1024x1024 images is too large"):
        create_dataset("synthetic", n_test=100_000, n_train=10, image_size=1024)
    with pytest.raises(UsageError, match="noise must be a finite number"):
        create_dataset("synthetic", n_train=10, n_test=1, noise=float("nan"))


def test_every_shipped_preset_and_stored_result_passes_the_new_checks():
    """The checks refuse nothing that mixbench ships or has stored (their keys stay as they
    were: the checks change no value)."""
    import json
    from pathlib import Path

    from mixbench.bench.run.cells import check_batch_fits
    from mixbench.config import EvalConfig, ScheduleConfig, check_name, check_seed, from_dict
    from mixbench.datasets.base import check_dataset_options

    for name in list_presets():
        for matrix in load_matrices(name):
            matrix.validate()
            check_batch_fits(matrix)
            for dataset in matrix.datasets:
                check_dataset_options(dataset, matrix.dataset_options.get(dataset, {}))
    results = Path(__file__).resolve().parent.parent / "results"
    records = [
        json.loads(line)
        for path in sorted(results.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    assert records
    for record in records:
        config = record["config"]
        from_dict(ScheduleConfig, config["schedule"]).validate()
        from_dict(EvalConfig, config["eval"])
        check_seed(config["seed"], "stored cell")
        for field in ("preset", "method", "dataset", "model", "param_set"):
            check_name(config.get(field, "default"), field)
        check_dataset_options(config["dataset"], config["dataset_options"])


def test_epochs_scale_trains_longer_in_the_same_table_and_counts_in_the_key_from_two_on():
    """A variant's ``epochs_scale`` (the equal-compute reference) trains for a multiple of
    the schedule's epochs, keeps the schedule of its table, and changes the key only from 2
    on, so that every cell made before the field existed keeps its key."""
    matrix = load_preset("smoke")
    matrix.variants = [{"method": "erm"}, {"method": "erm", "epochs_scale": 2}]
    plain, scaled = build_cells(matrix)
    assert "epochs_scale" not in plain.identity() and plain.training_schedule() is plain.schedule
    assert scaled.identity()["epochs_scale"] == 2 and scaled.key != plain.key
    assert scaled.schedule == plain.schedule  # the table's schedule, unscaled
    assert scaled.training_schedule().epochs == 2 * plain.schedule.epochs
    assert scaled.schedule_key() == plain.schedule_key()  # one table


@pytest.mark.parametrize("scale", [0, -1, 1.5, True, "2", 101])
def test_a_bad_epochs_scale_is_refused_with_its_range(scale):
    matrix = load_preset("smoke")
    matrix.variants = [{"method": "erm", "epochs_scale": scale}]
    with pytest.raises(UsageError, match="epochs_scale must be an integer from 1 to 100"):
        build_cells(matrix)


def test_the_long_preset_runs_every_method_the_ce_sets_and_the_equal_compute_erm():
    """Every registered method with its defaults (TransMix skipped: it needs a ViT), the `ce`
    sets of MultiMix and Dense MultiMix, and ERM for twice the epochs, 3 seeds each, in one
    table; its pilot is the same settings at other lengths."""
    from mixbench.commands.matrices import drop_unsupported

    matrix = load_preset("long")
    cells, notes = drop_unsupported(build_cells(matrix))
    rows = {(c.method, c.param_set, c.epochs_scale) for c in cells}
    expected = {(m, "default", 1) for m in list_methods() if m != "transmix"}
    expected |= {("multimix", "ce", 1), ("dense_multimix", "ce", 1), ("erm", "default", 2)}
    assert rows == expected
    assert len(cells) == 3 * len(expected) and {c.seed for c in cells} == {0, 1, 2}
    assert len({c.schedule_key() for c in cells}) == 1
    assert any("transmix" in note for note in notes)
    pilot = [c for m in load_matrices("long-pilot") for c in build_cells(m)]
    lengths = {c.schedule.epochs for c in pilot}
    assert {matrix.schedule.epochs, 2 * matrix.schedule.epochs} <= lengths
    assert {c.method for c in pilot} == {"erm", "mixup"}
    long_erm = next(c for c in cells if c.method == "erm" and c.epochs_scale == 1)
    for c in pilot:
        same = {"eval", "dataset_options", "model_options", "model", "dataset"}
        assert {k: c.identity()[k] for k in same} == {k: long_erm.identity()[k] for k in same}
        fixed = {k: v for k, v in to_dict(c.schedule).items() if k not in ("epochs", "eval_every")}
        assert fixed == {
            k: v for k, v in to_dict(long_erm.schedule).items() if k not in ("epochs", "eval_every")
        }
