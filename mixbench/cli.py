"""The ``mixbench`` command line: run a matrix, write the leaderboard, list what is registered.

The subcommands live in :mod:`mixbench.commands`, one module each; the parser is built from
its table. Bad input (unknown names, malformed options, missing data) ends with a one-line
message on standard error and exit status 2, without a traceback and without writing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from mixbench.errors import UsageError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _plugin_parser() -> argparse.ArgumentParser:
    """The ``--plugin`` option that every subcommand takes (``mixbench run --plugin M ...``)."""
    from mixbench.plugins import PLUGINS_ENV

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (a module name or a .py file) first: methods, models or data sets "
        f"it registers become available; repeatable; also ${PLUGINS_ENV} (comma-separated)",
    )
    return common


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand, built from :data:`mixbench.commands.COMMANDS`."""
    import importlib

    from mixbench import __version__
    from mixbench.commands import COMMANDS

    common = _plugin_parser()
    parser = _Parser(prog="mixbench", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"mixbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        module = importlib.import_module(command.module_name)
        p = sub.add_parser(command.name, parents=[common], help=command.help)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def _load_plugins(args: argparse.Namespace) -> None:
    """Import the ``--plugin`` modules, and name them in the environment for child processes."""
    from mixbench.plugins import export_plugins, load_environment_plugins, load_plugins

    load_environment_plugins()
    load_plugins(args.plugin)
    export_plugins(args.plugin)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mixbench`` console script; returns the exit status.

    SIGTERM is handled like Ctrl-C: the running cell is marked interrupted and keeps its last
    checkpoint, and the same command resumes it.
    """
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args = make_parser().parse_args(argv)
        _load_plugins(args)
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader went away (`mixbench status --json | head`): not an error of ours. Point
        # standard output at /dev/null so that Python's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except UsageError as exc:
        for line in str(exc).splitlines() or [""]:  # one line per problem (e.g. bad records)
            print(f"mixbench: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mixbench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
