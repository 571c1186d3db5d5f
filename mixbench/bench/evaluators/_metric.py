"""``CalibrationError``: an ignite metric accumulating per-bin calibration statistics.

A thin wrapper around :func:`calibration_bin_stats` and :func:`calibration_errors_from_stats`
(Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, arXiv 1706.04599). The
per-bin sums are summed across processes before the errors are computed, so the distributed
result equals the single-process one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics.metric import Metric, reinit__is_reduced, sync_all_reduce

from mixbench.bench.evaluators._calibration import (
    calibration_bin_stats,
    calibration_errors_from_stats,
)


def _identity(output: Any) -> Any:
    return output


class CalibrationError(Metric):
    """ECE, MCE and OE of ``(y_pred, y)`` outputs: logits (batch, classes), integer labels.

    ``compute()`` returns ``{"ece", "mce", "oe"}`` as floats plus the per-bin statistics as
    lists (``bin_counts``, ``bin_confidence_sum``, ``bin_correct_sum``), which
    :func:`reliability_diagram_data` and :func:`calibration_errors_from_stats` accept as is.
    Attached under a name, ignite stores the dict under that name and each key on its own.

    Args:
        n_bins: number of equal-width confidence bins over (0, 1].
        output_transform: maps the engine's output to ``(y_pred, y)``.
        device: where the statistics are accumulated (the process's device under NCCL).
    """

    _state_dict_all_req_keys = ("_counts", "_confidence_sum", "_correct_sum")

    def __init__(
        self,
        n_bins: int = 15,
        output_transform: Callable[[Any], Any] = _identity,
        device: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
        self.n_bins = n_bins
        super().__init__(output_transform=output_transform, device=device)

    def _sum_dtype(self) -> torch.dtype:
        return torch.float32 if self._device.type == "mps" else torch.float64

    @reinit__is_reduced
    def reset(self) -> None:
        """Zero the per-bin statistics (called at the start of every evaluation run)."""
        self._counts = torch.zeros(self.n_bins, dtype=torch.int64, device=self._device)
        self._confidence_sum = torch.zeros(
            self.n_bins, dtype=self._sum_dtype(), device=self._device
        )
        self._correct_sum = torch.zeros(self.n_bins, dtype=self._sum_dtype(), device=self._device)

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        """Add one batch ``(logits, labels)`` to the per-bin statistics."""
        y_pred, y = output[0], output[1]
        stats = calibration_bin_stats(y_pred, y, self.n_bins)
        self._counts += stats["bin_counts"].to(self._device)
        self._confidence_sum += stats["bin_confidence_sum"].to(self._device, self._sum_dtype())
        self._correct_sum += stats["bin_correct_sum"].to(self._device, self._sum_dtype())

    @sync_all_reduce("_counts", "_confidence_sum", "_correct_sum")
    def compute(self) -> dict[str, Any]:
        """The calibration errors and per-bin statistics over everything seen since reset."""
        if int(self._counts.sum()) == 0:
            raise NotComputableError("CalibrationError needs at least one example to compute")
        stats = {
            "bin_counts": self._counts.cpu().tolist(),
            "bin_confidence_sum": self._confidence_sum.cpu().tolist(),
            "bin_correct_sum": self._correct_sum.cpu().tolist(),
        }
        return {**calibration_errors_from_stats(stats), **stats}
