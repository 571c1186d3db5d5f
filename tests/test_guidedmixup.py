"""GuidedMixup: spectral-residual saliency, blur and normalisation, the greedy pairing, the
pixel mask, and the method's equations (SR and AP, CE and BCE)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from mixbench.errors import UsageError
from mixbench.methods import functional as fn
from mixbench.methods import get_method, get_method_class, method_info

from .test_fmix import Recorder
from .test_methods import batch, coin, stream, tiny_net

# -- saliency --------------------------------------------------------------------------------


def _np_blur(maps: np.ndarray, kernel: int, sigma: float) -> np.ndarray:
    half = (kernel - 1) / 2
    taps = np.exp(-0.5 * (np.linspace(-half, half, kernel) / sigma) ** 2)
    taps /= taps.sum()
    weight = np.outer(taps, taps)
    pad = kernel // 2
    padded = np.pad(maps, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    out = np.zeros_like(maps)
    for r in range(kernel):
        for c in range(kernel):
            out += weight[r, c] * padded[:, r : r + maps.shape[1], c : c + maps.shape[2]]
    return out


def _np_spectral_residual(gray: np.ndarray, box: int = 3) -> np.ndarray:
    """The steps in NumPy (float64), before the blur: FFT, log amplitude, its box mean on
    replicate padding, the residual, the inverse FFT's modulus."""
    freq = np.fft.fft2(gray)
    magnitude = np.sqrt(freq.real**2 + freq.imag**2 + 1e-10)
    log_mag = np.log(magnitude)
    pad = box // 2
    padded = np.pad(log_mag, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    mean = np.zeros_like(log_mag)
    for r in range(box):
        for c in range(box):
            mean += padded[:, r : r + log_mag.shape[1], c : c + log_mag.shape[2]] / box**2
    residual = np.exp(log_mag - mean)
    return np.abs(np.fft.ifft2(freq * residual / magnitude))


def _gray(x: torch.Tensor) -> np.ndarray:
    x = x.double().numpy()
    return 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (2, 3, 20, 27), (3, 1, 16, 16)])
def test_spectral_residual_saliency_is_the_numpy_recomputation(shape) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    original = x.clone()
    saliency = fn.spectral_residual_saliency(x)
    assert torch.equal(x, original)
    assert saliency.shape == (shape[0], *shape[2:]) and saliency.dtype == torch.float32
    assert (saliency >= 0).all() and not saliency.requires_grad
    gray = _gray(x) if shape[1] == 3 else x[:, 0].double().numpy()
    expected = _np_blur(_np_spectral_residual(gray), 7, 3.0)
    np.testing.assert_allclose(saliency.numpy(), expected, rtol=1e-4, atol=1e-5 * expected.max())
    # No blur (a 1 x 1 kernel) and another box size.
    bare = fn.spectral_residual_saliency(x, blur=1, box=5)
    np.testing.assert_allclose(
        bare.numpy(), _np_spectral_residual(gray, 5), rtol=1e-4, atol=1e-5 * expected.max()
    )


