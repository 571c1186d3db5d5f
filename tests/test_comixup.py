"""Co-Mixup: the compatibility, the joint graph-cut masks, the mixing, and the method's equation."""

from __future__ import annotations

import copy
import json
import sqlite3
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.cli import main
from mixbench.errors import UsageError
from mixbench.methods import check_requirements, get_method, get_method_class
from mixbench.methods import functional as fn
from mixbench.methods.gradients import saliency_pass

from .test_methods import batch, coin, make, stream, tiny_net

MISSING = (
    "method 'comixup' needs the optional extra 'graphcut' (gco-wrapper): "
    "pip install 'mixbench[graphcut]'"
)

#: A one-epoch run of a few steps on the generated data set.
SMALL = [
    "--set", "dataset_options.synthetic.n_train=64",
    "--set", "dataset_options.synthetic.n_test=32",
    "--set", "schedule.batch_size=32",
    "--set", "schedule.eval_every=1",
    "--epochs", "1",
    "--no-progress",
]  # fmt: skip


def needs_gco():
    return pytest.importorskip("gco", reason=MISSING)


def peaked_saliency(b: int, size: int = 32, seed: int = 0, power: int = 8) -> torch.Tensor:
    """Smooth saliency maps with a few strong peaks, like input gradients."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(b, size, size, generator=g) ** power
    return F.avg_pool2d(s.unsqueeze(1), 5, 1, 2).squeeze(1) ** power


def chunk_inputs(m: int, block_num: int = 4, seed: int = 0):
    saliency = peaked_saliency(m, seed=seed)
    unary = fn.block_saliency(saliency, 32 // block_num)
    return unary, fn.comixup_compatibility(saliency)


def check_masks(masks: torch.Tensor, m: int, n: int) -> None:
    assert masks.shape == (m, n, n, m) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 0.5, 1.0}
    assert torch.equal(masks.sum(-1), torch.ones(m, n, n))


class Recorder(nn.Module):
    """The network, remembering the images it was given."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


# -- comixup_compatibility -------------------------------------------------------------------


def test_compatibility_is_symmetric_with_a_zero_diagonal() -> None:
    saliency = peaked_saliency(6, seed=1)
    before = saliency.clone()
    d = fn.comixup_compatibility(saliency)
    assert d.shape == (6, 6) and d.dtype == torch.float32
    assert torch.equal(d, d.T) and torch.equal(d.diagonal(), torch.zeros(6))
    assert (d >= 0).all() and torch.equal(saliency, before)


def test_compatibility_by_hand() -> None:
    # One bright pixel at (r, c): the 8 x 8 windows holding it tie, the first row-major one
    # starts at (max(r - 7, 0), max(c - 7, 0)).
    saliency = torch.zeros(3, 16, 16)
    saliency[0, 10, 3] = 1.0  # window (3, 0)
    saliency[1, 2, 12] = 1.0  # window (0, 5)
    saliency[2, 15, 15] = 1.0  # window (8, 8)
    saliency[2, 9, 9] = 1.0  # only the window (8, 8) holds both peaks: the maximum, 2 / 64
    expected_positions = torch.tensor([[3.0, 0.0], [0.0, 5.0], [8.0, 8.0]])
    expected = (expected_positions[:, None] - expected_positions[None]).abs().sum(-1)
    assert torch.equal(fn.comixup_compatibility(saliency), expected)
    # Two separate equal peaks: the first in row-major order wins.
    tie = torch.zeros(2, 16, 16)
    tie[0, 14, 1] = tie[0, 1, 14] = 1.0  # windows (7, 0) and (0, 7): the latter comes first
    tie[1, 0, 0] = 1.0
    assert fn.comixup_compatibility(tie)[0, 1].item() == 7.0
    with pytest.raises(ValueError, match="window"):
        fn.comixup_compatibility(torch.zeros(2, 4, 4))


# -- comixup_masks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m,block_num,options",
    [
        (8, 4, {}),
        (5, 4, {"tau_type": "soft"}),
        (6, 2, {"resolve": False}),
        (3, 8, {"n_iter": 3}),
        (1, 4, {}),
        (2, 4, {"alpha": 0.5}),
    ],
)
def test_masks_are_shares_of_inputs_summing_to_one(m, block_num, options) -> None:
    needs_gco()
    unary, compat = chunk_inputs(m, block_num, seed=m)
    kept = unary.clone(), compat.clone()
    masks = fn.comixup_masks(unary, compat, generator=torch.Generator().manual_seed(0), **options)
    check_masks(masks, m, block_num)
    assert torch.equal(unary, kept[0]) and torch.equal(compat, kept[1])


