"""``mixbench datasets``: the registered datasets, one name per line."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options of its own."""


def run(args: argparse.Namespace) -> int:
    """Print the names."""
    from mixbench.datasets import list_datasets as names

    print("\n".join(names()))
    return 0
