"""The post-training evaluation suite: wiring into every cell, `mixbench evaluate`, determinism."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from mixbench.bench.evaluators import (
    NormalizedModel,
    draw_subset,
    evaluator_generator,
    list_evaluators,
    take_examples,
)
from mixbench.bench.evaluators.builtin.adversarial import adversarial_accuracy, attack_settings
from mixbench.bench.run.cells import build_cells, resolve_eval
from mixbench.bench.run.evaluate import run_evaluators
from mixbench.cli import main
from mixbench.config import EvalConfig, apply_setting, load_preset
from mixbench.datasets import create_dataset
from mixbench.errors import UsageError
from mixbench.models import create_model

from .conftest import TINY, run_cli

METRIC_KEYS = {
    "top1",
    "nll",
    "ece",
    "oe",
    "fgsm_top1",
    "pgd_top1",
    "attack_clean_top1",
    "corruption_generated_top1",
    "alignment",
    "uniformity",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One ERM cell of the tiny smoke matrix, trained for an epoch, evaluators included."""
    out = tmp_path_factory.mktemp("evaluate") / "run"
    cheap = ["--set", "eval.corruption_subset=16", "--set", "eval.attack_subset=128"]
    args = ["run", "--preset", "smoke", "--methods", "erm", "--out", str(out), *TINY, *cheap]
    assert main(args) == 0
    return out


def _stored(out: Path) -> tuple[dict, dict, dict]:
    con = sqlite3.connect(out / "results.db")
    try:
        metrics, timings, config = con.execute(
            "SELECT metrics, timings, config FROM cells"
        ).fetchone()
    finally:
        con.close()
    return json.loads(metrics), json.loads(timings), json.loads(config)


def _checkpoint(out: Path) -> Path:
    (path,) = (out / "cells").glob("*/checkpoint_1.pt")
    return path


# ----------------------------------------------------------------------------- in the pipeline


def test_every_cell_stores_the_evaluators_metrics_settings_and_times(tiny_run):
    metrics, timings, config = _stored(tiny_run)
    assert set(metrics) >= METRIC_KEYS
    # The preset's evaluator settings are part of the stored config.
    assert config["eval"]["evaluators"] == list_evaluators()  # smoke lists none: every one
    assert config["eval"]["attack_subset"] == 128
    settings = metrics["eval_settings"]
    assert settings["attack"]["fgsm_eps"] == pytest.approx(8 / 255)
    assert settings["attack"]["pgd_step_size"] == pytest.approx(2 / 255)
    assert settings["attack"]["pgd_steps"] == 10
    assert settings["attack"]["examples"] == 128  # the whole tiny test set
    assert settings["generated_corruptions"]["examples"] == 16
    assert settings["embedding"]["examples"] == 128
    # Generated corruptions: named as such, every corruption and severity kept.
    generated = metrics["corruption_generated"]
    assert generated["official"] is False
    assert set(generated["per_corruption"]) == set(EvalConfig.GENERATED)
    assert all(len(v) == 3 for v in generated["per_severity"].values())
    assert generated["severities"] == [1, 3, 5]
    mean = sum(generated["per_corruption"].values()) / len(generated["per_corruption"])
    assert metrics["corruption_generated_top1"] == pytest.approx(mean)
    # No official files for the synthetic data: skipped with a note, never a number.
    assert "corruption_official_top1" not in metrics
    assert "skipped" in metrics["corruption_official_note"]
    # Embedding quality: alignment in [0, 4], uniformity <= 0.
    assert 0 <= metrics["alignment"] <= 4 and metrics["uniformity"] <= 0
    # Evaluation time per cell, per evaluator.
    for name in ("fgsm", "pgd", "generated_corruptions", "embedding"):
        assert timings[f"eval_seconds_{name}"] >= 0
    assert timings["evaluators_seconds"] >= timings["eval_seconds_pgd"]


