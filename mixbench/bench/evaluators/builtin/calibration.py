"""``calibration``: ECE, MCE, OE and the reliability bins of the full test set.

The trainer's evaluator measures these after every evaluated epoch (the ignite metric
:class:`~mixbench.bench.evaluators.CalibrationError`, summed across processes), so a cell's
numbers are those of its last epoch; ``mixbench evaluate`` measures them in its clean pass. This
evaluator therefore computes nothing more after training: it holds the columns and the legend.
"""

from __future__ import annotations

from typing import Any

from mixbench.bench.evaluators.base import (
    POINTS,
    ColumnSpec,
    EvalContext,
    EvalResult,
    Evaluator,
    register_evaluator,
)


def _confidence_gap(row: Any) -> float | None:
    return row.confidence_gap()


@register_evaluator("calibration")
class Calibration(Evaluator):
    """Expected and overconfidence calibration errors of the test set (equal-width bins)."""

    description = "ECE, MCE, OE and reliability bins of the full test set (measured by the trainer)"
    order = 10
    columns = (
        ColumnSpec(key="ece", header="ECE (%)", higher_is_better=False, optional=False,
                   position=20),
        ColumnSpec(key="oe", header="OE (%)", higher_is_better=False, optional=False,
                   position=21),
        ColumnSpec(
            key="confidence_gap", header="conf. − acc. (pp)", higher_is_better=None, fmt=POINTS,
            position=22, value=_confidence_gap,
            legend="conf. − acc.: mean confidence (top softmax probability) minus accuracy on "
            "the test set, from the stored reliability bins, in percentage points: positive when "
            "the model is overconfident, negative when it is underconfident (not marked best: "
            "either sign is a calibration error).",
        ),
    )  # fmt: skip

    def run(self, context: EvalContext) -> EvalResult:
        """Nothing to add: the trainer (or ``mixbench evaluate``'s clean pass) measured it."""
        return EvalResult(metrics={})

    def legend(self, settings: list[dict[str, Any]], shown: set[str], table_eval: dict) -> str:
        bins = table_eval.get("calibration_bins", 15)
        out = []
        if "ECE (%)" in shown or "OE (%)" in shown:
            out.append(
                f"ECE / OE: expected calibration error and overconfidence error of the test set, "
                f"{bins} equal-width bins. ECE counts under- and overconfidence alike, OE only "
                "overconfidence (weighted by the confidence), so a model left underconfident, as "
                "mixup methods often leave it, can show a larger ECE and a smaller OE than ERM."
            )
        out.append(super().legend(settings, shown, table_eval))
        return " ".join(t for t in out if t)
