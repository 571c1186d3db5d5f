"""`mixbench show`: what a method does to one batch, read off a probe network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixbench.cli import main
from mixbench.datasets import create_dataset
from mixbench.errors import UsageError
from mixbench.methods import get_method, list_methods
from mixbench.models import create_model
from mixbench.show import TAG_SCALE, ProbeNet, observe, save_figure, show_figure

B = 6


@pytest.fixture(scope="module")
def batch():
    bundle = create_dataset("synthetic", n_train=10, n_test=B)
    images, labels = bundle.test.images, bundle.test.labels
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    return bundle, images, labels, (images.float() / 255 - mean) / std


def _net(seed: int = 0):
    return create_model("preactresnet18", 10, seed=seed, width=4)


def _cnn_methods() -> list[str]:
    """The methods that train the CNN ``show`` draws with (TransMix needs a ViT)."""
    return [m for m in list_methods() if get_method(m).supports(_net()) is None]


def test_a_method_that_cannot_train_the_network_is_a_usage_error(batch):
    bundle, images, labels, _ = batch
    with pytest.raises(UsageError, match="transmix.*Vision Transformer"):
        show_figure(get_method("transmix"), _net(), images, labels, mean=bundle.mean,
                    std=bundle.std, class_names=bundle.class_names, title="t", draws=1)  # fmt: skip


@pytest.mark.parametrize("name", _cnn_methods())
def test_every_registered_method_gets_a_png(name, batch, tmp_path):
    bundle, images, labels, _ = batch
    method = get_method(name)
    method.seed(0)
    fig = show_figure(
        method,
        _net(),
        images,
        labels,
        mean=bundle.mean,
        std=bundle.std,
        class_names=bundle.class_names,
        title=name,
        draws=4,
    )
    path = tmp_path / f"{name}.png"
    save_figure(fig, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_probe_changes_nothing_the_method_computes(batch):
    """Tagged features, pooled and classified, give the network's own logits."""
    _, _, _, x = batch
    net = _net().eval()
    probe = ProbeNet(net).eval()
    feats = probe.features(x)
    assert feats.shape[1] == net.embed_dim + B
    assert torch.allclose(probe.head(probe.pool(feats)), net(x), atol=1e-5)
    assert torch.allclose(probe.weights[0], torch.eye(B), atol=1e-4)
    assert torch.equal(probe(x), net(x)) and torch.equal(probe.inputs[0], x)


def test_erm_mixes_nothing(batch):
    _, _, labels, x = batch
    seen = observe(get_method("erm"), _net(), x, labels, draws=3)
    assert seen.counts == {} and seen.input is None and seen.weights is None


def test_mixup_is_seen_in_input_space(batch):
    _, _, labels, x = batch
    seen = observe(get_method("mixup"), _net(), x, labels, draws=3)
    assert seen.counts == {"input": 3} and seen.input.shape == x.shape


def test_cutmix_pastes_a_box(batch):
    _, _, labels, x = batch
    method = get_method("cutmix", prob=1.0)
    method.seed(1)
    seen = observe(method, _net(), x, labels, draws=2)
    changed = (seen.input != x).any(dim=(0, 1))  # (H, W): which pixels differ somewhere
    rows, cols = changed.nonzero().unbind(1)
    box = torch.zeros_like(changed)
    box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    assert torch.equal(changed, box)  # one rectangle


def test_saliencymix_pastes_one_box_around_the_salient_point(batch):
    pytest.importorskip("cv2")
    _, _, labels, x = batch
    method = get_method("saliencymix", prob=1.0)
    method.seed(1)
    seen = observe(method, _net(), x, labels, draws=2)
    assert seen.counts == {"input": 2}
    changed = (seen.input != x).any(dim=(0, 1))
    rows, cols = changed.nonzero().unbind(1)
    box = torch.zeros_like(changed)
    box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    assert torch.equal(changed, box)


