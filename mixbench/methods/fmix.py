"""FMix: Enhancing Mixed Sample Data Augmentation (Harris, Marcu, Painter, Niranjan,
Prügel-Bennett and Hare, arXiv 2002.12047, 2020).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods.base import MixMethod, Param, concentration_param
from mixbench.methods.functional import cross_entropy, fmix_mask, sample_beta
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("fmix")
class FMix(MixMethod):
    """FMix (Harris et al., arXiv 2002.12047): binary masks from low-frequency Fourier noise.

    Every mini-batch is mixed. ``lam ~ Beta(alpha, alpha)``; a low-frequency image ``g`` is
    sampled on the real-FFT grid (amplitudes ``1 / max(f, 1 / max(H, W)) ** decay_power`` times
    complex standard normal noise, an inverse FFT, then scaled to [0, 1]); its ``k`` largest
    pixels become 1 and the rest 0, ``k`` the ceiling or the floor of ``lam H W`` by a fair
    coin (``max_soft > 0`` softens the ``2 s`` pixels around rank ``k`` linearly, ``s = int(H W
    min(max_soft, lam, 1 - lam))``). One mask per batch: ``x_mix = mask * x + (1 - mask) *
    x[perm]`` and the loss ``lam * CE(f(x_mix), Y) + (1 - lam) * CE(f(x_mix), Y[perm])``
    with the **drawn** ``lam``, not the mask's mean (they differ by less than ``1 / (H W)``),
    as the official code. ``reformulate`` (the official option) draws ``lam ~ Beta(alpha + 1,
    alpha)`` and trains on ``CE(f(x_mix), Y)`` alone.

    Defaults: ``alpha 1.0, decay_power 3.0, max_soft 0.0, reformulate False``, the official
    settings on CIFAR and ImageNet alike (OpenMixup uses ``alpha = 0.2`` on CIFAR). Draw
    order: ``lam``, the spectrum's normal draws (the real parts, then the imaginary parts, each
    one (H, W // 2 + 1) tensor), the rounding coin (CPU generator), then ``perm``. Project
    choice: the noise is drawn on the real-FFT grid of W // 2 + 1 columns also for odd W,
    where the official code draws one extra, unused column.

    Cost: one forward and one backward pass, plus one H x W inverse FFT and one sort of H x W
    values on the CPU per batch (the mask is then copied to the device).
    """

    description = "FMix: mix with binarised low-frequency Fourier masks (Harris et al.)"
    paper = "Harris et al., arXiv 2020, arXiv:2002.12047"
    version = 1
    params = {
        "alpha": concentration_param(
            1.0, "Beta(alpha, alpha) concentration of the mask's share of each image"
        ),
        "decay_power": Param(
            3.0,
            float,
            "decay of the Fourier amplitudes, 1 / f ** decay_power (larger: smoother masks)",
            minimum=0.0,
            search=("float", 1.0, 5.0, False),
        ),
        "max_soft": Param(
            0.0,
            float,
            "softening of the mask's edges, a share of the pixels (0: a binary mask)",
            minimum=0.0,
            maximum=0.5,
        ),
        "reformulate": Param(
            False,
            bool,
            "the official reformulation: lam ~ Beta(alpha + 1, alpha), loss on Y alone",
        ),
        **two_label_params(),
    }

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The FMix loss of one mini-batch."""
        cpu = self.generator("cpu")
        if self.reformulate:
            lam = float(sample_beta(self.alpha + 1.0, cpu, beta=self.alpha))
        else:
            lam = float(sample_beta(self.alpha, cpu))
        height, width = int(images.shape[-2]), int(images.shape[-1])
        mask = fmix_mask(height, width, lam, self.decay_power, self.max_soft, cpu)
        perm = torch.randperm(
            images.shape[0], generator=self.generator(images.device), device=images.device
        )
        mask = mask.to(device=images.device, dtype=images.dtype)
        logits = model(torch.lerp(images[perm], images, mask))
        if self.reformulate:
            return cross_entropy(logits, labels)
        return two_label_loss(self, logits, labels, lam, perm)
