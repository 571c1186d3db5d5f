"""The legend under each leaderboard table: what the columns mean and the evaluators' settings.

Everything comes from the stored results: the table's eval config (``config["eval"]`` of its
cells) and the settings the evaluators resolved and stored with their metrics
(``metrics["eval_settings"]``: attack eps and steps, subset sizes, corruptions, severities);
each evaluator writes its own sentences (``Evaluator.legend``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mixbench.leaderboard.tables import Table

DASH = "—"


def evaluator_settings(table: Table, key: str) -> list[dict[str, Any]]:
    """The distinct settings that the table's cells stored for evaluator ``key``."""
    return [s[key] for s in table.eval_settings if isinstance(s.get(key), dict)]


def legend(table: Table, shown: Iterable[str]) -> str:
    """The legend paragraph(s) under ``table``; ``shown`` are the headers of its columns.

    Training's columns first, then each registered evaluator's sentences (its
    :meth:`~mixbench.bench.evaluators.Evaluator.legend`, from the settings its cells stored),
    in the order the evaluators run, then the cost columns and the marks.
    """
    from mixbench.bench.evaluators import get_evaluator, list_evaluators

    shown = set(shown)
    out = [
        "top-1: last-epoch test accuracy, mean ± standard deviation over seeds. "
        "Δ ERM: difference of the mean top-1 to ERM's in the same table (percentage points). "
        "best-epoch top-1: the best evaluated epoch, selected on the test set as the papers do "
        "(optimistic; shown for comparison only). NLL: test negative log-likelihood."
    ]
    if "vs ERM over seeds" in shown:
        out.append(
            "vs ERM over seeds: above where every seed's last-epoch top-1 of the row is higher "
            "than every seed's of ERM (the two ranges over seeds do not overlap), below where "
            "every one is lower, overlaps otherwise (the difference is within the seeds' "
            f"spread); {DASH} for ERM itself and where the row or ERM has fewer than two seeds. "
            "A check of ranges, not a significance test."
        )
    for name in list_evaluators():
        cls = get_evaluator(name)
        found = evaluator_settings(table, cls.settings_key or name)
        out.append(cls().legend(found, shown, table.eval))
    if "passes/step" in shown:
        out.append(
            "passes/step: the network's full forward passes per training step, counted during "
            "training (1.00: the network runs once per batch, as for ERM; 2.00: twice); a dash "
            "for cells recorded before it was counted."
        )
    out.append(
        "train img/s: training throughput. cost ×ERM: training time relative to ERM's in the "
        "same table, each the median over its seeds' cells that trained on one machine (the "
        "one that trained the most of ERM's cells; machines of one kind differ in speed): "
        "the training process's CPU time "
        "where the row's and ERM's cells trained on a CPU and recorded it (other processes "
        "sharing the cores stretch it far less than the wall time), else wall time, shown only "
        "where the row's cells ran on the same kind of machine as ERM's. #: rank by mean "
        "top-1. Bold: the best "
        "value of each column among the rows with two or more seeds (a one-seed row is never "
        f"marked best: its lead may be seed noise). {DASH}: not measured."
    )
    text = " ".join(dict.fromkeys(t for t in out if t))
    if table.notes:
        text += "\n\n" + "\n".join(f"- {note}" for note in table.notes)
    return text
