"""SmoothMix: a Simple Yet Effective Data Augmentation to Train Robust Classifiers
(Lee, Zaheer, Astrid and Lee, CVPR Workshops 2020).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixbench.errors import UsageError
from mixbench.methods.base import MixMethod, Param
from mixbench.methods.functional import smooth_mask
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("smoothmix")
class SmoothMix(MixMethod):
    """SmoothMix (Lee, Zaheer, Astrid and Lee, CVPR Workshops 2020): blend under a soft mask.

    The paper has no official code; its Gaussian ("circle") mask follows OpenMixup's
    implementation. Every mini-batch is mixed. One mask per batch: ``G[i, j] = exp(-((i -
    cy)^2 + (j - cx)^2) / (2 sigma^2))``, peak near 1, with the centre ``(ry - 0.5, rx - 0.5)``
    for ``ry``, ``rx`` uniform pixel indices (OpenMixup's grid puts the peak on half-pixel
    positions) and ``sigma = (sigma_min + (sigma_max - sigma_min) u) H``, ``u ~ U(0, 1)``
    (default ``sigma`` in ``[0.25 H, 0.5 H)``, OpenMixup's range). ``x_mix = (1 - G) x + G
    x[perm]``, as OpenMixup; **labels as the paper**: the image under ``G`` gets the weight
    ``mean(G)``, so the loss is ``(1 - mean(G)) CE(f(x_mix), Y) + mean(G) CE(f(x_mix),
    Y[perm])``.

    ``label_weight = "openmixup"`` gives ``mean(G)`` to ``Y`` instead, the image under ``1 -
    G``: OpenMixup's labels are swapped relative to its pixels (read from its code), and its
    published SmoothMix numbers were trained that way; kept for cross-checks. OpenMixup's
    ``lam ~ Beta(alpha, alpha)`` draw is overwritten there and unused; none is drawn here.
    Project choices: OpenMixup builds the mask with H on both axes (square images only);
    here ``rx`` is drawn in ``[0, W)`` and the mask is H x W (the same on square images), with
    ``sigma`` a fraction of H; the paper's square mask and its own sigma range are not
    specified and not offered.

    Defaults: ``sigma_min 0.25, sigma_max 0.5, label_weight "paper"``, CIFAR and ImageNet
    alike. Draw order: ``ry``, ``rx``, ``u`` (CPU generator), then ``perm``.

    Cost: one forward and one backward pass, plus one H x W mask on the CPU per batch.
    """

    description = "SmoothMix: blend two images under a soft Gaussian mask (Lee et al.)"
    paper = "Lee, Zaheer, Astrid and Lee, CVPR Workshops 2020"
    version = 1
    params = {
        "sigma_min": Param(
            0.25,
            float,
            "smallest spread of the Gaussian mask, a fraction of the image height",
            minimum=0.0,
            exclusive_minimum=True,
        ),
        "sigma_max": Param(
            0.5,
            float,
            "largest spread of the Gaussian mask, a fraction of the image height",
            minimum=0.0,
            exclusive_minimum=True,
            search=("float", 0.25, 1.0, False),
        ),
        "label_weight": Param(
            "paper",
            str,
            "the paper's labels (the image under the mask weighs its mean), or OpenMixup's "
            "swapped ones",
            choices=("paper", "openmixup"),
        ),
        **two_label_params(),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.sigma_min > self.sigma_max:
            raise UsageError(
                f"smoothmix: sigma_min ({self.sigma_min}) must not exceed sigma_max "
                f"({self.sigma_max})"
            )

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The SmoothMix loss of one mini-batch."""
        height, width = int(images.shape[-2]), int(images.shape[-1])
        mask = smooth_mask(height, width, self.sigma_min, self.sigma_max, self.generator("cpu"))
        perm = torch.randperm(
            images.shape[0], generator=self.generator(images.device), device=images.device
        )
        share = float(mask.double().mean())  # the share of x[perm] in the mixed image
        lam = 1.0 - share if self.label_weight == "paper" else share
        mask = mask.to(device=images.device, dtype=images.dtype)
        logits = model(torch.lerp(images, images[perm], mask))
        return two_label_loss(self, logits, labels, lam, perm)
