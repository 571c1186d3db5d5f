"""PuzzleMix: the graph terms, the graph-cut mask, the transport, and the method's equation."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixbench.errors import UsageError
from mixbench.methods import functional as fn
from mixbench.methods import get_method
from mixbench.methods.gradients import saliency_pass

from .test_methods import batch, stream, tiny_net

MISSING = (
    "method 'puzzlemix' needs the optional extra 'graphcut' (gco-wrapper): "
    "pip install 'mixbench[graphcut]'"
)


def _needs_gco() -> None:
    pytest.importorskip("gco", reason=MISSING)


def _case(b: int = 6, n: int = 4, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    saliency = torch.rand(b, size, size, generator=g) ** 4  # peaked, like real gradients
    pixels = torch.rand(b, 3, size, size, generator=g)
    perm = torch.randperm(b, generator=g)
    return fn.block_saliency(saliency, size // n), pixels, perm, saliency


# -- puzzle_graph_terms ---------------------------------------------------------------------


def _reference_terms(unary, pixels, perm, beta, gamma, neigh_size):
    """Steps 4 and 5 with loops over edges, pooled cells and channels."""
    b, n, _ = unary.shape
    side = pixels.shape[-1] // n
    k0 = min(neigh_size, side)
    k = side // k0
    pooled = F.avg_pool2d(pixels, k0).double()
    src = {"own": pooled, "partner": pooled[perm]}
    scale = beta / (16 * n) * gamma
    cost_own = unary[perm].double().clone()
    cost_partner = unary.double().clone()
    edge_v = torch.zeros(b, n - 1, n, dtype=torch.float64)
    edge_h = torch.zeros(b, n, n - 1, dtype=torch.float64)
    for e in range(b):

        def d_v(a, c, i, j, e=e):  # upper node (i, j) shows a, lower (i + 1, j) shows c
            last, first = (i + 1) * k - 1, (i + 1) * k
            cols = range(j * k, (j + 1) * k)
            return scale * np.mean(
                [
                    abs(float(src[a][e, ch, last, q] - src[c][e, ch, first, q]))
                    for ch in range(3)
                    for q in cols
                ]
            )

        def d_h(a, c, i, j, e=e):  # left node (i, j) shows a, right (i, j + 1) shows c
            last, first = (j + 1) * k - 1, (j + 1) * k
            rows = range(i * k, (i + 1) * k)
            return scale * np.mean(
                [
                    abs(float(src[a][e, ch, r, last] - src[c][e, ch, r, first]))
                    for ch in range(3)
                    for r in rows
                ]
            )

        for dist, shape, step, edges in (
            (d_v, (n - 1, n), (1, 0), edge_v),
            (d_h, (n, n - 1), (0, 1), edge_h),
        ):
            for i in range(shape[0]):
                for j in range(shape[1]):
                    D = {(a, c): dist(a, c, i, j) for a in src for c in src}
                    u, d = (i, j), (i + step[0], j + step[1])
                    cost_own[e][u] += (D["own", "partner"] + D["own", "own"]) / 2
                    cost_partner[e][u] += (D["partner", "own"] + D["partner", "partner"]) / 2
                    cost_own[e][d] += (D["partner", "own"] + D["own", "own"]) / 2
                    cost_partner[e][d] += (D["own", "partner"] + D["partner", "partner"]) / 2
                    edges[e, i, j] = (
                        D["own", "partner"]
                        + D["partner", "own"]
                        - D["own", "own"]
                        - D["partner", "partner"]
                    ) / 2 + beta / (16 * n)
    return cost_own, cost_partner, edge_v, edge_h


@pytest.mark.parametrize("n,neigh_size", [(2, 4), (4, 4), (8, 4), (4, 2), (16, 4)])
def test_graph_terms_match_a_loop_reference(n, neigh_size) -> None:
    unary, pixels, perm, _ = _case(b=3, n=n, seed=n)
    kept = unary.clone(), pixels.clone()
    terms = fn.puzzle_graph_terms(unary, pixels, perm, beta=1.2, gamma=0.5, neigh_size=neigh_size)
    assert torch.equal(unary, kept[0]) and torch.equal(pixels, kept[1])
    expected = _reference_terms(unary, pixels, perm, 1.2, 0.5, neigh_size)
    shapes = [(3, n, n), (3, n, n), (3, n - 1, n), (3, n, n - 1)]
    for got, want, shape in zip(terms, expected, shapes):
        assert got.dtype == torch.float32 and tuple(got.shape) == shape
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


def test_without_data_smoothness_edges_are_beta_and_costs_the_swapped_unaries() -> None:
    unary, pixels, perm, _ = _case()
    own, partner, edge_v, edge_h = fn.puzzle_graph_terms(unary, pixels, perm, gamma=0.0)
    assert torch.equal(own, unary[perm]) and torch.equal(partner, unary)
    beta = torch.tensor(1.2 / (16 * 4), dtype=torch.float32)
    assert torch.equal(edge_v, beta.expand_as(edge_v)) and torch.equal(
        edge_h, beta.expand_as(edge_h)
    )


def test_an_identity_partner_leaves_only_the_label_smoothness_on_edges() -> None:
    unary, pixels, _, _ = _case()
    identity = torch.arange(unary.shape[0])
    _, _, edge_v, edge_h = fn.puzzle_graph_terms(unary, pixels, identity)
    beta = torch.tensor(1.2 / (16 * 4), dtype=torch.float32)
    assert torch.equal(edge_v, beta.expand_as(edge_v)) and torch.equal(
        edge_h, beta.expand_as(edge_h)
    )


def test_pixel_pooling_falls_back_to_a_divisor_of_the_block() -> None:
    # 14-pixel blocks (224 / 16) with neigh_size 4: pooled by 2, the largest divisor <= 4.
    assert (
        fn._pooling_side(14, 4) == 2
        and fn._pooling_side(16, 4) == 4
        and fn._pooling_side(2, 4) == 2
    )
    g = torch.Generator().manual_seed(1)
    saliency, pixels = torch.rand(2, 28, 28, generator=g), torch.rand(2, 3, 28, 28, generator=g)
    terms = fn.puzzle_graph_terms(fn.block_saliency(saliency, 14), pixels, torch.tensor([1, 0]))
    assert all(torch.isfinite(t).all() for t in terms)


# -- puzzle_mask ---------------------------------------------------------------------------


def _official_arrays(cost_own, cost_partner, edge_v, edge_h, lam, eta, n_labels):
    """The arrays PuzzleMix's official code hands to GCO for one example, built as it does:
    float32 costs, a float64 prior, one stack, then int32."""
    n = cost_own.shape[0]
    large = 1000 * n**2
    if n_labels == 3:
        prior = (
            eta
            * np.array(
                [
                    -np.log(lam**2 + 1e-8),
                    -np.log(2 * lam * (1 - lam) + 1e-8),
                    -np.log((1 - lam) ** 2 + 1e-8),
                ]
            )
            / n**2
        )
    else:
        prior = eta * np.array([-np.log(lam + 1e-8), -np.log(1 - lam + 1e-8)]) / n**2
    levels = np.linspace(0, 1, n_labels)
    unary = (
        large
        * np.stack(
            [(1 - t) * cost_own + t * cost_partner + prior[i] for i, t in enumerate(levels)], -1
        )
    ).astype(np.int32)
    distance = np.zeros((n_labels, n_labels), dtype=np.float32)
    for i in range(n_labels):
        for j in range(n_labels):
            distance[i, j] = (i - j) ** 2 / (n_labels - 1) ** 2
    return unary, distance, (large * edge_v).astype(np.int32), (large * edge_h).astype(np.int32)


@pytest.mark.parametrize("n,n_labels", [(4, 3), (8, 3), (16, 3), (4, 2)])
def test_puzzle_mask_is_the_official_construction(n, n_labels, monkeypatch) -> None:
    _needs_gco()
    import gco

    import mixbench.methods.graphcut as graphcut

    unary, pixels, perm, _ = _case(b=5, n=n, seed=10 + n)
    terms = fn.puzzle_graph_terms(unary, pixels, perm)
    lam = 0.3
    seen: list = []
    real = graphcut.cut_grid_graphs
    monkeypatch.setattr(
        graphcut, "cut_grid_graphs", lambda graphs, w: seen.extend(graphs) or real(graphs, w)
    )
    mask = fn.puzzle_mask(*terms, lam, eta=0.2, n_labels=n_labels)
    assert mask.dtype == torch.float32 and mask.shape == (5, n, n)
    levels = {1 - i / (n_labels - 1) for i in range(n_labels)}
    assert set(mask.unique().tolist()) <= levels
    arrays = [t.numpy() for t in terms]
    for e, graph in enumerate(seen):
        official = _official_arrays(
            *(a[e] for a in arrays), np.float32(lam).astype(np.float64), 0.2, n_labels
        )
        for got, want in zip(graph, official):
            assert got.dtype == want.dtype and np.array_equal(got, want)
        labels = gco.cut_grid_graph(*official, algorithm="swap")
        assert np.array_equal(
            mask[e].numpy(), (1.0 - labels / (n_labels - 1)).reshape(n, n).astype(np.float32)
        )


def test_puzzle_mask_without_edges_is_the_per_node_argmin() -> None:
    _needs_gco()
    g = torch.Generator().manual_seed(5)
    b, n = 8, 4
    own, partner = torch.rand(b, n, n, generator=g) / 16, torch.rand(b, n, n, generator=g) / 16
    lam = torch.rand(b, generator=g)
    zero_v, zero_h = torch.zeros(b, n - 1, n), torch.zeros(b, n, n - 1)
    mask = fn.puzzle_mask(own, partner, zero_v, zero_h, lam, eta=0.2)
    for e in range(b):
        value = float(lam[e])
        prior = -np.log(np.array([value**2, 2 * value * (1 - value), (1 - value) ** 2]) + 1e-8)
        energy = np.stack(
            [
                (1 - t) * own[e].numpy() + t * partner[e].numpy() + 0.2 * prior[i] / n**2
                for i, t in enumerate((0, 0.5, 1))
            ],
            -1,
        )
        energy = (1000 * n**2 * energy).astype(np.int32)
        assert np.array_equal(mask[e].numpy(), 1 - energy.argmin(-1) / 2)
    assert len(set(mask.unique().tolist())) == 3  # the case exercises every level


def test_puzzle_mask_is_the_same_for_any_number_of_workers() -> None:
    _needs_gco()
    unary, pixels, perm, _ = _case(b=12, n=8, seed=3)
    terms = fn.puzzle_graph_terms(unary, pixels, perm)
    lam = torch.rand(12, generator=torch.Generator().manual_seed(0))
    in_process = fn.puzzle_mask(*terms, lam)
    assert torch.equal(fn.puzzle_mask(*terms, lam, workers=2), in_process)
    assert torch.equal(fn.puzzle_mask(*terms, lam), in_process)  # cuts are deterministic


def test_puzzle_mask_without_gco_is_one_usage_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gco", None)  # what a missing package looks like
    unary, pixels, perm, _ = _case()
    with pytest.raises(UsageError) as info:
        fn.puzzle_mask(*fn.puzzle_graph_terms(unary, pixels, perm), 0.5)
    assert str(info.value) == MISSING


# -- puzzle_transport and transport_blocks ------------------------------------------------------


def _dense_transport(mask, unary, eps, rounds):
    """The transport's rounds on the full (m^2, m^2) matrices."""
    b, m = mask.shape[0], mask.shape[1]
    shown = (mask > 0).float().reshape(b, 1, m * m)
    cost = eps * fn.transport_cost(m).unsqueeze(0) - unary.reshape(b, m * m, 1) * shown
    for _ in range(rounds):
        choice = F.one_hot(cost.argmin(-1), m * m).float()
        winner = (choice * cost).argmin(-2)
        win = F.one_hot(winner, m * m).float().transpose(-2, -1) * choice
        cost = cost + (choice - win)
    return win


