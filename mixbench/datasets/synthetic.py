"""``synthetic``: coloured Gabor patches generated offline from a seed.

Every class has its own grating orientation, spatial frequency and hue; each image draws a random
phase, position, size, contrast, background level and colour jitter, plus pixel noise. The class
is therefore carried by the orientation and frequency of a pattern at a random place (which a
convolutional network learns in a few epochs) and only partly by colour, so a linear model on raw
pixels does far worse than a CNN and nothing is solved instantly.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from mixbench import seeding
from mixbench.datasets.base import (
    DatasetBundle,
    DatasetInfo,
    TensorImages,
    channel_stats,
    parse_image_size,
    register_dataset,
)
from mixbench.errors import UsageError

#: The most pixel values (images x 3 x height x width) of one generated split: 2**30, 1 GiB of
#: uint8 images (about 350,000 images of 32x32), generated through float tensors four times
#: that size.
MAX_VALUES = 2**30


def class_palette(num_classes: int) -> torch.Tensor:
    """One RGB colour (values in [0, 1]) per class, hues spread evenly around the circle."""
    return torch.tensor(
        [colorsys.hsv_to_rgb(c / num_classes, 0.8, 1.0) for c in range(num_classes)]
    )


def generate_gratings(
    n: int,
    num_classes: int,
    image_size: tuple[int, int],
    generator: torch.Generator,
    noise: float = 0.12,
) -> TensorImages:
    """``n`` images (uint8 RGB) with balanced, shuffled labels, every draw from ``generator``.

    Class ``c`` has orientation ``pi * c / num_classes`` and a frequency of 2, 3.5 or 5 cycles per
    image (by ``c % 3``); per image, orientation jitter N(0, 0.12 rad), frequency jitter +-10 %,
    phase U(0, 2 pi), centre U(-0.5, 0.5)^2 (image spans [-1, 1]), envelope width U(0.35, 0.7),
    contrast U(0.25, 0.5), background U(0.3, 0.7), colour half class hue and half random, and
    Gaussian pixel noise of standard deviation ``noise``.
    """
    height, width = image_size
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * (high - low) + low

    theta = math.pi * labels / num_classes + 0.12 * torch.randn(n, generator=generator)
    freq = (2.0 + 1.5 * (labels % 3)) * uniform(0.9, 1.1, n)
    phase = uniform(0.0, 2 * math.pi, n)
    centre = uniform(-0.5, 0.5, n, 2)
    width_env = uniform(0.35, 0.7, n)
    contrast = uniform(0.25, 0.5, n)
    background = uniform(0.3, 0.7, n)
    colour = 0.5 * class_palette(num_classes)[labels] + 0.5 * torch.rand(n, 3, generator=generator)
    pixel_noise = noise * torch.randn(n, 3, height, width, generator=generator)

    ys = torch.linspace(-1.0, 1.0, height).view(1, height, 1)
    xs = torch.linspace(-1.0, 1.0, width).view(1, 1, width)
    along = xs * torch.cos(theta).view(n, 1, 1) + ys * torch.sin(theta).view(n, 1, 1)
    wave = torch.sin(math.pi * freq.view(n, 1, 1) * along + phase.view(n, 1, 1))
    dist2 = (xs - centre[:, 0].view(n, 1, 1)) ** 2 + (ys - centre[:, 1].view(n, 1, 1)) ** 2
    envelope = torch.exp(-dist2 / (2 * width_env.view(n, 1, 1) ** 2))
    pattern = (contrast.view(n, 1, 1) * wave * envelope).unsqueeze(1)  # (n, 1, H, W)
    signed_colour = (2 * colour - 1).view(n, 3, 1, 1)
    pixels = pattern * signed_colour  # (n, 3, H, W); in-place steps from here on
    pixels.add_(background.view(n, 1, 1, 1)).add_(pixel_noise)
    images = pixels.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return TensorImages(images, labels.to(torch.int64))


@register_dataset(
    "synthetic",
    DatasetInfo(
        display_name="synthetic",
        generated=True,
        description="coloured Gabor patches made from a seed, no files (classes, sizes and "
        "image size are options: 10 classes, 2,560 training and 1,000 test images, 32x32 by "
        "default)",
    ),
)
def synthetic(
    root: Path | None = None,
    *,
    download: bool = False,
    num_classes: int = 10,
    image_size: int | Sequence[int] = 32,
    n_train: int = 2560,
    n_test: int = 1000,
    seed: int = 0,
    noise: float = 0.12,
) -> DatasetBundle:
    """Coloured Gabor patches, generated in memory from ``seed`` (no files; ``root`` is unused).

    The training and test splits come from separate generators (seeded from ``seed`` and
    ``seed + 1_000_003``), so changing ``n_train`` leaves the test set as it is.
    """
    size = parse_image_size(image_size)
    if num_classes < 2:
        raise UsageError(f"synthetic needs num_classes >= 2, got {num_classes}")
    if n_train < num_classes or n_test < 1:
        raise UsageError(
            f"synthetic needs n_train >= num_classes ({num_classes}) and n_test >= 1, "
            f"got n_train={n_train}, n_test={n_test}"
        )
    for split, n in (("n_train", n_train), ("n_test", n_test)):
        if n * 3 * size[0] * size[1] > MAX_VALUES:
            raise UsageError(
                f"synthetic {split}={n} of {size[0]}x{size[1]} images is too large: a split "
                f"holds at most {MAX_VALUES // (3 * size[0] * size[1]):,} images of that size"
            )
    if not 0 <= noise < math.inf:
        raise UsageError(f"synthetic noise must be a finite number >= 0, got {noise}")
    train = generate_gratings(
        n_train, num_classes, size, seeding.generator(seeding.split_seed(seed, "train")), noise
    )
    test = generate_gratings(
        n_test, num_classes, size, seeding.generator(seeding.split_seed(seed, "test")), noise
    )
    mean, std = channel_stats(train.images)
    return DatasetBundle(
        name="synthetic",
        num_classes=num_classes,
        class_names=[f"grating{c}" for c in range(num_classes)],
        image_size=size,
        mean=mean,
        std=std,
        train=train,
        test=test,
        description=f"synthetic: coloured Gabor patches ({num_classes} classes, "
        f"{size[0]}x{size[1]}, seed {seed}, noise {noise})",
    )
