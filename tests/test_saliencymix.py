"""SaliencyMix: the saliency box, OpenCV's fine-grained saliency, and the method's equation."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.errors import UsageError
from mixbench.methods import functional as fn
from mixbench.methods import get_method

from .test_methods import batch, coin, stream, tiny_net

MISSING = (
    "method 'saliencymix' needs the optional extra 'saliency' "
    "(opencv-contrib-python-headless): pip install 'mixbench[saliency]'"
)


def _map(height: int, width: int, peak: tuple[int, int], value: float = 9.0) -> np.ndarray:
    saliency = np.zeros((height, width), dtype=np.uint8)
    saliency[peak] = value
    return saliency


# -- saliency_box ------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(32, 32), (24, 40), (7, 5)])
@pytest.mark.parametrize("lam", [0.0, 0.1, 0.37, 0.5, 0.81, 0.99])
def test_saliency_box_holds_the_argmax_and_its_lam_is_the_area(height, width, lam) -> None:
    g = torch.Generator().manual_seed(height * 100 + width)
    for _ in range(10):
        r, q = (
            int(torch.randint(height, (1,), generator=g)),
            int(torch.randint(width, (1,), generator=g)),
        )
        (top, bottom, left, right), lam_adj = fn.saliency_box(_map(height, width, (r, q)), lam)
        assert all(type(v) is int for v in (top, bottom, left, right)) and type(lam_adj) is float
        cut_h = int(height * math.sqrt(1 - lam))
        cut_w = int(width * math.sqrt(1 - lam))
        # Rows use H and columns W; each bound clipped to the image.
        assert (top, bottom) == (max(r - cut_h // 2, 0), min(r + cut_h // 2, height))
        assert (left, right) == (max(q - cut_w // 2, 0), min(q + cut_w // 2, width))
        assert 0 <= top <= bottom <= height and 0 <= left <= right <= width
        if cut_h // 2 >= 1:
            assert top <= r < bottom
        if cut_w // 2 >= 1:
            assert left <= q < right
        assert lam_adj == 1 - (bottom - top) * (right - left) / (height * width)


def test_saliency_box_side_is_even_unlike_cutmix() -> None:
    # lam = 0.75 on 30 rows: cut 15, side 14 (2 * (15 // 2)) when nothing is clipped.
    (top, bottom, left, right), lam = fn.saliency_box(_map(30, 30, (15, 15)), 0.75)
    assert (top, bottom, left, right) == (8, 22, 8, 22)
    assert lam == 1 - 14 * 14 / 900


def test_saliency_box_clips_at_the_border() -> None:
    (top, bottom, left, right), lam = fn.saliency_box(_map(32, 32, (0, 31)), 0.0)
    assert (top, bottom, left, right) == (0, 16, 15, 32)
    assert lam == 1 - 16 * 17 / 1024


def test_saliency_box_lam_one_is_empty() -> None:
    box, lam = fn.saliency_box(_map(32, 32, (10, 20)), 1.0)
    assert box[1] - box[0] == 0 and box[3] - box[2] == 0 and lam == 1.0


def test_saliency_box_ties_take_the_first_row_major_maximum() -> None:
    saliency = np.zeros((16, 16), dtype=np.uint8)
    for peak in [(9, 2), (3, 12), (3, 14), (12, 0)]:
        saliency[peak] = 200
    (top, bottom, left, right), _ = fn.saliency_box(saliency, 0.75)  # cut 8: +-4
    assert (top, bottom, left, right) == (0, 7, 8, 16)  # around (3, 12)
    # A tensor map gives the same box.
    assert fn.saliency_box(torch.from_numpy(saliency), 0.75)[0] == (0, 7, 8, 16)


def test_saliency_box_non_square_uses_height_for_rows() -> None:
    # 10 rows, 40 columns, lam = 0.19: cut_h = int(10 * 0.9) = 9, cut_w = 36; +-4 rows, +-18.
    (top, bottom, left, right), lam = fn.saliency_box(_map(10, 40, (5, 20)), 0.19)
    assert (top, bottom, left, right) == (1, 9, 2, 38)
    assert lam == 1 - 8 * 36 / 400


def test_saliency_box_leaves_its_input_alone_and_checks_it() -> None:
    saliency = _map(8, 8, (2, 3))
    before = saliency.copy()
    fn.saliency_box(saliency, 0.3)
    assert np.array_equal(saliency, before)
    with pytest.raises(ValueError, match="lam"):
        fn.saliency_box(saliency, 1.5)
    with pytest.raises(ValueError, match="saliency map"):
        fn.saliency_box(np.zeros((2, 3, 4)), 0.5)


# -- fine_grained_saliency ----------------------------------------------------------------------


def test_fine_grained_saliency_is_the_truncated_opencv_map() -> None:
    cv2 = pytest.importorskip("cv2", reason=MISSING)
    g = torch.Generator().manual_seed(3)
    for shape in [(3, 32, 32), (3, 24, 40), (1, 16, 16)]:
        image = torch.randn(*shape, generator=g)
        before = image.clone()
        saliency = fn.fine_grained_saliency(image)
        assert torch.equal(image, before)
        assert saliency.dtype == np.uint8 and saliency.shape == shape[1:]
        array = image.permute(1, 2, 0).contiguous().numpy().astype(np.float32)
        ok, reference = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(array)
        assert ok
        assert np.array_equal(saliency, np.trunc(255 * reference).astype(np.uint8))
        assert saliency.max() > 0


def test_fine_grained_saliency_without_opencv_is_one_usage_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # what a missing package looks like
    with pytest.raises(UsageError) as info:
        fn.fine_grained_saliency(torch.zeros(3, 8, 8))
    assert str(info.value) == MISSING


# -- the method -------------------------------------------------------------------------------


class Recorder(nn.Module):
    """The network, remembering the images it was given."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def _stub(calls: list[torch.Tensor]):
    """A saliency function whose maximum sits at a pixel chosen from the image's values."""

    def saliency(image: torch.Tensor) -> np.ndarray:
        calls.append(image.clone())
        h, w = image.shape[-2:]
        flat = int(image.abs().sum(0).argmax())
        out = np.zeros((h, w), dtype=np.uint8)
        out[divmod(flat, w)] = 255
        return out

    return saliency


