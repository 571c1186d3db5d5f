"""The functional core of the methods: one group of tests per equation of methods.md."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixbench.methods import functional as fn


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- Dirichlet and Beta draws ------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_dirichlet_moments_on_a_large_sample(alpha: float) -> None:
    k, draws = 5, 60_000
    lam = fn.sample_dirichlet(alpha, (draws, k), generator=gen(1), dtype=torch.float64)
    assert lam.shape == (draws, k)
    assert (lam >= 0).all()
    torch.testing.assert_close(lam.sum(1), torch.ones(draws, dtype=torch.float64))
    # Symmetric Dirichlet: mean 1/k, variance (k - 1) / (k^2 (k alpha + 1)).
    var = (k - 1) / (k**2 * (k * alpha + 1))
    torch.testing.assert_close(
        lam.mean(0), torch.full((k,), 1 / k, dtype=torch.float64), atol=4e-3, rtol=0
    )
    torch.testing.assert_close(
        lam.var(0), torch.full((k,), var, dtype=torch.float64), rtol=0.04, atol=0
    )


def test_dirichlet_small_alpha_stays_on_the_simplex() -> None:
    # Gamma(0.01) draws underflow to 0 in float32; the log-domain path keeps rows valid.
    lam = fn.sample_dirichlet(0.01, (2000, 64), generator=gen(0))
    assert torch.isfinite(lam).all() and (lam >= 0).all()
    torch.testing.assert_close(lam.sum(1), torch.ones(2000))
    assert lam.max(1).values.mean() > 0.5  # nearly one-hot rows, as a tiny alpha should give


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_beta_moments(alpha: float) -> None:
    lam = fn.sample_beta(alpha, gen(2), size=(80_000,), dtype=torch.float64)
    assert ((lam >= 0) & (lam <= 1)).all()
    assert abs(lam.mean().item() - 0.5) < 4e-3
    assert lam.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.03)


def test_beta_asymmetric_and_scalar() -> None:
    lam = fn.sample_beta(2.0, gen(3), beta=6.0, size=(80_000,), dtype=torch.float64)
    assert lam.mean().item() == pytest.approx(2 / 8, abs=3e-3)
    one = fn.sample_beta(1.0, gen(3))
    assert one.shape == () and 0 <= float(one) <= 1


def test_draws_are_fixed_by_the_seed() -> None:
    a = fn.sample_dirichlet(1.0, (7, 9), generator=gen(5))
    b = fn.sample_dirichlet(1.0, (7, 9), generator=gen(5))
    c = fn.sample_dirichlet(1.0, (7, 9), generator=gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(
        fn.sample_dirichlet(2.0, (3, 4), generator=gen(5)),
        fn.sample_dirichlet(2.0, (3, 4), generator=gen(5)),
    )
    assert float(fn.sample_beta(2.0, gen(4))) == float(fn.sample_beta(2.0, gen(4)))


def test_bad_concentration_is_refused() -> None:
    with pytest.raises(ValueError, match="alpha"):
        fn.sample_dirichlet(0.0, (2, 3))
    with pytest.raises(ValueError, match="alpha"):
        fn.sample_beta(-1.0)


# -- losses --------------------------------------------------------------------------------


def test_soft_cross_entropy_matches_hard_labels_and_is_linear_in_the_target() -> None:
    logits = torch.randn(6, 4, generator=gen(0))
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    y = fn.one_hot(labels, 4)
    assert y.dtype == torch.float32 and torch.equal(y.argmax(1), labels)
    torch.testing.assert_close(fn.soft_cross_entropy(logits, y), F.cross_entropy(logits, labels))
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    lam = 0.3
    expected = fn.soft_cross_entropy(logits, lam * y + (1 - lam) * y[perm])
    torch.testing.assert_close(fn.mixed_cross_entropy(logits, labels, lam, perm), expected)
    # Dense form: the mean runs over all leading positions.
    dense = torch.randn(3, 5, 4, generator=gen(1))
    target = torch.softmax(torch.randn(3, 5, 4, generator=gen(2)), -1)
    by_hand = -(target * torch.log_softmax(dense, -1)).sum(-1).mean()
    torch.testing.assert_close(fn.soft_cross_entropy(dense, target), by_hand)


def test_soft_binary_cross_entropy_is_bce_on_softmax_and_finite_when_saturated() -> None:
    logits = torch.randn(5, 3, generator=gen(0))
    target = torch.softmax(torch.randn(5, 3, generator=gen(1)), -1)
    expected = F.binary_cross_entropy(torch.softmax(logits, -1), target)
    torch.testing.assert_close(fn.soft_binary_cross_entropy(logits, target), expected)
    saturated = torch.tensor([[200.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    loss = fn.soft_binary_cross_entropy(saturated, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(saturated.grad).all()
    # Row 0: p = (1, 0, 0) up to e^-200. Like BCELoss, every log is clamped at -100:
    # entry 0 gives 0.5 * log(1 - p0) -> -50, entry 1 gives 0.5 * log(p1) -> -50, entry 2 gives 0.
    row1 = F.binary_cross_entropy(torch.full((3,), 1 / 3), t[1]) * 3
    torch.testing.assert_close(loss.detach(), (100.0 + row1) / 6)


# -- mix -----------------------------------------------------------------------------------


def test_mix_is_the_convex_combination_and_leaves_x_alone() -> None:
    x = torch.randn(4, 3, 5, 5, generator=gen(0))
    keep = x.clone()
    perm = torch.tensor([2, 0, 3, 1])
    out = fn.mix(x, 0.7, perm)
    torch.testing.assert_close(out, 0.7 * x + 0.3 * x[perm])
    assert torch.equal(x, keep)
    per_example = torch.tensor([0.0, 1.0, 0.5, 0.25]).reshape(4, 1, 1, 1)
    torch.testing.assert_close(
        fn.mix(x, per_example, perm), per_example * x + (1 - per_example) * x[perm]
    )
    assert torch.equal(fn.mix(x, 1.0, perm), x)
    h = x.clone().requires_grad_(True)
    fn.mix(h, 0.7, perm).sum().backward()
    torch.testing.assert_close(h.grad, torch.ones_like(x))  # 0.7 + 0.3 reach every entry once
    with pytest.raises(ValueError, match="perm"):
        fn.mix(x, 0.5, torch.tensor([0, 1]))


# -- CutMix box ----------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(32, 32), (17, 40)])
def test_cutmix_box_bounds_and_area(height: int, width: int) -> None:
    g = gen(0)
    for i in range(300):
        lam = (i % 50) / 49
        (top, bottom, left, right), adjusted = fn.cutmix_box(height, width, lam, g)
        assert all(isinstance(v, int) for v in (top, bottom, left, right))
        assert isinstance(adjusted, float)
        assert 0 <= top <= bottom <= height and 0 <= left <= right <= width
        area = (bottom - top) * (right - left)
        assert adjusted == pytest.approx(1 - area / (height * width))
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        assert bottom - top <= cut_h and right - left <= cut_w
        assert adjusted >= lam - 1e-12  # clipping only shrinks the box
        # Not clipped: centre +- cut // 2, as the official rand_bbox (odd cuts lose a pixel).
        if top > 0 and bottom < height:
            assert bottom - top == 2 * (cut_h // 2)
        if left > 0 and right < width:
            assert right - left == 2 * (cut_w // 2)


def test_cutmix_box_is_the_official_one_for_a_given_centre() -> None:
    # lam = 0.5 on 32x32: cut = int(32 * sqrt(0.5)) = 22 (even), rows cy - 11 .. cy + 11;
    # on 31x31 the cut is 21 (odd) and the box 20 pixels: cy - 10 .. cy + 10.
    assert fn.cutmix_box(32, 32, 0.5, center=(16, 16)) == ((5, 27, 5, 27), 1 - 22 * 22 / 1024)
    assert fn.cutmix_box(31, 31, 0.5, center=(15, 15))[0] == (5, 25, 5, 25)
    assert fn.cutmix_box(32, 32, 0.5, center=(2, 30))[0] == (0, 13, 19, 32)  # clipped


@pytest.mark.parametrize("size", [(32, 32), (31, 29), (17, 40)])
def test_cutmix_matches_torchvision_v2_cutmix(size: tuple[int, int]) -> None:
    """Given torchvision's lambda, centre and pairing (each image takes the box of its
    predecessor: ``roll(1)``), mixbench's image and label weights equal
    ``torchvision.transforms.v2.CutMix``'s, over many draws (odd cuts included)."""
    from torchvision.transforms import v2

    height, width = size
    b, classes = 6, 5
    data = gen(3)
    images = torch.rand(b, 3, height, width, generator=data)
    labels = torch.randint(classes, (b,), generator=data)
    cutmix = v2.CutMix(alpha=1.0, num_classes=classes)
    perm = torch.arange(b).roll(1)
    odd = 0
    for seed in range(40):
        torch.manual_seed(seed)
        expected_images, expected_labels = cutmix(images, labels)
        # torchvision's draws, in its order: lam ~ Beta(1, 1), then the centre's x, then y.
        torch.manual_seed(seed)
        lam = float(torch.distributions.Beta(torch.tensor([1.0]), torch.tensor([1.0])).sample(()))
        cx, cy = int(torch.randint(width, (1,))), int(torch.randint(height, (1,)))
        odd += int(height * math.sqrt(1 - lam)) % 2
        box, adjusted = fn.cutmix_box(height, width, lam, center=(cy, cx))
        assert torch.equal(fn.paste_box(images, box, perm), expected_images), seed
        targets = fn.one_hot(labels, classes)
        torch.testing.assert_close(fn.mix(targets, adjusted, perm), expected_labels)
    assert odd > 0  # the draws include odd cuts, where the old box was one pixel larger