def test_smoke_runs_the_ood_evaluator_and_its_leaderboard_shows_it(tiny_run):
    metrics, _, config = _stored(tiny_run)
    options = load_preset("smoke").eval.options
    assert config["eval"]["options"] == options and set(options["ood"]) >= {"out_subset"}
    assert 0 <= metrics["ood_auroc"] <= 1 and 0 <= metrics["ood_fpr95"] <= 1
    assert set(metrics["ood"]["sets"]) == {
        "uniform noise (generated)",
        "Gaussian noise (generated)",
    }
    page = (tiny_run / "LEADERBOARD.md").read_text()  # written by mixbench run
    assert "OOD AUROC (%)" in page and "OOD FPR95 (%)" in page
    assert "OOD AUROC / AUPR / FPR95: out-of-distribution detection" in page
    per_set = options["ood"]["out_subset"]
    assert f"uniform noise (generated) ({per_set})" in page and "not a named OOD benchmark" in page
    assert "the generated synthetic set is skipped" in page  # the note under the table


def test_attacks_lower_accuracy_and_never_raise_it_above_clean(tiny_run):
    metrics, _, _ = _stored(tiny_run)
    clean = metrics["attack_clean_top1"]
    assert clean > 0
    assert metrics["fgsm_top1"] < clean and metrics["pgd_top1"] < clean
    # The attack subset is the whole test set here, so its clean accuracy is the stored top-1.
    assert clean == pytest.approx(metrics["top1"])


