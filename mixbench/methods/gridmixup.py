"""GridMixup (Ilya Dobrynin, 2020; github.com/IlyaDobrynin/GridMixup, no paper): a grid of holes
filled from another image, what OpenMixup runs under the name "GridMix".

Not GridMix of Baek, Bang and Shim (Pattern Recognition 2021), which adds a local-context loss
on per-cell labels; that method is not implemented, and the name ``gridmix`` stays free for it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mixbench.errors import UsageError
from mixbench.methods.base import MixMethod, Param, concentration_param
from mixbench.methods.functional import grid_mask, sample_beta
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params

_RANGES = (
    ("n_holes_min", "n_holes_max"),
    ("hole_aspect_min", "hole_aspect_max"),
    ("cut_area_min", "cut_area_max"),
    ("cut_aspect_min", "cut_aspect_max"),
)


def _ratio(low: float, high: float, help: str, minimum: float) -> tuple[Param, Param]:
    return (
        Param(low, float, f"smallest {help}", minimum=minimum, exclusive_minimum=minimum == 0),
        Param(high, float, f"largest {help}", minimum=minimum, exclusive_minimum=minimum == 0),
    )


_HOLE_ASPECT = _ratio(1.0, 1.0, "aspect ratio of the grid's cells, height / width", 0.5)
_CUT_AREA = _ratio(0.5, 1.0, "area of the crop holding the grid, a share of the image's", 0.0)
_CUT_ASPECT = _ratio(0.5, 2.0, "aspect ratio of the crop, height / width", 0.0)


@register_method("gridmixup")
class GridMixup(MixMethod):
    """GridMixup (Dobrynin, 2020; OpenMixup's "GridMix"): a grid of holes from another image.

    Every mini-batch is mixed. Per batch ``lam ~ Beta(alpha, alpha)``, a number of holes
    uniform in ``{n_holes_min, ..., n_holes_max}``, a cell aspect ratio ``~ U(hole_aspect_min,
    hole_aspect_max)``, a crop area ratio ``~ U(cut_area_min, cut_area_max)`` and a crop
    aspect ratio ``~ U(cut_aspect_min, cut_aspect_max)``. The crop (``int(H W area)`` pixels,
    ``cw = int(sqrt(area_px / aspect))`` wide, ``ch = int(cw * aspect)`` tall) is placed at a
    uniform relative position; a grid of ``n_holes`` cells per row (``pw = ceil(cw /
    n_holes)`` wide, ``ph = int(pw * cell_aspect)`` tall) holds one hole per cell, of sides
    ``int(p * sqrt(1 - lam))`` clamped to ``[1, p - 1]``; the mask ``M`` is 1 on the holes,
    where the pixels come from ``x[perm]``: ``x_mix = (1 - M) x + M x[perm]``, ``lam = 1 -
    mean(M)`` and the loss ``lam * CE(f(x_mix), Y) + (1 - lam) * CE(f(x_mix), Y[perm])``.

    Kept quirk of both reference codes: the crop can be larger than the image (about 46 % of
    the draws at 32 x 32 with the default ranges), so its top-left can be negative; every
    hole is then written with Python's slice rules on the image (a hole whose start and end
    are both negative lands at the opposite border, one that starts before 0 and ends after
    it usually vanishes, parts beyond the far border are cut), exactly as there.

    Defaults: ``alpha 0.2, n_holes 2..6, hole aspect 1..1, crop area 0.5..1, crop aspect
    0.5..2``, OpenMixup's settings on CIFAR and ImageNet alike (the original package's own
    default draws ``lam ~ U(0.1, 0.9)``). Ranges are pairs of scalar parameters. Draw order:
    ``lam``, the number of holes, the cell aspect, the crop area, the crop aspect, the crop's
    horizontal then vertical relative position (CPU generator), then ``perm``. The narrowest
    crop must hold ``n_holes_max`` cells of at least 2 pixels: images too small for the ranges
    are a usage error.

    Cost: one forward and one backward pass; the mask is a loop over at most ``(n_holes +
    1)(ny + 1)`` holes on the CPU, once per batch.
    """

    description = (
        "GridMixup (OpenMixup's GridMix): a grid of holes filled from another image, labels "
        "by area (Dobrynin)"
    )
    paper = "Dobrynin, GridMixup, 2020 (github.com/IlyaDobrynin/GridMixup; no paper)"
    version = 1
    params = {
        "alpha": concentration_param(
            0.2, "Beta(alpha, alpha) concentration of lam, which sizes the holes"
        ),
        "n_holes_min": Param(2, int, "fewest grid cells per row", minimum=1),
        "n_holes_max": Param(6, int, "most grid cells per row", minimum=1),
        "hole_aspect_min": _HOLE_ASPECT[0],
        "hole_aspect_max": _HOLE_ASPECT[1],
        "cut_area_min": _CUT_AREA[0],
        "cut_area_max": _CUT_AREA[1],
        "cut_aspect_min": _CUT_ASPECT[0],
        "cut_aspect_max": _CUT_ASPECT[1],
        **two_label_params(),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        for low, high in _RANGES:
            if getattr(self, low) > getattr(self, high):
                raise UsageError(
                    f"gridmixup: {low} ({getattr(self, low)}) must not exceed {high} "
                    f"({getattr(self, high)})"
                )

    def _check_size(self, height: int, width: int) -> None:
        """A one-line UsageError when the narrowest crop cannot hold ``n_holes_max`` cells."""
        narrowest = int(math.sqrt(int(height * width * self.cut_area_min) / self.cut_aspect_max))
        if self.n_holes_max > narrowest // 2:
            raise UsageError(
                f"gridmixup: {height} x {width} images are too small for n_holes_max = "
                f"{self.n_holes_max}: the narrowest crop (cut_area_min, cut_aspect_max) is "
                f"{narrowest} pixels wide and holds at most {narrowest // 2} cells; lower "
                f"--param gridmixup.n_holes_max"
            )

    def _uniform(self, cpu: torch.Generator, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=cpu))

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The GridMixup loss of one mini-batch."""
        height, width = int(images.shape[-2]), int(images.shape[-1])
        self._check_size(height, width)
        cpu = self.generator("cpu")
        lam = float(sample_beta(self.alpha, cpu))
        n_holes = int(torch.randint(self.n_holes_min, self.n_holes_max + 1, (1,), generator=cpu))
        hole_aspect = self._uniform(cpu, self.hole_aspect_min, self.hole_aspect_max)
        cut_area = self._uniform(cpu, self.cut_area_min, self.cut_area_max)
        cut_aspect = self._uniform(cpu, self.cut_aspect_min, self.cut_aspect_max)
        mask = grid_mask(height, width, lam, n_holes, hole_aspect, cut_area, cut_aspect, cpu)
        perm = torch.randperm(
            images.shape[0], generator=self.generator(images.device), device=images.device
        )
        lam = 1.0 - float(mask.sum()) / (height * width)
        mask = mask.to(device=images.device, dtype=images.dtype)
        logits = model(torch.lerp(images, images[perm], mask))
        return two_label_loss(self, logits, labels, lam, perm)
