"""What is registered about each data set (``DatasetInfo``) and the code that reads it: the
dry-run estimate, the leaderboard's protocol notes and paper reference, the official corruption
benchmark, the evaluators' context and ``mixbench datasets``."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mixbench.bench.evaluators import find_corruption_set
from mixbench.bench.evaluators._official import known_benchmark
from mixbench.bench.evaluators.base import EvalContext
from mixbench.cli import main
from mixbench.config import list_presets, load_matrices
from mixbench.datasets import (
    DATASETS,
    CorruptionBenchmark,
    DatasetBundle,
    DatasetInfo,
    PublishedResult,
    TensorImages,
    create_dataset,
    dataset_info,
    dataset_infos,
    find_dataset_info,
    list_datasets,
    register_dataset,
)
from mixbench.datasets.base import CORRUPTION_LAYOUTS, NEEDS_STYLE_WEIGHTS, PUBLISHED_METRICS
from mixbench.errors import UnknownNameError
from mixbench.leaderboard.protocol import path_check_notice, short_run_warning
from mixbench.leaderboard.reference import paper_results, shown_results
from mixbench.leaderboard.tables import Table
from mixbench.methods import list_methods
from mixbench.models import list_models
from mixbench.registry import Registry

BUILT_IN = ["cifar10", "cifar100", "imagefolder", "imagenet", "synthetic", "tinyimagenet"]


def _factory(root, *, download=False):
    raise AssertionError("the info tests never load data")


@pytest.fixture
def registered():
    """Register test data sets with ``register_dataset(name, info)``; unregistered afterwards."""
    names = []

    def register(name, info=None, factory=_factory):
        register_dataset(name, info)(factory)
        names.append(name)
        return factory

    yield register
    for name in names:
        DATASETS.remove(name)


# ----------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_data_set_has_a_consistent_info(name):
    info = dataset_info(name)
    assert isinstance(info, DatasetInfo)
    assert info.display_name.strip(), f"data set {name!r} has no display name"
    for size in (info.train_size, info.test_size):
        assert size is None or (isinstance(size, int) and size > 0)
    assert info.num_classes is None or info.num_classes >= 2
    if info.image_size is not None:
        assert len(info.image_size) == 2 and all(v > 0 for v in info.image_size)
    if info.corruption_benchmark is not None:
        assert info.corruption_benchmark.layout in CORRUPTION_LAYOUTS
        assert info.corruption_benchmark.folders[0] == info.corruption_benchmark.name
    assert info.paper_epochs is None or info.paper_epochs > 0
    for result in info.published:
        # A row that a preset reproduces names a registered network; one that none does may
        # name the network of its source (PyramidNet-200, OpenMixup's ResNet-18).
        assert result.model in list_models() or result.preset == ""
        if result.preset:
            assert any(result.model in m.models for m in load_matrices(result.preset))
        # A method mixbench cannot train is a reference row, and says why.
        assert result.method in list_methods() or result.note == NEEDS_STYLE_WEIGHTS
        assert result.preset == "" or result.preset in list_presets()
        assert result.top1 is None or 0 < result.top1 <= 100
        assert result.top1 is not None or result.note  # a missing number says why
        assert result.metric in PUBLISHED_METRICS
        assert result.epochs is None or result.epochs > 0
    json.dumps(info.as_dict())


def test_the_built_in_data_sets_state_their_facts():
    assert set(BUILT_IN) <= set(list_datasets())
    facts = {
        name: (i.display_name, i.num_classes, i.train_size, i.test_size, i.image_size)
        for name, i in dataset_infos().items()
        if name in BUILT_IN
    }
    assert facts == {
        "cifar10": ("CIFAR-10", 10, 50_000, 10_000, (32, 32)),
        "cifar100": ("CIFAR-100", 100, 50_000, 10_000, (32, 32)),
        "tinyimagenet": ("Tiny-ImageNet", 200, 100_000, 10_000, (64, 64)),
        "imagenet": ("ImageNet", 1000, 1_281_167, 50_000, (224, 224)),
        "imagefolder": ("imagefolder", None, None, None, None),
        "synthetic": ("synthetic", None, None, None, None),
    }
    epochs = {name: dataset_info(name).paper_epochs for name in BUILT_IN}
    assert epochs == {"cifar10": 2000, "cifar100": 2000, "tinyimagenet": 1200,
                      "imagenet": 300, "imagefolder": None, "synthetic": None}  # fmt: skip
    assert [n for n in BUILT_IN if dataset_info(n).generated] == ["synthetic"]
    benchmarks = {n: dataset_info(n).corruption_benchmark for n in BUILT_IN}
    assert {n: (b.name, b.layout) for n, b in benchmarks.items() if b} == {
        "cifar10": ("CIFAR-10-C", "npy"),
        "cifar100": ("CIFAR-100-C", "npy"),
        "tinyimagenet": ("Tiny-ImageNet-C", "folders"),
        "imagenet": ("ImageNet-C", "folders"),
    }
    assert "cifar10_c" in benchmarks["cifar10"].folders


def test_register_with_info_round_trips_and_remove_forgets_it(registered):
    info = DatasetInfo(
        display_name="Test-Set",
        num_classes=3,
        train_size=123,
        corruption_benchmark=CorruptionBenchmark("Test-Set-C", "npy"),
        paper_epochs=77,
        published=(PublishedResult("preactresnet18", "mixup", 50.0, "smoke", "a paper"),),
        description="three classes",
    )
    registered("test_info_set", info)
    assert dataset_info("test_info_set") == info
    assert dataset_infos()["test_info_set"] is info
    DATASETS.remove("test_info_set")
    assert "test_info_set" not in DATASETS
    registered("test_info_set")  # again, without info: the default, named after it
    assert dataset_info("test_info_set") == DatasetInfo(display_name="test_info_set")


def test_an_empty_display_name_is_the_registered_name_and_bad_infos_are_refused(registered):
    registered("test_unnamed", DatasetInfo(train_size=5))
    assert dataset_info("test_unnamed") == DatasetInfo(display_name="test_unnamed", train_size=5)
    with pytest.raises(TypeError, match="DatasetInfo"):
        register_dataset("test_bad_info", {"display_name": "x"})
    with pytest.raises(ValueError, match="layout"):
        CorruptionBenchmark("X-C", "zip")
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset_info("cifar10").train_size = 1


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownNameError) as error:
        dataset_info("cifar1O")
    message = str(error.value)
    assert "did you mean cifar10, cifar100" in message
    assert "valid data set names: " in message and "tinyimagenet" in message


def test_entry_point_data_sets_keep_the_info_their_module_registers(monkeypatch):
    """An entry point's factory gets the info its module's decorator gave it, else the default."""
    reg: Registry = Registry("thing", "test.group", default_info=lambda n: f"default {n}")

    def with_info():
        reg.add("described", "factory", "its info")  # what the module's decorator does
        return "factory"

    points = [
        SimpleNamespace(name="described", value="pkg:factory", load=with_info),
        SimpleNamespace(name="plain", value="pkg:plain", load=lambda: "plain factory"),
    ]
    monkeypatch.setattr("mixbench.registry.entry_points", lambda group: points)
    assert reg.names() == ["described", "plain"]
    assert reg.get("described") == "factory" and reg.info("described") == "its info"
    assert reg.get("plain") == "plain factory" and reg.info("plain") == "default plain"
    with pytest.raises(UnknownNameError, match="did you mean plain"):
        reg.info("plane")


def test_find_dataset_info_by_display_name(registered):
    assert find_dataset_info("CIFAR-10") is dataset_info("cifar10")
    assert find_dataset_info("Tiny-ImageNet") is dataset_info("tinyimagenet")
    assert find_dataset_info("cifar10-jpeg") is None
    registered("test_named", DatasetInfo(display_name="Named Set", paper_epochs=9))
    assert find_dataset_info("Named Set") is dataset_info("test_named")


def test_a_bundle_without_a_label_is_named_as_its_data_set_is_registered(registered):
    registered("test_labelled", DatasetInfo(display_name="Labelled Set"))
    split = TensorImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))
    bundle = DatasetBundle("test_labelled", 2, ["a", "b"], (4, 4), (0.5,) * 3, (0.2,) * 3,
                           split, split)  # fmt: skip
    assert bundle.display_name == "Labelled Set"
    assert dataclasses.replace(bundle, label="Mine").display_name == "Mine"
    assert dataclasses.replace(bundle, name="not_registered").display_name == "not_registered"
    assert create_dataset("synthetic", n_train=20, n_test=4).display_name == "synthetic"


# ----------------------------------------------------------------------------- the dry run


def _dry_run_total(capsys, *args):
    assert main(["run", "--dry-run", "--methods", "erm", "--seeds", "0", *args]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_dry_run_estimates_the_work_from_the_registered_train_size(registered, capsys):
    registered("test_sized", DatasetInfo(train_size=777, image_size=(32, 32)))
    line = _dry_run_total(capsys, "--datasets", "test_sized", "--epochs", "3")
    assert line == "1 cells, about 2,331 training images to process"
    line = _dry_run_total(capsys, "--datasets", "cifar100", "--epochs", "2")
    assert line == "1 cells, about 100,000 training images to process"
    registered("test_unsized", DatasetInfo(image_size=(32, 32)))
    line = _dry_run_total(capsys, "--datasets", "test_unsized", "--epochs", "3")
    assert line.endswith("(some data set sizes unknown)")


def test_dry_run_checks_models_against_the_registered_image_size(registered, capsys):
    registered("test_tiny_images", DatasetInfo(train_size=100, image_size=(8, 8)))
    args = ["run", "--dry-run", "--methods", "erm", "--datasets", "test_tiny_images"]
    assert main([*args, "--models", "resnet50"]) == 2
    assert "needs images of at least" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the leaderboard


def _table(dataset, data_name="", epochs=30):
    return Table(
        preset="short",
        dataset=dataset,
        model="preactresnet18",
        model_options={},
        dataset_options={},
        schedule={"epochs": epochs},
        eval={},
        schedule_key="s",
        data_name=data_name,
    )


def test_short_run_warning_finds_the_papers_epochs_through_the_info(registered):
    warning = short_run_warning(_table("imagefolder", "CIFAR-10"))
    assert "the papers' protocol for CIFAR-10 is 2,000 epochs on GPUs" in warning
    assert "the papers' protocol for Tiny-ImageNet is 1,200 epochs" in short_run_warning(
        _table("tinyimagenet", "Tiny-ImageNet")
    )
    unknown = short_run_warning(_table("imagefolder", "cifar10-jpeg"))
    assert "the papers' protocols train for 300 to 2,000 epochs on GPUs" in unknown
    assert short_run_warning(_table("imagenet", "ImageNet", epochs=300)) is None

    registered("test_paper", DatasetInfo(display_name="Paper Set", paper_epochs=77))
    assert "the papers' protocol for Paper Set is 77 epochs" in short_run_warning(
        _table("imagefolder", "Paper Set")
    )
    assert short_run_warning(_table("imagefolder", "Paper Set", epochs=77)) is None
    # the table's own data set's info where the stored name is not a registered display name
    assert "protocol for odd is 77 epochs" in short_run_warning(_table("test_paper", "odd"))


def test_tables_on_generated_data_only_check_the_path(registered):
    assert path_check_notice(_table("synthetic")) is not None
    assert path_check_notice(_table("cifar10", "CIFAR-10")) is None
    assert path_check_notice(_table("not_registered")) is None
    registered("test_generated", DatasetInfo(generated=True))
    notice = short_run_warning(_table("test_generated"))
    assert notice.startswith("**These numbers only check the path")


def test_paper_reference_comes_from_the_registered_published_results(registered):
    results = paper_results()
    assert [(r.data, r.model, r.method, r.top1, r.epochs, r.metric) for r in results] == [
        ("CIFAR-10", "preactresnet18", "alignmixup", 97.05, 2000, "best"),
        ("CIFAR-10", "wrn16_8", "alignmixup", 96.91, 2000, "best"),
        ("CIFAR-10", "pyramidnet200", "fmix", 98.64, None, "unknown"),
        ("CIFAR-10", "preactresnet18", "stylemix", None, None, "unknown"),
        ("CIFAR-10", "preactresnet18", "stylecutmix", None, None, "unknown"),
        ("CIFAR-100", "preactresnet18", "alignmixup", 81.71, 2000, "best"),
        ("CIFAR-100", "wrn16_8", "alignmixup", 81.23, 2000, "best"),
        ("CIFAR-100", "preactresnet18", "saliencymix", 80.31, 300, "unknown"),
        ("CIFAR-100", "preactresnet18", "puzzlemix", 80.4, 1200, "unknown"),
        ("CIFAR-100", "preactresnet18", "comixup", 80.19, 300, "last"),
        ("CIFAR-100", "preactresnet18", "fmix", 79.85, 200, "unknown"),
        ("CIFAR-100", "preactresnet18", "guidedmixup", 81.2, None, "unknown"),
        ("CIFAR-100", "resnet18", "resizemix", 79.56, 200, "median of last 10"),
        ("CIFAR-100", "resnet18", "resizemix", 79.19, 400, "median of last 10"),
        ("CIFAR-100", "resnet18", "resizemix", 80.01, 800, "median of last 10"),
        ("CIFAR-100", "resnet18", "resizemix", 79.23, 1200, "median of last 10"),
        ("CIFAR-100", "resnet18", "gridmixup", 78.23, 200, "median of last 10"),
        ("CIFAR-100", "resnet18", "gridmixup", 78.6, 400, "median of last 10"),
        ("CIFAR-100", "resnet18", "gridmixup", 78.72, 800, "median of last 10"),
        ("CIFAR-100", "resnet18", "gridmixup", 77.58, 1200, "median of last 10"),
        ("CIFAR-100", "resnet18", "smoothmix", 77.9, 200, "median of last 10"),
        ("CIFAR-100", "resnet18", "smoothmix", 78.77, 400, "median of last 10"),
        ("CIFAR-100", "resnet18", "smoothmix", 78.69, 800, "median of last 10"),
        ("CIFAR-100", "resnet18", "smoothmix", 78.38, 1200, "median of last 10"),
        ("CIFAR-100", "preactresnet18", "stylemix", None, None, "unknown"),
        ("CIFAR-100", "preactresnet18", "stylecutmix", None, None, "unknown"),
        ("Tiny-ImageNet", "preactresnet18", "alignmixup", 66.87, 1200, "best"),
        ("Tiny-ImageNet", "preactresnet18", "puzzlemix", 63.9, 1200, "unknown"),
        ("ImageNet", "resnet50", "alignmixup", 79.32, 300, "best"),
        ("ImageNet", "resnet50", "saliencymix", 78.74, 300, "best"),
        ("ImageNet", "resnet50", "puzzlemix", 78.76, 300, "best"),
        ("ImageNet", "resnet101", "fmix", 76.72, 90, "unknown"),
    ]
    assert {r.preset for r in results} == {
        "paper-cifar10", "paper-cifar100", "paper-tinyimagenet", "paper-imagenet",
        "paper-puzzlemix-cifar100", "paper-comixup-cifar100", "",
    }  # fmt: skip
    with pytest.raises(ValueError, match="metric must be one of"):
        PublishedResult("preactresnet18", "mixup", 1.0, "", "a paper", metric="median")
    published = PublishedResult("preactresnet18", "mixup", 42.0, "smoke", "a paper")
    registered("test_published", DatasetInfo(display_name="Pub Set", published=(published,)))
    shown = shown_results([_table("imagefolder", "Pub Set")])
    (mine,) = [r for r in shown if r.dataset == "test_published"]
    assert (mine.data, mine.dataset, mine.top1) == ("Pub Set", "test_published", 42.0)
    # A table on one benchmark shows the targets of every benchmark; other data, none.
    everything = {"CIFAR-10", "CIFAR-100", "Tiny-ImageNet", "ImageNet", "Pub Set"}
    assert {r.data for r in shown} == everything
    assert {r.data for r in shown_results([_table("imagefolder", "CIFAR-100")])} == everything
    assert shown_results([_table("synthetic", "synthetic")]) == []


# ----------------------------------------------------------------------------- corruptions


def test_benchmark_names_resolve_through_the_infos(registered):
    cifar10 = dataset_info("cifar10").corruption_benchmark
    for name in ("cifar10", "CIFAR-10", "CIFAR-10-C", "cifar10_c", "Cifar10C"):
        assert known_benchmark(name) == cifar10, name
    assert known_benchmark("tiny_imagenet").name == "Tiny-ImageNet-C"
    assert known_benchmark("imagefolder") is None and known_benchmark("synthetic") is None
    registered("test_bench", DatasetInfo(corruption_benchmark=CorruptionBenchmark(
        "Test-C", "npy", ("test_c",))))  # fmt: skip
    assert known_benchmark("test_bench").name == "Test-C"
    assert known_benchmark("TEST-C") == known_benchmark("test-bench")


def test_a_registered_benchmark_is_found_in_its_accepted_folders(registered, tmp_path):
    benchmark = CorruptionBenchmark("Mine-C", "npy", ("mine_c",))
    registered("test_mine", DatasetInfo(corruption_benchmark=benchmark))
    folder = tmp_path / "mine_c"
    folder.mkdir()
    np.save(folder / "fog.npy", np.zeros((10, 4, 4, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", np.zeros(10, dtype=np.int64))
    for name in ("test_mine", benchmark):
        found, reason = find_corruption_set(tmp_path, name)
        assert found is not None, reason
        assert (found.name, found.path, found.layout) == ("Mine-C", folder, "npy")
        assert found.corruptions == ("fog",)
    found, reason = find_corruption_set(tmp_path / "elsewhere", "test_mine")
    assert found is None and "Mine-C not found under" in reason


def _context(dataset, label=""):
    bundle = SimpleNamespace(display_name=label or dataset)
    cell = SimpleNamespace(dataset=dataset)
    return EvalContext(None, None, bundle, cell, device=None, amp_dtype=None)


def test_the_evaluators_context_carries_the_info_with_the_bundles_name():
    info = _context("cifar10", "CIFAR-10").info
    assert info is dataset_info("cifar10")
    folder = _context("imagefolder", "CIFAR-10").info
    assert folder.display_name == "CIFAR-10" and folder.corruption_benchmark is None
    assert folder == dataclasses.replace(dataset_info("imagefolder"), display_name="CIFAR-10")
    assert _context("not_registered", "Mine").info == DatasetInfo(display_name="Mine")


def test_official_corruptions_look_for_the_benchmark_of_the_contexts_info(registered, tmp_path):
    from mixbench.bench.evaluators.builtin.corruptions import official_source

    benchmark = CorruptionBenchmark("Ctx-C", "npy")
    registered("test_ctx", DatasetInfo(corruption_benchmark=benchmark))
    cell = SimpleNamespace(
        dataset="imagefolder",
        eval=SimpleNamespace(corruption_benchmark=None, corruption_severities=[1]),
        runtime=SimpleNamespace(data_root=str(tmp_path)),
    )
    bundle = SimpleNamespace(class_names=["a"], image_size=(4, 4), num_classes=1, name="x")
    found, reason = official_source(bundle, cell)
    assert found is None and "known for data set 'imagefolder'" in reason
    assert "set eval.corruption_benchmark" in reason
    found, reason = official_source(bundle, cell, dataset_info("test_ctx"))
    assert found is None and "Ctx-C not found under" in reason
