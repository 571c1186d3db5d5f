"""MixupE: the regulariser R of the clean logits and the rescaled loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixbench.methods import functional as fn

from .test_methods import batch, make, stream, tiny_net


def test_regularizer_against_a_row_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(12, 5, generator=g) * 2, torch.randint(5, (12,), generator=g)
    for alpha, threshold in [(2.0, 1.0), (0.5, -0.2), (1.0, 100.0)]:
        total = 0.0
        for i in range(12):
            z = logits[i]
            s = float((z * (F.one_hot(labels[i], 5) - torch.softmax(z, 0))).sum())
            if s < threshold:
                total += s
        mean = (alpha + 1) / (2 * alpha + 1)
        expected = (1 - mean) * total / 12
        got = fn.mixupe_regularizer(logits, labels, alpha, threshold)
        assert got.dtype == torch.float32
        assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_regularizer_is_not_detached() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    fn.mixupe_regularizer(logits, torch.tensor([0, 1, 2, 0]), 2.0, 100.0).backward()
    assert logits.grad.abs().sum() > 0


def test_loss_value_and_gradient() -> None:
    mix_loss = torch.tensor(2.0, requires_grad=True)
    reg = torch.tensor(-3.0, requires_grad=True)
    for eta in (0.001, 0.5, 1.0):
        mix_loss.grad = reg.grad = None
        out = fn.mixupe_loss(mix_loss, reg, eta)
        total = 2.0 - eta * -3.0
        assert out.item() == pytest.approx(abs(2.0) * (1 if total > 0 else -1))
        out.backward()
        ratio = 2.0 / abs(total)
        assert float(mix_loss.grad) == pytest.approx(ratio)
        assert float(reg.grad) == pytest.approx(-eta * ratio)
    # L < 0: the value is -|L_mix|
    out = fn.mixupe_loss(torch.tensor(1.0), torch.tensor(3.0), 1.0)
    assert float(out) == pytest.approx(-1.0)
    # L == 0: L_mix itself, and its gradient
    mix_loss.grad = None
    out = fn.mixupe_loss(mix_loss, torch.tensor(2.0), 1.0)
    out.backward()
    assert out.item() == 2.0 and float(mix_loss.grad) == 1.0


def test_method_replays_its_draws_with_a_second_clean_pass() -> None:
    model, (images, labels) = tiny_net(), batch()
    calls: list[int] = []
    model.stem.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    for seed in range(3):
        method = make("mixupe", {"eta": 0.5}, seed)
        g = stream(method)
        lam = float(fn.sample_beta(2.0, g))
        perm = torch.randperm(8, generator=g)
        reference = make("mixupe", {"eta": 0.5}, seed)
        calls.clear()
        loss = method.loss(model, images, labels)
        assert calls == [8, 8]  # the mixed pass, then the clean one
        logits = model(lam * images + (1 - lam) * images[perm])
        mix_loss = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(
            logits, labels[perm]
        )
        reg = fn.mixupe_regularizer(model(images), labels, 2.0, 1.0)
        total = mix_loss - 0.5 * reg
        torch.testing.assert_close(loss, mix_loss.abs() * torch.sign(total))
        torch.testing.assert_close(reference.loss(model, images, labels), loss)


def test_eta_zero_is_exactly_the_mixup_loss_and_its_gradients() -> None:
    images, labels = batch()
    for seed in range(2):
        ours_model, mixup_model = tiny_net(), tiny_net()
        ours = make("mixupe", {"eta": 0.0, "alpha": 2.0}, seed).loss(ours_model, images, labels)
        mixup = make("mixup", {"alpha": 2.0}, seed).loss(mixup_model, images, labels)
        assert torch.equal(ours, mixup)
        ours.backward()
        mixup.backward()
        for p, q in zip(ours_model.parameters(), mixup_model.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad)


def test_gradient_is_that_of_l_rescaled() -> None:
    images, labels = batch()
    model = tiny_net()
    method = make("mixupe", {"eta": 0.5}, 1)
    g = stream(method)
    lam = float(fn.sample_beta(2.0, g))
    perm = torch.randperm(8, generator=g)
    method.loss(model, images, labels).backward()
    got = [p.grad.clone() for p in model.parameters()]
    ref = tiny_net()
    logits = ref(lam * images + (1 - lam) * images[perm])
    mix_loss = fn.mixed_cross_entropy(logits, labels, lam, perm)
    total = mix_loss - 0.5 * fn.mixupe_regularizer(ref(images), labels, 2.0, 1.0)
    total.backward()
    ratio = (mix_loss.abs() / total.abs()).item()
    for p, q in zip(got, ref.parameters(), strict=True):
        torch.testing.assert_close(p, ratio * q.grad, rtol=1e-4, atol=1e-6)
