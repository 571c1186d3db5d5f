"""RegMixup: Mixup as a Regularizer Can Surprisingly Improve Accuracy and Out Distribution
Robustness (Pinto et al., NeurIPS 2022, arXiv 2206.14502).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods.base import MixMethod, concentration_param
from mixbench.methods.functional import regmixup_batch
from mixbench.methods.mixup import mixing_draws
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("regmixup")
class RegMixup(MixMethod):
    """RegMixup (Pinto et al., NeurIPS 2022, arXiv 2206.14502): mixup as a regulariser of
    the clean loss.

    Every mini-batch: ``lam ~ Beta(alpha, alpha)`` and a permutation, ``x_mix = lam * x +
    (1 - lam) * x[perm]``, and one forward call on the 2b rows ``[x; x_mix]`` (batch norm
    sees both halves together) with targets ``[Y; Y]`` and ``[Y; Y[perm]]``: the loss is the
    mean over the 2b rows, ``CE(f(x), Y) / 2 + (lam CE(f(x_mix), Y) + (1 - lam)
    CE(f(x_mix), Y[perm])) / 2``. The paper writes the two terms as a sum; the official
    code averages them, which only halves the gradient, and mixbench follows the code.
    ``loss="decoupled"`` (``dm_eta``, ``dm_mode``, ``dm_power``) puts the decoupled mixup
    loss on the 2b rows instead (the clean rows, with two equal labels, stay plain CE).

    Defaults: ``alpha = 20.0``, the paper's CIFAR-10 setting and the code's default (the large
    alpha keeps ``lam`` near 1/2); the CIFAR-100 paper preset sets 10. Draw order: ``lam``
    (CPU generator), then ``perm``. Cost: two forward and two backward passes (one call on
    2b images), twice the activation memory of ERM.
    """

    description = "RegMixup: clean loss plus a mixup loss, one pass on both (Pinto et al.)"
    paper = "Pinto et al., NeurIPS 2022, arXiv:2206.14502"
    forward_passes = 2
    params = {
        "alpha": concentration_param(
            20.0, "Beta(alpha, alpha) concentration of the mixing ratio", search=(0.5, 40.0)
        ),
        **two_label_params(),
    }

    def bn_updates_per_step(self) -> int:
        """One call on the 2b rows: the statistics are updated once per step."""
        return 1

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The RegMixup loss of one mini-batch: one call on the clean and mixed halves."""
        lam, perm = mixing_draws(self, self.alpha, images.shape[0], images.device)
        x_cat, labels_cat, perm_cat = regmixup_batch(images, labels, lam, perm)
        return two_label_loss(self, model(x_cat), labels_cat, lam, perm_cat)