def test_puzzlemix_shows_block_masks_of_two_images(batch):
    pytest.importorskip("gco")
    _, _, labels, x = batch
    side = x.shape[-1] // 4
    method = get_method("puzzlemix", block_nums=(4,), transport=False)
    method.seed(2)
    seen = observe(method, _net(), x, labels, draws=2)
    assert seen.counts == {"input": 2}  # the saliency pass sees the clean batch: not a mix
    # Each block of each mixed image is its own image's, another's, or the mean of the two.
    for i in range(x.shape[0]):
        for r in range(4):
            for c in range(4):
                block = np.s_[:, r * side : (r + 1) * side, c * side : (c + 1) * side]
                got, own = seen.input[i][block], x[i][block]
                assert any(
                    torch.allclose(got, w * own + (1 - w) * x[j][block], atol=1e-5)
                    for j in range(x.shape[0])
                    for w in (0.0, 0.5, 1.0)
                )


def _cpu_stream(method) -> torch.Generator:
    g = torch.Generator()
    g.set_state(method.generator("cpu").get_state())
    return g


def test_fmix_shows_one_binary_fourier_mask(batch):
    from mixbench.methods import functional as fn

    _, _, labels, x = batch
    method = get_method("fmix")
    method.seed(3)
    g = _cpu_stream(method)
    seen = observe(method, _net(), x, labels, draws=1)
    assert seen.counts == {"input": 1}
    lam = float(fn.sample_beta(1.0, g))
    mask = fn.fmix_mask(x.shape[-2], x.shape[-1], lam, generator=g)
    perm = torch.randperm(B, generator=g)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(seen.input, torch.lerp(x[perm], x, mask))  # mask * x + (1 - mask) * x[perm]


def test_resizemix_shows_the_whole_partner_shrunk_into_one_box(batch):
    import torch.nn.functional as F

    _, _, labels, x = batch
    method = get_method("resizemix")
    method.seed(1)
    seen = observe(method, _net(), x, labels, draws=1)
    changed = (seen.input != x).any(dim=(0, 1))
    rows, cols = changed.nonzero().unbind(1)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box = torch.zeros_like(changed)
    box[top:bottom, left:right] = True
    assert torch.equal(changed, box)  # one rectangle, the same for every image
    inside = seen.input[:, :, top:bottom, left:right]
    shrunk = [F.interpolate(x[j : j + 1], size=inside.shape[-2:], mode="nearest") for j in range(B)]
    for i in range(B):  # each box holds a whole image of the batch (its partner), shrunk
        assert any(torch.equal(inside[i : i + 1], s) for s in shrunk)


def test_gridmixup_shows_a_grid_of_holes_from_partners(batch):
    _, _, labels, x = batch
    method = get_method("gridmixup", alpha=1.0)
    method.seed(2)
    seen = observe(method, _net(), x, labels, draws=1)
    changed = (seen.input != x).any(dim=(0, 1))
    assert 0 < int(changed.sum()) < changed.numel()
    for i in range(B):  # every pixel is the image's own, or one partner's on the holes
        partners = [j for j in range(B) if torch.equal(seen.input[i][:, changed], x[j][:, changed])]
        assert partners and torch.equal(seen.input[i][:, ~changed], x[i][:, ~changed])


def test_smoothmix_shows_a_gaussian_blend(batch):
    from mixbench.methods import functional as fn

    _, _, labels, x = batch
    method = get_method("smoothmix")
    method.seed(4)
    g = _cpu_stream(method)
    seen = observe(method, _net(), x, labels, draws=1)
    mask = fn.smooth_mask(x.shape[-2], x.shape[-1], generator=g)
    perm = torch.randperm(B, generator=g)
    assert (mask > 0).all() and (mask < 1).all()  # every pixel a blend of two images
    torch.testing.assert_close(seen.input, (1 - mask) * x + mask * x[perm])