def test_evaluate_same_checkpoint_twice_gives_the_stored_numbers(tiny_run, capsys):
    ckpt = str(_checkpoint(tiny_run))
    assert main(["evaluate", ckpt, "--json", "--device", "cpu"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["evaluate", ckpt, "--json", "--device", "cpu"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["metrics"] == second["metrics"]
    assert METRIC_KEYS | {"mce", "reliability", "eval_settings"} <= set(first["metrics"])
    assert first["epoch"] == 1 and first["method"] == "erm"
    stored, _, _ = _stored(tiny_run)
    for key in METRIC_KEYS:
        assert first["metrics"][key] == pytest.approx(stored[key], abs=1e-9), key
    assert first["metrics"]["corruption_generated"] == stored["corruption_generated"]


def test_evaluate_prints_json_from_the_command_line(tiny_run):
    result = run_cli("evaluate", str(_checkpoint(tiny_run)), "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["metrics"]) >= METRIC_KEYS
    assert {"evaluators_seconds", "eval_seconds_pgd", "eval_seconds_clean"} <= set(data["timings"])


def test_evaluate_prints_a_table_without_json(tiny_run, capsys):
    assert main(["evaluate", str(_checkpoint(tiny_run)), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "pgd_top1" in text and "corruption_official_note" in text and "epoch 1" in text
    # Percentages, as the leaderboard prints them (the stored metrics are fractions).
    metrics, _, _ = _stored(tiny_run)
    (top1_line,) = [line for line in text.splitlines() if line.split()[:1] == ["top1"]]
    assert top1_line.split()[1:] == [f"{100 * metrics['top1']:.2f}", "%"]


def test_evaluate_refuses_missing_files_with_one_line(tmp_path, tiny_run, capsys):
    assert main(["evaluate", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "checkpoint_1.pt").write_bytes(_checkpoint(tiny_run).read_bytes())
    assert main(["evaluate", str(lone / "checkpoint_1.pt")]) == 2
    err = capsys.readouterr().err
    assert "cell.json" in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cell.json").write_text((_checkpoint(tiny_run).parent / "cell.json").read_text())
    (broken / "checkpoint_1.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(broken / "checkpoint_1.pt")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- unit level


@pytest.fixture(scope="module")
def small():
    """A synthetic bundle, an untrained small network and an ERM cell that uses them."""
    bundle = create_dataset("synthetic", n_train=20, n_test=48)
    net = create_model("preactresnet18", bundle.num_classes, seed=0, width=4).eval()
    return bundle, net


def _cell(**eval_options):
    matrix = load_preset("smoke")
    matrix.methods = ["erm"]
    matrix.dataset_options = {"synthetic": {"n_train": 20, "n_test": 48}}
    matrix.model_options = {"preactresnet18": {"width": 4}}
    matrix.eval = dataclasses.replace(EvalConfig(), batch_size=16, **eval_options)
    matrix.runtime.device = "cpu"
    return build_cells(matrix)[0]


def test_only_the_listed_evaluators_run(small):
    bundle, net = small
    cell = _cell(evaluators=["pgd", "embedding"], attack_subset=8, pgd_steps=2)
    report = run_evaluators(net, bundle, cell, "cpu")
    assert {"pgd_top1", "attack_clean_top1", "alignment", "uniformity"} <= set(report.metrics)
    assert not {"fgsm_top1", "corruption_generated_top1", "corruption_official_note"} & set(
        report.metrics
    )
    assert report.metrics["eval_settings"]["evaluators"] == ["pgd", "embedding"]
    assert "fgsm_eps" not in report.metrics["eval_settings"]["attack"]
    assert set(report.timings) == {
        "eval_seconds_pgd",
        "eval_seconds_embedding",
        "evaluators_seconds",
    }


def test_evaluation_is_deterministic_and_seeded_from_the_cell(small):
    bundle, net = small
    options = {
        "evaluators": ["pgd", "generated_corruptions", "embedding"],
        "attack_subset": 12,
        "corruption_subset": 10,
        "corruption_severities": [2, 5],
        "embedding_subset": 20,
        "pgd_steps": 1,
    }
    cell = _cell(**options)
    a = run_evaluators(net, bundle, cell, "cpu").metrics
    b = run_evaluators(net, bundle, cell, "cpu").metrics
    assert a == b
    other = dataclasses.replace(cell, seed=1)
    c = run_evaluators(net, bundle, other, "cpu").metrics
    assert c["alignment"] != a["alignment"]  # another seed, another subsample


def test_subsets_and_streams_depend_on_seed_and_purpose():
    g = evaluator_generator
    assert torch.equal(draw_subset(100, 10, g(0, "attack")), draw_subset(100, 10, g(0, "attack")))
    assert not torch.equal(
        draw_subset(100, 10, g(0, "attack")), draw_subset(100, 10, g(1, "attack"))
    )
    assert not torch.equal(draw_subset(100, 10, g(0, "attack")), draw_subset(100, 10, g(0, "pgd")))
    chosen = draw_subset(100, 10, g(0, "attack"))
    assert chosen.tolist() == sorted(set(chosen.tolist())) and len(chosen) == 10
    assert torch.equal(draw_subset(5, None, g(0, "x")), torch.arange(5))


def test_attack_settings_follow_the_image_size_unless_set():
    assert attack_settings(EvalConfig(), (32, 32)) == {
        "fgsm_eps": 8 / 255,
        "pgd_eps": 8 / 255,
        "pgd_step_size": 2 / 255,
        "pgd_steps": 10,
    }
    large = attack_settings(EvalConfig(), (64, 64))
    assert large["pgd_eps"] == 4 / 255 and large["pgd_step_size"] == 1 / 255
    mine = attack_settings(EvalConfig(fgsm_eps=0.01, pgd_steps=3), (64, 64))
    assert mine["fgsm_eps"] == 0.01 and mine["pgd_steps"] == 3 and mine["pgd_eps"] == 4 / 255


def test_adversarial_accuracy_attacks_only_correct_examples(small):
    bundle, net = small
    images, labels = take_examples(bundle.test, torch.arange(16))
    model = NormalizedModel(net, bundle.mean, bundle.std)
    with torch.no_grad():
        predicted = model(images.float() / 255).argmax(1)
    labels = predicted.clone()  # every example correct: clean accuracy 1
    labels[:4] = (labels[:4] + 1) % 10  # four wrong ones
    before = [p.detach().clone() for p in net.parameters()]
    result = adversarial_accuracy(
        model, images, labels, fgsm_eps=8 / 255, pgd_eps=8 / 255, pgd_steps=3, batch_size=5
    )
    assert result["clean_top1"] == pytest.approx(12 / 16) and result["examples"] == 16
    assert result["fgsm_top1"] <= 12 / 16 and result["pgd_top1"] <= 12 / 16
    none = adversarial_accuracy(model, images, labels, fgsm_eps=0.0, pgd_eps=None)
    assert none["fgsm_top1"] == pytest.approx(12 / 16) and "pgd_top1" not in none
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert not net.training


def test_validation_cells_of_tuning_skip_the_evaluators(small):
    bundle, net = small
    cell = _cell()
    cell = dataclasses.replace(cell, dataset_options={**cell.dataset_options, "validation": 10})
    report = run_evaluators(net, bundle, cell, "cpu")
    assert report.metrics["eval_settings"]["evaluators"] == []
    assert set(report.timings) == {"evaluators_seconds"}


# ----------------------------------------------------------------------------- official files


def _write_cifar_c(root: Path, images: torch.Tensor, labels: torch.Tensor, names: list[str]):
    """A CIFAR-10-C folder in the official format whose every severity holds ``images``."""
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True)
    hwc = images.permute(0, 2, 3, 1).numpy()
    for name in names:
        np.save(folder / f"{name}.npy", np.concatenate([hwc] * 5))
    np.save(folder / "labels.npy", np.tile(labels.numpy().astype(np.int64), 5))
    return folder


def test_official_corruptions_are_skipped_with_a_note_when_absent(small, tmp_path):
    bundle, net = small
    cell = _cell(evaluators=["official_corruptions"], corruption_benchmark="CIFAR-10-C")
    cell.runtime.data_root = str(tmp_path)
    report = run_evaluators(net, bundle, cell, "cpu")
    note = report.metrics["corruption_official_note"]
    assert "CIFAR-10-C not found under" in note and str(tmp_path) in note
    assert "corruption_official_top1" not in report.metrics


@pytest.mark.parametrize("shift, expected", [(0, 1.0), (1, 0.0)])
def test_official_corruptions_are_used_when_present(small, tmp_path, shift, expected):
    """Files of clean test images labelled with the model's own predictions (shifted by one)
    give an accuracy of exactly 1 (0) for every corruption and severity."""
    bundle, net = small
    images, _ = take_examples(bundle.test, torch.arange(48))
    model = NormalizedModel(net, bundle.mean, bundle.std)
    with torch.no_grad():
        predicted = model(images.float() / 255).argmax(1)
    _write_cifar_c(tmp_path, images, (predicted + shift) % 10, ["gaussian_noise", "fog"])
    cell = _cell(
        evaluators=["official_corruptions"],
        corruption_benchmark="CIFAR-10-C",
        official_subset=20,
    )
    cell.runtime.data_root = str(tmp_path / "cifar10-jpeg")  # found beside the data root too
    report = run_evaluators(net, bundle, cell, "cpu")
    result = report.metrics["corruption_official"]
    assert result["benchmark"] == "CIFAR-10-C" and result["official"] is True
    assert list(result["per_corruption"]) == ["gaussian_noise", "fog"]  # benchmark order
    assert len(result["missing"]) == 13 and result["examples"] == 20
    assert all(v == [expected] * 5 for v in result["per_severity"].values())
    assert report.metrics["corruption_official_top1"] == expected
    assert "corruption_official_note" not in report.metrics
    settings = report.metrics["eval_settings"]["official_corruptions"]
    assert settings["benchmark"] == "CIFAR-10-C" and settings["examples"] == 20


def test_official_corruptions_of_another_image_size_are_skipped(small, tmp_path):
    bundle, net = small
    images, labels = take_examples(bundle.test, torch.arange(8))
    _write_cifar_c(tmp_path, images[:, :, :16, :16].contiguous(), labels, ["fog"])
    cell = _cell(evaluators=["official_corruptions"], corruption_benchmark="CIFAR-10-C")
    cell.runtime.data_root = str(tmp_path)
    report = run_evaluators(net, bundle, cell, "cpu")
    assert "16x16" in report.metrics["corruption_official_note"]


# ----------------------------------------------------------------------------- config


def test_eval_config_refuses_bad_settings():
    with pytest.raises(UsageError, match="unknown evaluator 'robustness'"):
        resolve_eval(EvalConfig(evaluators=["robustness"]))
    with pytest.raises(UsageError, match="attack_subset"):
        EvalConfig(attack_subset=0)
    with pytest.raises(UsageError, match="severities"):
        EvalConfig(corruption_severities=[0, 6])
    with pytest.raises(UsageError, match="unknown generated corruption 'snow'"):
        resolve_eval(EvalConfig(generated_corruptions=["snow"]))
    matrix = load_preset("smoke")
    with pytest.raises(UsageError, match="pixel units"):
        apply_setting(matrix, "eval.pgd_eps=8")
    apply_setting(matrix, 'eval.evaluators=["pgd"]')
    assert build_cells(matrix)[0].eval.evaluators == ["pgd"]


def test_presets_store_their_evaluator_settings():
    smoke, short = load_preset("smoke").eval, load_preset("short").eval
    assert resolve_eval(smoke).evaluators == list_evaluators()
    assert smoke.attack_subset and smoke.corruption_subset and smoke.embedding_subset
    assert short.attack_subset == 2000 and short.corruption_subset == 1000
    paper = load_preset("paper-cifar10").eval
    assert paper.attack_subset is None and paper.corruption_subset is None  # full test set