def test_cutmix_box_extremes_and_seed() -> None:
    box, adjusted = fn.cutmix_box(32, 32, 1.0, gen(0))
    assert adjusted == 1.0 and (box[1] - box[0]) * (box[3] - box[2]) == 0
    # lam = 0: a box as large as the image, centred on a random pixel, then clipped.
    boxes = [fn.cutmix_box(8, 8, 0.0, gen(s))[0] for s in range(64)]
    for top, bottom, left, right in boxes:
        assert (top == 0 or bottom == 8) and (left == 0 or right == 8)
    # The centre is uniform over the image: it reaches the borders and the middle.
    centres = set()
    g = gen(1)
    for _ in range(2000):
        (top, bottom, left, right), _ = fn.cutmix_box(10, 10, 0.96, g)  # a 2x2 box
        centres.add((bottom - 1, right - 1))  # rows [cy - 1, cy + 1): bottom is never clipped
    assert centres == {(i, j) for i in range(10) for j in range(10)}
    assert fn.cutmix_box(32, 32, 0.3, gen(9)) == fn.cutmix_box(32, 32, 0.3, gen(9))
    with pytest.raises(ValueError, match="lam"):
        fn.cutmix_box(32, 32, 1.5)


def test_paste_box_takes_the_box_from_the_permuted_batch() -> None:
    x = torch.randn(3, 2, 6, 6, generator=gen(0))
    keep = x.clone()
    perm = torch.tensor([1, 2, 0])
    out = fn.paste_box(x, (1, 4, 2, 6), perm)
    assert torch.equal(x, keep)
    assert torch.equal(out[:, :, 1:4, 2:6], x[perm][:, :, 1:4, 2:6])
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[1:4, 2:6] = False
    assert torch.equal(out[:, :, mask], x[:, :, mask])


