"""Alignment and uniformity of normalised embeddings.

Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and Uniformity
on the Hypersphere" (ICML 2020, arXiv 2005.10242), the measures that MultiMix (arXiv 2311.05538)
reports. Here positive pairs are pairs of test examples of the same class.

Both measures use all pairs ``i != j`` of a fixed subsample of at most ``num_samples``
embeddings, drawn with a generator; squared distances of unit vectors are ``2 - 2 u.v``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mixbench.errors import UsageError


def _subsample(
    n: int, num_samples: int | None, generator: torch.Generator | None
) -> torch.Tensor | None:
    if num_samples is None or num_samples >= n:
        return None
    if num_samples < 2:
        raise UsageError(f"the embedding subsample needs at least 2 examples, got {num_samples}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return (
        torch.randperm(n, generator=generator, device=generator.device)[:num_samples].sort().values
    )


def _unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    if embeddings.ndim != 2:
        raise ValueError(f"expected embeddings of shape (n, d), got {tuple(embeddings.shape)}")
    x = embeddings.detach()
    if x.device.type == "mps":  # no float64 there
        x = x.cpu()
    return F.normalize(x.to(torch.float64), dim=1)


def _squared_distances(u: torch.Tensor) -> torch.Tensor:
    return (2 - 2 * u @ u.T).clamp_(min=0)


def alignment(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Mean squared distance between L2-normalised embeddings of the same class (lower: tighter).

    Averaged over all ordered pairs ``i != j`` with ``labels[i] == labels[j]`` in the subsample
    (Wang & Isola, arXiv 2005.10242, with alpha = 2).

    Args:
        embeddings: (n, d) embeddings (normalised here).
        labels: (n,) integer labels.
        num_samples: use a random subset of this many rows (``None``: all).
        generator: draws the subset (``None``: a generator seeded with 0).
    """
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"expected labels of shape ({embeddings.shape[0]},), got {tuple(labels.shape)}"
        )
    keep = _subsample(embeddings.shape[0], num_samples, generator)
    if keep is not None:
        embeddings, labels = embeddings[keep.to(embeddings.device)], labels[keep.to(labels.device)]
    u = _unit_rows(embeddings)
    labels = labels.to(u.device)
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    pairs = int(same.sum())
    if pairs == 0:
        raise UsageError("alignment needs two embeddings of the same class; none share a class")
    return float(_squared_distances(u)[same].sum() / pairs)


def uniformity(
    embeddings: torch.Tensor,
    t: float = 2.0,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """``log mean exp(-t ||u - v||^2)`` over pairs ``i != j`` of normalised embeddings.

    Lower is more uniform. Wang & Isola, arXiv 2005.10242. Computed with a log-sum-exp, so it
    is exact even for large ``t``; two antipodal points give ``-4 t``.

    Args:
        embeddings: (n, d) embeddings, n >= 2 (normalised here).
        t: the Gaussian potential's scale.
        num_samples, generator: as for :func:`alignment`.
    """
    if not t > 0:
        raise UsageError(f"uniformity's t must be > 0, got {t!r}")
    keep = _subsample(embeddings.shape[0], num_samples, generator)
    if keep is not None:
        embeddings = embeddings[keep.to(embeddings.device)]
    u = _unit_rows(embeddings)
    n = u.shape[0]
    if n < 2:
        raise UsageError("uniformity needs at least 2 embeddings")
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=u.device)
    exponents = -t * _squared_distances(u)[off_diagonal]
    return float(torch.logsumexp(exponents, dim=0) - math.log(n * (n - 1)))


def embedding_quality(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    t: float = 2.0,
    num_samples: int | None = 2048,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """``{"alignment", "uniformity"}`` on one shared subsample of at most ``num_samples`` rows."""
    keep = _subsample(embeddings.shape[0], num_samples, generator)
    if keep is not None:
        embeddings, labels = embeddings[keep.to(embeddings.device)], labels[keep.to(labels.device)]
    return {"alignment": alignment(embeddings, labels), "uniformity": uniformity(embeddings, t)}
