"""MixupE: Understanding and Improving Mixup from Directional Derivative Perspective
(Zou et al., UAI 2023, arXiv 2212.13381).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods.base import MixMethod, Param, concentration_param
from mixbench.methods.functional import mix, mixupe_loss, mixupe_regularizer
from mixbench.methods.mixup import mixing_draws
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("mixupe")
class MixupE(MixMethod):
    """MixupE (Zou et al., UAI 2023, arXiv 2212.13381): mixup plus a term from its implicit
    directional-derivative regulariser, as the official code's "version 3".

    Every mini-batch: ``lam ~ Beta(alpha, alpha)`` and a permutation, the mixup loss ``L_mix =
    lam CE(f(x_mix), Y) + (1 - lam) CE(f(x_mix), Y[perm])``, then a second forward pass on
    the clean batch, in train mode, graph kept: ``z = f(x)``, ``s_i = sum_c z_ic (Y_ic -
    softmax(z)_ic)`` (not detached) and ``R = (1 - E) * sum_{i : s_i < threshold} s_i / b``
    with ``E = (alpha + 1) / (2 alpha + 1)``. With ``L = L_mix - eta R`` the loss is ``L *
    (|L_mix| / |L|)``, the ratio detached: the value ``|L_mix| sign(L)``, the gradient that of
    ``L`` rescaled. ``loss="decoupled"`` (``dm_eta``, ``dm_mode``, ``dm_power``) makes
    ``L_mix`` the decoupled mixup loss.

    Defaults: ``alpha 2.0, eta 0.001, threshold 1.0``, what the official README's command
    runs (the code's argparse defaults, ``eta = 1``, ``threshold = -1``, version 1, are not).
    Project choice: where ``L == 0`` the loss is ``L_mix``. Draw order: ``lam`` (CPU
    generator), then ``perm``. Cost: two forward and two backward passes.
    """

    description = "MixupE: mixup plus a directional-derivative regulariser (Zou et al.)"
    paper = "Zou et al., UAI 2023, arXiv:2212.13381"
    forward_passes = 2
    params = {
        "alpha": concentration_param(2.0, "Beta(alpha, alpha) concentration of the mixing ratio"),
        "eta": Param(
            0.001,
            float,
            "weight of the regulariser R subtracted from the mixup loss",
            minimum=0.0,
            search=("float", 1e-4, 0.1, True),
        ),
        "threshold": Param(
            1.0, float, "only examples with s_i below it enter R (the clean-logit margin)"
        ),
        **two_label_params(),
    }

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The MixupE loss of one mini-batch: the mixed pass, then the clean one."""
        lam, perm = mixing_draws(self, self.alpha, images.shape[0], images.device)
        mix_loss = two_label_loss(self, model(mix(images, lam, perm)), labels, lam, perm)
        regularizer = mixupe_regularizer(model(images), labels, self.alpha, self.threshold)
        return mixupe_loss(mix_loss, regularizer, self.eta)
