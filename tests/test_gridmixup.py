"""GridMixup: the grid mask (its kept out-of-image quirk pinned), and the method's equation."""

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


def _reference(height, width, lam, n_holes, hole_aspect, area_ratio, aspect, u, v):
    """The reference geometry on Python lists (their slice rules), and the holes' sides."""
    area = int(height * width * area_ratio)
    cw = int(math.sqrt(area / aspect))
    ch = int(cw * aspect)
    left, top = int((width - cw) * u), int((height - ch) * v)
    pw = math.ceil(cw / n_holes)
    ph = int(pw * hole_aspect)
    ny = math.ceil(ch / ph)
    hw = min(max(int(pw * math.sqrt(1 - lam)), 1), pw - 1)
    hh = min(max(int(ph * math.sqrt(1 - lam)), 1), ph - 1)
    rows = [[0.0] * width for _ in range(height)]
    for i in range(n_holes + 1):
        for j in range(ny + 1):
            x1, y1 = min(pw * i, cw), min(ph * j, ch)
            x2, y2 = min(x1 + hw, cw), min(y1 + hh, ch)
            for row in rows[top + y1 : top + y2]:
                row[left + x1 : left + x2] = [1.0] * len(row[left + x1 : left + x2])
    crop = (top, top + ch, left, left + cw)
    return torch.tensor(rows), crop, (hh, hw), (ph, pw)


def _uv(seed: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    return float(torch.rand((), generator=g)), float(torch.rand((), generator=g))


@pytest.mark.parametrize(
    "args",
    [
        (0.5, 4, 1.0, 0.8, 1.0),
        (0.1, 2, 1.0, 0.5, 0.5),
        (0.9, 6, 1.0, 1.0, 1.9),
        (0.0, 3, 1.5, 0.6, 1.2),
        (1.0, 5, 0.7, 0.9, 0.8),
    ],
)
def test_grid_mask_is_the_reference_geometry(args) -> None:
    lam, n_holes, hole_aspect, area, aspect = args
    for seed in range(8):
        mask = fn.grid_mask(
            32, 32, lam, n_holes, hole_aspect, area, aspect, torch.Generator().manual_seed(seed)
        )
        expected, _, _, _ = _reference(32, 32, lam, n_holes, hole_aspect, area, aspect, *_uv(seed))
        assert mask.dtype == torch.float32 and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(mask, expected)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.75, 1.0])
def test_grid_mask_inside_the_image_stays_in_the_crop_with_small_holes(lam) -> None:
    # Square crops of at most the image's area lie inside the image.
    for seed in range(6):
        mask = fn.grid_mask(32, 24, lam, 3, 1.0, 0.6, 1.0, torch.Generator().manual_seed(seed))
        _, (top, bottom, left, right), (hh, hw), (ph, pw) = _reference(
            32, 24, lam, 3, 1.0, 0.6, 1.0, *_uv(seed)
        )
        assert top >= 0 and bottom <= 32 and left >= 0 and right <= 24
        outside = torch.ones_like(mask, dtype=torch.bool)
        outside[top:bottom, left:right] = False
        assert not mask[outside].any()
        assert 1 <= hh <= ph - 1 and 1 <= hw <= pw - 1
        # Each grid cell holds one hole of at most (ph - 1) x (pw - 1) pixels at its corner.
        for r0 in range(top, bottom, ph):
            for c0 in range(left, right, pw):
                cell = mask[r0 : min(r0 + ph, bottom), c0 : min(c0 + pw, right)]
                rows, cols = cell.nonzero().unbind(1)
                assert rows.numel() > 0
                assert int(rows.max()) < hh <= ph - 1 and int(cols.max()) < hw <= pw - 1


