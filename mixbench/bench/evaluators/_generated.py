"""A generated corruption set: common corruptions made with tensor operations, no download.

Modelled on the corruptions of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations" (ICLR 2019, arXiv 1903.12261), with that paper's CIFAR-10-C
parameters where the operation allows, but re-implemented with torch tensor operations. Results on
it are *not* the official CIFAR-10-C / ImageNet-C numbers and are reported in their own column.

Every corruption takes a batch (batch, C, H, W), uint8 in [0, 255] or float in [0, 1], a severity
1..5 and a ``torch.Generator`` (used only by the noises), and returns a batch of the same shape,
dtype and device. Severity parameters (pixel values in [0, 1] units):

==============  =========================================  ===================================
name            operation                                  severities 1..5
==============  =========================================  ===================================
gaussian_noise  x + N(0, s^2)                              s = .04, .06, .08, .09, .10
shot_noise      Poisson(x * r) / r                         r = 500, 250, 100, 75, 50
impulse_noise   a fraction p of values set to 0 or 1       p = .01, .02, .03, .05, .07
gaussian_blur   separable Gaussian, reflect padding        sigma = .4, .6, .7, .8, 1 pixels
contrast        (x - m) * c + m, m the image mean          c = .75, .5, .4, .3, .15
brightness      HSV value + b (hue, saturation kept)       b = .05, .1, .15, .2, .3
pixelate        area-downscale to f * size, nearest up     f = .95, .9, .85, .75, .65
jpeg            JPEG encode/decode (Pillow, on the CPU)    quality = 80, 65, 58, 50, 40
==============  =========================================  ===================================
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mixbench.errors import UsageError
from mixbench.registry import Registry

#: ``(images in [0, 1] float32, severity index 0..4, generator) -> images in [0, 1]``.
CorruptionFn = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]

CORRUPTIONS: Registry[CorruptionFn] = Registry("generated corruption")

SEVERITIES = (1, 2, 3, 4, 5)


def _draw(
    kind: str, shape: torch.Size, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniform or normal draws on the generator's device, moved to ``device``."""
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(shape, generator=generator, device=generator.device).to(device)


@CORRUPTIONS.register("gaussian_noise")
def _gaussian_noise(x: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    std = (0.04, 0.06, 0.08, 0.09, 0.10)[level]
    return x + std * _draw("normal", x.shape, generator, x.device)


@CORRUPTIONS.register("shot_noise")
def _shot_noise(x: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    rate = (500.0, 250.0, 100.0, 75.0, 50.0)[level]
    counts = torch.poisson((x * rate).to(generator.device), generator=generator)
    return counts.to(x.device) / rate


@CORRUPTIONS.register("impulse_noise")
def _impulse_noise(x: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[level]
    u = _draw("uniform", x.shape, generator, x.device)
    salt = u < amount / 2
    pepper = (u >= amount / 2) & (u < amount)
    return x.masked_fill(salt, 1.0).masked_fill(pepper, 0.0)


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a float batch (batch, C, H, W) with reflect padding."""
    kernel = _gaussian_kernel(sigma, x.device)
    radius = kernel.numel() // 2
    b, c, h, w = x.shape
    flat = x.reshape(b * c, 1, h, w)
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    mode = "reflect" if pad_h == pad_w == radius else "replicate"
    flat = F.pad(flat, (radius, radius, radius, radius), mode=mode)
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(b, c, h, w)


@CORRUPTIONS.register("gaussian_blur")
def _gaussian_blur(x: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    return blur(x, (0.4, 0.6, 0.7, 0.8, 1.0)[level])


@CORRUPTIONS.register("contrast")
def _contrast(x: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[level]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


@CORRUPTIONS.register("brightness")
def _brightness(x: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    # In HSV, value = max over channels; scaling all channels by v'/v changes the value and keeps
    # hue and saturation (1 - min/max). A black pixel (v = 0) becomes grey v'.
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[level]
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + shift).clamp(max=1.0)
    scale = new_value / value.clamp(min=1e-12)
    return torch.where(value > 0, x * scale, new_value.expand_as(x))


@CORRUPTIONS.register("pixelate")
def _pixelate(x: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    factor = (0.95, 0.9, 0.85, 0.75, 0.65)[level]
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * factor)), max(1, int(w * factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


@CORRUPTIONS.register("jpeg")
def _jpeg(x: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    quality = (80, 65, 58, 50, 40)[level]
    if x.shape[1] not in (1, 3):
        raise UsageError(f"the jpeg corruption needs 1 or 3 channels, got {x.shape[1]}")
    as_uint8 = (x * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = [_jpeg_round_trip(image, quality) for image in as_uint8]
    out = torch.from_numpy(np.stack(decoded)).view(as_uint8.shape).permute(0, 3, 1, 2)
    return out.to(x.device, torch.float32) / 255


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """One (H, W, C) uint8 image encoded as JPEG at ``quality`` by Pillow and decoded again."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        buffer, format="JPEG", quality=quality
    )
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded)


def generated_corruptions() -> list[str]:
    """Names of the generated corruptions, sorted."""
    return CORRUPTIONS.names()


def apply_corruption(
    name: str,
    images: torch.Tensor,
    severity: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The generated corruption ``name`` at ``severity`` (1..5) applied to a batch of images.

    Args:
        name: one of :func:`generated_corruptions`.
        images: (batch, C, H, W) uint8 in [0, 255] or float in [0, 1], on any device.
        severity: 1 (mildest) to 5 (strongest); parameters in this module's docstring.
        generator: the source of the noises' randomness (on its own device; draws are moved to
            the images' device). ``None`` uses a fresh generator seeded with 0.

    Returns:
        The corrupted batch: same shape, dtype and device as ``images``; uint8 values are
        rounded, float values clipped to [0, 1].
    """
    corrupt = CORRUPTIONS.get(name)
    if not isinstance(severity, int) or isinstance(severity, bool) or severity not in SEVERITIES:
        raise UsageError(f"corruption severity must be an int from 1 to 5, got {severity!r}")
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (batch, C, H, W), got {tuple(images.shape)}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    is_uint8 = images.dtype == torch.uint8
    if not is_uint8 and not images.is_floating_point():
        raise TypeError(f"expected uint8 or float images, got {images.dtype}")
    x = images.float() / 255 if is_uint8 else images.float()
    out = corrupt(x, severity - 1, generator).clamp_(0.0, 1.0)
    if is_uint8:
        return (out * 255).round_().to(torch.uint8)
    return out.to(images.dtype)
