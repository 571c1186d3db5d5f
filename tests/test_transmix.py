"""TransMix: its functional core against hand-computed cases, its loss against the equation
replayed from its draws, and its refusal of networks without a class token's attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixbench.errors import UsageError
from mixbench.methods import functional as fn
from mixbench.methods import get_method
from mixbench.models import create_model

from .conftest import TINY_VIT, net_for


def test_transmix_lambda_hand_computed() -> None:
    # Two examples, a 2x2 patch grid; the pasted box covers the right column.
    attention = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.0, 0.25]])
    mask = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    lam = fn.transmix_lambda(attention, mask)
    # Own patches 0 and 2: (0.1 + 0.3) / 1.0 and (0.0 + 0.0) / 0.75.
    torch.testing.assert_close(lam, torch.tensor([0.4, 0.0]))
    # Per-example masks (b, h, w), and (b, n), give the same as one shared mask.
    torch.testing.assert_close(fn.transmix_lambda(attention, mask.expand(2, 2, 2)), lam)
    torch.testing.assert_close(fn.transmix_lambda(attention, mask.reshape(1, 4).expand(2, 4)), lam)
    # No attention at all: the own image's share of the patches.
    torch.testing.assert_close(fn.transmix_lambda(torch.zeros(1, 4), mask), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="patches"):
        fn.transmix_lambda(attention, torch.ones(3, 3))


def test_transmix_lambda_gives_no_gradient_to_the_attention() -> None:
    attention = torch.rand(3, 4, requires_grad=True)
    lam = fn.transmix_lambda(attention, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert not lam.requires_grad and lam.dtype == torch.float32


def test_box_patch_mask_is_the_nearest_down_sampled_box() -> None:
    # A 32x32 image, box rows 8..24 and columns 0..16, on a 4x4 grid: patch (i, j) reads
    # pixel (8i, 8j).
    mask = fn.box_patch_mask((8, 24, 0, 16), 32, 32, (4, 4))
    expected = torch.zeros(4, 4)
    expected[1:3, 0:2] = 1.0
    assert torch.equal(mask, expected)
    # Nearest: a box that covers no sampled pixel leaves the grid empty.
    assert fn.box_patch_mask((1, 7, 1, 7), 32, 32, (4, 4)).sum() == 0


def _coin(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


@pytest.mark.parametrize("area_weight", [0.5, 0.0])
def test_transmix_equation(area_weight: float) -> None:
    model = net_for("transmix")
    g0 = torch.Generator().manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32, generator=g0), torch.randint(10, (8,), generator=g0)
    for seed in range(3):
        method = get_method("transmix", area_weight=area_weight)
        method.seed(seed)
        g = torch.Generator()
        g.set_state(method.generator("cpu").get_state())
        assert _coin(g) < 1.0  # prob 1: every batch mixed
        lam_area = float(fn.sample_beta(1.0, g))
        box, lam_area = fn.cutmix_box(32, 32, lam_area, g)
        perm = torch.randperm(8, generator=g)
        top, bottom, left, right = box
        x_mix = images.clone()
        x_mix[:, :, top:bottom, left:right] = images[perm][:, :, top:bottom, left:right]
        logits, attention = model.forward_with_attention(x_mix)
        # The 4x4 patch grid (patch 8): patch (i, j) is in the box if pixel (8i, 8j) is.
        grid = torch.zeros(4, 4)
        for i in range(4):
            for j in range(4):
                grid[i, j] = float(top <= 8 * i < bottom and left <= 8 * j < right)
        own = (attention * (1 - grid.flatten())).sum(1) / attention.sum(1)
        lam = area_weight * lam_area + (1 - area_weight) * own
        ce = F.cross_entropy(logits, labels, reduction="none")
        ce_partner = F.cross_entropy(logits, labels[perm], reduction="none")
        expected = (lam * ce + (1 - lam) * ce_partner).mean()
        torch.testing.assert_close(method.loss(model, images, labels), expected)
    # prob 0: plain cross-entropy.
    torch.testing.assert_close(
        get_method("transmix", prob=0.0).loss(model, images, labels),
        F.cross_entropy(model(images), labels),
    )


def test_transmix_refuses_a_cnn_in_one_line() -> None:
    cnn = create_model("preactresnet18", 10, width=4)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(10, (4,))
    with pytest.raises(UsageError, match="needs a Vision Transformer") as info:
        get_method("transmix").loss(cnn, images, labels)
    assert "\n" not in str(info.value)


def test_transmix_refuses_a_vit_without_class_token() -> None:
    pytest.importorskip("timm")
    name, options = TINY_VIT
    vit = create_model(name, 10, class_token=False, global_pool="avg", **options)
    assert "class token" in get_method("transmix").supports(vit)
