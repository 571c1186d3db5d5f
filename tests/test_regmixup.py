"""RegMixup: the clean and mixed halves in one call, and its loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbench.config import load_preset
from mixbench.methods import functional as fn
from mixbench.methods import get_method_class

from .test_methods import batch, make, stream, tiny_net


def test_the_batch_is_the_clean_half_then_the_mixed_half() -> None:
    images, labels = batch()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    kept = images.clone()
    x_cat, labels_cat, perm_cat = fn.regmixup_batch(images, labels, 0.3, perm)
    assert x_cat.shape == (16, 3, 32, 32) and torch.equal(images, kept)
    assert torch.equal(x_cat[:8], images)
    torch.testing.assert_close(x_cat[8:], fn.mix(images, 0.3, perm))
    assert torch.equal(labels_cat, torch.cat([labels, labels]))
    assert torch.equal(labels_cat[perm_cat], torch.cat([labels, labels[perm]]))


def test_the_loss_is_the_half_sum_of_the_clean_and_mixup_losses() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 10, generator=g), torch.randint(10, (8,), generator=g)
    perm = torch.randperm(8, generator=g)
    _, labels_cat, perm_cat = fn.regmixup_batch(torch.zeros(8, 1), labels, 0.3, perm)
    clean, mixed = logits[:8], logits[8:]
    expected = (
        F.cross_entropy(clean, labels) / 2
        + (0.3 * F.cross_entropy(mixed, labels) + 0.7 * F.cross_entropy(mixed, labels[perm])) / 2
    )
    got = fn.mixed_cross_entropy(logits, labels_cat, 0.3, perm_cat)
    torch.testing.assert_close(got, expected)


def test_the_method_calls_the_model_once_with_2b_rows_and_replays_its_draws() -> None:
    model, (images, labels) = tiny_net(), batch()
    calls: list[int] = []
    model.stem.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    for seed in range(3):
        method = make("regmixup", {}, seed)
        g = stream(method)
        lam = float(fn.sample_beta(20.0, g))
        perm = torch.randperm(8, generator=g)
        calls.clear()
        loss = method.loss(model, images, labels)
        assert calls == [16]
        logits = model(torch.cat([images, lam * images + (1 - lam) * images[perm]]))
        clean, mixed = logits[:8], logits[8:]
        expected = (
            F.cross_entropy(clean, labels) / 2
            + (
                lam * F.cross_entropy(mixed, labels)
                + (1 - lam) * F.cross_entropy(mixed, labels[perm])
            )
            / 2
        )
        torch.testing.assert_close(loss, expected)
        assert 0.3 < lam < 0.7  # alpha = 20 keeps lam near 1/2


def test_the_decoupled_option_is_on_the_2b_rows() -> None:
    model, (images, labels) = tiny_net(), batch()
    dm = {"loss": "decoupled", "dm_eta": 0.3, "dm_mode": "less", "dm_power": 0.5}
    method = make("regmixup", dm, 4)
    g = stream(method)
    lam = float(fn.sample_beta(20.0, g))
    perm = torch.randperm(8, generator=g)
    x_cat, labels_cat, perm_cat = fn.regmixup_batch(images, labels, lam, perm)
    logits = model(x_cat)
    expected = fn.decoupled_mix_loss(
        logits, labels_cat, labels_cat[perm_cat], lam, 0.3, "less", 0.5
    )
    torch.testing.assert_close(method.loss(model, images, labels), expected)


def test_declared_cost_and_the_cifar100_preset() -> None:
    assert get_method_class("regmixup").forward_passes == 2
    matrix = load_preset("paper-cifar100")
    assert matrix.method_params["regmixup"] == {"alpha": 10.0}
