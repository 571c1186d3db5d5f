"""CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features
(Yun et al., ICCV 2019, arXiv 1905.04899).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods.base import MixMethod, concentration_param, probability_param
from mixbench.methods.functional import cross_entropy, cutmix_box, paste_box, sample_beta
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("cutmix")
class CutMix(MixMethod):
    """CutMix (Yun et al., ICCV 2019, arXiv 1905.04899): paste a box of another image.

    With probability ``prob`` (default 0.5, the CIFAR setting of the official code; the paper
    uses 1.0 on ImageNet) a mini-batch is mixed, otherwise it is an ERM batch. ``lam ~
    Beta(alpha, alpha)`` (default ``alpha = 1.0``, the paper's) sizes a box with sides
    ``sqrt(1 - lam)`` times the image's, centred uniformly and clipped; the box region of every
    image is replaced by that of ``x[perm]`` and ``lam`` is recomputed from the clipped box's
    area. Loss ``lam * CE(f(x_mix), Y) + (1 - lam) * CE(f(x_mix), Y[perm])``, or with
    ``loss="decoupled"`` the decoupled mixup loss (an ERM batch stays plain cross-entropy).
    Draw order: the coin, ``lam``, the box centre (CPU generator), then ``perm``.

    Version 2: the box is the official ``rand_bbox``'s, ``centre +- cut // 2`` (version 1 made
    an odd cut one pixel larger).
    """

    version = 2
    changes = {
        2: "the box is the official rand_bbox's, centre +- cut // 2 (an odd cut was one pixel "
        "larger)"
    }

    description = "CutMix: paste a random box of another image, labels by area (Yun et al.)"
    paper = "Yun et al., ICCV 2019, arXiv:1905.04899"
    params = {
        "alpha": concentration_param(
            1.0, "Beta(alpha, alpha) concentration of the box's area ratio"
        ),
        "prob": probability_param(
            0.5, "probability that a mini-batch is mixed (otherwise plain ERM)"
        ),
        **two_label_params(),
    }

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The CutMix loss of one mini-batch (an ERM loss when the coin says so)."""
        cpu = self.generator("cpu")
        if float(torch.rand((), generator=cpu)) >= self.prob:
            return cross_entropy(model(images), labels)
        lam = float(sample_beta(self.alpha, cpu))
        box, lam = cutmix_box(images.shape[-2], images.shape[-1], lam, cpu)
        perm = torch.randperm(
            images.shape[0], generator=self.generator(images.device), device=images.device
        )
        return two_label_loss(self, model(paste_box(images, box, perm)), labels, lam, perm)
