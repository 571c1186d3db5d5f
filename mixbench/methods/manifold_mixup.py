"""Manifold Mixup: Better Representations by Interpolating Hidden States
(Verma et al., ICML 2019, arXiv 1806.05236).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixbench.errors import UsageError
from mixbench.methods.base import MixMethod, Param, concentration_param
from mixbench.methods.functional import mix
from mixbench.methods.mixup import mixing_draws, require_staged
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("manifold_mixup")
class ManifoldMixup(MixMethod):
    """Manifold Mixup (Verma et al., ICML 2019, arXiv 1806.05236): mix hidden states.

    Per mini-batch a mixing point ``k`` is drawn uniformly from ``layers`` (0 is the input,
    ``k >= 1`` the output of stage k), the hidden state at ``k`` is mixed with one
    ``lam ~ Beta(alpha, alpha)`` and a permutation, the forward pass continues from there, and
    the target is ``lam * Y + (1 - lam) * Y[perm]``. Defaults ``alpha = 2.0`` and
    ``layers = (0, 1, 2)``, the official code's PreActResNet setting. ``loss="ce"``
    (default) is the soft-target cross-entropy; ``loss="bce"`` the official code's binary
    cross-entropy on the softmax outputs (mean over all b * c entries); ``loss="decoupled"``
    the decoupled mixup loss (``dm_eta``, ``dm_mode``, ``dm_power``).
    Draw order: ``k``, ``lam`` (CPU generator), then ``perm``.
    """

    description = "Manifold Mixup: mix hidden states at a random stage (Verma et al.)"
    paper = "Verma et al., ICML 2019, arXiv:1806.05236"
    params = {
        "alpha": concentration_param(2.0, "Beta(alpha, alpha) concentration of the mixing ratio"),
        "layers": Param(
            (0, 1, 2),
            tuple,
            "stages eligible as mixing point: 0 is the input, k >= 1 the output of stage k",
        ),
        # "loss" is in the key of the cells stored before the decoupled option: keyed.
        **two_label_params("bce", keyed=True),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        layers = self.layers
        if not layers or any(isinstance(k, bool) or not isinstance(k, int) for k in layers):
            raise UsageError(
                f"parameter 'layers' must be a non-empty list of stage numbers, got {layers!r}"
            )
        if min(layers) < 0:
            raise UsageError(f"parameter 'layers' must hold stages >= 0, got {layers!r}")

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The Manifold Mixup loss of one mini-batch."""
        require_staged(model, self.name, "forward_to", "forward_from", "num_stages")
        cpu = self.generator("cpu")
        stage = self.layers[int(torch.randint(len(self.layers), (1,), generator=cpu))]
        if stage > model.num_stages:
            raise UsageError(
                f"manifold_mixup: layer {stage} is out of range for a network with "
                f"{model.num_stages} stages; use --param manifold_mixup.layers with stages "
                f"0..{model.num_stages}"
            )
        lam, perm = mixing_draws(self, self.alpha, images.shape[0], images.device)
        hidden = model.forward_to(images, stage)
        logits = model.forward_from(mix(hidden, lam, perm), stage)
        return two_label_loss(self, logits, labels, lam, perm)