def test_spectral_residual_saliency_of_tall_images_works_at_max_size() -> None:
    """Images taller than ``max_size`` go through torchvision's ``Resize`` (bilinear,
    antialiased) to max_size x max_size and back after the blur."""
    x = torch.randn(2, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    saliency = fn.spectral_residual_saliency(x, max_size=24)
    gray = torch.from_numpy(_gray(x)).float()[:, None]
    small = TF.resize(gray, [24, 24], antialias=True)[:, 0].double().numpy()
    blurred = torch.from_numpy(_np_blur(_np_spectral_residual(small), 7, 3.0)).float()
    expected = TF.resize(blurred[:, None], [40, 36], antialias=True)[:, 0]
    assert saliency.shape == (2, 40, 36)
    torch.testing.assert_close(saliency, expected, rtol=1e-3, atol=1e-4 * float(expected.max()))
    # Not taller than max_size: no resize (28 rows, 200 columns).
    wide = torch.randn(1, 3, 28, 200, generator=torch.Generator().manual_seed(2))
    assert fn.spectral_residual_saliency(wide, max_size=28).shape == (1, 28, 200)


def test_blur_normalize_is_torchvisions_blur_summing_to_one() -> None:
    maps = torch.rand(5, 20, 24, generator=torch.Generator().manual_seed(3))
    maps[2] = 0.0  # no saliency at all: the uniform map
    original = maps.clone()
    out = fn.blur_normalize(maps, 7, 3.0)
    assert torch.equal(maps, original)
    torch.testing.assert_close(out.sum(dim=(1, 2)), torch.ones(5))
    blurred = TF.gaussian_blur(maps, [7, 7], [3.0, 3.0])
    for i in (0, 1, 3, 4):
        torch.testing.assert_close(out[i], blurred[i] / blurred[i].sum())
    assert torch.equal(out[2], torch.full((20, 24), 1 / 480))
    torch.testing.assert_close(
        fn.blur_normalize(maps, 5, 1.5)[0],
        (lambda b: b / b.sum())(TF.gaussian_blur(maps[:1], [5, 5], [1.5, 1.5])[0]),
    )
    with pytest.raises(ValueError, match="odd"):
        fn.blur_normalize(maps, 4, 3.0)


# -- pairing -----------------------------------------------------------------------------------


def _brute_pairing(saliency: torch.Tensor) -> list[int]:
    """The greedy rule run naively: all distances, the global maximum off the diagonal, then
    the farthest unvisited example from each, the first on ties."""
    flat = saliency.double().reshape(len(saliency), -1)
    b = len(flat)
    dist = [[float((flat[i] - flat[j]).norm()) for j in range(b)] for i in range(b)]
    best = None
    for i in range(b):
        for j in range(b):
            if i != j and (best is None or dist[i][j] > dist[best[0]][best[1]]):
                best = (i, j)
    start, current = best
    partner = [-1] * b
    partner[start] = current
    visited = {start, current}
    for _ in range(b - 2):
        nxt = max((j for j in range(b) if j not in visited), key=lambda j: (dist[current][j], -j))
        partner[current] = nxt
        visited.add(nxt)
        current = nxt
    partner[current] = start
    return partner


@pytest.mark.parametrize("b", [2, 3, 5, 8, 17])
def test_guided_pairing_is_one_greedy_cycle(b) -> None:
    for seed in range(3):
        saliency = fn.blur_normalize(
            torch.rand(b, 12, 12, generator=torch.Generator().manual_seed(seed * 10 + b))
        )
        perm = fn.guided_pairing(saliency)
        assert perm.dtype == torch.int64 and sorted(perm.tolist()) == list(range(b))
        # One cycle through the whole batch: no fixed point, no shorter loop.
        seen, i = [], 0
        for _ in range(b):
            seen.append(i)
            i = int(perm[i])
        assert i == 0 and sorted(seen) == list(range(b))
        # Its first edge is the global maximum of the distances.
        dist = torch.cdist(saliency.reshape(b, -1).double(), saliency.reshape(b, -1).double())
        dist.fill_diagonal_(-1)
        first, second = divmod(int(dist.argmax()), b)
        assert int(perm[first]) == second
        assert perm.tolist() == _brute_pairing(saliency)


def test_guided_pairing_edge_cases() -> None:
    assert fn.guided_pairing(torch.rand(1, 4, 4)).tolist() == [0]
    assert fn.guided_pairing(torch.rand(2, 4, 4)).tolist() == [1, 0]
    # All maps equal: every distance 0, ties go to the first: 0 -> 1 -> 2 -> ... -> 0.
    assert fn.guided_pairing(torch.ones(5, 4, 4)).tolist() == [1, 2, 3, 4, 0]


# -- the mask -----------------------------------------------------------------------------------


def test_guided_mask_is_the_saliency_share() -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(6, 10, 10, generator=g), torch.rand(6, 10, 10, generator=g)
    a[0, :3] = 0.0
    b[0, :2] = 0.0  # both 0 on rows 0 and 1 of example 0
    mask, ratio = fn.guided_mask(a, b)
    other, other_ratio = fn.guided_mask(b, a)
    torch.testing.assert_close(mask + other, torch.ones_like(mask))
    torch.testing.assert_close(ratio + other_ratio, torch.ones(6))
    assert (mask >= 0).all() and (mask <= 1).all()
    assert torch.equal(mask[0, :2], torch.full((2, 10), 0.5))
    assert torch.equal(mask[0, 2], torch.zeros(10))  # a = 0 < b
    torch.testing.assert_close(mask[1:], a[1:] / (a[1:] + b[1:]))
    torch.testing.assert_close(ratio, mask.mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="one shape"):
        fn.guided_mask(a, b[:3])


# -- the method -------------------------------------------------------------------------------


def _mixed_loss(logits, labels, ratio, perm, loss):
    y = F.one_hot(labels, logits.shape[-1]).float()
    w = ratio[:, None]
    targets = w * y + (1 - w) * y[perm]
    torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)))
    if loss == "ce":
        return -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
    return F.binary_cross_entropy(torch.softmax(logits, 1), targets)


def _mix(images, saliency, perm):
    mask, ratio = fn.guided_mask(saliency, saliency[perm])
    m = mask[:, None]
    return m * images + (1 - m) * images[perm], ratio


