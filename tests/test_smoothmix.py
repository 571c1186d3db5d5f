"""SmoothMix: the Gaussian mask, the paper's and OpenMixup's label weights, the equation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixbench.errors import UsageError
from mixbench.methods import functional as fn
from mixbench.methods import get_method, get_method_class

from .test_fmix import Recorder
from .test_methods import batch, stream, tiny_net


def _draws(g: torch.Generator, height: int, width: int) -> tuple[int, int, float]:
    ry = int(torch.randint(height, (1,), generator=g))
    rx = int(torch.randint(width, (1,), generator=g))
    return ry, rx, float(torch.rand((), generator=g))


@pytest.mark.parametrize("height,width", [(32, 32), (20, 28), (9, 9)])
@pytest.mark.parametrize("sigmas", [(0.25, 0.5), (0.1, 0.1), (0.3, 0.9)])
def test_smooth_mask_is_a_gaussian_around_a_half_pixel_centre(height, width, sigmas) -> None:
    for seed in range(8):
        mask = fn.smooth_mask(height, width, *sigmas, generator=torch.Generator().manual_seed(seed))
        ry, rx, u = _draws(torch.Generator().manual_seed(seed), height, width)
        cy, cx = ry - 0.5, rx - 0.5
        sigma = (sigmas[0] + (sigmas[1] - sigmas[0]) * u) * height
        assert sigmas[0] * height <= sigma <= sigmas[1] * height
        assert mask.shape == (height, width) and mask.dtype == torch.float32
        assert (mask > 0).all() and (mask <= 1).all()
        i = torch.arange(height, dtype=torch.float64)[:, None]
        j = torch.arange(width, dtype=torch.float64)[None, :]
        expected = torch.exp(-((i - cy) ** 2 + (j - cx) ** 2) / (2 * sigma**2))
        torch.testing.assert_close(
            mask, expected.float().clamp_min(torch.finfo(torch.float32).tiny)
        )
        # Largest at the pixels nearest the centre (rows ry - 1 and ry, columns rx - 1 and rx).
        near = [(r, c) for r in (ry - 1, ry) for c in (rx - 1, rx) if r >= 0 and c >= 0]
        for r, c in near:
            assert mask[r, c] == mask.max()
        # Symmetric about the centre: rows ry - 1 - k and ry + k, columns likewise.
        for k in range(height):
            if ry - 1 - k >= 0 and ry + k < height:
                torch.testing.assert_close(mask[ry - 1 - k], mask[ry + k], rtol=0, atol=1e-7)
        for k in range(width):
            if rx - 1 - k >= 0 and rx + k < width:
                torch.testing.assert_close(mask[:, rx - 1 - k], mask[:, rx + k], rtol=0, atol=1e-7)


def test_smooth_mask_checks_its_sigmas() -> None:
    with pytest.raises(ValueError, match="sigma"):
        fn.smooth_mask(8, 8, 0.5, 0.25)
    with pytest.raises(ValueError, match="sigma"):
        fn.smooth_mask(8, 8, 0.0, 0.25)


# -- the method -------------------------------------------------------------------------------


@pytest.mark.parametrize("label_weight", ["paper", "openmixup"])
def test_smoothmix_equation_and_label_weights(label_weight) -> None:
    net, (images, labels) = tiny_net(), batch()
    original = images.clone()
    y = F.one_hot(labels, 10).float()
    for seed in range(4):
        method = get_method("smoothmix", label_weight=label_weight)
        method.seed(seed)
        g = stream(method)
        model = Recorder(net)
        loss = method.loss(model, images, labels)
        assert torch.equal(images, original)
        mask = fn.smooth_mask(32, 32, 0.25, 0.5, g)
        perm = torch.randperm(8, generator=g)
        x_mix = (1 - mask) * images + mask * images[perm]  # x[perm] under G
        torch.testing.assert_close(model.seen[0], x_mix)
        share = float(mask.double().mean())
        assert 0 < share < 1 and math.isclose(share, float(mask.sum()) / 1024, rel_tol=1e-6)
        # The paper: Y[perm], the image under G, weighs mean(G); OpenMixup swaps the weights.
        lam = 1 - share if label_weight == "paper" else share
        targets = lam * y + (1 - lam) * y[perm]
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        logits = net(x_mix)
        expected = -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
        torch.testing.assert_close(loss, expected)


def test_smoothmix_parameters_and_declarations() -> None:
    with pytest.raises(UsageError, match="sigma_min"):
        get_method("smoothmix", sigma_min=0.6)
    with pytest.raises(UsageError, match="label_weight"):
        get_method("smoothmix", label_weight="mean")
    cls = get_method_class("smoothmix")
    assert cls.version == 1 and cls.forward_passes == 1 and "CVPR Workshops 2020" in cls.paper
    net, (images, labels) = tiny_net(), batch()
    a, b = get_method("smoothmix"), get_method("smoothmix")
    a.seed(2)
    b.seed(2)
    assert torch.equal(a.loss(net, images, labels), b.loss(net, images, labels))
