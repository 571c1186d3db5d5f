"""Out-of-distribution (OOD) detection: scores, metrics and OOD image sets.

A classifier's logits give every image a score, higher meaning "more in-distribution": the
maximum softmax probability (:func:`msp_scores`; Hendrycks & Gimpel, "A Baseline for Detecting
Misclassified and Out-of-Distribution Examples in Neural Networks", ICLR 2017,
arXiv 1610.02136) or the negative energy (:func:`energy_scores`; Liu et al., "Energy-based
Out-of-distribution Detection", NeurIPS 2020, arXiv 2010.03759). :func:`ood_metrics` measures
how well the scores of the in-distribution test set and of an OOD set separate (AUROC, AUPR,
FPR at 95 % TPR). The OOD images come from a folder (:func:`load_ood_folder`) or are generated
without any download (:func:`generated_ood_images`, the kinds in :data:`GENERATED_OOD_SETS`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mixbench.bench.evaluators._official import _IMAGE_SUFFIXES
from mixbench.datasets.synthetic import generate_gratings
from mixbench.errors import UsageError

#: The OOD sets that :func:`generated_ood_images` makes without any files.
GENERATED_OOD_SETS = ("uniform_noise", "gaussian_noise", "synthetic")

#: ITU-R BT.601 luma weights, to turn the RGB synthetic images into one channel.
_LUMA = (0.299, 0.587, 0.114)


def _check_scores(name: str, scores: torch.Tensor) -> torch.Tensor:
    """``scores`` as float64 on the CPU; all but a finite, non-empty 1-D tensor is refused."""
    if not isinstance(scores, torch.Tensor):
        raise UsageError(f"{name} must be a tensor, got {type(scores).__name__}")
    if scores.ndim != 1 or scores.numel() == 0:
        raise UsageError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    if scores.is_complex():
        raise UsageError(f"{name} must be real, got {scores.dtype}")
    scores = scores.detach().to("cpu", torch.float64)
    if not torch.isfinite(scores).all():
        raise UsageError(f"{name} has {int((~torch.isfinite(scores)).sum())} non-finite values")
    return scores


def ood_metrics(scores_in: torch.Tensor, scores_out: torch.Tensor) -> dict[str, float]:
    """AUROC, AUPR and FPR95 of separating in-distribution from OOD scores (higher = in).

    - ``auroc``: the probability that a random in-distribution score exceeds a random OOD score,
      ties counting one half (the Mann-Whitney U statistic from average ranks, divided by
      ``n_in * n_out``).
    - ``aupr``: average precision with the in-distribution scores as the positive class, the sum
      over the distinct scores ``t`` (descending) of ``(R(t) - R(t_prev)) * P(t)``, where recall
      ``R`` and precision ``P`` count every score ``>= t``, so tied scores enter together (as
      ``sklearn.metrics.average_precision_score`` computes it).
    - ``fpr95``: the fraction of OOD scores ``>= t`` for the largest threshold ``t`` that keeps
      at least 95 % of the in-distribution scores (``>= t``).

    Both inputs must be finite, non-empty 1-D tensors (else :class:`UsageError`); everything is
    computed exactly in float64 on the CPU, in O(n log n).
    """
    s_in = _check_scores("scores_in", scores_in)
    s_out = _check_scores("scores_out", scores_out)
    n_in, n_out = s_in.numel(), s_out.numel()
    values, inverse, counts = torch.unique(
        torch.cat([s_in, s_out]), sorted=True, return_inverse=True, return_counts=True
    )
    # Average 1-based rank of each distinct value (ascending): the middle of its run of ranks.
    ends = counts.cumsum(0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    u_stat = mean_rank[inverse[:n_in]].sum().item() - n_in * (n_in + 1) / 2
    auroc = u_stat / (n_in * n_out)

    # Per distinct value (descending), the in/out counts at or above it.
    in_counts = torch.bincount(inverse[:n_in], minlength=values.numel()).flip(0)
    out_counts = torch.bincount(inverse[n_in:], minlength=values.numel()).flip(0)
    true_pos = in_counts.cumsum(0).to(torch.float64)
    false_pos = out_counts.cumsum(0).to(torch.float64)
    precision = true_pos / (true_pos + false_pos)
    aupr = (in_counts.to(torch.float64) / n_in * precision).sum().item()

    # ceil(0.95 * n_in) in integers, so that float rounding cannot move the threshold.
    keep = (95 * n_in + 99) // 100
    threshold = torch.sort(s_in, descending=True).values[keep - 1]
    fpr95 = (s_out >= threshold).to(torch.float64).mean().item()
    return {"auroc": auroc, "aupr": aupr, "fpr95": fpr95}


def _check_logits(logits: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (batch, classes), got {tuple(logits.shape)}")


def msp_scores(logits: torch.Tensor) -> torch.Tensor:
    """The maximum softmax probability of every row of ``logits`` (batch, classes), in float32."""
    _check_logits(logits)
    return torch.softmax(logits.float(), dim=1).amax(dim=1)


def energy_scores(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The negative energy ``T * logsumexp(logits / T)`` of every row, in float32.

    Higher means more in-distribution; it is at least the row's largest logit. ``temperature``
    must be positive (else :class:`UsageError`).
    """
    _check_logits(logits)
    if not math.isfinite(temperature) or temperature <= 0:
        raise UsageError(f"the energy temperature must be a positive number, got {temperature!r}")
    return temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise UsageError(f"image_size must be two positive ints (height, width), got {image_size}")
    return size  # type: ignore[return-value]


