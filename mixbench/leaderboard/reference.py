"""The "paper reference" section: published numbers, their protocols and mixbench's beside.

The published figures are registered with the data sets (``DatasetInfo.published``), each with
its source, its training epochs and how it was picked (best epoch, last epoch, median of the
last 10, or unknown). Those of the built-in data sets are AlignMixup's own results
(Venkataramanan et al., CVPR 2022, arXiv 2103.15375; its repository's training logs, best test
epoch) and the published numbers of SaliencyMix, PuzzleMix and Co-Mixup; StyleMix and
StyleCutMix are listed as reference rows that mixbench never trains (they need pretrained
AdaIN VGG-19 weights). Where mixbench has run the matching preset, its own number stands
beside the published one: the last epoch (what mixbench reports) and the best test epoch (what
most papers report; selected on the test set).
"""

from __future__ import annotations

from dataclasses import dataclass

from tabulate import tabulate

from mixbench.leaderboard.legend import DASH
from mixbench.leaderboard.tables import Row, Table


@dataclass(frozen=True)
class PaperResult:
    """One published top-1 (``None``: not transcribed), its protocol, and the mixbench preset
    that reproduces it (empty: none does)."""

    data: str  # as users know it
    dataset: str  # mixbench's registry name
    model: str
    method: str
    top1: float | None  # percent
    preset: str
    source: str
    epochs: int | None = None
    metric: str = "unknown"
    note: str = ""


def paper_results() -> tuple[PaperResult, ...]:
    """The published results registered with the data sets, smallest training set first (data
    sets of unknown size last, then by name), each data set's in the order it lists them."""
    from mixbench.datasets import dataset_infos

    infos = sorted(
        dataset_infos().items(),
        key=lambda item: (item[1].train_size is None, item[1].train_size or 0, item[0]),
    )
    return tuple(
        PaperResult(
            info.display_name,
            name,
            r.model,
            r.method,
            r.top1,
            r.preset,
            r.source,
            r.epochs,
            r.metric,
            r.note,
        )
        for name, info in infos
        for r in info.published
    )


def matching_row(result: PaperResult, tables: list[Table]) -> Row | None:
    """mixbench's row for a published result: same preset, data set, network and method, with
    the method's ``paper`` parameter set if run, else its defaults; ``None`` without a
    preset."""
    if not result.preset:
        return None
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
    """Every registered published result, when some table is on a data set that has published
    results (by the name users know, ``CIFAR-10``, or the registry name): the reference lists
    the targets of every benchmark, not only of the data the tables hold. A leaderboard of
    other data only (``synthetic``) gets no reference."""
    names = {t.display_dataset for t in tables} | {t.dataset for t in tables}
    results = list(paper_results())
    if not any(r.data in names or r.dataset in names for r in results):
        return []
    return results


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
        published = DASH if result.top1 is None else f"{result.top1:.2f}"
        if result.top1 is None:
            published = "number not transcribed"
        elif result.note:
            published += f" ({result.note})"
        if result.preset:
            to_run = f"`mixbench run --preset {result.preset}`"
        else:
            to_run = result.note if result.top1 is None and result.note else "no mixbench preset"
        epochs = f"{result.epochs:,}" if result.epochs is not None else "unknown"
        body.append(
            [
                result.data,
                f"`{result.model}`",
                f"`{result.method}`",
                published,
                f"{epochs}, {result.metric}",
                result.source,
                to_run,
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
        "epochs, reported epoch",
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
            "Published numbers and the protocols behind them: GPU runs of hundreds to "
            "thousands of epochs, each reported at the epoch its source names (best: the best "
            "test epoch, selected on the test set; last: the final epoch; unknown: not stated "
            "by the source). AlignMixup's come from its repository's logs (Venkataramanan et "
            "al., CVPR 2022); SaliencyMix's, PuzzleMix's and Co-Mixup's from their "
            "repositories and papers, as each source column says (PuzzleMix's and Co-Mixup's "
            "CIFAR-100 numbers from their own protocols, each with a preset of its own). Where "
            "mixbench has a preset for the protocol and has run it, its mean over seeds stands "
            "beside: the last epoch, and the best test epoch. A dash: not run yet. StyleMix "
            "and StyleCutMix are listed for comparison only: mixbench cannot train them "
            "offline.",
            "",
            table,
        ]
    )
