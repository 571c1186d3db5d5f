"""The "paper reference" section: published numbers that the paper presets aim at.

The published figures are registered with the data sets (``DatasetInfo.published``); those of
the built-in data sets are AlignMixup's own results (Venkataramanan et al., CVPR 2022,
arXiv 2103.15375; its repository's training logs, best test epoch). Where mixbench has run the
matching paper preset, its own number stands beside the published one: the last epoch (what
mixbench reports) and the best test epoch (what the papers report; selected on the test set).
"""

from __future__ import annotations

from dataclasses import dataclass

from tabulate import tabulate

from mixbench.leaderboard.legend import DASH
from mixbench.leaderboard.tables import Row, Table


@dataclass(frozen=True)
class PaperResult:
    """One published top-1 and the mixbench preset that reproduces its protocol."""

    data: str  # as users know it
    dataset: str  # mixbench's registry name
    model: str
    method: str
    top1: float  # percent
    preset: str
    source: str


def paper_results() -> tuple[PaperResult, ...]:
    """The published results registered with the data sets, smallest training set first (data
    sets of unknown size last, then by name), each data set's in the order it lists them."""
    from mixbench.datasets import dataset_infos

    infos = sorted(
        dataset_infos().items(),
        key=lambda item: (item[1].train_size is None, item[1].train_size or 0, item[0]),
    )
    return tuple(
        PaperResult(info.display_name, name, r.model, r.method, r.top1, r.preset, r.source)
        for name, info in infos
        for r in info.published
    )


def matching_row(result: PaperResult, tables: list[Table]) -> Row | None:
    """mixbench's row for a published result: same preset, data set, network and method, with
    the method's ``paper`` parameter set if run, else its defaults."""
    candidates = [
        row
        for table in tables
        if (table.preset, table.dataset, table.model)
        == (result.preset, result.dataset, result.model)
        for row in table.rows
        if row.method == result.method and row.param_set in ("paper", "default")
    ]
    candidates.sort(key=lambda r: (r.param_set != "paper", -len(r.seeds)))
    return candidates[0] if candidates else None


def shown_results(tables: list[Table]) -> list[PaperResult]:
    """The published results of the data sets that some table is on (by the name users know,
    ``CIFAR-10``, or the registry name): a leaderboard of other data gets no reference."""
    names = {t.display_dataset for t in tables} | {t.dataset for t in tables}
    return [r for r in paper_results() if r.data in names or r.dataset in names]


def _pct(row: Row | None, name: str) -> str:
    if row is None or row.mean(name) is None:
        return DASH
    std = row.std(name)
    mean = 100 * row.mean(name)
    return f"{mean:.2f} ± {100 * std:.2f}" if std is not None else f"{mean:.2f}"


def render_reference(tables: list[Table]) -> str:
    """The Markdown section: published top-1, the preset to run, mixbench's numbers beside;
    empty when no table is on a data set with published numbers."""
    results = shown_results(tables)
    if not results:
        return ""
    body = []
    for result in results:
        row = matching_row(result, tables)
        body.append(
            [
                result.data,
                f"`{result.model}`",
                f"`{result.method}`",
                f"{result.top1:.2f}",
                result.source,
                f"`mixbench run --preset {result.preset}`",
                _pct(row, "top1"),
                _pct(row, "best_top1"),
                str(len(row.seeds)) if row is not None else DASH,
            ]
        )
    headers = [
        "data set",
        "network",
        "method",
        "published top-1 (%)",
        "source",
        "preset to run",
        "mixbench top-1 (%), last epoch",
        "mixbench best-epoch top-1 (%)",
        "seeds",
    ]
    table = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    return "\n".join(
        [
            "## Paper reference",
            "",
            "The published numbers that the paper presets aim at: AlignMixup's own results "
            "(Venkataramanan et al., CVPR 2022), from its repository's logs, which report the "
            "best test epoch of 2,000 (CIFAR) or 1,200 (Tiny-ImageNet) or 300 (ImageNet) "
            "epochs on GPUs. Where mixbench has run the paper preset, its mean over seeds "
            "stands beside: the last epoch, and the best test epoch (selected on the test set, "
            "as the papers do). A dash: not run yet.",
            "",
            table,
        ]
    )
