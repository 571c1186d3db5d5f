"""Measured compute: network passes and BatchNorm updates per training step, in the engine, in
`mixbench perf`, and on the leaderboard."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
import torch.nn.functional as F

from mixbench.bench.train.compute import ComputeCounter
from mixbench.cli import main
from mixbench.methods import METHODS, MixMethod, get_method, get_method_class, list_methods
from mixbench.models import create_model

from .conftest import TINY, net_for


class TwoPasses(MixMethod):
    """A test method that runs the network twice per step (clean and flipped images)."""

    def loss(self, model, images, labels):
        return F.cross_entropy(model(images), labels) + F.cross_entropy(
            model(images.flip(-1)), labels
        )


@pytest.fixture
def two_passes():
    METHODS.add("two_passes_test", TwoPasses)
    yield "two_passes_test"
    METHODS.remove("two_passes_test")


#: Variants whose passes differ from the class's declared ``forward_passes``.
PASS_VARIANTS: list[tuple[str, dict]] = [
    ("guidedmixup", {"guided_type": "ap"}),
    ("guidedmixup", {"guided_type": "ap", "clean_lam": 1.0, "loss": "bce"}),
]


def _variants() -> list[tuple[str, dict]]:
    """Every built-in method with its defaults, every named parameter set, and the variants
    whose passes differ."""
    out = []
    for name in list_methods():
        out.append((name, {}))
        for values in get_method_class(name).param_sets.values():
            out.append((name, dict(values)))
    return out + PASS_VARIANTS


def _counted(name: str, params: dict, steps: int = 12) -> ComputeCounter:
    model = net_for(name)
    counter = ComputeCounter(model)
    method = get_method(name, **params)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32, generator=g), torch.randint(10, (8,), generator=g)
    for seed in range(steps):  # several seeds: both sides of every method's coins
        method.seed(seed)
        with counter.in_step(images.shape[0]):  # as the engine: passes in units of b images
            loss = method.loss(model, images, labels)
        loss.backward()
        counter.step()
    with torch.no_grad():  # evaluation does not count as training compute
        model.eval()
        model(images)
    return counter


@pytest.mark.parametrize("name,params", _variants(), ids=lambda v: str(v))
def test_every_built_in_method_runs_the_network_as_often_as_it_declares(name, params):
    cls = get_method_class(name)
    params = {**params, **({"prob": 1.0} if "prob" in cls.params else {})}
    counter = _counted(name, params)
    method = get_method(name, **params)
    # The declared passes of these parameters (GuidedMixup's "ap" variant adds a saliency pass;
    # by default they are the class's forward_passes).
    assert counter.passes_per_step() == float(method.passes_per_step())
    assert get_method(name).passes_per_step() == cls.forward_passes  # the declared default
    # A saliency pass in eval mode (PuzzleMix's and Co-Mixup's with clean_lam = 0) updates no
    # BatchNorm statistics; every other pass does (GuidedMixup's runs in train mode).
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in net_for(name).modules()):
        assert counter.bn_updates_per_step() == float(method.bn_updates_per_step())
    else:  # a ViT (TransMix's network) has no BatchNorm: nothing to count
        assert counter.bn_updates_per_step() is None


def test_a_call_on_twice_the_batch_counts_two_passes_and_one_update():
    model = create_model("preactresnet18", 10, width=4, seed=0).train()
    counter = ComputeCounter(model)
    images = torch.randn(4, 3, 32, 32)
    with counter.in_step(2):
        model(images)  # 4 rows of a 2-image batch
    assert counter.passes == 2.0 and counter.bn_updates == len(counter._norms)
    with counter.in_step(4):
        model(images[:2])  # half a batch: half a pass
    assert counter.passes == 2.5
    with counter.in_step():
        model(images)  # no batch named: a call is a pass
    assert counter.passes == 3.5
    counter.step()
    state = counter.state_dict()
    again = ComputeCounter(create_model("preactresnet18", 10, width=4, seed=0))
    again.load_state_dict(state)
    assert again.passes_per_step() == 3.5
    counter.remove()


def test_a_method_that_runs_the_network_twice_counts_two(two_passes):
    counter = _counted(two_passes, {}, steps=3)
    assert counter.passes_per_step() == 2.0 and counter.bn_updates_per_step() == 2.0
    counter.remove()


@pytest.mark.slow
def test_cells_store_passes_and_bn_updates_per_step(tmp_path, two_passes):
    out = tmp_path / "run"
    args = ["run", "--methods", f"erm,multimix,{two_passes}", *TINY, "--out", str(out)]
    assert main([*args, "--no-leaderboard"]) == 0
    con = sqlite3.connect(out / "results.db")
    timings = {m: json.loads(t) for m, t in con.execute("SELECT method, timings FROM cells")}
    assert timings["erm"]["passes_per_step"] == 1.0
    assert timings["multimix"]["passes_per_step"] == 1.0
    assert timings[two_passes]["passes_per_step"] == 2.0
    assert timings[two_passes]["bn_updates_per_step"] == 2.0
    assert main(["leaderboard", "--out", str(out)]) == 0
    board = (out / "LEADERBOARD.md").read_text()
    assert "passes/step" in board and "| 2.00 " in board


def test_eval_mode_passes_count_inside_a_step_only():
    model = create_model("preactresnet18", 10, width=4, seed=0).train()
    counter = ComputeCounter(model)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        model(images)  # evaluation: not training compute
        assert counter.passes == 0
        with counter.in_step():
            model(images)  # a step's saliency pass in eval mode: training compute
        model.train()
    assert counter.passes == 1 and counter.bn_updates == 0
    model(images)
    assert counter.passes == 2 and counter.bn_updates == len(counter._norms)
    counter.remove()


def test_counts_survive_a_resume():
    model = create_model("preactresnet18", 10, width=4, seed=0)
    counter = ComputeCounter(model)
    counter.load_state_dict({"passes": 30, "bn_updates": 30 * 21, "steps": 15})
    assert counter.passes_per_step() == 2.0
    assert counter.state_dict() == {"passes": 30, "bn_updates": 630, "steps": 15}


def test_perf_reports_passes_per_step_beside_the_step_ratio(tmp_path):
    from mixbench.bench.perf.methods import perf_methods

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = perf_methods(steps=1, warmup=0, width=4, batch_size=8, progress=False)
    finally:
        torch.set_num_threads(saved)
    assert {"multimix [ce]", "dense_multimix [ce]"} <= set(result)
    assert result["multimix [ce]"]["params"]["clean_weight"] == 1.0
    for label, entry in result.items():
        method = get_method(label.split(" [")[0], **entry["params"])
        assert entry["passes_per_step"] == float(method.passes_per_step()), label
        assert entry["bn_updates_per_step"] == float(method.bn_updates_per_step()), label
        assert entry["ratio_vs_erm"] > 0
    assert result["dense_multimix [ce]"]["target"] == 1.15
    assert isinstance(result["multimix"]["meets_target"], bool)


def test_equal_compute_erm_runs_the_network_as_often_as_a_two_pass_method(tmp_path):
    """ERM with ``epochs_scale = 2`` (the equal-compute reference) trains twice the epochs,
    its learning-rate schedule stretched over them, and runs the network as many times in all
    as RegMixup (2 passes per step) in the table's epochs."""
    import dataclasses

    from mixbench.bench.perf.data import bench_cell
    from mixbench.bench.train.engine import train_cell

    def cell(method: str, scale: int):
        base = bench_cell(device="cpu", method=method, batch_size=8, steps_per_epoch=2,
                          width=4, image_size=32, num_classes=4)  # fmt: skip
        return dataclasses.replace(base, epochs_scale=scale)

    erm = train_cell(cell("erm", 2), tmp_path / "erm")
    regmixup = train_cell(cell("regmixup", 1), tmp_path / "regmixup")
    assert erm.timings["epochs"] == 2 and regmixup.timings["epochs"] == 1
    assert [h["epoch"] for h in erm.history] == [1, 2]

    def passes(result) -> float:
        steps = result.timings["train_images"] / 8
        return result.timings["passes_per_step"] * steps

    assert passes(erm) == passes(regmixup) == 4.0
