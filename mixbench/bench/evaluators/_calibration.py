"""Calibration errors of a classifier from per-bin statistics of its top-label confidence.

The expected calibration error follows Guo et al., "On Calibration of Modern Neural Networks"
(ICML 2017, arXiv 1706.04599); the overconfidence error follows Thulasidasan et al., "On Mixup
Training: Improved Calibration and Predictive Uncertainty for Deep Neural Networks"
(NeurIPS 2019, arXiv 1905.11001).

Everything is computed from three per-bin sums (count, summed confidence, summed correctness),
so that statistics gathered on several batches or processes are simply added before the errors
are computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

#: Keys of the per-bin statistics, shared by the pure functions and the ignite metric.
STAT_KEYS = ("bin_counts", "bin_confidence_sum", "bin_correct_sum")


def _check_inputs(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> None:
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (batch, classes), got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected labels of shape ({logits.shape[0]},), got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"expected integer class labels, got dtype {labels.dtype}")


def calibration_bin_stats(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> dict[str, torch.Tensor]:
    """Per-bin count, summed confidence and summed correctness of the top-label prediction.

    The confidence is the largest softmax probability of each row of ``logits``. Bins are the
    ``n_bins`` equal-width intervals ``((k - 1) / n_bins, k / n_bins]`` of (0, 1]; an example of
    confidence ``p`` falls in bin ``ceil(p * n_bins) - 1`` (clamped to ``[0, n_bins - 1]``), so a
    confidence of exactly 1 lies in the last bin.

    Args:
        logits: (batch, classes) unnormalised scores, any floating dtype.
        labels: (batch,) integer class labels.
        n_bins: number of equal-width bins.

    Returns:
        ``{"bin_counts": int64 (n_bins,), "bin_confidence_sum": float64 (n_bins,),
        "bin_correct_sum": float64 (n_bins,)}`` on the device of ``logits`` (float32 sums on
        devices without float64 support).
    """
    _check_inputs(logits, labels, n_bins)
    probs = torch.softmax(logits.detach().float(), dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels.to(predicted.device)).float()
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp_(0, n_bins - 1)
    sum_dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    counts = torch.bincount(index, minlength=n_bins)
    conf_sum = torch.zeros(n_bins, dtype=sum_dtype, device=logits.device)
    conf_sum.index_add_(0, index, confidence.to(sum_dtype))
    correct_sum = torch.zeros(n_bins, dtype=sum_dtype, device=logits.device)
    correct_sum.index_add_(0, index, correct.to(sum_dtype))
    return {"bin_counts": counts, "bin_confidence_sum": conf_sum, "bin_correct_sum": correct_sum}


def _stats_as_tensors(stats: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    missing = [k for k in STAT_KEYS if k not in stats]
    if missing:
        raise ValueError(f"calibration statistics lack {', '.join(missing)}; expected {STAT_KEYS}")
    counts, conf, correct = (
        torch.as_tensor(stats[k], device="cpu").detach().to(torch.float64) for k in STAT_KEYS
    )
    if not (counts.ndim == conf.ndim == correct.ndim == 1) or not (
        counts.shape == conf.shape == correct.shape
    ):
        raise ValueError("calibration statistics must be three 1-d sequences of the same length")
    return counts, conf, correct


def calibration_errors_from_stats(stats: Mapping[str, Any]) -> dict[str, float]:
    """ECE, MCE and OE from per-bin statistics (as returned by :func:`calibration_bin_stats`).

    With ``n`` examples in all, ``n_k`` in bin k, mean confidence ``conf_k`` and accuracy
    ``acc_k`` there:

    - ``ece = sum_k (n_k / n) * |conf_k - acc_k|``
    - ``mce = max over non-empty bins of |conf_k - acc_k|``
    - ``oe = sum_k (n_k / n) * conf_k * max(conf_k - acc_k, 0)``

    ``stats`` may hold tensors or lists (the ignite metric's output works as is). Raises
    ``ValueError`` when the statistics count no example.
    """
    counts, conf_sum, correct_sum = _stats_as_tensors(stats)
    total = counts.sum()
    if total <= 0:
        raise ValueError("calibration errors need at least one example; the bins are empty")
    filled = counts > 0
    safe = counts.clamp(min=1)
    conf = conf_sum / safe
    acc = correct_sum / safe
    share = counts / total
    gap = (conf - acc).abs()
    ece = (share * gap).sum()
    mce = gap[filled].max()
    oe = (share * conf * (conf - acc).clamp(min=0)).sum()
    return {"ece": float(ece), "mce": float(mce), "oe": float(oe)}


def calibration_errors(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> dict[str, float]:
    """Expected, maximum and overconfidence calibration errors of ``logits`` for ``labels``.

    Returns ``{"ece", "mce", "oe"}`` as floats; see :func:`calibration_bin_stats` for the
    binning and :func:`calibration_errors_from_stats` for the formulas.
    """
    return calibration_errors_from_stats(calibration_bin_stats(logits, labels, n_bins))


def reliability_diagram_data(stats: Mapping[str, Any]) -> list[dict[str, float | int | None]]:
    """One record per bin for a reliability diagram.

    Each record holds ``lower`` and ``upper`` (the bin's edges), ``count``, and the bin's mean
    ``confidence`` and ``accuracy`` (``None`` for an empty bin, so that the records stay valid
    JSON).
    """
    counts, conf_sum, correct_sum = _stats_as_tensors(stats)
    n_bins = counts.shape[0]
    records: list[dict[str, float | int | None]] = []
    for k in range(n_bins):
        count = int(counts[k])
        records.append(
            {
                "lower": k / n_bins,
                "upper": (k + 1) / n_bins,
                "count": count,
                "confidence": float(conf_sum[k] / count) if count else None,
                "accuracy": float(correct_sum[k] / count) if count else None,
            }
        )
    return records


def merge_bin_stats(parts: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """The element-wise sum of several per-bin statistics (batches, shards or processes)."""
    if not parts:
        raise ValueError("merge_bin_stats needs at least one set of statistics")
    merged = [torch.zeros_like(t) for t in _stats_as_tensors(parts[0])]
    for part in parts:
        for acc, t in zip(merged, _stats_as_tensors(part)):
            if t.shape != acc.shape:
                raise ValueError("cannot merge calibration statistics with different bin counts")
            acc += t
    return {
        "bin_counts": merged[0].round().to(torch.int64),
        "bin_confidence_sum": merged[1],
        "bin_correct_sum": merged[2],
    }