def test_saliencymix_equation_box_from_the_first_partner() -> None:
    net, (images, labels) = tiny_net(), batch()
    original = images.clone()
    seen = set()
    for seed in range(10):
        method = get_method("saliencymix")
        method.seed(seed)
        calls: list[torch.Tensor] = []
        method.saliency_map = _stub(calls)
        g = stream(method)
        model = Recorder(net)
        loss = method.loss(model, images, labels)
        assert torch.equal(images, original)  # inputs untouched
        if coin(g) >= 0.5:
            seen.add("erm")
            assert not calls
            torch.testing.assert_close(loss, F.cross_entropy(net(images), labels))
            continue
        seen.add("mix")
        lam = float(fn.sample_beta(1.0, g))
        perm = torch.randperm(8, generator=g)
        # One saliency map per batch, of x[perm[0]] as the method receives it.
        assert len(calls) == 1 and torch.equal(calls[0], images[perm[0]])
        (top, bottom, left, right), lam = fn.saliency_box(_stub([])(images[perm[0]]), lam)
        # The same box for every image.
        (x_mix,) = model.seen
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert torch.equal(x_mix[:, :, inside], images[perm][:, :, inside])
        assert torch.equal(x_mix[:, :, ~inside], images[:, :, ~inside])
        assert lam == 1 - (bottom - top) * (right - left) / 1024
        logits = net(x_mix)
        expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(
            logits, labels[perm]
        )
        torch.testing.assert_close(loss, expected)
    assert seen == {"erm", "mix"}


def test_saliencymix_defaults_and_declarations() -> None:
    method = get_method("saliencymix")
    assert method.hparams == {
        **{"alpha": 1.0, "prob": 0.5},
        **{"loss": "ce", "dm_eta": 0.1, "dm_mode": "both", "dm_power": 1.0},
    }
    assert type(method).requires == ("saliency",) and type(method).version == 1
    assert "2006.01791" in type(method).paper


def test_saliencymix_with_opencv_is_reproducible() -> None:
    pytest.importorskip("cv2", reason=MISSING)
    net, (images, labels) = tiny_net(), batch()
    original = images.clone()
    a = get_method("saliencymix", prob=1.0)
    b = get_method("saliencymix", prob=1.0)
    for seed in range(3):
        a.seed(seed)
        b.seed(seed)
        assert torch.equal(a.loss(net, images, labels), b.loss(net, images, labels))
    assert torch.equal(images, original)


def test_saliencymix_with_opencv_uses_the_real_map() -> None:
    pytest.importorskip("cv2", reason=MISSING)
    net, (images, labels) = tiny_net(), batch()
    method = get_method("saliencymix", prob=1.0)
    method.seed(4)
    g = stream(method)
    model = Recorder(net)
    method.loss(model, images, labels)
    coin(g)
    lam = float(fn.sample_beta(1.0, g))
    perm = torch.randperm(8, generator=g)
    box, _ = fn.saliency_box(fn.fine_grained_saliency(images[perm[0]]), lam)
    assert torch.equal(model.seen[0], fn.paste_box(images, box, perm))
