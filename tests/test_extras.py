"""Optional extras of the methods (``MixMethod.requires``), and the data-statistics hook
(``MixMethod.bind_data``) that the engine calls once per cell."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch.nn.functional as F

from mixbench.bench.run.cells import build_cells
from mixbench.bench.train.engine import build_training
from mixbench.cli import main
from mixbench.config import load_preset
from mixbench.errors import UsageError
from mixbench.methods import (
    METHODS,
    MixMethod,
    check_requirements,
    get_method,
    get_method_class,
    list_methods,
    method_info,
    requirement_message,
)
from mixbench.methods.extras import EXTRAS, extra_available

from . import conftest
from .conftest import TINY

SALIENCY_LINE = (
    "method 'saliencymix' needs the optional extra 'saliency' "
    "(opencv-contrib-python-headless): pip install 'mixbench[saliency]'"
)


@pytest.fixture
def no_cv2(monkeypatch):
    """OpenCV as if it were not installed: ``find_spec`` finds nothing, ``import`` fails."""
    monkeypatch.setitem(sys.modules, "cv2", None)


def test_extras_name_their_packages() -> None:
    assert EXTRAS["saliency"] == ("cv2", "opencv-contrib-python-headless")
    assert EXTRAS["graphcut"] == ("gco", "gco-wrapper")


def test_importing_mixbench_imports_neither_cv2_nor_gco() -> None:
    code = (
        "import sys, mixbench, mixbench.methods, mixbench.cli; "
        "from mixbench.methods import functional; "
        "print('cv2' in sys.modules, 'gco' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_check_requirements_passes_when_installed_and_for_methods_without_extras() -> None:
    for name in list_methods():
        cls = get_method_class(name)
        if not cls.requires:
            check_requirements(cls)
            check_requirements(get_method(name))
    if extra_available("saliency"):
        check_requirements(get_method_class("saliencymix"))


def test_a_missing_extra_is_one_usage_line(no_cv2) -> None:
    assert not extra_available("saliency")
    cls = get_method_class("saliencymix")
    with pytest.raises(UsageError) as info:
        check_requirements(cls)
    assert str(info.value) == SALIENCY_LINE
    assert requirement_message(cls()) == SALIENCY_LINE  # an instance works too
    # The method stays registered, listed and described.
    assert "saliencymix" in list_methods()
    assert method_info("saliencymix")["requires"] == ["saliency"]
    assert conftest.missing_extra("saliencymix") == SALIENCY_LINE


def test_methods_json_lists_requires(capsys, no_cv2) -> None:
    assert main(["methods", "--json"]) == 0
    info = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert info["saliencymix"]["requires"] == ["saliency"]
    assert info["erm"]["requires"] == [] and info["cutmix"]["requires"] == []


def test_run_with_a_missing_extra_exits_2_before_writing(tmp_path, capsys, no_cv2) -> None:
    out = tmp_path / "out"
    args = ["run", "--preset", "smoke", "--methods", "erm,saliencymix", "--out", str(out)]
    assert main([*args, *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mixbench: error: {SALIENCY_LINE}"]
    assert not out.exists() and not any(tmp_path.rglob("*.db"))


GRAPHCUT_LINE = (
    "method 'puzzlemix' needs the optional extra 'graphcut' (gco-wrapper): "
    "pip install 'mixbench[graphcut]'"
)


def test_run_without_gco_exits_2_before_writing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gco", None)
    out = tmp_path / "out"
    args = ["run", "--preset", "smoke", "--methods", "erm,puzzlemix", "--out", str(out)]
    assert main([*args, *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mixbench: error: {GRAPHCUT_LINE}"]
    assert not out.exists() and not any(tmp_path.rglob("*.db"))
    assert "puzzlemix" in list_methods()


def test_registration_checks_requires() -> None:
    class Bad(MixMethod):
        requires = ("no-such-extra",)

        def loss(self, model, images, labels):
            return F.cross_entropy(model(images), labels)

    with pytest.raises(TypeError, match="optional extras"):
        METHODS.add("bad_requires_test", Bad)
    assert "bad_requires_test" not in list_methods()


def test_conformance_tests_skip_a_method_whose_extra_is_missing(no_cv2) -> None:
    markers: list = []
    item = SimpleNamespace(
        callspec=SimpleNamespace(params={"name": "saliencymix", "params": {}}),
        add_marker=markers.append,
    )
    other = SimpleNamespace(
        callspec=SimpleNamespace(params={"name": "cutmix"}), add_marker=markers.append
    )
    conftest.pytest_collection_modifyitems(None, [item, other])
    assert len(markers) == 1 and markers[0].kwargs["reason"] == SALIENCY_LINE
    assert "saliencymix" not in conftest.installed_methods()


# -- bind_data --------------------------------------------------------------------------------


class Binds(MixMethod):
    """A test method that records the statistics it is bound to."""

    bound: list = []

    def bind_data(self, mean, std):
        type(self).bound.append((tuple(mean), tuple(std)))

    def loss(self, model, images, labels):
        return F.cross_entropy(model(images), labels)


@pytest.fixture
def binds():
    Binds.bound = []
    METHODS.add("binds_test", Binds)
    yield "binds_test"
    METHODS.remove("binds_test")


def test_base_bind_data_is_a_no_op() -> None:
    method = get_method("erm")
    state = dict(vars(method))
    method.bind_data((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert vars(method) == state


def test_the_engine_binds_the_data_sets_statistics_once_per_cell(binds) -> None:
    matrix = load_preset("smoke")
    matrix.methods = [binds]
    matrix.dataset_options = {"synthetic": {"n_train": 64, "n_test": 16}}
    matrix.model_options = {"preactresnet18": {"width": 4}}
    matrix.runtime.device = "cpu"
    cell = build_cells(matrix)[0]
    parts = build_training(cell)
    assert Binds.bound == [(tuple(parts.bundle.mean), tuple(parts.bundle.std))]
    assert len(parts.bundle.mean) == 3 and all(s > 0 for s in parts.bundle.std)
    assert isinstance(parts.method, Binds)
