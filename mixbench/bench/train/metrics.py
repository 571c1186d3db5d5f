"""The evaluator's metrics: the same for every method, reduced correctly across processes."""

from __future__ import annotations

import torch.nn.functional as F
from ignite.engine import Engine
from ignite.metrics import Accuracy, Loss, TopKCategoricalAccuracy

from mixbench.bench.evaluators import CalibrationError


def attach_metrics(evaluator: Engine, num_classes: int, calibration_bins: int = 15) -> None:
    """Top-1, top-5 (more than 10 classes), NLL and calibration errors on ``evaluator``.

    The evaluator's output is ``(logits, labels)``. Metric names: ``top1``, ``top5``, ``nll``,
    and ``calibration`` (a dict whose ``ece``, ``mce`` and ``oe`` also appear on their own).
    """
    Accuracy().attach(evaluator, "top1")
    if num_classes > 10:
        TopKCategoricalAccuracy(k=5).attach(evaluator, "top5")
    Loss(F.cross_entropy).attach(evaluator, "nll")
    CalibrationError(n_bins=calibration_bins).attach(evaluator, "calibration")
