"""Tuning: optuna studies over declared search spaces, equal budgets, validation data only."""

from __future__ import annotations

import dataclasses
import io
import os
import uuid

import optuna
import pytest
import torch
from optuna.trial import TrialState

from mixbench.bench import tuning
from mixbench.bench.run.cells import build_cells
from mixbench.bench.train.engine import CellFailed, CellResult
from mixbench.cli import main, make_parser
from mixbench.commands.matrices import build_matrices, matrix_cells
from mixbench.datasets import create_dataset
from mixbench.errors import UsageError
from mixbench.methods import get_method_class, list_methods, resolve_params

# A tiny matrix: 320 training images (30 of them carved out for validation), width-8 network.
TINY = [
    "--set", "dataset_options.synthetic.n_train=320",
    "--set", "dataset_options.synthetic.n_test=64",
    "--set", "model_options.preactresnet18.width=8",
    "--set", "schedule.batch_size=128",
    "--set", "schedule.eval_every=1",  # pruning looks at every epoch's validation score
    "--no-progress",
]  # fmt: skip


def _storage(out):
    return tuning.open_storage(tuning.default_storage_url(out))


def _load(out, name):
    return optuna.load_study(study_name=name, storage=_storage(out))


@pytest.fixture
def fake_training(monkeypatch):
    """``train_cell`` replaced by a scorer of the parameters (instant); returns the cells seen.

    The score favours small ``alpha``; a cell with ``prob`` below 0.05 fails like a NaN loss.
    """
    seen = []

    def fake_train_cell(cell, workdir, *, setup=None, bundle_cache=None, heartbeat=None):
        seen.append(cell)
        if cell.params.get("prob", 1.0) < 0.05:
            raise CellFailed("the loss became NaN")
        top1 = 1.0 / (1.0 + cell.params.get("alpha", 1.0))
        return CellResult(metrics={"top1": top1}, timings={}, history=[])

    monkeypatch.setattr("mixbench.bench.train.engine.train_cell", fake_train_cell)
    return seen


# -- declared search spaces --------------------------------------------------------------


@pytest.mark.parametrize("name", list_methods())
def test_every_declared_search_space_is_valid_and_within_the_parameter_bounds(name):
    cls = get_method_class(name)
    space = tuning.search_space(cls)
    if name == "erm":
        assert space == {}
        return
    assert space, f"{name} declares no search space"
    for key, spec in space.items():
        param = cls.params[key]
        values = spec[1] if spec[0] == "categorical" else spec[1:3]
        for value in values:  # every end of the range is a value the method accepts
            assert param.parse(key, value) == value
        if spec[0] != "categorical" and spec[3]:
            assert spec[1] > 0  # log scale


def test_multimix_searches_the_number_of_generated_examples():
    space = tuning.search_space(get_method_class("multimix"))
    assert space["n"] == ("categorical", (100, 300, 1000))
    assert space["alpha"][0] == "float" and space["alpha"][3] is True


def test_malformed_search_space_is_a_programming_error():
    from mixbench.methods import MixMethod, Param

    class Broken(MixMethod):
        name = "broken"
        params = {"alpha": Param(1.0, float, search=("float", 2.0, 1.0, True))}

    with pytest.raises(ValueError, match="malformed search space"):
        tuning.search_space(Broken)


def test_validation_size_is_a_tenth_rounded_to_whole_classes():
    assert tuning.default_validation_size(320, 10) == 30
    assert tuning.default_validation_size(50_000, 100) == 5000
    assert tuning.default_validation_size(40, 10) == 10  # at least one image per class
    assert tuning.check_validation_size(40, 320, 10) == 40
    with pytest.raises(UsageError, match="multiple of the 10 classes"):
        tuning.check_validation_size(35, 320, 10)
    with pytest.raises(UsageError, match="nothing to train on"):
        tuning.check_validation_size(320, 320, 10)


# -- one study, really trained -----------------------------------------------------------


