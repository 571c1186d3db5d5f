"""The ``mixbench`` subcommands: one module each, and the table the parser is built from.

Every subcommand module has ``add_arguments(parser)`` and ``run(args) -> exit status``; it
imports what its work needs inside ``run``, so that building the parser (and ``--help``) stays
fast. :mod:`~mixbench.commands.options` holds the options several commands share and
:mod:`~mixbench.commands.matrices` turns them into matrices and cells.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One subcommand: its name on the command line, its one-line help, and its module here
    (by default the name with ``_`` for ``-``)."""

    name: str
    help: str
    module: str = ""

    @property
    def module_name(self) -> str:
        """The dotted name of the subcommand's module."""
        return f"mixbench.commands.{self.module or self.name.replace('-', '_')}"


COMMANDS: tuple[Command, ...] = (
    Command("run", "run a benchmark matrix, then write the leaderboard"),
    Command("leaderboard", "write DIR/LEADERBOARD.md and DIR/plots/"),
    Command("sweep-table", "write one preset's cells as a parameter-sweep page (Markdown)"),
    Command("worker", "claim and run cells of a shared database"),
    Command("status", "every cell of a results database"),
    Command("export", "finished cells as JSON Lines"),
    Command("import", "load exported cells into a results database", "import_"),
    Command("methods", "list the registered methods"),
    Command("evaluators", "list the registered evaluators"),
    Command("models", "list the registered models; how to name torchvision and timm ones"),
    Command("datasets", "list the registered data sets and what is known about each"),
    Command("presets", "list the registered presets"),
    Command("tune", "optuna search over a method's declared search space"),
    Command("evaluate", "run every evaluator on a saved checkpoint"),
    Command("verify", "run finished cells again: do they reproduce bit for bit; re-measure cost"),
    Command("show", "draw what a method does to one batch"),
    Command("perf", "speed benchmarks (ratios measured in one run)"),
)

__all__ = ["COMMANDS", "Command"]
