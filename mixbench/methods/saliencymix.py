"""SaliencyMix: A Saliency Guided Data Augmentation Strategy for Better Regularization
(Uddin et al., ICLR 2021, arXiv 2006.01791).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mixbench.methods.base import MixMethod
from mixbench.methods.cutmix import CutMix
from mixbench.methods.functional import (
    cross_entropy,
    fine_grained_saliency,
    paste_box,
    saliency_box,
    sample_beta,
)
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("saliencymix")
class SaliencyMix(MixMethod):
    """SaliencyMix (Uddin et al., ICLR 2021, arXiv 2006.01791): paste the most salient box.

    With probability ``prob`` (default 0.5, the official CIFAR setting; 1.0 on ImageNet, set
    by the ``paper-imagenet`` preset) a mini-batch is mixed, otherwise it is an ERM batch.
    ``lam ~ Beta(alpha, alpha)`` (default ``alpha = 1.0``) and a permutation ``perm``; one
    saliency map per batch, OpenCV's static fine-grained saliency of the source image
    ``x[perm[0]]`` as the method receives it (normalised, channels in the given order),
    quantised to ``uint8(trunc(255 * map))``. A box of sides ``2 * (int(side * sqrt(1 -
    lam)) // 2)`` around the map's first maximum in row-major order, clipped, is the same for
    every image: its region of ``x`` is replaced by that of ``x[perm]``, and ``lam = 1 - area
    / (H * W)``. Loss ``lam * CE(f(x_mix), Y) + (1 - lam) * CE(f(x_mix), Y[perm])``, or with
    ``loss="decoupled"`` the decoupled mixup loss.
    Draw order: the coin, ``lam`` (CPU generator), then ``perm``; the saliency draws nothing.

    Cost: one forward and one backward pass, plus one OpenCV call on one image on the CPU (a
    device-to-host copy per mixed batch). Needs the optional extra ``mixbench[saliency]``.
    """

    description = "SaliencyMix: paste the most salient box of another image (Uddin et al.)"
    paper = "Uddin et al., ICLR 2021, arXiv:2006.01791"
    requires = ("saliency",)
    # The same box-area ratio and coin as CutMix's (one declaration: the same defaults,
    # ranges and search space).
    params = {**{name: CutMix.params[name] for name in ("alpha", "prob")}, **two_label_params()}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        #: The saliency map of one image (C, H, W) -> (H, W); replaceable (tests inject one).
        self.saliency_map: Callable[[torch.Tensor], np.ndarray | torch.Tensor] = (
            fine_grained_saliency
        )

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The SaliencyMix loss of one mini-batch (an ERM loss when the coin says so)."""
        cpu = self.generator("cpu")
        if float(torch.rand((), generator=cpu)) >= self.prob:
            return cross_entropy(model(images), labels)
        lam = float(sample_beta(self.alpha, cpu))
        perm = torch.randperm(
            images.shape[0], generator=self.generator(images.device), device=images.device
        )
        saliency = self.saliency_map(images[perm[0]].detach())
        box, lam = saliency_box(saliency, lam)
        return two_label_loss(self, model(paste_box(images, box, perm)), labels, lam, perm)
