"""FMix: the low-frequency image, its binarised and softened masks, and the method's equation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods import functional as fn
from mixbench.methods import get_method, get_method_class

from .test_methods import batch, stream, tiny_net


class Recorder(nn.Module):
    """The network, remembering the images it was given."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def _numpy_low_frequency(height, width, decay, real, imag, extra_column=None):
    """The official construction in NumPy: frequencies, amplitudes, ``irfftn``, scaling."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[: width // 2 + 1]
    freqs = np.sqrt(fx * fx + fy * fy)
    amplitude = 1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** decay
    spectrum = amplitude * (real.numpy().astype(np.float64) + 1j * imag.numpy())
    if extra_column is not None:  # the official code's unused column for odd widths
        spectrum = np.concatenate([spectrum, extra_column], axis=1)
    image = np.fft.irfftn(spectrum, (height, width), axes=(0, 1))
    image = image - image.min()
    return image / image.max()


@pytest.mark.parametrize("height,width", [(32, 32), (24, 31), (7, 10), (1, 6)])
@pytest.mark.parametrize("decay", [1.0, 3.0])
def test_low_frequency_image_is_numpys_irfftn_of_the_same_spectrum(height, width, decay) -> None:
    g = torch.Generator().manual_seed(height * 31 + width)
    replay = torch.Generator().manual_seed(height * 31 + width)
    image = fn.low_frequency_image(height, width, decay, g)
    assert image.shape == (height, width) and image.dtype == torch.float32
    columns = width // 2 + 1
    real = torch.randn((height, columns), generator=replay)  # N1, then N2
    imag = torch.randn((height, columns), generator=replay)
    expected = _numpy_low_frequency(height, width, decay, real, imag)
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-6)
    assert image.min() == 0.0 and image.max() == 1.0  # both ends reached
    # The generator has moved on by exactly the two noise tensors.
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=replay))
    if width % 2:  # the official extra column of noise is ignored by the inverse transform
        extra = np.random.default_rng(0).normal(size=(height, 1)) * (1 + 1j)
        np.testing.assert_allclose(
            _numpy_low_frequency(height, width, decay, real, imag, extra), expected, atol=1e-12
        )


def _top_k_check(mask: torch.Tensor, image: torch.Tensor, k: int) -> None:
    ones = mask.reshape(-1) == 1
    assert int(ones.sum()) == k
    values = image.reshape(-1)
    if 0 < k < values.numel():
        assert values[ones].min() >= values[~ones].max()  # the k largest entries


@pytest.mark.parametrize("lam", [0.0, 0.13, 0.5, 0.7071, 1.0])
@pytest.mark.parametrize("height,width", [(32, 32), (9, 14)])
def test_fmix_mask_has_k_ones_on_the_k_largest_entries(lam, height, width) -> None:
    n = height * width
    rounding = set()
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        replay = torch.Generator().manual_seed(seed)
        mask = fn.fmix_mask(height, width, lam, generator=g)
        assert mask.shape == (height, width) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        image = fn.low_frequency_image(height, width, 3.0, replay)  # the same generator state
        up = float(torch.rand((), generator=replay)) > 0.5  # then the rounding coin
        k = math.ceil(lam * n) if up else math.floor(lam * n)
        assert k in {math.floor(lam * n), math.ceil(lam * n)}
        rounding.add(up)
        _top_k_check(mask, image, k)
        assert abs(float(mask.mean()) - lam) < 1 / n + 1e-12
    assert rounding == {True, False}


@pytest.mark.parametrize("max_soft", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("lam", [0.02, 0.3, 0.5, 0.9])
def test_fmix_mask_softened_edges(max_soft, lam) -> None:
    height = width = 16
    n = height * width
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        replay = torch.Generator().manual_seed(seed)
        mask = fn.fmix_mask(height, width, lam, max_soft=max_soft, generator=g)
        image = fn.low_frequency_image(height, width, 3.0, replay)
        up = float(torch.rand((), generator=replay)) > 0.5
        k = math.ceil(lam * n) if up else math.floor(lam * n)
        s = int(n * min(max_soft, lam, 1 - lam))
        assert float(mask.min()) >= 0 and float(mask.max()) <= 1
        order = torch.argsort(image.reshape(-1), descending=True, stable=True)
        ranked = mask.reshape(-1)[order]
        if s == 0:
            _top_k_check(mask, image, k)
            continue
        # ranks < k - s: 1; ranks >= k + s: 0; in between 2 s values from 1 down to 0.
        assert int((mask == 1).sum()) == k - s + 1
        assert int((mask == 0).sum()) == n - k - s + 1
        torch.testing.assert_close(ranked[k - s : k + s], torch.linspace(1, 0, 2 * s))
        assert (ranked[: k - s] == 1).all() and (ranked[k + s :] == 0).all()
        assert (ranked[1:] <= ranked[:-1]).all()  # non-increasing along the ranks


def test_fmix_mask_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="lam"):
        fn.fmix_mask(8, 8, 1.5)
    with pytest.raises(ValueError, match="max_soft"):
        fn.fmix_mask(8, 8, 0.5, max_soft=-0.1)
    with pytest.raises(ValueError, match="size"):
        fn.low_frequency_image(0, 8)


# -- the method -------------------------------------------------------------------------------


def _expected(model, images, labels, mask, lam, perm):
    x_mix = mask * images + (1 - mask) * images[perm]
    logits = model(x_mix)
    return x_mix, lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(
        logits, labels[perm]
    )


@pytest.mark.parametrize("params", [{}, {"alpha": 0.4, "decay_power": 2.0, "max_soft": 0.1}])
def test_fmix_equation_with_the_drawn_lam(params) -> None:
    net, (images, labels) = tiny_net(), batch()
    original = images.clone()
    apart = 0
    for seed in range(4):
        method = get_method("fmix", **params)
        method.seed(seed)
        g = stream(method)
        model = Recorder(net)
        loss = method.loss(model, images, labels)
        assert torch.equal(images, original)
        alpha = params.get("alpha", 1.0)
        lam = float(fn.sample_beta(alpha, g))
        mask = fn.fmix_mask(
            32, 32, lam, params.get("decay_power", 3.0), params.get("max_soft", 0.0), g
        )
        perm = torch.randperm(8, generator=g)
        x_mix, expected = _expected(net, images, labels, mask, lam, perm)
        (seen,) = model.seen
        torch.testing.assert_close(seen, x_mix)
        # The loss weight is the drawn lam, not the mask's mean (within 1 / (H W) of it): the
        # two losses differ by about 1e-5 here, so the loss must be far nearer the first.
        torch.testing.assert_close(loss, expected)
        assert abs(float(mask.mean()) - lam) < 1 / 1024 + 1e-9
        _, by_mean = _expected(net, images, labels, mask, float(mask.mean()), perm)
        if float(mask.mean()) != lam:
            apart += 1
            assert abs(float(loss - expected)) < abs(float(loss - by_mean)) / 10
    assert apart > 0


def test_fmix_reformulated_draws_beta_alpha_plus_one_and_trains_on_y() -> None:
    net, (images, labels) = tiny_net(), batch()
    for seed in range(3):
        method = get_method("fmix", reformulate=True, alpha=0.5)
        method.seed(seed)
        g = stream(method)
        lam = float(fn.sample_beta(1.5, g, beta=0.5))
        mask = fn.fmix_mask(32, 32, lam, generator=g)
        perm = torch.randperm(8, generator=g)
        logits = net(mask * images + (1 - mask) * images[perm])
        torch.testing.assert_close(
            method.loss(net, images, labels), F.cross_entropy(logits, labels)
        )


def test_fmix_is_reproducible_and_declared() -> None:
    net, (images, labels) = tiny_net(), batch()
    a, b = get_method("fmix"), get_method("fmix")
    for seed in range(3):
        a.seed(seed)
        b.seed(seed)
        assert torch.equal(a.loss(net, images, labels), b.loss(net, images, labels))
    cls = get_method_class("fmix")
    assert cls.version == 1 and cls.forward_passes == 1 and "2002.12047" in cls.paper
    assert "2002.12047" in (cls.__doc__ or "") and cls.requires == ()