@pytest.mark.parametrize("loss", ["ce", "bce"])
@pytest.mark.parametrize("pairing", ["greedy", "random"])
def test_guidedmixup_sr_equation(loss, pairing) -> None:
    net, (images, labels) = tiny_net(), batch()
    original = images.clone()
    branches = set()
    for seed in range(6):
        method = get_method("guidedmixup", loss=loss, pairing=pairing)
        method.seed(seed)
        g = stream(method)
        model = Recorder(net)
        got = method.loss(model, images, labels)
        assert torch.equal(images, original)
        if coin(g) >= 0.5:
            branches.add("erm")
            logits = net(images)
            if loss == "ce":
                expected = F.cross_entropy(logits, labels)
            else:  # BCE against one-hot targets, as the official code's clean batches
                expected = F.binary_cross_entropy(
                    torch.softmax(logits, 1), F.one_hot(labels, 10).float()
                )
            torch.testing.assert_close(got, expected)
            continue
        branches.add("mix")
        saliency = fn.blur_normalize(fn.spectral_residual_saliency(images))
        if pairing == "greedy":
            perm = fn.guided_pairing(saliency)
        else:
            perm = torch.randperm(8, generator=g)
        x_mix, ratio = _mix(images, saliency, perm)
        (seen,) = model.seen
        torch.testing.assert_close(seen, x_mix)
        logits = net(x_mix)
        torch.testing.assert_close(got, _mixed_loss(logits, labels, ratio, perm, loss))
        if loss == "bce":
            y = F.one_hot(labels, 10).float()
            w = ratio[:, None]
            torch.testing.assert_close(
                got, fn.soft_binary_cross_entropy(logits, w * y + (1 - w) * y[perm])
            )
    assert branches == {"erm", "mix"}


@pytest.mark.parametrize("clean_lam,loss", [(0.0, "ce"), (1.0, "bce"), (0.5, "ce")])
def test_guidedmixup_ap_equation_in_train_mode(clean_lam, loss) -> None:
    """The saliency pass runs in train mode (both forward passes see ``training = True``), its
    input gradient guides the mix, and with ``clean_lam = 0`` no weight gradient leaks."""
    net, (images, labels) = tiny_net(), batch()
    replica = copy.deepcopy(net)
    modes: list[bool] = []
    net.stem.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    method = get_method("guidedmixup", guided_type="ap", prob=1.0, clean_lam=clean_lam, loss=loss)
    method.seed(3)
    model = Recorder(net)
    got = method.loss(model, images, labels)
    assert modes == [True, True] and len(model.seen) == 2
    assert torch.equal(model.seen[0], images)  # the saliency pass sees the clean batch
    got.backward()

    # The replay, on a copy of the network (its batch-norm statistics move the same way).
    x0 = images.clone().requires_grad_(True)
    clean = F.cross_entropy(replica(x0), labels)
    (grad,) = torch.autograd.grad(clean, x0, retain_graph=clean_lam > 0)
    saliency = fn.blur_normalize(fn.gradient_saliency(grad))
    perm = fn.guided_pairing(saliency)
    x_mix, ratio = _mix(images, saliency, perm)
    torch.testing.assert_close(model.seen[1], x_mix)
    expected = _mixed_loss(replica(x_mix), labels, ratio, perm, loss)
    if clean_lam > 0:
        expected = expected + (2 * clean_lam / 10 if loss == "bce" else clean_lam) * clean
    torch.testing.assert_close(got, expected)
    expected.backward()
    for (name, p), q in zip(net.named_parameters(), replica.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(net.stem.weight, replica.stem.weight)
    for a, b in zip(net.buffers(), replica.buffers(), strict=True):
        torch.testing.assert_close(a, b)  # batch-norm statistics: two train-mode passes each


def test_guidedmixup_passes_parameters_and_declarations() -> None:
    cls = get_method_class("guidedmixup")
    assert cls.version == 1 and cls.forward_passes == 1 and "2306.16612" in cls.paper
    assert get_method("guidedmixup").passes_per_step() == 1
    ap = get_method("guidedmixup", guided_type="ap")
    assert ap.passes_per_step() == 2 and ap.bn_updates_per_step() == 2
    assert method_info("guidedmixup")["forward_passes"] == 1
    assert method_info("guidedmixup", {"guided_type": "ap"})["forward_passes"] == 2
    assert cls.param_sets == {"paper": {**get_method("guidedmixup").hparams, "loss": "bce"}}
    with pytest.raises(UsageError, match="odd"):
        get_method("guidedmixup", blur=6)
    with pytest.raises(UsageError, match="clean_lam"):
        get_method("guidedmixup", clean_lam=1.0)
    net, (images, labels) = tiny_net(), batch()
    a, b = get_method("guidedmixup", pairing="random"), get_method("guidedmixup", pairing="random")
    for seed in range(3):
        a.seed(seed)
        b.seed(seed)
        assert torch.equal(a.loss(net, images, labels), b.loss(net, images, labels))
