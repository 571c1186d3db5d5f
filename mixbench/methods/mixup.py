"""mixup: Beyond Empirical Risk Minimization (Zhang et al., ICLR 2018, arXiv 1710.09412).

Also home of what the mixup family shares: the per-batch draws (``lam`` and a permutation),
the input-mixup loss (AlignMixup's other branch, MultiMix's fallback) and the check that a
model offers the staged-backbone interface a method needs.
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.errors import UsageError
from mixbench.methods.base import MixMethod, concentration_param
from mixbench.methods.functional import mix, sample_beta
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params

__all__ = [
    "Mixup",
    "input_mixup_loss",
    "mixing_draws",
    "num_classes_of",
    "pooling_reason",
    "require_staged",
]


def mixing_draws(
    method: MixMethod, alpha: float, batch: int, device: torch.device
) -> tuple[float, torch.Tensor]:
    """One ``lam ~ Beta(alpha, alpha)`` and a random permutation of ``batch`` examples.

    ``lam`` comes from the method's CPU generator as a Python float (no device
    synchronisation); the permutation is drawn on ``device`` by the method's generator there.
    """
    lam = float(sample_beta(alpha, method.generator("cpu")))
    perm = torch.randperm(batch, generator=method.generator(device), device=device)
    return lam, perm


def input_mixup_loss(
    method: MixMethod, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Input mixup with ``lam ~ Beta(alpha, alpha)``: draws ``lam``, then the permutation; the
    loss is the method's two-label loss (soft-target cross-entropy for a method without a
    ``loss`` parameter)."""
    lam, perm = mixing_draws(method, alpha, images.shape[0], images.device)
    return two_label_loss(method, model(mix(images, lam, perm)), labels, lam, perm)


def require_staged(model: nn.Module, method: str, *names: str) -> None:
    """Raise ``UsageError`` unless ``model`` has the staged-backbone members ``names``."""
    missing = [n for n in names if not hasattr(model, n)]
    if missing:
        raise UsageError(
            f"method {method!r} needs a staged backbone (mixbench.models.StagedNet) with "
            f"{', '.join(missing)}; {type(model).__name__} has none: use a mixbench model"
        )


def pooling_reason(model: nn.Module) -> str | None:
    """Why a method that classifies a pooled, mixed feature map cannot train ``model`` (a
    Vision Transformer whose head reads its class token, which the map of patch tokens does
    not hold), or ``None``."""
    if getattr(model, "pools_feature_map", True):
        return None
    return (
        "it classifies a pooled mix of the last feature map, and this ViT's head reads its "
        "class token, which is not part of the map; give the model global_pool='avg'"
    )


def num_classes_of(model: nn.Module) -> int:
    """The model's number of classes: ``model.num_classes``, else its head's ``out_features``."""
    classes = getattr(model, "num_classes", None)
    if classes is None:
        classes = model.head.out_features
    return int(classes)


@register_method("mixup")
class Mixup(MixMethod):
    """mixup (Zhang et al., ICLR 2018, arXiv 1710.09412): convex combinations of image pairs.

    Per mini-batch one ``lam ~ Beta(alpha, alpha)`` and a permutation ``perm``;
    ``x_mix = lam * x + (1 - lam) * x[perm]`` and the loss
    ``lam * CE(f(x_mix), Y) + (1 - lam) * CE(f(x_mix), Y[perm])``. Default ``alpha = 1.0``,
    the paper's CIFAR-10 setting. ``loss="decoupled"`` (with ``dm_eta``, ``dm_mode``,
    ``dm_power``) trains on the decoupled mixup loss instead of the default ``"ce"``.
    Draw order: ``lam`` (CPU generator), then ``perm``.
    """

    description = "mixup: convex combinations of image pairs and their labels (Zhang et al.)"
    paper = "Zhang et al., ICLR 2018, arXiv:1710.09412"
    params = {
        "alpha": concentration_param(1.0, "Beta(alpha, alpha) concentration of the mixing ratio"),
        **two_label_params(),
    }

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mixup loss of one mini-batch."""
        return input_mixup_loss(self, model, images, labels, self.alpha)