def test_transport_cost_is_the_normalised_squared_grid_distance() -> None:
    cost = fn.transport_cost(3)
    assert (
        cost.shape == (9, 9)
        and cost[0, 8] == 2.0
        and cost[0, 2] == 1.0
        and cost[0, 1] == 0.25
        and cost[4, 4] == 0
    )
    assert torch.equal(cost, cost.T)


@pytest.mark.parametrize("m", [2, 4, 8])
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.8, 100.0])
def test_transport_equals_the_dense_rounds_and_is_a_partial_permutation(m, eps) -> None:
    g = torch.Generator().manual_seed(m)
    for trial in range(6):
        mask = torch.floor(torch.rand(5, m, m, generator=g) * 3) / 2
        unary = torch.rand(5, m, m, generator=g)
        if trial % 2:
            unary = torch.floor(unary * 4) / 8  # many ties
        plan = fn.puzzle_transport(mask, unary, eps=eps)
        assert plan.shape == (5, m * m, m * m) and plan.dtype == torch.float32
        assert set(plan.unique().tolist()) <= {0.0, 1.0}
        assert (plan.sum(-1) <= 1).all() and (plan.sum(-2) <= 1).all()
        assert torch.equal(plan, _dense_transport(mask, unary, eps, m))
        assert torch.equal(
            fn.puzzle_transport(mask, unary, eps=eps, n_iter=2),
            _dense_transport(mask, unary, eps, 2),
        )


