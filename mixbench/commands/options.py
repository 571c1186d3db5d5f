"""Option types and the options that several subcommands share (matrix selection, ``--db``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mixbench.bench.run import DB_ENV
from mixbench.errors import UsageError

__all__ = [
    "DB_ENV",
    "add_db_argument",
    "add_matrix_arguments",
    "csv_list",
    "out_dir",
    "seed_list",
    "store_url",
]


def csv_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; an empty list is a :class:`UsageError`."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"expected a comma-separated list, got {text!r}")
    return items


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, got {text!r}") from None


def add_db_argument(p: argparse.ArgumentParser) -> None:
    """``--db URL``, by default from the environment."""
    p.add_argument(
        "--db",
        default=os.environ.get(DB_ENV),
        help=f"results database URL (default: ${DB_ENV}, else sqlite:///OUT/results.db); "
        "prefer the environment variable for URLs with passwords",
    )


def add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    """The options that select and override a matrix (shared by run, worker and tune)."""
    p.add_argument("--preset", default="smoke", help="preset name or TOML file (default: smoke)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<preset>)")
    add_db_argument(p)
    p.add_argument("--methods", type=csv_list, help="comma-separated method names (or patterns)")
    p.add_argument("--datasets", type=csv_list, help="comma-separated data set names")
    p.add_argument("--models", type=csv_list, help="comma-separated model names")
    p.add_argument("--seeds", type=seed_list, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--epochs", type=int, help="number of training epochs")
    p.add_argument("--data-root", help="folder holding the data set's files")
    p.add_argument("--download", action="store_true", help="download data sets that support it")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="method parameter override, repeatable, e.g. mixup.alpha=0.4",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="preset override, repeatable, e.g. schedule.lr=0.05 or runtime.channels_last=true",
    )
    p.add_argument(
        "--param-set",
        default=None,
        help="named parameter set of every method: default (the methods' defaults), a set the "
        "methods declare (paper; ce for MultiMix and Dense MultiMix; see `mixbench methods "
        "--json`; methods without it run their defaults), or best (the best trial of each "
        "method's `mixbench tune` study)",
    )
    p.add_argument(
        "--tuning-storage",
        metavar="URL",
        help="optuna storage of --param-set best (default: sqlite:///OUT/tuning.db)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def out_dir(args: argparse.Namespace) -> Path:
    """``--out``, by default ``runs/<preset>``."""
    return args.out if args.out is not None else Path("runs") / Path(args.preset).stem


def store_url(args: argparse.Namespace) -> str:
    """The results database of ``--db`` or of the run folder ``--out`` (which must hold one)."""
    from mixbench.bench.run.matrix import default_db_url

    if args.db:
        return args.db
    if not (args.out / "results.db").is_file():
        raise UsageError(
            f"no results database in {args.out}: run `mixbench run --out {args.out}` first "
            "or pass --db URL"
        )
    return default_db_url(args.out)
