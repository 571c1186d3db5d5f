"""The saliency pass of the gradient-guided methods (PuzzleMix, Co-Mixup, GuidedMixup's "ap"
variant): the clean batch's input gradient, taken without leaking weight gradients, and the
eval-mode context it runs in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mixbench.methods.functional import cross_entropy, gradient_saliency

__all__ = ["SaliencyPass", "clean_term", "eval_mode", "saliency_pass"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Switch ``model`` to eval mode inside the block and restore every submodule's previous
    ``training`` flag on exit, also on error (a model partly in eval mode stays so)."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


class SaliencyPass(tuple):
    """What :func:`saliency_pass` returns: ``(saliency, clean_loss)``."""

    __slots__ = ()

    def __new__(cls, saliency: torch.Tensor, clean_loss: torch.Tensor | None) -> SaliencyPass:
        return super().__new__(cls, (saliency, clean_loss))

    @property
    def saliency(self) -> torch.Tensor:
        """(b, H, W) float32: ``sqrt(mean_c (dCE/dx)^2)`` of the clean batch, detached."""
        return self[0]

    @property
    def clean_loss(self) -> torch.Tensor | None:
        """``CE(f(x), Y)`` with its graph (``keep_clean_loss=True``), else ``None``."""
        return self[1]


def saliency_pass(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    keep_clean_loss: bool = False,
    own_mode: bool = False,
) -> SaliencyPass:
    """The input-gradient saliency of the clean batch: one forward and one backward pass.

    ``x0 = images.detach().requires_grad_()``, ``g = dCE(f(x0), Y)/dx0`` and
    ``gradient_saliency(g)``. With ``keep_clean_loss=False`` the pass runs in eval mode (every
    ``training`` flag restored afterwards) and only the input gradient is taken
    (``torch.autograd.grad``): no weight gradient, no batch-norm statistics update. With
    ``keep_clean_loss=True`` it runs in the model's own mode, the graph is retained and the
    clean cross-entropy is returned with it, for a clean term added to the training loss.
    With ``own_mode=True`` and ``keep_clean_loss=False`` the pass runs in the model's own mode
    (train mode during training: batch-norm statistics are updated, as in GuidedMixup's
    official code) and still takes only the input gradient. ``images`` are left untouched.
    """
    x0 = images.detach().requires_grad_(True)
    if keep_clean_loss:
        with torch.enable_grad():
            clean = cross_entropy(model(x0), labels)
            (grad,) = torch.autograd.grad(clean, x0, retain_graph=True)
        return SaliencyPass(gradient_saliency(grad), clean)
    mode = contextlib.nullcontext() if own_mode else eval_mode(model)
    with mode, torch.enable_grad():
        clean = cross_entropy(model(x0), labels)
        (grad,) = torch.autograd.grad(clean, x0)
    return SaliencyPass(gradient_saliency(grad), None)


def clean_term(
    clean_loss: torch.Tensor, clean_lam: float, loss_kind: str, classes: int
) -> torch.Tensor:
    """The clean-batch term added to a gradient-guided method's loss: ``2 * clean_lam / c *
    CE(f(x), Y)`` under ``loss="bce"`` (the official CIFAR scaling, c classes) and
    ``clean_lam * CE(f(x), Y)`` under ``loss="ce"``."""
    if loss_kind == "bce":
        return 2.0 * clean_lam / classes * clean_loss
    return clean_lam * clean_loss