def test_grid_mask_pinned_crop_taller_than_the_image() -> None:
    """A crop 22 wide and 44 tall on 32 x 32 images (area 1.0, aspect 2.0), 2 holes, lam 3/4:
    cells 11 x 11, holes 5 x 5 at crop rows 0, 11, 22, 33 and columns 0, 11."""
    # seed 4: u = 0.5596, v = 0.5591: left = int(10 u) = 5, top = int(-12 v) = -6. The hole
    # at crop rows [0, 5) is written at image rows [-6, -1): Python puts it at rows 26..30.
    u, v = _uv(4)
    assert (int(10 * u), int(-12 * v)) == (5, -6)
    mask = fn.grid_mask(32, 32, 0.75, 2, 1.0, 1.0, 2.0, torch.Generator().manual_seed(4))
    rows = [*range(5, 10), *range(16, 21), *range(26, 32)]
    cols = [*range(5, 10), *range(16, 21)]
    expected = torch.zeros(32, 32)
    expected[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = 1
    assert torch.equal(mask, expected)
    # seed 1: top = -3, left = 7: the hole at image rows [-3, 2) vanishes (Python's slice of a
    # start past its stop); the one at [30, 35) is cut at the border.
    u, v = _uv(1)
    assert (int(10 * u), int(-12 * v)) == (7, -3)
    mask = fn.grid_mask(32, 32, 0.75, 2, 1.0, 1.0, 2.0, torch.Generator().manual_seed(1))
    rows = [*range(8, 13), *range(19, 24), 30, 31]
    cols = [*range(7, 12), *range(18, 23)]
    expected = torch.zeros(32, 32)
    expected[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = 1
    assert torch.equal(mask, expected)


def test_grid_mask_same_state_same_mask_and_checks() -> None:
    a = fn.grid_mask(32, 32, 0.4, 4, 1.0, 0.7, 1.3, torch.Generator().manual_seed(9))
    b = fn.grid_mask(32, 32, 0.4, 4, 1.0, 0.7, 1.3, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="n_holes"):
        fn.grid_mask(8, 8, 0.5, 5)  # a crop 8 wide holds at most 4 cells
    with pytest.raises(ValueError, match="lam"):
        fn.grid_mask(8, 8, -0.5, 2)


# -- the method -------------------------------------------------------------------------------


def test_gridmixup_equation() -> None:
    net, (images, labels) = tiny_net(), batch()
    original = images.clone()
    holes = set()
    for seed in range(6):
        method = get_method("gridmixup")
        method.seed(seed)
        g = stream(method)
        model = Recorder(net)
        loss = method.loss(model, images, labels)
        assert torch.equal(images, original)
        lam = float(fn.sample_beta(0.2, g))
        n_holes = int(torch.randint(2, 7, (1,), generator=g))
        holes.add(n_holes)
        hole_aspect = 1.0 + 0.0 * float(torch.rand((), generator=g))  # U(1, 1): still a draw
        area = 0.5 + 0.5 * float(torch.rand((), generator=g))
        aspect = 0.5 + 1.5 * float(torch.rand((), generator=g))
        mask = fn.grid_mask(32, 32, lam, n_holes, hole_aspect, area, aspect, g)
        perm = torch.randperm(8, generator=g)
        x_mix = (1 - mask) * images + mask * images[perm]
        assert torch.equal(model.seen[0], x_mix)
        lam = 1 - float(mask.mean())  # the label weight is the mask's area
        logits = net(x_mix)
        expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(
            logits, labels[perm]
        )
        torch.testing.assert_close(loss, expected)
    assert len(holes) > 1


def test_gridmixup_parameters_and_declarations() -> None:
    with pytest.raises(UsageError, match="n_holes_min"):
        get_method("gridmixup", n_holes_min=7)
    with pytest.raises(UsageError, match="cut_aspect_min"):
        get_method("gridmixup", cut_aspect_min=3.0)
    images, labels = batch(size=16)
    with pytest.raises(UsageError, match="too small"):  # narrowest crop 8 wide: 4 cells
        get_method("gridmixup").loss(tiny_net(), images, labels)
    assert torch.isfinite(get_method("gridmixup", n_holes_max=4).loss(tiny_net(), images, labels))
    cls = get_method_class("gridmixup")
    assert cls.version == 1 and cls.forward_passes == 1
    assert "GridMixup (OpenMixup's GridMix)" in cls.description
