"""ResizeMix: the box, the resized paste, and the method's equation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixbench.errors import UsageError
from mixbench.methods import functional as fn
from mixbench.methods import get_method, get_method_class

from .test_fmix import Recorder
from .test_methods import batch, stream, tiny_net


@pytest.mark.parametrize("height,width", [(32, 32), (24, 40), (7, 5)])
@pytest.mark.parametrize("scale", [0.0, 0.1, 0.37, 0.5, 0.8, 1.0])
def test_resize_box_bounds_and_lam(height, width, scale) -> None:
    g = torch.Generator().manual_seed(height * 100 + width)
    replay = torch.Generator().manual_seed(height * 100 + width)
    for _ in range(10):
        (top, bottom, left, right), lam = fn.resize_box(height, width, scale, g)
        assert all(type(v) is int for v in (top, bottom, left, right)) and type(lam) is float
        cy = int(torch.randint(height, (1,), generator=replay))  # rows first
        cx = int(torch.randint(width, (1,), generator=replay))
        cut_h, cut_w = int(height * scale), int(width * scale)  # a ratio of sides
        assert (top, bottom) == (max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height))
        assert (left, right) == (max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width))
        if cut_h // 2 >= 1:
            assert top <= cy < bottom
        if cut_w // 2 >= 1:
            assert left <= cx < right
        assert lam == 1 - (bottom - top) * (right - left) / (height * width)
        assert fn.resize_box(height, width, scale, center=(cy, cx)) == (
            (top, bottom, left, right),
            lam,
        )


def test_resize_box_side_is_even_and_clipped() -> None:
    # 30 rows at scale 0.5: cut 15, side 14 around the centre.
    assert fn.resize_box(30, 30, 0.5, center=(15, 15)) == ((8, 22, 8, 22), 1 - 196 / 900)
    assert fn.resize_box(32, 32, 0.8, center=(0, 31)) == ((0, 12, 19, 32), 1 - 12 * 13 / 1024)
    with pytest.raises(ValueError, match="scale"):
        fn.resize_box(8, 8, 1.5)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("box", [(3, 17, 5, 25), (0, 32, 0, 32), (10, 11, 0, 1), (4, 4, 2, 9)])
def test_resize_paste_holds_the_resized_partner_inside_and_x_outside(mode, box) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 32, 32, generator=g)
    original = x.clone()
    perm = torch.randperm(5, generator=g)
    out = fn.resize_paste(x, box, perm, mode)
    assert torch.equal(x, original) and out.shape == x.shape
    top, bottom, left, right = box
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])
    if bottom > top and right > left:
        options = {"align_corners": False} if mode == "bilinear" else {}
        resized = F.interpolate(x[perm], size=(bottom - top, right - left), mode=mode, **options)
        assert torch.equal(out[:, :, top:bottom, left:right], resized)
    else:
        assert torch.equal(out, x) and out is not x
    with pytest.raises(ValueError, match="mode"):
        fn.resize_paste(x, box, perm, "bicubic")


# -- the method -------------------------------------------------------------------------------


def _replay_scale(g, params):
    low, high = params.get("scale_min", 0.1), params.get("scale_max", 0.8)
    if params.get("scale_dist", "uniform") == "beta":
        scale = float(fn.sample_beta(params.get("alpha", 1.0), g))
        if low <= scale <= high:
            return scale, "beta"
    return low + (high - low) * float(torch.rand((), generator=g)), "uniform"


@pytest.mark.parametrize(
    "params",
    [{}, {"interpolation": "bilinear"}, {"scale_dist": "beta", "alpha": 0.5}, {"scale_min": 0.5}],
)
def test_resizemix_equation(params) -> None:
    net, (images, labels) = tiny_net(), batch()
    original = images.clone()
    laws = set()
    for seed in range(12 if params.get("scale_dist") == "beta" else 3):
        method = get_method("resizemix", **params)
        method.seed(seed)
        g = stream(method)
        model = Recorder(net)
        loss = method.loss(model, images, labels)
        assert torch.equal(images, original)
        scale, law = _replay_scale(g, params)
        laws.add(law)
        box, lam = fn.resize_box(32, 32, scale, g)
        perm = torch.randperm(8, generator=g)
        x_mix = fn.resize_paste(images, box, perm, params.get("interpolation", "nearest"))
        (seen,) = model.seen
        assert torch.equal(seen, x_mix)  # one box for the batch
        top, bottom, left, right = box
        assert lam == 1 - (bottom - top) * (right - left) / 1024
        logits = net(x_mix)
        expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(
            logits, labels[perm]
        )
        torch.testing.assert_close(loss, expected)
    if params.get("scale_dist") == "beta":
        assert laws == {"beta", "uniform"}  # in range, and redrawn outside it


def test_resizemix_empty_box_leaves_the_batch_unchanged() -> None:
    net = tiny_net()
    images, labels = batch(size=16)
    model = Recorder(net)
    loss = get_method("resizemix", scale_max=0.1).loss(model, images, labels)  # cut 1: empty
    assert torch.equal(model.seen[0], images)
    torch.testing.assert_close(loss, F.cross_entropy(net(images), labels))


def test_resizemix_parameters_and_declarations() -> None:
    with pytest.raises(UsageError, match="scale_min"):
        get_method("resizemix", scale_min=0.9)
    with pytest.raises(UsageError, match="interpolation"):
        get_method("resizemix", interpolation="area")
    cls = get_method_class("resizemix")
    assert cls.version == 1 and cls.forward_passes == 1 and "2012.11101" in cls.paper
    net, (images, labels) = tiny_net(), batch()
    a, b = get_method("resizemix"), get_method("resizemix")
    a.seed(5)
    b.seed(5)
    assert torch.equal(a.loss(net, images, labels), b.loss(net, images, labels))