@pytest.mark.slow
def test_tune_trains_on_a_validation_split_and_stores_the_study(tmp_path, monkeypatch, capsys):
    """Two real trials: the study's name, params within bounds, user attrs, and evaluation on
    30 images carved from the training set (never the test set)."""
    import mixbench.bench.train.data as data

    splits = []
    real_make_loaders = data.make_loaders

    def spy(bundle, cell, *args, **kwargs):
        splits.append((bundle, cell))
        return real_make_loaders(bundle, cell, *args, **kwargs)

    monkeypatch.setattr(data, "make_loaders", spy)
    out = tmp_path / "run"
    argv = ["tune", "--method", "cutmix", "--trials", "2", "--epochs", "1", "--out", str(out)]
    assert main([*argv, *TINY]) == 0

    study = _load(out, "smoke/synthetic/preactresnet18/cutmix")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert 0.1 <= t.params["alpha"] <= 4.0 and 0.0 <= t.params["prob"] <= 1.0
        # cutmix: alpha and prob are searched; its loss option stays at the defaults.
        trained = t.user_attrs["params"]
        assert {k: v for k, v in trained.items() if k in t.params} == t.params
        assert {k: v for k, v in trained.items() if k not in t.params} == {
            "loss": "ce", "dm_eta": 0.1, "dm_mode": "both", "dm_power": 1.0
        }  # fmt: skip
        assert 0.0 <= t.value <= 1.0 and t.intermediate_values == {1: t.value}
    assert study.user_attrs["budget"] == 2
    assert study.user_attrs["setup"]["dataset_options"]["validation"] == 30

    # Evaluation ran on 30 training images; the 64 test images were never loaded into a loader.
    original = create_dataset("synthetic", None, n_train=320, n_test=64)
    train_rows = {bytes(img.numpy()) for img in original.train.images}
    test_rows = {bytes(img.numpy()) for img in original.test.images}
    assert len(splits) == 2
    for bundle, cell in splits:
        assert cell.dataset_options["validation"] == 30
        assert len(bundle.test) == 30 and len(bundle.train) == 290
        assert torch.bincount(bundle.test.labels, minlength=10).tolist() == [3] * 10
        val_rows = {bytes(img.numpy()) for img in bundle.test.images}
        assert val_rows <= train_rows and not val_rows & test_rows
        assert not val_rows & {bytes(img.numpy()) for img in bundle.train.images}

    err = capsys.readouterr().err
    assert "[smoke/synthetic/preactresnet18/cutmix] trial 0 (1/2): alpha=" in err
    assert "trial 1 (2/2)" in err and "-> val top-1" in err
    assert not list((out / "tuning").rglob("*.pt"))  # trial workdirs are temporary


@pytest.mark.slow
def test_pruning_handler_stops_a_trial_whose_validation_score_is_bad(tmp_path, capsys):
    """An impossible threshold (top-1 >= 2) prunes every trial after its first epoch of two."""
    parser = make_parser()
    args = parser.parse_args(["tune", "--method", "mixup", "--trials", "1", "--epochs", "2", *TINY])
    (matrix,) = build_matrices(args)
    matrix.methods = ["mixup"]
    (cell,) = build_cells(matrix)
    cell = dataclasses.replace(cell, dataset_options={**cell.dataset_options, "validation": 30})
    storage = _storage(tmp_path)
    report = tuning.tune_study(
        cell, 1, storage, tmp_path, pruner=optuna.pruners.ThresholdPruner(lower=2.0)
    )
    assert (report.complete, report.pruned, report.ran_now) == (0, 1, 1)
    (trial,) = _load(tmp_path, report.name).get_trials()
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # stopped after epoch 1, never reached 2
    assert "pruned after epoch 1 at val top-1" in capsys.readouterr().err