def test_masks_use_half_blocks_and_mix_several_inputs() -> None:
    needs_gco()
    seen_half = seen_mix = False
    for seed in range(6):
        unary, compat = chunk_inputs(10, seed=seed)
        masks = fn.comixup_masks(unary, compat, generator=torch.Generator().manual_seed(seed))
        check_masks(masks, 10, 4)
        seen_half |= bool((masks == 0.5).any())
        seen_mix |= bool(((masks.sum((1, 2)) > 0).sum(1) > 1).any())
    assert seen_half and seen_mix


def test_the_same_generator_state_gives_the_same_masks() -> None:
    needs_gco()
    unary, compat = chunk_inputs(8, seed=3)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    first = fn.comixup_masks(unary, compat, generator=g)
    g.set_state(state)
    assert torch.equal(fn.comixup_masks(unary, compat, generator=g), first)
    # The stream moves on: other draws, other masks (for some of several calls).
    others = [fn.comixup_masks(unary, compat, generator=g) for _ in range(3)]
    assert any(not torch.equal(o, first) for o in others)


def test_the_draw_order_is_dirichlet_then_initial_labels(monkeypatch) -> None:
    needs_gco()
    unary, compat = chunk_inputs(6, seed=2)
    seen = {}

    def spy(unary_np, compat_np, pi, labels, **options):
        seen["pi"], seen["labels"] = pi, labels
        return real(unary_np, compat_np, pi, labels, **options)

    real = fn._comixup_solve
    monkeypatch.setattr(fn, "_comixup_solve", spy)
    g = torch.Generator().manual_seed(9)
    replay = torch.Generator().manual_seed(9)
    fn.comixup_masks(unary, compat, generator=g)
    pi = fn.sample_dirichlet(2.0, (6,), generator=replay)
    labels = torch.randint(6, (6, 4, 4), generator=replay)
    assert torch.equal(torch.from_numpy(seen["pi"]), pi)
    assert torch.equal(torch.from_numpy(seen["labels"]), labels)


def _spy_cuts(monkeypatch) -> list[tuple[int, torch.Tensor]]:
    gco = needs_gco()
    calls: list = []
    real = gco.cut_grid_graph

    def spy(unary, pairwise, cost_v, cost_h, **kwargs):
        assert unary.dtype == pairwise.dtype == cost_v.dtype == cost_h.dtype == "float32"
        assert kwargs == {"n_iter": -1, "algorithm": "swap"}
        calls.append((unary.shape[-1], torch.from_numpy(pairwise.copy())))
        return real(unary, pairwise, cost_v, cost_h, **kwargs)

    monkeypatch.setattr(gco, "cut_grid_graph", spy)
    return calls


def test_one_round_is_plain_potts_cuts(monkeypatch) -> None:
    calls = _spy_cuts(monkeypatch)
    for seed in range(4):
        unary, compat = chunk_inputs(7, seed=seed)
        masks = fn.comixup_masks(
            unary, compat, n_iter=1, generator=torch.Generator().manual_seed(seed)
        )
        check_masks(masks, 7, 4)
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert len(calls) == 4 * 7  # one cut per output
    potts = 1 - torch.eye(7)
    assert all(labels == 7 and torch.equal(pairwise, potts) for labels, pairwise in calls)


def test_later_rounds_offer_half_labels_at_distance_a_quarter(monkeypatch) -> None:
    calls = _spy_cuts(monkeypatch)
    for seed in range(4):
        unary, compat = chunk_inputs(8, seed=seed)
        fn.comixup_masks(unary, compat, generator=torch.Generator().manual_seed(seed))
    extras = {labels - 8 for labels, _ in calls}
    assert extras <= {0, 1, 3} and {0, 3} <= extras
    for labels, pairwise in calls:
        assert torch.equal(pairwise, pairwise.T) and torch.equal(
            pairwise.diagonal(), torch.zeros(labels)
        )
        if labels == 9:  # one extra label: 0.25 to its two inputs, 1 to the rest
            assert sorted(pairwise[8, :8].tolist()) == [0.25] * 2 + [1.0] * 6
        if labels == 11:  # three extras, each at 0.25 from two of three inputs
            block = pairwise[8:, :8]
            members = (block == 0.25).nonzero()[:, 1].unique()
            assert len(members) == 3 and ((block == 0.25).sum(1) == 2).all()
            assert torch.equal(pairwise[8:, 8:], 1 - torch.eye(3))


