"""What stands under a leaderboard table's heading: how its numbers were produced.

Data set (named as users know it), network, schedule, seeds, hardware, software versions and
source commit, dates, and a plain warning when the runs are far shorter than the papers'
protocols. Everything comes from the stored results (never from the machine that renders the
leaderboard, never from "now") and from the facts registered with the data sets (their
``DatasetInfo``: the papers' epochs, whether the data is generated), so regenerating a
leaderboard gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mixbench.leaderboard.tables import Row, Table

#: A table counts as trained to convergence when doubling its epochs moves the last-epoch
#: top-1 of every row checked by at most this much (a fraction: 0.005 is half a point).
CONVERGENCE_TOLERANCE = 0.005

#: Schedule fields that may differ between a table and the runs of its convergence check.
_LENGTH_FIELDS = ("epochs", "eval_every")


def dataset_facts(table: Table) -> Any:
    """The registered ``DatasetInfo`` of the table's data: that of the data set users know by
    the table's display name (an ``imagefolder`` named ``CIFAR-10`` is CIFAR-10), else that of
    its own data set; ``None`` for a data set that is not registered here."""
    from mixbench.datasets import DATASETS, dataset_info, find_dataset_info

    found = find_dataset_info(table.display_dataset)
    if found is None and table.dataset in DATASETS:
        found = dataset_info(table.dataset)
    return found


def paper_epochs() -> list[int]:
    """The training epochs of the papers' protocols (AlignMixup's, which MultiMix follows) of
    every registered data set that has one, sorted."""
    from mixbench.datasets import dataset_infos

    return sorted({i.paper_epochs for i in dataset_infos().values() if i.paper_epochs})


def date_text(ts: float) -> str:
    """A UTC date, ``2026-11-24``."""
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def plural(n: int, word: str) -> str:
    """``n`` and the word, plural unless ``n`` is 1: ``1 seed``, ``3 seeds``, ``2 classes``."""
    suffix = "" if n == 1 else ("es" if word.endswith("s") else "s")
    return f"{n:,} {word}{suffix}"


def seeds_of(table: Table) -> list[int]:
    """Every seed that some row of the table has, sorted."""
    return sorted({seed for row in table.rows for seed in row.seeds})


def hardware_of(table: Table) -> list[dict[str, Any]]:
    """The distinct machines (as stored with the cells' versions) behind a table."""
    seen: list[dict[str, Any]] = []
    for versions in table.versions:
        hw = versions.get("hardware")
        if isinstance(hw, dict) and hw not in seen:
            seen.append(hw)
    return seen


def describe_hardware(hw: dict[str, Any]) -> str:
    """``AMD EPYC, 2 CPUs, 2 torch threads, no GPU`` or ``NVIDIA H100 80GB HBM3 x1, AMD EPYC,
    16 CPUs, 16 torch threads``. The thread count is there because it changes the rounding of
    CPU results (not the experiment: cells trained with other thread counts share a key)."""
    cpu = f"{hw.get('cpu', 'unknown CPU')}, {plural(int(hw.get('cpus') or 0), 'CPU')}"
    if hw.get("torch_threads"):
        cpu += f", {plural(int(hw['torch_threads']), 'torch thread')}"
    if hw.get("gpu"):
        return f"{hw['gpu']} x{hw.get('gpus') or 1}, {cpu}"
    return f"{cpu}, no GPU"


def _commit_text(versions: dict[str, Any]) -> str | None:
    """``1a2b3c4`` or ``1a2b3c4 with local changes``; None when no commit was recorded."""
    commit = versions.get("commit")
    if not commit:
        return None
    return f"{commit[:7]}{' with local changes' if versions.get('dirty') else ''}"


def _libraries_text(versions: dict[str, Any]) -> str:
    """``torch 2.14.1, torchvision 0.29.1, ignite 0.5.5, Python 3.11.7`` (and CUDA if any)."""
    parts = []
    for name in ("torch", "torchvision", "ignite", "python"):
        if versions.get(name):
            parts.append(f"{'Python' if name == 'python' else name} {versions[name]}")
    if versions.get("cuda"):
        parts.append(f"CUDA {versions['cuda']}")
    return ", ".join(parts)


def describe_software(all_versions: Iterable[dict[str, Any]]) -> str:
    """The distinct software behind some cells, one entry per mixbench version and libraries.

    Cells that differ only in their source commit share an entry listing the commits:
    ``mixbench 0.1.0 (commits 1a2b3c4, 5d6e7f8), torch 2.14.1, torchvision 0.29.1, ...``.
    Entries and commits are sorted, so the text does not depend on the order of the cells.
    """
    groups: dict[tuple[str, str], set[str]] = {}
    for versions in all_versions:
        key = (str(versions.get("mixbench")), _libraries_text(versions))
        commits = groups.setdefault(key, set())
        if (commit := _commit_text(versions)) is not None:
            commits.add(commit)
    entries = []
    for (mixbench, libraries), commits in sorted(groups.items()):
        where = ""
        if commits:
            where = f" (commit{'s' if len(commits) > 1 else ''} {', '.join(sorted(commits))})"
        entries.append(f"mixbench {mixbench}{where}" + (f", {libraries}" if libraries else ""))
    return "; ".join(entries)


def describe_data(table: Table) -> str:
    """``CIFAR-10 (`imagefolder` folder, train_subset=10000; 10 classes, 10,000 training ...)``."""
    options = ", ".join(f"{k}={v}" for k, v in sorted(table.dataset_options.items()))
    source = f"`{table.dataset}`" + (f", {options}" if options else "")
    facts = ""
    if table.data:
        d = table.data[0]
        size = "x".join(str(s) for s in d.get("image_size", []))
        facts = (
            f"; {plural(int(d['num_classes']), 'class')}, "
            f"{int(d['train_images']):,} training and {int(d['test_images']):,} test images"
            + (f", {size}" if size else "")
        )
        if len(table.data) > 1:
            facts += f" (the cells disagree: {len(table.data)} different descriptions stored)"
    if table.display_dataset == table.dataset:
        return f"`{table.dataset}`" + (f" ({options}{facts})" if options or facts else "")
    return f"{table.display_dataset} ({source}{facts})"


def path_check_notice(table: Table) -> str | None:
    """A plain sentence for a table whose numbers only check that the path works: generated
    data (a data set registered as ``generated``, the ``smoke`` preset's), where a lead of any
    size means nothing."""
    from mixbench.datasets import DATASETS, dataset_info

    if table.dataset not in DATASETS or not dataset_info(table.dataset).generated:
        return None
    seeds = len(seeds_of(table))
    return (
        "**These numbers only check the path; they compare nothing.** Generated "
        f"`{table.dataset}` images, {plural(int(table.schedule['epochs']), 'epoch')}, "
        f"{plural(seeds, 'seed')}: the table shows that every method trains and is evaluated "
        "end to end. Differences between its rows, however large, are not results."
    )


@dataclass
class ConvergenceRun:
    """The last-epoch top-1 of one method, parameters and seed at several numbers of epochs."""

    label: str
    seed: int
    top1: dict[int, float] = field(default_factory=dict)


@dataclass
class ConvergenceCheck:
    """What doubling a table's epochs did: the runs with values at the table's epochs and at
    twice as many, and every other length found."""

    epochs: int
    runs: list[ConvergenceRun]

    def change(self, run: ConvergenceRun) -> float:
        """Top-1 at twice the table's epochs minus top-1 at its epochs (a fraction)."""
        return run.top1[2 * self.epochs] - run.top1[self.epochs]

    @property
    def largest_change(self) -> float:
        return max(abs(self.change(run)) for run in self.runs)

    @property
    def converged(self) -> bool:
        return self.largest_change <= CONVERGENCE_TOLERANCE + 1e-12


def _same_but_length(a: Table, b: Table) -> bool:
    """Whether two tables hold the same experiment but for its number of epochs (and how
    often the learning curve was evaluated)."""

    def shape(t: Table) -> str:
        schedule = {k: v for k, v in t.schedule.items() if k not in _LENGTH_FIELDS}
        return json.dumps(
            [t.dataset, t.data_name, t.model, t.model_options, t.dataset_options, t.eval,
             schedule],
            sort_keys=True,
        )  # fmt: skip

    return shape(a) == shape(b)


def _run_label(row: Row) -> str:
    named = f" [{row.param_set}]" if row.param_set != "default" else ""
    return f"`{row.method}`{named}"


def convergence_check(table: Table, tables: Sequence[Table]) -> ConvergenceCheck | None:
    """The convergence check of ``table`` from the cells of ``tables``: cells of the same
    method, parameters, version and seed, trained with the same settings for other numbers
    of epochs (a pilot, as the ``long-pilot`` preset runs). Where several tables have a
    value for one length, it comes from the first other table in ``tables``' order, the
    table's own cells last: the value at the table's own length is the pilot's that chose
    it. None unless some run has values at the table's epochs and at twice as many."""
    epochs = int(table.schedule["epochs"])
    runs: dict[tuple[str, str, int, int], ConvergenceRun] = {}
    ordered = [t for t in tables if t is not table] + [table]
    for other in ordered:
        if not _same_but_length(table, other):
            continue
        length = int(other.schedule["epochs"])
        for row in other.rows:
            if row.epochs_scale != 1:
                continue
            params = json.dumps(row.params, sort_keys=True)
            for seed, top1 in row.top1_by_seed.items():
                run = runs.setdefault(
                    (row.method, params, row.version, seed), ConvergenceRun(_run_label(row), seed)
                )
                run.top1.setdefault(length, top1)
    checked = [r for r in runs.values() if epochs in r.top1 and 2 * epochs in r.top1]
    if not checked:
        return None
    checked.sort(key=lambda r: (r.label, r.seed))
    return ConvergenceCheck(epochs, checked)


def describe_convergence(check: ConvergenceCheck) -> str:
    """The protocol block's line on the convergence check, every figure in it."""
    runs = []
    for run in check.runs:
        values = ", ".join(f"{e:,}: {100 * v:.2f}" for e, v in sorted(run.top1.items()))
        runs.append(f"{run.label} seed {run.seed} ({values}; {100 * check.change(run):+.2f})")
    limit = 100 * CONVERGENCE_TOLERANCE
    if check.converged:
        verdict = f"every change within {limit:.1f} points: trained to convergence at this size"
    else:
        verdict = (
            f"a change of up to {100 * check.largest_change:.2f} points, more than {limit:.1f}: "
            "not fully converged at this length"
        )
    gaps = []
    e, e2 = check.epochs, 2 * check.epochs
    references = {run.seed: run for run in check.runs if run.label == "`erm`"}
    for run in check.runs:
        ref = references.get(run.seed)
        if ref is None or run is ref:
            continue
        before, after = run.top1[e] - ref.top1[e], run.top1[e2] - ref.top1[e2]
        gaps.append(f"{run.label} seed {run.seed} {100 * before:+.2f} → {100 * after:+.2f}")
    gap_text = (
        f"; the difference to `erm` of the same seed at {e:,} and {e2:,} epochs: " + ", ".join(gaps)
        if gaps
        else ""
    )
    return (
        f"- convergence check: last-epoch top-1 (%) of the same settings trained for other "
        f"numbers of epochs, and the change from {e:,} to {e2:,} "
        f"epochs: {'; '.join(runs)}; {verdict}{gap_text}"
    )


def short_run_warning(table: Table, check: ConvergenceCheck | None = None) -> str | None:
    """A plain sentence when the table's runs are far shorter than the papers' protocol (or,
    on generated data, that its numbers only check the path). With a passed convergence
    ``check`` the runs are called small rather than short: trained to convergence on a
    subset, still not the papers' protocol."""
    notice = path_check_notice(table)
    if notice is not None:
        return notice
    epochs = int(table.schedule["epochs"])
    facts, known = dataset_facts(table), paper_epochs()
    paper = facts.paper_epochs if facts is not None else None
    if paper is None and not known:
        return None
    reference = paper if paper is not None else known[0]
    if epochs >= reference:
        return None
    machines = hardware_of(table)
    on_cpu = bool(machines) and all(not hw.get("gpu") for hw in machines)
    converged = check is not None and check.converged
    kind = ("Small" if converged else "Short") + (" CPU runs" if on_cpu else " runs")
    train = f" on {int(table.data[0]['train_images']):,} training images" if table.data else ""
    if paper is not None:
        papers = f"the papers' protocol for {table.display_dataset} is {paper:,} epochs on GPUs"
    else:
        papers = f"the papers' protocols train for {reference:,} to {known[-1]:,} epochs on GPUs"
    where = " on a CPU" if on_cpu else ""
    if converged:
        return (
            f"**{kind}, not the papers' protocol.** {plural(epochs, 'epoch')}{train}{where}; "
            f"{papers}. Doubling the epochs moved no checked top-1 by more than "
            f"{100 * CONVERGENCE_TOLERANCE:.1f} points (the convergence check below), so "
            "these numbers compare methods trained to convergence at this size; they are "
            "not comparable with published results."
        )
    return (
        f"**{kind}, not the papers' protocol.** {plural(epochs, 'epoch')}{train}{where}; "
        f"{papers}. These numbers compare the methods with each other under one short "
        "protocol; they are not comparable with published results."
    )


def describe_table(table: Table, tables: Sequence[Table] = ()) -> str:
    """The protocol block under a table's heading: all from the stored results (``tables``:
    every table of the leaderboard, where its convergence check is looked for)."""
    return protocol_block(table, convergence_check(table, tables))


def protocol_block(table: Table, check: ConvergenceCheck | None) -> str:
    """The protocol block of ``table`` with its convergence ``check`` already found (see
    :func:`describe_table`)."""
    s = table.schedule
    opts = ", ".join(f"{k}={v}" for k, v in sorted(table.model_options.items()))
    model = f"{table.model} ({opts})" if opts else table.model
    seeds = seeds_of(table)
    schedule = (
        f"{plural(int(s['epochs']), 'epoch')}, batch {s['batch_size']}, SGD lr {s['lr']} "
        f"(momentum {s['momentum']}{', Nesterov' if s['nesterov'] else ''}, "
        f"weight decay {s['weight_decay']}), {s['schedule']} schedule"
    )
    lines = []
    warning = short_run_warning(table, check)
    if warning:
        lines += [warning, ""]
    lines += [
        f"- data set: {describe_data(table)}",
        f"- network: `{model}`",
        f"- schedule: {schedule}",
        f"- seeds: {plural(len(seeds), 'seed')} ({', '.join(str(x) for x in seeds)})",
    ]
    machines = hardware_of(table)
    if machines:
        lines.append(f"- hardware: {'; '.join(describe_hardware(hw) for hw in machines)}")
    if table.versions:
        lines.append(f"- software: {describe_software(table.versions)}")
    if table.hosts:
        lines.append(f"- hosts: {', '.join(table.hosts)}")
    if table.finished:
        first, last = date_text(min(table.finished)), date_text(max(table.finished))
        lines.append(f"- finished: {first}" + (f" to {last}" if last != first else ""))
    if check is not None:
        lines.append(describe_convergence(check))
    return "\n".join(lines)
