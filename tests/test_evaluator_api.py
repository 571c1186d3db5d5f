"""Evaluators as an extension point: one registered class reaches the stored results, the
leaderboard's columns, legend and plots; the out-of-distribution evaluator; `eval.options`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from mixbench.bench.evaluators import (
    EVALUATORS,
    ColumnSpec,
    EvalContext,
    EvalResult,
    Evaluator,
    list_evaluators,
    register_evaluator,
)
from mixbench.bench.run.cells import build_cells, resolve_eval
from mixbench.bench.run.evaluate import run_evaluators
from mixbench.cli import main
from mixbench.config import CellConfig, EvalConfig, apply_setting, load_preset, to_dict
from mixbench.datasets import create_dataset
from mixbench.errors import UsageError
from mixbench.leaderboard import build_tables
from mixbench.leaderboard.markdown import render_leaderboard, table_columns
from mixbench.leaderboard.plots import robustness_measures
from mixbench.models import create_model


@dataclass
class MeanLogitSettings:
    scale: float = 1.0


class MeanLogit(Evaluator):
    """A test evaluator: the mean logit of a few test images, times a setting."""

    description = "mean logit (a test evaluator)"
    settings = MeanLogitSettings
    columns = (
        ColumnSpec(key="mean_logit", header="mean logit", fmt=".3f", higher_is_better=None,
                   legend="mean logit: the mean of the logits.", plot="mean logit"),
    )  # fmt: skip

    def run(self, context: EvalContext) -> EvalResult:
        images, _ = context.subset(8, "mean_logit")
        with torch.no_grad():
            logits = context.model(images.float() / 255)
        assert not context.backbone.training  # evaluators get the model in eval mode
        scale = context.settings.scale
        return EvalResult(
            metrics={"mean_logit": scale * float(logits.mean())},
            timings={"mean_logit_seconds": 0.0},
            settings={"examples": 8, "scale": scale},
            notes=["mean logit: a note"],
        )


@pytest.fixture
def mean_logit():
    register_evaluator("mean_logit")(MeanLogit)
    try:
        yield MeanLogit
    finally:
        EVALUATORS.remove("mean_logit")


@pytest.fixture(scope="module")
def small():
    bundle = create_dataset("synthetic", n_train=20, n_test=48)
    net = create_model("preactresnet18", bundle.num_classes, seed=0, width=4)
    return bundle, net


def _cell(**eval_options) -> CellConfig:
    matrix = load_preset("smoke")
    matrix.methods = ["erm"]
    matrix.dataset_options = {"synthetic": {"n_train": 20, "n_test": 48}}
    matrix.model_options = {"preactresnet18": {"width": 4}}
    matrix.eval = EvalConfig(batch_size=16, **eval_options)
    matrix.runtime.device = "cpu"
    return build_cells(matrix)[0]


def _record(cell: CellConfig, metrics: dict, seed: int) -> dict:
    cell = dataclasses.replace(cell, seed=seed)
    return {
        "key": cell.key, "preset": cell.preset, "method": cell.method, "dataset": cell.dataset,
        "model": cell.model, "seed": seed, "params": cell.params, "config": to_dict(cell),
        "status": "done",
        "metrics": {"top1": 0.5 + seed / 100, "nll": 1.0, "ece": 0.1, "oe": 0.05, **metrics},
        "timings": {"train_seconds": 10.0, "train_images_per_s": 100.0},
    }  # fmt: skip


def test_a_registered_evaluator_runs_with_its_settings_and_reaches_the_leaderboard(
    mean_logit, small
):
    bundle, net = small
    net.train()
    cell = _cell(evaluators=["mean_logit"], options={"mean_logit": {"scale": 2.0}})
    report = run_evaluators(net, bundle, cell, "cpu")
    assert net.training  # flags restored
    metrics = report.metrics
    assert set(metrics["eval_settings"]) == {"evaluators", "mean_logit"}
    assert metrics["eval_settings"]["mean_logit"] == {"examples": 8, "scale": 2.0}
    assert metrics["mean_logit_note"] == "mean logit: a note"
    assert {"mean_logit_seconds", "eval_seconds_mean_logit"} <= set(report.timings)
    once = _cell(evaluators=["mean_logit"], options={"mean_logit": {"scale": 1.0}})
    assert metrics["mean_logit"] == pytest.approx(
        2 * run_evaluators(net, bundle, once, "cpu").metrics["mean_logit"]
    )

    records = [_record(cell, metrics, seed) for seed in (0, 1)]
    (table,) = build_tables(records)
    headers = [c.header for c in table_columns(table)]
    where = headers.index("mean logit")
    assert headers.index("corr. generated (%)") < where < headers.index("train img/s")
    page = render_leaderboard([table], {})
    assert "mean logit: the mean of the logits." in page
    assert "- mean logit: a note" in page
    assert f"| {metrics['mean_logit']:.3f} " in page
    assert "mean logit" in [axis for _, axis in robustness_measures()]


def test_a_column_no_row_has_is_left_out(mean_logit, small):
    cell = _cell(evaluators=["pgd"])
    (table,) = build_tables([_record(cell, {"pgd_top1": 0.1}, 0)])
    headers = [c.header for c in table_columns(table)]
    assert "mean logit" not in headers and "OOD AUROC (%)" not in headers
    assert "PGD (%)" in headers and "FGSM (%)" in headers  # the built-ins are always shown


def test_evaluator_options_are_typed_and_checked():
    with pytest.raises(UsageError, match="unknown evaluator 'odd'"):
        resolve_eval(EvalConfig(options={"odd": {}}))
    with pytest.raises(UsageError, match="unknown key 'sizes' in eval.options.ood"):
        resolve_eval(EvalConfig(options={"ood": {"sizes": 3}}))
    with pytest.raises(UsageError, match="eval.options.ood.in_subset must be of type int"):
        resolve_eval(EvalConfig(options={"ood": {"in_subset": "many"}}))
    with pytest.raises(UsageError, match="takes no settings"):
        resolve_eval(EvalConfig(options={"pgd": {"eps": 1}}))
    with pytest.raises(UsageError, match="matches no evaluator"):
        resolve_eval(EvalConfig(evaluators=["robust*"]))
    # A table of an evaluator that does not run changes nothing and is dropped.
    assert (
        resolve_eval(EvalConfig(evaluators=["pgd"], options={"ood": {"in_subset": 3}})).options
        == {}
    )
    assert resolve_eval(EvalConfig(evaluators=["*"])).evaluators == list_evaluators()


def test_evaluator_options_enter_the_key_only_when_set():
    plain = _cell(evaluators=["pgd", "ood"])
    assert "options" not in plain.identity()["eval"]
    tuned = _cell(evaluators=["pgd", "ood"], options={"ood": {"in_subset": 10}})
    assert tuned.identity()["eval"]["options"] == {"ood": {"in_subset": 10}}
    assert tuned.key != plain.key and tuned.schedule_key() != plain.schedule_key()


def test_set_fills_an_evaluator_table_from_the_command_line():
    matrix = load_preset("short")
    apply_setting(matrix, 'eval.evaluators=["pgd", "ood"]')
    apply_setting(matrix, "eval.options.ood.in_subset=64")
    assert build_cells(matrix)[0].eval.options == {"ood": {"in_subset": 64}}
    with pytest.raises(UsageError, match="no section 'nope'"):
        apply_setting(matrix, "eval.nope.x=1")


def test_evaluators_command_lists_names_settings_and_columns(capsys):
    assert main(["evaluators", "--json"]) == 0
    infos = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    assert list(infos) == list_evaluators()
    assert {"calibration", "fgsm", "pgd", "embedding", "ood"} <= set(infos)
    assert infos["ood"]["settings"]["out_subset"]["default"] == 1000
    assert "OOD AUROC (%)" in [c["header"] for c in infos["ood"]["columns"]]
    assert main(["evaluators"]) == 0
    assert "ood" in capsys.readouterr().out


# ----------------------------------------------------------------------------- OOD


def _image_folder(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        colour = (i * 40 % 256, 255 - i * 30 % 256, 128)
        Image.new("RGB", (20, 12), colour).save(root / f"{i}.png")
    return root


def test_ood_scores_the_test_set_against_folders_and_generated_sets(small, tmp_path):
    bundle, net = small
    folder = _image_folder(tmp_path / "flat", 6)
    options = {"ood": {"in_subset": 32, "out_subset": 16, "sets": [str(folder)]}}
    cell = _cell(evaluators=["ood"], options=options)
    report = run_evaluators(net, bundle, cell, "cpu")
    metrics = report.metrics
    sets = metrics["ood"]["sets"]
    assert list(sets) == ["uniform noise (generated)", "Gaussian noise (generated)", "flat"]
    assert sets["flat"]["examples"] == 6 and sets["uniform noise (generated)"]["examples"] == 16
    assert metrics["ood"]["in_examples"] == 32
    for name in ("auroc", "aupr", "fpr95"):
        values = [s["msp"][name] for s in sets.values()]
        assert metrics[f"ood_{name}"] == pytest.approx(sum(values) / 3)
        assert all(0 <= v <= 1 for v in values)
    assert "synthetic" in metrics["ood_note"]  # the synthetic set is not OOD for synthetic data
    settings = metrics["eval_settings"]["ood"]
    assert settings["out_examples"] == {name: s["examples"] for name, s in sets.items()}
    again = run_evaluators(net, bundle, cell, "cpu").metrics
    assert again["ood"] == metrics["ood"]  # seeded from the cell


def test_ood_settings_refuse_what_cannot_work(tmp_path):
    with pytest.raises(UsageError, match="unknown set 'svhn'"):
        resolve_eval(EvalConfig(options={"ood": {"generated": ["svhn"]}}))
    with pytest.raises(UsageError, match="no OOD set"):
        resolve_eval(EvalConfig(options={"ood": {"generated": []}}))
    cell = _cell(evaluators=["ood"], options={"ood": {"sets": [str(tmp_path / "missing")]}})
    bundle = create_dataset("synthetic", n_train=20, n_test=48)
    net = create_model("preactresnet18", bundle.num_classes, seed=0, width=4)
    with pytest.raises(UsageError, match="missing"):
        run_evaluators(net, bundle, cell, "cpu")


@pytest.mark.parametrize("name", list_evaluators())
def test_every_registered_evaluator_gives_its_columns_or_says_why_not(name, small):
    """Conformance over the registry: each evaluator, alone on a tiny model, stores a metric for
    every column it declares (or a note saying why it was skipped), settings that are JSON, and
    leaves the model as it found it."""
    from mixbench.bench.evaluators import get_evaluator

    bundle, net = small
    net.train()
    cell = _cell(evaluators=[name], attack_subset=8, corruption_subset=4, embedding_subset=16,
                 corruption_severities=[1], pgd_steps=1)  # fmt: skip
    report = run_evaluators(net, bundle, cell, "cpu", clean=True)
    assert net.training
    metrics = report.metrics
    notes = [k for k in metrics if k.endswith("_note")]
    for spec in get_evaluator(name).columns:
        if spec.value is None:
            assert spec.key in metrics or notes, (name, spec.key)
    json.dumps(metrics["eval_settings"])
    assert report.timings[f"eval_seconds_{name}"] >= 0