def test_median_pruning_starts_after_five_trials_and_from_epoch_two():
    study = optuna.create_study(direction="maximize", pruner=tuning.make_pruner())
    for _ in range(5):
        trial = study.ask()
        trial.report(0.9, 1)
        trial.report(0.9, 2)
        study.tell(trial, 0.9)
    bad = study.ask()
    bad.report(0.1, 1)
    assert not bad.should_prune()  # epoch 1 is too noisy to judge
    bad.report(0.1, 2)
    assert bad.should_prune()
    good = study.ask()
    good.report(0.95, 2)
    assert not good.should_prune()


# -- budgets -----------------------------------------------------------------------------


def test_all_methods_get_the_same_budget_and_a_rerun_does_not_exceed_it(
    tmp_path, fake_training, capsys
):
    out = tmp_path / "run"
    argv = [
        "tune", "--all-methods", "--budget", "3", "--methods", "erm,mixup,cutmix,multimix",
        "--epochs", "2", "--out", str(out), *TINY,
    ]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "erm: no search space, runs with its defaults; skipped" in err
    names = [s.study_name for s in _storage(out).get_all_studies()]
    assert sorted(names) == [
        f"smoke/synthetic/preactresnet18/{m}" for m in ("cutmix", "mixup", "multimix")
    ]
    for name in names:
        trials = _load(out, name).get_trials()
        assert len(trials) == 3 and all(t.state in tuning.FINISHED for t in trials)
    assert len(fake_training) == 9
    assert {c.schedule.epochs for c in fake_training} == {2}  # same epochs for every method
    assert {c.dataset_options["validation"] for c in fake_training} == {30}
    assert all(c.param_set.startswith("trial:") for c in fake_training)

    # The same command again runs nothing; a larger budget tops every study up to it.
    assert main(argv) == 0
    assert len(fake_training) == 9
    assert "already has 3/3 finished trials" in capsys.readouterr().err
    argv[argv.index("3")] = "4"
    assert main(argv) == 0
    assert len(fake_training) == 12
    assert all(len(_load(out, n).get_trials()) == 4 for n in names)
    # A smaller budget later runs nothing and keeps the four trials (and their best).
    argv[argv.index("4")] = "2"
    assert main(argv) == 0
    assert len(fake_training) == 12
    assert all(_load(out, n).user_attrs["budget"] == 4 for n in names)


