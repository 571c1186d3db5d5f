"""The input-gradient saliency shared by PuzzleMix and Co-Mixup, and per-example label weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mixbench.methods.functional import (
    block_saliency,
    gradient_saliency,
    mixed_cross_entropy,
    soft_cross_entropy,
)
from mixbench.methods.gradients import eval_mode, saliency_pass
from mixbench.models import create_model


def test_gradient_saliency_is_the_root_mean_square_over_channels():
    g = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    expected = torch.sqrt((g**2).mean(1))
    assert torch.allclose(gradient_saliency(g), expected)
    assert gradient_saliency(g).shape == (3, 5, 6)


def test_block_saliency_averages_blocks_and_sums_to_one():
    s = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    u = block_saliency(s, 4)
    assert u.shape == (2, 2, 2)
    assert torch.allclose(u.sum((1, 2)), torch.ones(2))
    top_left = s[:, :4, :4].mean((1, 2)) / torch.stack(
        [s[i].reshape(2, 4, 2, 4).mean((1, 3)).sum() for i in range(2)]
    )
    assert torch.allclose(u[:, 0, 0], top_left)
    # No gradient at all: the uniform distribution over the blocks.
    assert torch.equal(block_saliency(torch.zeros(1, 4, 4), 2), torch.full((1, 2, 2), 0.25))
    with pytest.raises(ValueError, match="does not divide"):
        block_saliency(s, 3)


def test_mixed_cross_entropy_takes_per_example_weights():
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(5, 7, generator=g), torch.randint(7, (5,), generator=g)
    perm = torch.randperm(5, generator=g)
    lam = torch.rand(5, generator=g)
    y = F.one_hot(labels, 7).float()
    targets = lam[:, None] * y + (1 - lam[:, None]) * y[perm]
    assert torch.allclose(
        mixed_cross_entropy(logits, labels, lam, perm), soft_cross_entropy(logits, targets)
    )
    # A float and a 0-d tensor are one weight for the batch.
    assert torch.allclose(
        mixed_cross_entropy(logits, labels, 0.3, perm),
        mixed_cross_entropy(logits, labels, torch.full((5,), 0.3), perm),
    )
    with pytest.raises(ValueError, match="lam of shape"):
        mixed_cross_entropy(logits, labels, torch.rand(4), perm)


def _model_and_batch():
    model = create_model("preactresnet18", 10, width=4, seed=0).train()
    g = torch.Generator().manual_seed(3)
    return model, torch.randn(4, 3, 32, 32, generator=g), torch.randint(10, (4,), generator=g)


def test_the_eval_mode_saliency_pass_leaks_no_weight_gradient_and_restores_modes():
    model, images, labels = _model_and_batch()
    model.head.eval()  # a submodule already in eval mode stays so
    running = [b.clone() for b in model.buffers()]
    before = images.clone()
    result = saliency_pass(model, images, labels)
    assert result.clean_loss is None and result.saliency.shape == (4, 32, 32)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(running, model.buffers(), strict=True))
    assert model.training and not model.head.training
    assert torch.equal(images, before) and not images.requires_grad
    # The saliency is that of the eval-mode network's input gradient.
    x0 = images.clone().requires_grad_()
    with eval_mode(model):
        F.cross_entropy(model(x0), labels).backward()
    assert torch.allclose(result.saliency, x0.grad.pow(2).mean(1).sqrt())


def test_the_train_mode_saliency_pass_keeps_the_clean_loss_graph():
    model, images, labels = _model_and_batch()
    result = saliency_pass(model, images, labels, keep_clean_loss=True)
    assert result.clean_loss is not None and result.clean_loss.requires_grad
    assert all(p.grad is None for p in model.parameters())
    result.clean_loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_own_mode_saliency_pass_takes_the_input_gradient_in_train_mode():
    """GuidedMixup's pass: the model's own (train) mode, batch-norm statistics move, and still
    no weight gradient and no graph kept."""
    model, images, labels = _model_and_batch()
    replica = copy.deepcopy(model)
    running = [b.clone() for b in model.buffers()]
    result = saliency_pass(model, images, labels, own_mode=True)
    assert result.clean_loss is None and model.training
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(running, model.buffers(), strict=True))
    x0 = images.clone().requires_grad_()
    F.cross_entropy(replica(x0), labels).backward()
    assert torch.allclose(result.saliency, x0.grad.pow(2).mean(1).sqrt())
    assert all(torch.equal(a, b) for a, b in zip(replica.buffers(), model.buffers(), strict=True))


def test_eval_mode_restores_flags_on_error():
    model, _, _ = _model_and_batch()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert all(m.training for m in model.modules())