@pytest.mark.parametrize("guided_type", ["sr", "ap"])
def test_guidedmixup_shows_pixel_blends_along_one_cycle(batch, guided_type):
    from mixbench.methods import functional as fn

    _, _, labels, x = batch
    method = get_method("guidedmixup", prob=1.0, guided_type=guided_type)
    seen = observe(method, _net(), x, labels, draws=1)
    assert seen.counts == {"input": 1}  # AP's saliency pass sees the clean batch
    if guided_type == "sr":
        saliency = fn.blur_normalize(fn.spectral_residual_saliency(x))
        perm = fn.guided_pairing(saliency)
        mask, _ = fn.guided_mask(saliency, saliency[perm])
        torch.testing.assert_close(seen.input, mask[:, None] * x + (1 - mask[:, None]) * x[perm])
    # Each mixed image lies pixel by pixel between its own image and one partner's, and the
    # partners form a single cycle through the batch.
    partner = []
    for i in range(B):
        low, high = torch.minimum(x[i], x), torch.maximum(x[i], x)
        inside = ((seen.input[i] >= low - 1e-5) & (seen.input[i] <= high + 1e-5)).flatten(1).all(1)
        inside[i] = False
        assert int(inside.sum()) == 1
        partner.append(int(inside.nonzero()))
    j, visited = 0, set()
    for _ in range(B):
        visited.add(j)
        j = partner[j]
    assert j == 0 and visited == set(range(B))


def test_manifold_mixup_is_seen_in_hidden_space(batch):
    _, _, labels, x = batch
    seen = observe(get_method("manifold_mixup", layers=(2,)), _net(), x, labels, draws=2)
    assert seen.counts == {"hidden": 2}
    stage, clean, mixed = seen.hidden
    assert stage == 2 and clean.shape == mixed.shape


def test_multimix_weights_are_read_back_exactly(batch):
    _, _, labels, x = batch
    method = get_method("multimix", prob=1.0, n=7)
    seen = observe(method, _net(), x, labels, draws=1)
    w = seen.weights
    assert w.shape == (7, B) and seen.counts == {"embedding": 1}
    assert (w >= -1e-4).all() and torch.allclose(w.sum(1), torch.ones(7), atol=1e-3)
    # The same draws from the functional core give the same weights.
    from mixbench.methods.functional import multimix

    replay = get_method("multimix", prob=1.0, n=7)
    float(torch.rand((), generator=replay.generator("cpu")))  # the coin
    z = torch.eye(B)
    _, _, expected = multimix(z, z, 7, 1.0, replay.generator("cpu"))
    assert torch.allclose(w, expected, atol=TAG_SCALE * 10)


def test_dense_multimix_weights_per_position(batch):
    _, _, labels, x = batch
    method = get_method("dense_multimix", prob=1.0, n=3)
    seen = observe(method, _net(), x, labels, draws=1)
    h, w = seen.feature_size
    assert seen.weights.shape == (h * w, 3, B)
    assert torch.allclose(seen.weights.sum(-1), torch.ones(h * w, 3), atol=1e-3)


def test_alignmixup_mixes_pairs(batch):
    _, _, labels, x = batch
    method = get_method("alignmixup", align_prob=1.0)
    seen = observe(method, _net(), x, labels, draws=1)
    w = seen.weights
    assert w.shape == (B, B)
    assert ((w > 1e-3).sum(1) <= 2).all() and torch.allclose(w.sum(1), torch.ones(B), atol=1e-3)


def test_show_command_writes_the_same_png_twice(tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "deeper" / "b.png"
    args = ["show", "mixup", "--param", "alpha=0.4", "--seed", "3"]
    assert main([*args, "--out", str(a)]) == 0
    assert main([*args, "--out", str(b)]) == 0
    assert a.read_bytes()[:4] == b"\x89PNG" and a.read_bytes() == b.read_bytes()


def test_show_refuses_bad_input_with_one_line(tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert main(["show", "mixup", "--out", out, "--param", "beta=1"]) == 2
    assert "has no parameter 'beta'" in capsys.readouterr().err
    assert main(["show", "mixup", "--out", out, "--param", "alpha"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["show", "mixupp", "--out", out]) == 2
    assert "mixup" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
