"""ResizeMix: Mixing Data with Preserved Object Information and True Labels
(Qin et al., arXiv 2012.11101, 2020).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixbench.errors import UsageError
from mixbench.methods.base import MixMethod, Param, concentration_param
from mixbench.methods.functional import resize_box, resize_paste, sample_beta
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("resizemix")
class ResizeMix(MixMethod):
    """ResizeMix (Qin et al., arXiv 2012.11101): paste the whole partner image, shrunk.

    The paper has no official code; this follows OpenMixup's implementation (its "original
    settings in ResizeMix"), which matches the paper's description: every mini-batch is
    mixed; a scale ``tau ~ U(scale_min, scale_max)`` is a ratio of **sides**, ``cut_h = int(H
    tau)`` and ``cut_w = int(W tau)``; a centre pixel uniform over the image; rows ``[cy -
    cut_h // 2, cy + cut_h // 2)`` and columns likewise, clipped. The whole of ``x[perm]`` is
    resized to the clipped box (``interpolation``: ``"nearest"``, torch's legacy nearest, as
    OpenMixup; ``"bilinear"`` with ``align_corners = False``) and pasted there; ``lam = 1 -
    area / (H W)`` and the loss ``lam * CE(f(x_mix), Y) + (1 - lam) * CE(f(x_mix), Y[perm])``.
    ``scale_dist = "beta"`` (OpenMixup's ``use_alpha``) draws ``tau ~ Beta(alpha, alpha)``
    instead, redrawn from ``U(scale_min, scale_max)`` when outside that range (with ``alpha =
    1`` this is again the uniform law).

    Defaults: ``scale_min 0.1, scale_max 0.8, scale_dist "uniform", alpha 1.0, interpolation
    "nearest"``, CIFAR and ImageNet alike (OpenMixup's settings). Draw order: ``tau`` (with
    ``"beta"``: the Beta draw, then the uniform one only if needed), the centre, rows first
    (CPU generator), then ``perm``. Project choice: an empty box (with the default scales, only
    for image sides under 20 pixels) leaves the batch unchanged, with ``lam = 1``.
    (mmpretrain's ResizeMix draws a different scale and is not this method's reference.)

    Cost: one forward and one backward pass, plus one batched resize of the images.
    """

    description = "ResizeMix: paste the whole partner image shrunk into a box (Qin et al.)"
    paper = "Qin et al., arXiv 2020, arXiv:2012.11101"
    version = 1
    params = {
        "scale_min": Param(
            0.1,
            float,
            "smallest ratio of the box's sides to the image's",
            minimum=0.0,
            maximum=1.0,
            search=("float", 0.0, 0.3, False),
        ),
        "scale_max": Param(
            0.8,
            float,
            "largest ratio of the box's sides to the image's",
            minimum=0.0,
            maximum=1.0,
            search=("float", 0.3, 1.0, False),
        ),
        "scale_dist": Param(
            "uniform",
            str,
            "law of the side ratio: uniform on [scale_min, scale_max], or Beta(alpha, alpha) "
            "redrawn uniformly outside that range",
            choices=("uniform", "beta"),
        ),
        "alpha": concentration_param(
            1.0,
            "Beta(alpha, alpha) concentration of the side ratio (scale_dist 'beta' only)",
            search=None,
        ),
        "interpolation": Param(
            "nearest",
            str,
            "how the partner image is shrunk into the box",
            choices=("nearest", "bilinear"),
        ),
        **two_label_params(),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.scale_min > self.scale_max:
            raise UsageError(
                f"resizemix: scale_min ({self.scale_min}) must not exceed scale_max "
                f"({self.scale_max})"
            )

    def _uniform_scale(self, cpu: torch.Generator) -> float:
        u = float(torch.rand((), generator=cpu))
        return self.scale_min + (self.scale_max - self.scale_min) * u

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The ResizeMix loss of one mini-batch."""
        cpu = self.generator("cpu")
        if self.scale_dist == "beta":
            scale = float(sample_beta(self.alpha, cpu))
            if not self.scale_min <= scale <= self.scale_max:
                scale = self._uniform_scale(cpu)
        else:
            scale = self._uniform_scale(cpu)
        box, lam = resize_box(images.shape[-2], images.shape[-1], scale, cpu)
        perm = torch.randperm(
            images.shape[0], generator=self.generator(images.device), device=images.device
        )
        mixed = resize_paste(images, box, perm, self.interpolation)
        return two_label_loss(self, model(mixed), labels, lam, perm)