def test_transport_keeps_everything_in_place_when_moving_is_dear() -> None:
    unary = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    plan = fn.puzzle_transport(torch.ones(3, 4, 4), unary, eps=1e6)
    assert torch.equal(plan, torch.eye(16).expand(3, 16, 16))
    # Nowhere shown: every block stays put, and only block 0 wins its column (as officially).
    empty = fn.puzzle_transport(torch.zeros(2, 4, 4), unary[:2], eps=0.8)
    expected = torch.zeros(2, 16, 16)
    expected[:, 0, 0] = 1
    assert torch.equal(empty, expected)


def test_transport_moves_a_salient_block_to_where_the_image_is_shown() -> None:
    unary = torch.full((1, 2, 2), 0.01)
    unary[0, 0, 0] = 0.97
    mask = torch.zeros(1, 2, 2)
    mask[0, 1, 1] = 1.0  # the image is shown in the bottom-right block only
    plan = fn.puzzle_transport(mask, unary, eps=0.1)
    assert plan[0, 0, 3] == 1  # the salient top-left block lands bottom-right


def test_transport_blocks_applies_the_plan() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 8, generator=g)
    assert torch.equal(fn.transport_blocks(x, torch.eye(16).expand(2, 16, 16)), x)
    swap = torch.eye(4)[[1, 0, 3, 2]].expand(2, 4, 4)  # block 0 <-> 1, 2 <-> 3
    moved = fn.transport_blocks(x, swap)
    assert torch.equal(moved[:, :, :4, :4], x[:, :, :4, 4:]) and torch.equal(
        moved[:, :, :4, 4:], x[:, :, :4, :4]
    )
    assert torch.equal(moved[:, :, 4:, :4], x[:, :, 4:, 4:])
    partial = torch.zeros(2, 4, 4)
    partial[:, 3, 0] = 1  # only the bottom-right block moves, to the top-left
    moved = fn.transport_blocks(x, partial)
    assert torch.equal(moved[:, :, :4, :4], x[:, :, 4:, 4:]) and (
        moved[:, :, 4:, :].abs().sum() == 0
    )
    assert moved[:, :, :4, 4:].abs().sum() == 0