# -- Sinkhorn ------------------------------------------------------------------------------


def reference_sinkhorn(cost: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Textbook Sinkhorn scaling in float64 (one example, moderate costs)."""
    r, s = cost.shape
    kernel = torch.exp(-cost.double() / eps)
    mu, nu = (
        torch.full((r,), 1 / r, dtype=torch.float64),
        torch.full((s,), 1 / s, dtype=torch.float64),
    )
    v = torch.ones(s, dtype=torch.float64)
    for _ in range(iters):
        u = mu / (kernel @ v)
        v = nu / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :]


def test_sinkhorn_matches_the_textbook_iteration() -> None:
    cost = torch.rand(3, 5, 5, generator=gen(0), dtype=torch.float64)
    plan = fn.sinkhorn(cost, eps=0.1, max_iter=50, tol=0.0)  # tol 0: all 50 iterations
    assert plan.dtype == torch.float64 and plan.shape == (3, 5, 5)
    for i in range(3):
        torch.testing.assert_close(plan[i], reference_sinkhorn(cost[i], 0.1, 50))


def test_sinkhorn_marginals_when_converged() -> None:
    cost = torch.rand(4, 16, 16, generator=gen(1)) * 5
    plan = fn.sinkhorn(cost, eps=0.1, max_iter=2000, tol=1e-6)
    torch.testing.assert_close(plan.sum(2), torch.full((4, 16), 1 / 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(plan.sum(1), torch.full((4, 16), 1 / 16), atol=1e-5, rtol=0)
    # Where one assignment is far cheaper, the plan is that permutation.
    target = torch.randperm(8, generator=gen(2))
    cheap = torch.full((1, 8, 8), 100.0)
    cheap[0, torch.arange(8), target] = 0.0
    plan = fn.sinkhorn(cheap, eps=0.1)
    expected = torch.zeros(8, 8)
    expected[torch.arange(8), target] = 1 / 8
    torch.testing.assert_close(plan[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [1e4, 1e5])
def test_sinkhorn_is_finite_for_raw_feature_costs(scale: float) -> None:
    feats = torch.randn(8, 64, 16, generator=gen(3)) * math.sqrt(scale / 128)
    cost = fn.alignment_cost(feats, feats[torch.randperm(8, generator=gen(4))])
    assert cost.max() > scale / 4  # costs of the announced magnitude
    for max_iter in (1, 3, 100):  # far from converged: eps = 0.1 is tiny against such costs
        plan = fn.sinkhorn(cost, eps=0.1, max_iter=max_iter, tol=0.1)
        assert torch.isfinite(plan).all() and (plan >= 0).all()
        # After every iteration the column marginals hold, to float32's resolution of
        # potentials of size cost / eps (about 10^6 here).
        torch.testing.assert_close(plan.sum(1), torch.full((8, 16), 1 / 16), rtol=2e-2, atol=0)
        # The same iterations in float64 give the same plan.
        exact = fn.sinkhorn(cost.double(), eps=0.1, max_iter=max_iter, tol=0.1)
        torch.testing.assert_close(plan.double(), exact, atol=2e-3, rtol=0)


def test_sinkhorn_stop_rule_and_batching() -> None:
    cost = torch.rand(5, 6, 6, generator=gen(5)) * 10
    # tol = inf stops after the first iteration; tol = 0 runs max_iter iterations.
    torch.testing.assert_close(
        fn.sinkhorn(cost, tol=math.inf), fn.sinkhorn(cost, max_iter=1, tol=0)
    )
    torch.testing.assert_close(
        fn.sinkhorn(cost, max_iter=7, tol=0), fn.sinkhorn(cost, max_iter=7, tol=-1)
    )
    # The default tol stops well before 10^4 iterations on this easy problem.
    torch.testing.assert_close(fn.sinkhorn(cost), fn.sinkhorn(cost, max_iter=10_000))
    # Examples are solved independently.
    together = fn.sinkhorn(cost, max_iter=30, tol=0)
    for i in range(5):
        torch.testing.assert_close(
            together[i : i + 1], fn.sinkhorn(cost[i : i + 1], max_iter=30, tol=0)
        )


@pytest.mark.parametrize("tol", [0.0, 0.1, 1.0, 5.0])
def test_sinkhorn_block_checks_give_the_same_plan(tol: float) -> None:
    cost = torch.rand(3, 8, 8, generator=gen(7)) * 50
    every = fn.sinkhorn(cost, max_iter=37, tol=tol, check_every=1)
    for block in (2, 7, 10, 100):
        assert torch.equal(fn.sinkhorn(cost, max_iter=37, tol=tol, check_every=block), every)


def test_sinkhorn_dtypes_and_no_gradient() -> None:
    cost = (torch.rand(2, 4, 4, generator=gen(6)) * 1e4).requires_grad_(True)
    plan = fn.sinkhorn(cost)
    assert not plan.requires_grad
    half = fn.sinkhorn(cost.detach().bfloat16())
    assert half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all()
    with pytest.raises(ValueError, match="cost"):
        fn.sinkhorn(torch.rand(4, 4))


# -- AlignMixup arithmetic ------------------------------------------------------------------


def test_alignment_cost_is_the_squared_distance() -> None:
    a, a2 = torch.randn(2, 5, 4, generator=gen(0)), torch.randn(2, 5, 3, generator=gen(1))
    cost = fn.alignment_cost(a, a2)
    brute = ((a.unsqueeze(3) - a2.unsqueeze(2)) ** 2).sum(1)
    torch.testing.assert_close(cost, brute, atol=1e-4, rtol=1e-5)
    assert cost.dtype == torch.float32 and not cost.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fn.alignment_cost(a, a2).dtype == torch.float32


def test_align_mix_transports_in_float32_under_autocast() -> None:
    """The official code has no autocast: under AMP the transport and the mix stay float32
    (bf16 feature maps are upcast first, so the result is the float32 mix of those values)."""
    b, d, r = 3, 8, 16
    a = torch.randn(b, d, r, generator=gen(0)).bfloat16()
    a2 = torch.randn(b, d, r, generator=gen(1)).bfloat16()
    plan = fn.sinkhorn(fn.alignment_cost(a, a2))
    exact = fn.align_mix(a.float(), a2.float(), plan, 0.3, align_second=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fn.align_mix(a, a2, plan, 0.3, align_second=False)
    assert plan.dtype == torch.float32 and mixed.dtype == torch.float32
    assert torch.equal(mixed, exact)


def test_align_mix_both_directions() -> None:
    b, d, r = 2, 3, 4
    a, a2 = torch.randn(b, d, r, generator=gen(0)), torch.randn(b, d, r, generator=gen(1))
    target = torch.tensor([2, 0, 3, 1])
    plan = torch.zeros(b, r, r)
    plan[:, torch.arange(r), target] = 1 / r  # a's position i is matched to a2's target[i]
    first = fn.align_mix(a, a2, plan, 0.3, align_second=True)
    torch.testing.assert_close(first, 0.3 * a + 0.7 * a2[:, :, target])
    second = fn.align_mix(a, a2, plan, 0.3, align_second=False)
    moved = torch.empty_like(a)
    moved[:, :, target] = a
    torch.testing.assert_close(second, 0.3 * moved + 0.7 * a2)
    # General plans: R = r * P, the matrix products of methods.md.
    plan = torch.softmax(torch.randn(b, r, r, generator=gen(2)), -1) / r
    torch.testing.assert_close(
        fn.align_mix(a, a2, plan, 0.6, True), 0.6 * a + 0.4 * a2 @ (r * plan).transpose(1, 2)
    )
    torch.testing.assert_close(
        fn.align_mix(a, a2, plan, 0.6, False), 0.6 * a @ (r * plan) + 0.4 * a2
    )


# -- MultiMix --------------------------------------------------------------------------------


def test_multimix_weights_and_weighted_sums() -> None:
    b, d, c, n = 6, 5, 3, 40
    z = torch.randn(b, d, generator=gen(0), requires_grad=True)
    targets = fn.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), c)
    keep = z.detach().clone(), targets.clone()
    z_mix, t_mix, w = fn.multimix(z, targets, n, 1.0, gen(1))
    assert z_mix.shape == (n, d) and t_mix.shape == (n, c) and w.shape == (n, b)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(n))
    torch.testing.assert_close(z_mix, w @ z)
    torch.testing.assert_close(t_mix, w @ targets)
    torch.testing.assert_close(t_mix.sum(1), torch.ones(n))
    assert torch.equal(z.detach(), keep[0]) and torch.equal(targets, keep[1])
    # The weights are the Dirichlet draw of the same generator state.
    torch.testing.assert_close(w, fn.sample_dirichlet(1.0, (n, b), generator=gen(1)))
    z_mix.sum().backward()
    torch.testing.assert_close(z.grad, w.sum(0, keepdim=True).T.expand(b, d))
    again = fn.multimix(z.detach(), targets, n, 1.0, gen(1))
    assert torch.equal(again[0], z_mix.detach()) and torch.equal(again[2], w)


def test_multimix_targets_stay_exact_under_autocast() -> None:
    z = torch.randn(8, 16, generator=gen(0))
    targets = fn.one_hot(torch.arange(8) % 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_mix, t_mix, w = fn.multimix(z, targets, 10, 2.0, gen(3))
    assert t_mix.dtype == torch.float32
    torch.testing.assert_close(t_mix, w @ targets)
    torch.testing.assert_close(z_mix.float(), w @ z, atol=0.1, rtol=0.02)


def test_dense_multimix_weights_and_sums() -> None:
    b, d, r, n = 5, 4, 3, 30
    feats = torch.randn(b, d, r, generator=gen(0))
    att = torch.rand(b, r, generator=gen(1))
    # Identity targets expose the weights: targets_mix[k, j] = W[k, j, :].
    z_mix, w = fn.dense_multimix(feats, torch.eye(b), att, n, 1.0, gen(2))
    assert z_mix.shape == (n, r, d) and w.shape == (n, r, b)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(n, r))
    torch.testing.assert_close(z_mix, torch.einsum("kji,idj->kjd", w, feats))
    # W = L * a / sum(L * a), with L the Dirichlet draw (layout (r, n, b)) of the generator.
    lam = fn.sample_dirichlet(1.0, (r, n, b), generator=gen(2)).transpose(0, 1)
    expected = lam * att.T.unsqueeze(0)
    torch.testing.assert_close(w, expected / expected.sum(-1, keepdim=True))
    targets = fn.one_hot(torch.tensor([0, 1, 1, 2, 0]), 3)
    z2, t_mix = fn.dense_multimix(feats, targets, att, n, 1.0, gen(2))
    assert t_mix.shape == (n, r, 3)
    torch.testing.assert_close(t_mix, w @ targets)
    assert torch.equal(z2, z_mix)


def test_dense_multimix_zero_attention() -> None:
    b, d, r, n = 4, 3, 3, 20
    feats = torch.randn(b, d, r, generator=gen(0))
    att = torch.rand(b, r, generator=gen(1)) + 0.1
    att[1, 0] = 0.0  # example 1 has no confidence at position 0
    att[:, 2] = 0.0  # no example has any at position 2
    _, w = fn.dense_multimix(feats, torch.eye(b), att, n, 1.0, gen(2))
    assert (w[:, 0, 1] == 0).all()
    assert (w[:, 0, [0, 2, 3]] > 0).all()
    lam = fn.sample_dirichlet(1.0, (r, n, b), generator=gen(2)).transpose(0, 1)
    torch.testing.assert_close(w[:, 2], lam[:, 2])  # the all-zero position: plain Dirichlet
    torch.testing.assert_close(w.sum(-1), torch.ones(n, r))
    # Uniform attention gives the plain Dirichlet weights everywhere.
    _, w_uniform = fn.dense_multimix(feats, torch.eye(b), torch.ones(b, r), n, 1.0, gen(2))
    torch.testing.assert_close(w_uniform, lam)


def test_dense_attention_variants() -> None:
    feats = torch.randn(3, 8, 5, generator=gen(0))
    feats[2] = -feats[2].abs() * torch.tensor([1.0] * 4 + [-1.0] * 4).reshape(8, 1)
    sim = fn.dense_attention(feats, "similarity")
    z = feats.mean(2)
    raw = torch.relu(torch.einsum("bdr,bd->br", feats, z))
    for i in range(3):
        if raw[i].sum() > 0:
            torch.testing.assert_close(sim[i], raw[i] / raw[i].sum())
    assert (sim >= 0).all()
    soft = fn.dense_attention(feats, "softmax")
    torch.testing.assert_close(
        soft, torch.softmax(torch.einsum("bdr,bd->br", feats, z) / math.sqrt(8), 1)
    )
    torch.testing.assert_close(fn.dense_attention(feats, "none"), torch.full((3, 5), 0.2))
    all_negative = torch.zeros(1, 2, 3)
    all_negative[0, 0] = torch.tensor([1.0, -1.0, 0.0])  # mean 0: all similarities are 0
    assert torch.equal(fn.dense_attention(all_negative), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="attention"):
        fn.dense_attention(feats, "bogus")


# -- MultiMix subsets ----------------------------------------------------------------------


def test_multimix_subsets_are_per_generated_example() -> None:
    """With m < b every generated example draws its own m examples: each weight row has
    exactly m non-zeros and sums to one, and over many rows every example of the batch is
    mixed (one subset per batch, as before, would leave b - m examples without loss)."""
    b, m, n = 16, 2, 400
    z, targets = torch.randn(b, 5, generator=gen(0)), torch.eye(b)[:, :4].contiguous()
    z_mix, targets_mix, weights = fn.multimix(z, targets, n, 1.0, gen(1), m=m)
    assert weights.shape == (n, b)
    assert ((weights > 0).sum(1) == m).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(n))
    assert ((weights > 0).sum(0) > 0).all()  # every example appears
    torch.testing.assert_close(z_mix, weights @ z)
    torch.testing.assert_close(targets_mix, weights @ targets)
    # Reproducible under a seed; m >= b (or None) is the whole batch.
    assert torch.equal(fn.multimix(z, targets, n, 1.0, gen(1), m=m)[2], weights)
    whole = fn.multimix(z, targets, n, 1.0, gen(1))[2]
    assert torch.equal(fn.multimix(z, targets, n, 1.0, gen(1), m=b)[2], whole)
    assert ((whole > 0).sum(1) == b).all()


def test_dense_multimix_subsets_are_per_generated_example_and_position() -> None:
    b, d, r, n, m = 8, 3, 4, 300, 2
    features = torch.randn(b, d, r, generator=gen(0))
    attention = torch.rand(b, r, generator=gen(1)) + 0.1
    targets = torch.eye(b)
    _, targets_mix = fn.dense_multimix(features, targets, attention, n, 1.0, gen(2), m=m)
    # With one-hot targets per example the mixed targets are the weights themselves.
    assert targets_mix.shape == (n, r, b)
    assert ((targets_mix > 0).sum(-1) == m).all()
    torch.testing.assert_close(targets_mix.sum(-1), torch.ones(n, r))
    assert ((targets_mix > 0).sum((0, 1)) > 0).all()  # every example at some position
    # Different positions of one generated example draw different subsets.
    assert not torch.equal(targets_mix[:, 0] > 0, targets_mix[:, 1] > 0)