PG_URL = os.environ.get("MIXBENCH_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """A shared optuna storage: a SQLite file, or a fresh database on the test PostgreSQL."""
    if request.param == "sqlite":
        return tuning.default_storage_url(tmp_path)
    if not PG_URL:
        pytest.skip("no PostgreSQL server: set MIXBENCH_TEST_POSTGRES_URL (.ci/run starts one)")
    import sqlalchemy as sa

    name = f"mixbench_tune_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return PG_URL.rsplit("/", 1)[0] + f"/{name}"


def test_workers_on_one_storage_share_a_study_within_its_budget(
    tmp_path, fake_training, storage_url
):
    """Three workers (threads, each with its own storage connection) top one study up to 6."""
    import threading
    import time

    from mixbench.bench.train.engine import CellResult as Result

    def slow_train_cell(cell, workdir, **kwargs):
        time.sleep(0.2)  # long enough for the workers to overlap
        return Result(metrics={"top1": 1.0 / (1.0 + cell.params["alpha"])}, timings={})

    import mixbench.bench.train.engine as engine

    engine.train_cell = slow_train_cell  # undone by the fixture's monkeypatch
    args = make_parser().parse_args(["tune", "--method", "mixup", "--trials", "6", *TINY])
    (matrix,) = build_matrices(args)
    matrix.methods = ["mixup"]
    (cell,) = build_cells(matrix)
    cell = dataclasses.replace(cell, dataset_options={**cell.dataset_options, "validation": 30})
    errors = []

    def worker(i):
        try:
            storage = tuning.create_storage(storage_url)  # one connection each, as processes
            tuning.tune_study(cell, 6, storage, tmp_path / f"w{i}", log=io.StringIO())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    study = optuna.load_study(
        study_name=tuning.study_name("smoke", "synthetic", "preactresnet18", "mixup"),
        storage=storage_url,
    )
    finished = tuning.finished_trials(study.get_trials())
    # Running trials count toward the budget; a check-then-start race overshoots at most by
    # one trial per other worker, and only the first six count for the best.
    assert 6 <= len(finished) <= 8
    assert len({t.number for t in finished}) == len(finished)
    first = tuning.finished_trials(study.get_trials(), 6)
    assert tuning.best_trial(study).value == max(t.value for t in first)


def test_failed_trials_count_as_pruned_and_toward_the_budget(tmp_path, fake_training):
    """A trial whose loss becomes NaN is pruned (bad parameters), not retried forever."""
    parser = make_parser()
    args = parser.parse_args(["tune", "--method", "cutmix", "--trials", "1", *TINY])
    (matrix,) = build_matrices(args)
    matrix.methods = ["cutmix"]
    (cell,) = build_cells(matrix)
    cell = dataclasses.replace(cell, dataset_options={**cell.dataset_options, "validation": 30})
    storage = _storage(tmp_path)
    name = tuning.study_name("smoke", "synthetic", "preactresnet18", "cutmix")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.enqueue_trial({"alpha": 1.0, "prob": 0.01})  # the fake fails on prob < 0.05
    report = tuning.tune_study(cell, 2, storage, tmp_path)
    assert (report.complete, report.pruned) == (1, 1)
    failed = study.get_trials()[0]
    assert failed.state == TrialState.PRUNED and "NaN" in failed.user_attrs["failed"]


def test_best_trial_counts_only_the_first_budget_trials():
    """Workers that overshoot a budget do not give their method extra chances."""
    study = optuna.create_study(direction="maximize")
    for value in (0.2, 0.5, 0.9):
        trial = study.ask()
        trial.suggest_float("alpha", 0.1, 4.0)
        study.tell(trial, value)
    study.set_user_attr("budget", 2)
    assert tuning.best_trial(study).value == 0.5
    study.set_user_attr("budget", 3)
    assert tuning.best_trial(study).value == 0.9


def test_same_seed_gives_the_same_trials(tmp_path, fake_training):
    params = []
    for folder in ("a", "b"):
        out = tmp_path / folder
        argv = ["tune", "--method", "multimix", "--trials", "3", "--out", str(out), *TINY]
        assert main(argv) == 0
        params.append(
            [t.params for t in _load(out, "smoke/synthetic/preactresnet18/multimix").trials]
        )
    assert params[0] == params[1]
    assert len({tuple(sorted(p.items())) for p in params[0]}) == 3
    assert all(p["n"] in (100, 300, 1000) for p in params[0])


def test_a_study_refuses_trials_under_another_setup(tmp_path, fake_training, capsys):
    out = tmp_path / "run"
    argv = ["tune", "--method", "mixup", "--trials", "1", "--out", str(out), *TINY]
    assert main([*argv, "--epochs", "1"]) == 0
    assert main([*argv, "--epochs", "2"]) == 2
    assert "was tuned with another schedule (epochs 1 vs 2)" in capsys.readouterr().err


# -- --param-set best --------------------------------------------------------------------


def test_param_set_best_uses_each_studys_best_trial_and_records_the_study(
    tmp_path, fake_training, capsys
):
    out = tmp_path / "run"
    tune = [
        "tune",
        "--all-methods",
        "--budget",
        "3",
        "--methods",
        "mixup,cutmix",
        "--out",
        str(out),
    ]
    assert main([*tune, *TINY]) == 0
    capsys.readouterr()

    args = make_parser().parse_args(
        ["run", "--param-set", "best", "--methods", "erm,mixup,cutmix,multimix", "--out", str(out)]
    )
    cells = {c.method: c for c in matrix_cells(build_matrices(args)[0], args)}
    err = capsys.readouterr().err
    for method in ("mixup", "cutmix"):
        study = _load(out, f"smoke/synthetic/preactresnet18/{method}")
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value)
        assert cells[method].params == best.user_attrs["params"]
        assert cells[method].param_set == f"best:smoke/synthetic/preactresnet18/{method}"
        assert f"{method} on synthetic/preactresnet18 uses trial {best.number}" in err
    assert cells["erm"].param_set == "default" and cells["erm"].params == {}
    assert cells["multimix"].param_set == "default"
    assert cells["multimix"].params == resolve_params(get_method_class("multimix"), {})
    assert "erm declares no search space: default parameters" in err
    assert "no study of multimix on synthetic/preactresnet18" in err
    # Tuned cells are other experiments than default ones: another key.
    default = make_parser().parse_args(["run", "--methods", "mixup", "--out", str(out)])
    assert matrix_cells(build_matrices(default)[0], default)[0].key != cells["mixup"].key


def test_param_set_best_reads_another_storage_and_another_presets_study(tmp_path, fake_training):
    tuned = tmp_path / "tuned"
    assert main(["tune", "--method", "mixup", "--trials", "2", "--out", str(tuned), *TINY]) == 0
    preset = tmp_path / "mine.toml"
    preset.write_text('methods = ["mixup"]\n[dataset_options.synthetic]\nn_train = 320\n')
    args = make_parser().parse_args(
        [
            "run", "--preset", str(preset), "--param-set", "best",
            "--tuning-storage", tuning.default_storage_url(tuned), "--out", str(tmp_path / "x"),
        ]
    )  # fmt: skip
    (cell,) = matrix_cells(build_matrices(args)[0], args)
    assert cell.preset == "mine"
    assert cell.param_set == "best:smoke/synthetic/preactresnet18/mixup"


def test_param_set_best_without_a_tuning_storage_is_a_usage_error(tmp_path, capsys):
    argv = ["run", "--param-set", "best", "--out", str(tmp_path / "none"), "--dry-run"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixbench: error: no tuning storage at") and "\n" not in err
    assert not (tmp_path / "none" / "tuning.db").exists()


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "nosuch", "--trials", "2"], "unknown method 'nosuch'"),
        (["--method", "erm", "--trials", "2"], "'erm' declares no search space"),
        (["--method", "mixup", "--trials", "0"], "must be >= 1, got 0"),
        (["--all-methods", "--budget", "-1"], "must be >= 1, got -1"),
        (["--trials", "2"], "pass --method NAME (one method) or --all-methods"),
        (["--method", "mixup", "--all-methods", "--trials", "2"], "not both"),
        (["--method", "mixup"], "pass --trials N"),
        (["--all-methods"], "pass --budget K"),
        (["--method", "mixup", "--trials", "1", "--validation", "35"], "multiple of the 10"),
        (["--method", "mixup", "--trials", "1", "--param-set", "best"], "is for run"),
        (["--method", "mixup", "--trials", "1", "--dataset", "nosuch"], "nosuch"),
    ],
)
def test_bad_tune_input_is_a_one_line_usage_error(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["tune", *argv, "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixbench: error:") and "\n" not in err
    assert message in err
    assert not (out / "tuning.db").exists()


def test_a_studys_folder_stays_in_the_output_folder_whatever_the_names(tmp_path):
    """The trials of a study are written under OUT/tuning, even for a preset name such as
    ``../../elsewhere`` (issue 22: names never build paths that leave the folder)."""
    from mixbench.bench.tuning.study import study_folder

    assert study_folder(tmp_path, "smoke/synthetic/preactresnet18/mixup") == (
        tmp_path / "tuning" / "smoke" / "synthetic" / "preactresnet18" / "mixup"
    )
    evil = study_folder(tmp_path, "../../elsewhere/../evil/synthetic/preactresnet18/mixup")
    assert (tmp_path / "tuning") in evil.resolve().parents