def test_without_smoothness_diversity_or_prior_every_output_takes_the_most_salient_input() -> None:
    needs_gco()
    for seed in range(3):
        unary, compat = chunk_inputs(6, seed=seed)
        masks = fn.comixup_masks(
            unary,
            compat,
            n_iter=1,
            beta=0.0,
            gamma=0.0,
            eta=0.0,
            generator=torch.Generator().manual_seed(seed),
        )
        best = F.one_hot(unary.argmax(0), 6).float()  # (h, w, m)
        assert torch.equal(masks, best.expand(6, 4, 4, 6))


def test_all_equal_distances_fall_back_to_a_scaled_identity() -> None:
    needs_gco()
    unary, _ = chunk_inputs(5, seed=4)
    zero = torch.zeros(5, 5)
    first = fn.comixup_masks(unary, zero, generator=torch.Generator().manual_seed(1))
    check_masks(first, 5, 4)
    # With omega = 0, A is the identity whatever the distances: the same masks.
    again = fn.comixup_masks(unary, zero, omega=0.0, generator=torch.Generator().manual_seed(1))
    other = fn.comixup_masks(
        unary, torch.rand(5, 5), omega=0.0, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(again, other)


def test_masks_check_their_arguments() -> None:
    unary, compat = torch.rand(4, 2, 2), torch.zeros(4, 4)
    with pytest.raises(ValueError, match="compat"):
        fn.comixup_masks(unary, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="tau_type"):
        fn.comixup_masks(unary, compat, tau_type="medium")
    with pytest.raises(ValueError, match="block saliency"):
        fn.comixup_masks(torch.rand(4, 2), compat)


def test_masks_without_gco_are_one_usage_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gco", None)  # what a missing package looks like
    with pytest.raises(UsageError) as info:
        fn.comixup_masks(torch.rand(3, 2, 2), torch.zeros(3, 3))
    assert str(info.value) == MISSING
    with pytest.raises(UsageError) as info:
        check_requirements(get_method_class("comixup"))
    assert str(info.value) == MISSING


def test_run_without_gco_exits_2_before_writing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gco", None)
    out = tmp_path / "out"
    args = ["run", "--preset", "smoke", "--methods", "erm,comixup", "--out", str(out)]
    assert main([*args, *SMALL]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"mixbench: error: {MISSING}"]
    assert not out.exists()


# -- comixup_mix ------------------------------------------------------------------------------


def test_identity_masks_return_the_batch() -> None:
    images, labels = batch(b=5)
    targets = fn.one_hot(labels, 10)
    masks = torch.eye(5).expand(4, 4, 5, 5).permute(2, 0, 1, 3).contiguous()  # (5, 4, 4, 5)
    x_mix, y_mix = fn.comixup_mix(images, targets, masks)
    assert torch.equal(x_mix, images) and torch.equal(y_mix, targets)


def test_mix_is_blockwise_and_targets_are_block_shares() -> None:
    g = torch.Generator().manual_seed(0)
    images, labels = batch(b=3, size=8)
    targets = fn.one_hot(labels, 10)
    # Random masks with halves: each block either one input or half of two.
    first = torch.randint(3, (4, 2, 2), generator=g)
    second = torch.randint(3, (4, 2, 2), generator=g)
    masks = (F.one_hot(first, 3) + F.one_hot(second, 3)).float() / 2  # (4, 2, 2, 3)
    before = images.clone(), targets.clone(), masks.clone()
    x_mix, y_mix = fn.comixup_mix(images, targets, masks)
    assert x_mix.shape == (4, 3, 8, 8) and y_mix.shape == (4, 10)
    for k in range(4):
        for r in range(2):
            for q in range(2):
                block = (slice(None), slice(4 * r, 4 * r + 4), slice(4 * q, 4 * q + 4))
                expected = sum(masks[k, r, q, j] * images[j][block] for j in range(3))
                torch.testing.assert_close(x_mix[k][block], expected)
        expected_y = (masks[k].sum((0, 1)) @ targets) / 4
        torch.testing.assert_close(y_mix[k], expected_y)
    torch.testing.assert_close(y_mix.sum(1), torch.ones(4))
    assert all(torch.equal(a, b) for a, b in zip(before, (images, targets, masks), strict=True))


# -- the method --------------------------------------------------------------------------------


def test_defaults_and_declarations() -> None:
    method = get_method("comixup")
    assert method.hparams == {
        "alpha": 2.0,
        "part": 20,
        "block_num": 4,
        "beta": 0.32,
        "gamma": 1.0,
        "tau": 0.83,
        "tau_type": "hard",
        "eta": 0.05,
        "omega": 0.001,
        "n_iter": 4,
        "resolve": True,
        "clean_lam": 1.0,
        "loss": "ce",
        "prob": 1.0,
        "workers": 0,
    }
    cls = type(method)
    assert cls.requires == ("graphcut",) and cls.version == 1 and cls.forward_passes == 2
    assert cls.param_sets == {"paper": {**method.hparams, "loss": "bce"}}
    assert "2102.03065" in cls.paper and "2102.03065" in (cls.__doc__ or "")
    assert callable(method.loss) and method.loss_kind == "ce"
    with pytest.raises(UsageError, match="loss"):
        get_method("comixup", loss="mse")


def expected_loss(model, images, labels, params, g):
    """The method's loss rebuilt from the functional core, replaying the draws from ``g``."""
    method = get_method("comixup", **params)
    p = method.hparams
    coin(g)
    saliency, clean = saliency_pass(model, images, labels, keep_clean_loss=p["clean_lam"] > 0)
    n = p["block_num"]
    unary = fn.block_saliency(saliency, images.shape[-1] // n)
    compat = fn.comixup_compatibility(saliency)
    options = {k: p[k] for k in ("alpha", "beta", "gamma", "eta", "tau", "tau_type")}
    options.update({k: p[k] for k in ("omega", "n_iter", "resolve")})
    xs, ys = [], []
    for start in range(0, len(images), p["part"]):
        stop = min(start + p["part"], len(images))
        masks = fn.comixup_masks(
            unary[start:stop], compat[start:stop, start:stop], generator=g, **options
        )
        check_masks(masks, stop - start, n)
        x, y = fn.comixup_mix(images[start:stop], fn.one_hot(labels[start:stop], 10), masks)
        xs.append(x)
        ys.append(y)
    x_out, y_out = torch.cat(xs), torch.cat(ys)
    logits = model(x_out)
    if p["loss"] == "bce":
        loss = fn.soft_binary_cross_entropy(logits, y_out)
        scale = 2 * p["clean_lam"] / 10
    else:
        loss = fn.soft_cross_entropy(logits, y_out)
        scale = p["clean_lam"]
    return (loss + scale * clean if clean is not None else loss), x_out, y_out


@pytest.mark.parametrize(
    "params",
    [
        {"loss": "bce", "clean_lam": 0.0, "part": 3},
        {"loss": "bce", "clean_lam": 0.5, "part": 8},
        {"loss": "ce", "clean_lam": 1.0, "part": 5, "block_num": 2},
        {"loss": "ce", "clean_lam": 0.0, "part": 20, "tau_type": "soft", "n_iter": 2},
    ],
    ids=str,
)
def test_comixup_equation(params) -> None:
    needs_gco()
    net, (images, labels) = tiny_net(), batch()
    replica = copy.deepcopy(net)  # the mixed pass updates the batch-norm statistics
    method = make("comixup", params, seed=1)
    g = stream(method)
    model = Recorder(net)
    loss = method.loss(model, images, labels)
    expected, x_out, y_out = expected_loss(replica, images, labels, params, g)
    assert torch.equal(model.seen[-1], x_out)  # one forward over all b mixed images
    assert len(model.seen) == 2
    torch.testing.assert_close(y_out.sum(1), torch.ones(8))
    if params["clean_lam"] == 0:
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6, abs=0)
    else:
        torch.testing.assert_close(loss, expected)


def test_prob_zero_is_erm() -> None:
    net, (images, labels) = tiny_net(), batch()
    loss = make("comixup", {"prob": 0.0}).loss(net, images, labels)
    torch.testing.assert_close(loss, F.cross_entropy(net(images), labels))


def test_chunks_never_mix_examples_across_their_bounds() -> None:
    needs_gco()
    method = make("comixup", {"part": 4}, seed=2)
    saliency = peaked_saliency(10, seed=5)
    state = method.generator("cpu").get_state()
    chunks = method.mix_masks(saliency)
    assert [(start, stop) for start, stop, _ in chunks] == [(0, 4), (4, 8), (8, 10)]
    assert [tuple(masks.shape) for _, _, masks in chunks] == [
        (4, 4, 4, 4),
        (4, 4, 4, 4),
        (2, 4, 4, 2),
    ]
    # Other maps in the later chunks leave the first chunk's masks as they were.
    changed = saliency.clone()
    changed[4:] = peaked_saliency(6, seed=6)
    method.generator("cpu").set_state(state)
    again = method.mix_masks(changed)
    assert torch.equal(again[0][2], chunks[0][2])
    # Through the method: the first chunk's mixed images do not see the second chunk.
    net, (images, labels) = tiny_net(), batch()
    outputs = []
    for x in (images, torch.cat([images[:4], -images[4:]])):
        model = Recorder(copy.deepcopy(net))  # the same batch-norm statistics for both
        make("comixup", {"part": 4, "clean_lam": 0.0}, seed=3).loss(model, x, labels)
        outputs.append(model.seen[-1])
    assert torch.equal(outputs[0][:4], outputs[1][:4])
    assert not torch.equal(outputs[0][4:], outputs[1][4:])


def test_a_last_chunk_of_one_is_its_example() -> None:
    needs_gco()
    net, (images, labels) = tiny_net(), batch(b=5)
    model = Recorder(net)
    loss = make("comixup", {"part": 4}).loss(model, images, labels)
    assert torch.isfinite(loss)
    assert torch.equal(model.seen[-1][4], images[4])


def test_workers_never_change_the_result() -> None:
    needs_gco()
    saliency = peaked_saliency(12, seed=7)
    results = []
    for workers in (0, 2):
        method = make("comixup", {"part": 4, "workers": workers}, seed=4)
        results.append([masks for _, _, masks in method.mix_masks(saliency)])
    assert len(results[0]) == 3
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_inputs_modes_and_weight_gradients_are_left_alone() -> None:
    needs_gco()
    net, (images, labels) = tiny_net(), batch()
    net.head.eval()  # a submodule already in eval mode stays so
    kept = images.clone(), labels.clone()
    loss = make("comixup", {"clean_lam": 0.0}).loss(net, images, labels)
    assert torch.equal(images, kept[0]) and torch.equal(labels, kept[1])
    assert net.training and not net.head.training
    # The eval-mode saliency pass leaked no weight gradient.
    assert all(p.grad is None for p in net.parameters())
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_one_step_lowers_the_loss() -> None:
    needs_gco()
    model, (images, labels) = tiny_net(), batch()
    method = make("comixup", {"loss": "bce"})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method.seed(11)
    before = method.loss(model, images, labels)
    before.backward()
    optimizer.step()
    method.seed(11)
    with torch.no_grad():
        after = method.loss(model, images, labels)
    assert after.item() < before.item()


@pytest.mark.parametrize("size,block_num", [(30, 4), (8, 3)])
def test_images_must_fit_the_grid(size, block_num) -> None:
    images, labels = batch(b=2, size=size)
    with pytest.raises(UsageError, match="block_num"):
        make("comixup", {"block_num": block_num}).loss(tiny_net(), images, labels)
    rect = torch.zeros(2, 3, 32, 16)
    with pytest.raises(UsageError, match="square"):
        make("comixup", {}).loss(tiny_net(), rect, labels)


def test_comixup_through_the_command_line(tmp_path) -> None:
    needs_gco()
    out = tmp_path / "run"
    args = ["run", "--preset", "smoke", "--methods", "comixup", "--out", str(out)]
    assert main([*args, *SMALL, "--no-leaderboard"]) == 0
    con = sqlite3.connect(out / "results.db")
    rows = con.execute("SELECT method, status, timings FROM cells").fetchall()
    assert [(m, s) for m, s, _ in rows] == [("comixup", "done")]
    assert json.loads(rows[0][2])["passes_per_step"] == 2.0