def generated_ood_images(
    kind: str,
    n: int,
    image_size: tuple[int, int],
    channels: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """``n`` uint8 images (n, channels, H, W) of one generated OOD set, drawn from ``generator``.

    Only ``generator`` (a CPU generator) is drawn from, never the global random state, so the
    same seed gives the same images. The kinds (:data:`GENERATED_OOD_SETS`):

    - ``uniform_noise``: every pixel uniform in 0..255.
    - ``gaussian_noise``: every pixel N(0.5, 0.25^2) in [0, 1] units, clipped to [0, 1], then
      ``round(x * 255)``.
    - ``synthetic``: the coloured Gabor patches of the ``synthetic`` data set
      (:func:`mixbench.datasets.synthetic.generate_gratings` with 10 classes and its default
      noise, labels dropped), made directly at ``image_size``; they are RGB, turned into one
      channel with the BT.601 luma weights when ``channels`` is 1 (other counts are refused).
      With the ``synthetic`` data set as the in-distribution set, these images are drawn from
      the same distribution and are not OOD.

    An unknown ``kind`` or a bad size raises :class:`UsageError`.
    """
    if kind not in GENERATED_OOD_SETS:
        raise UsageError(
            f"unknown generated OOD set {kind!r}; choose one of {', '.join(GENERATED_OOD_SETS)}"
        )
    height, width = _check_image_size(image_size)
    if not isinstance(n, int) or n < 1:
        raise UsageError(f"the number of OOD images must be a positive int, got {n!r}")
    if not isinstance(channels, int) or channels < 1:
        raise UsageError(f"channels must be a positive int, got {channels!r}")
    shape = (n, channels, height, width)
    if kind == "uniform_noise":
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    if kind == "gaussian_noise":
        pixels = torch.randn(shape, generator=generator).mul_(0.25).add_(0.5)
        return pixels.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    if channels not in (1, 3):
        raise UsageError(f"the synthetic OOD set has 1 or 3 channels, got {channels}")
    images = generate_gratings(n, 10, (height, width), generator).images
    if channels == 1:
        luma = torch.tensor(_LUMA).view(1, 3, 1, 1)
        images = (images.float() * luma).sum(1, keepdim=True).round_().clamp_(0, 255)
        images = images.to(torch.uint8)
    return images


def _expects(folder: Path, problem: str) -> str:
    return (
        f"eval.options.ood.sets: {problem} {folder}; name a folder of images "
        f"({', '.join(sorted(_IMAGE_SUFFIXES))} files, searched recursively; "
        "e.g. SVHN's test images as PNG files)"
    )


def _load_resized(path: Path, image_size: tuple[int, int]) -> torch.Tensor:
    """One image file as uint8 RGB (3, H, W) resized with PIL (bilinear); damaged -> UsageError."""
    height, width = image_size
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(rgb)
    except (UnidentifiedImageError, ValueError, OSError) as exc:
        raise UsageError(f"cannot decode image {path}: {exc}; the file is damaged") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def load_ood_folder(
    path: str | Path,
    image_size: tuple[int, int],
    limit: int | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """The images under folder ``path`` as one uint8 RGB tensor (n, 3, H, W).

    Every file ending in .png, .jpg, .jpeg, .bmp or .webp (any case) under ``path``, at any
    depth, is taken in sorted order of its path; names starting with a dot (hidden files and
    folders, e.g. macOS ``._`` files) are skipped. Each image is converted to RGB and resized to
    ``image_size`` (height, width) with PIL's bilinear filter. When ``limit`` is smaller than
    the number of files, ``limit`` of them are chosen with ``torch.randperm`` on ``generator``
    and kept in sorted order. A missing folder, a folder without images, a ``limit`` below 1 or
    a damaged file raises :class:`UsageError`.
    """
    folder = Path(path)
    size = _check_image_size(image_size)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UsageError(f"the OOD image limit must be a positive int or None, got {limit!r}")
    if not folder.is_dir():
        raise UsageError(_expects(folder, "no folder"))
    files = sorted(
        (
            f
            for f in folder.rglob("*")
            if f.suffix.lower() in _IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in f.relative_to(folder).parts)
            and f.is_file()
        ),
        key=lambda f: f.relative_to(folder).as_posix(),
    )
    if not files:
        raise UsageError(_expects(folder, "no images under"))
    if limit is not None and limit < len(files):
        chosen = torch.randperm(len(files), generator=generator)[:limit].sort().values
        files = [files[i] for i in chosen.tolist()]
    out = torch.empty((len(files), 3, *size), dtype=torch.uint8)
    for i, file in enumerate(files):
        out[i] = _load_resized(file, size)
    return out