# -- the composite and the method -------------------------------------------------------------


@pytest.mark.parametrize(
    "block_num,transport,t_size", [(2, True, 4), (4, True, -1), (8, False, 4), (16, True, 4)]
)
def test_puzzlemix_composite(block_num, transport, t_size) -> None:
    _needs_gco()
    g = torch.Generator().manual_seed(block_num)
    x = torch.randn(6, 3, 32, 32, generator=g)
    saliency = torch.rand(6, 32, 32, generator=g) ** 4
    perm = torch.randperm(6, generator=g)
    kept = x.clone(), saliency.clone()
    mixed, ratio = fn.puzzlemix(
        x,
        saliency,
        perm,
        0.4,
        block_num,
        (0.5, 0.4, 0.3),
        (0.2, 0.2, 0.25),
        transport=transport,
        t_size=t_size,
    )
    assert torch.equal(x, kept[0]) and torch.equal(saliency, kept[1])
    unary = fn.block_saliency(saliency, 32 // block_num)
    pixels = x * torch.tensor([0.2, 0.2, 0.25]).view(1, 3, 1, 1) + torch.tensor(
        [0.5, 0.4, 0.3]
    ).view(1, 3, 1, 1)
    mask = fn.puzzle_mask(*fn.puzzle_graph_terms(unary, pixels, perm), 0.4)
    shown = F.interpolate(mask.unsqueeze(1), size=32, mode="nearest")
    torch.testing.assert_close(ratio, shown.mean(dim=(1, 2, 3)))
    if not transport:
        assert torch.equal(mixed, shown * x + (1 - shown) * x[perm])
        return
    # Transport at min(t_size, block side) pixels: 8 x 8 blocks of 4 pixels, or the block side.
    side = 32 // block_num if t_size == -1 else min(t_size, 32 // block_num)
    grid = 32 // side
    fine = F.interpolate(mask.unsqueeze(1), size=grid, mode="nearest").squeeze(1)
    fine_unary = fn.block_saliency(saliency, side)
    own = fn.transport_blocks(x, fn.puzzle_transport(fine, fine_unary))
    partner = fn.transport_blocks(x[perm], fn.puzzle_transport(1 - fine, fine_unary[perm]))
    assert torch.equal(mixed, shown * own + (1 - shown) * partner)
    # Where the own image is wholly shown, its pixels are its own (moved) or zeros.
    whole = (shown == 1).expand_as(x)
    assert set(mixed[whole].tolist()) <= set(x.flatten().tolist()) | {0.0}


def _replay(method, images, labels, model):
    """The method's draws and its mixed batch, recomputed from a copy of its stream."""
    g = stream(method)
    block_num = method.block_nums[int(torch.randint(len(method.block_nums), (1,), generator=g))]
    lam = float(fn.sample_beta(method.alpha, g))
    perm = torch.randperm(images.shape[0], generator=g)
    saliency = saliency_pass(model, images, labels).saliency
    mixed, ratio = fn.puzzlemix(
        images, saliency, perm, lam, block_num, method.mean, method.std, t_size=method.t_size
    )
    return mixed, ratio, perm


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_puzzlemix_equation(loss) -> None:
    _needs_gco()
    model, (images, labels) = tiny_net(), batch()
    model.eval()  # the replay's saliency pass must see the same network
    for seed in range(4):
        method = get_method("puzzlemix", loss=loss)
        method.bind_data((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
        method.seed(seed)
        mixed, ratio, perm = _replay(method, images, labels, model)
        got = method.loss(model, images, labels)
        targets = ratio[:, None] * F.one_hot(labels, 10) + (1 - ratio[:, None]) * F.one_hot(
            labels[perm], 10
        )
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        logits = model(mixed)
        if loss == "bce":
            expected = fn.soft_binary_cross_entropy(logits, targets)
        else:
            expected = -(targets * torch.log_softmax(logits, -1)).sum(1).mean()
        torch.testing.assert_close(got, expected)


def test_puzzlemix_clean_term() -> None:
    _needs_gco()
    model, (images, labels) = tiny_net(), batch()
    model.eval()  # no batch-norm updates, so both losses see one network
    for loss, factor in (("ce", 0.7), ("bce", 2 * 0.7 / 10)):
        with_clean = get_method("puzzlemix", loss=loss, clean_lam=0.7)
        without = get_method("puzzlemix", loss=loss)
        with_clean.seed(1)
        without.seed(1)
        clean = F.cross_entropy(model(images), labels)
        torch.testing.assert_close(
            with_clean.loss(model, images, labels),
            without.loss(model, images, labels) + factor * clean,
        )


def test_the_saliency_pass_leaks_no_weight_gradient_and_restores_modes() -> None:
    _needs_gco()
    model, (images, labels) = tiny_net(), batch()
    model.head.eval()
    running = [b.clone() for name, b in model.named_buffers() if "running_mean" in name]
    loss = get_method("puzzlemix").loss(model, images, labels)
    assert all(p.grad is None for p in model.parameters())  # the saliency pass took none
    assert model.training and not model.head.training
    after = [b for name, b in model.named_buffers() if "running_mean" in name]
    # One train-mode pass (the mixed batch) moved the statistics, once.
    assert any(not torch.equal(a, b) for a, b in zip(running, after))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_puzzlemix_declarations() -> None:
    method = get_method("puzzlemix")
    assert method.hparams == {
        "alpha": 1.0,
        "prob": 1.0,
        "block_nums": (2, 4, 8, 16),
        "beta": 1.2,
        "gamma": 0.5,
        "eta": 0.2,
        "neigh_size": 4,
        "n_labels": 3,
        "transport": True,
        "t_eps": 0.8,
        "t_size": 4,
        "clean_lam": 0.0,
        "loss": "ce",
        "dm_eta": 0.1,
        "dm_mode": "both",
        "dm_power": 1.0,
        "workers": 0,
    }
    cls = type(method)
    assert cls.requires == ("graphcut",) and cls.forward_passes == 2 and cls.version == 1
    assert cls.param_sets["paper"] == {**method.hparams, "loss": "bce"}
    assert "2009.06962" in cls.paper


def test_puzzlemix_refuses_grids_that_do_not_tile() -> None:
    _needs_gco()
    images, labels = batch(size=24)
    with pytest.raises(UsageError, match="block_nums"):
        get_method("puzzlemix", block_nums=(16,)).loss(tiny_net(), images, labels)
    with pytest.raises(UsageError, match="block_nums"):
        get_method("puzzlemix", block_nums=(1,))


def test_puzzlemix_prob_draws_a_coin_only_below_one() -> None:
    _needs_gco()
    model, (images, labels) = tiny_net(), batch()
    method = get_method("puzzlemix", prob=0.0)
    torch.testing.assert_close(
        method.loss(model, images, labels), F.cross_entropy(model(images), labels)
    )


def test_unbound_statistics_are_zero_and_one() -> None:
    method = get_method("puzzlemix")
    assert (method.mean, method.std) == (0.0, 1.0)
    method.bind_data([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert method.mean == (0.5, 0.5, 0.5) and method.std == (0.25, 0.25, 0.25)
    assert math.isclose(sum(method.std), 0.75)
