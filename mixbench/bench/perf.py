"""``mixbench perf``: every speed benchmark, offline on synthetic data, in one JSON file.

Each benchmark measures ratios within one run (the machines are shared and noisy, so absolute
times are only indicative). Benchmarks register in ``BENCHMARKS``: a name and a function
``(device, steps, warmup) -> dict`` whose result becomes that name's section of the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from mixbench.errors import UsageError
from mixbench.fileio import atomic_write_text


def _methods(device: str, steps: int, warmup: int) -> dict[str, Any]:
    from mixbench.bench.perf_methods import perf_methods

    return perf_methods(device=device, steps=steps, warmup=warmup)


BENCHMARKS: dict[str, Callable[[str, int, int], dict[str, Any]]] = {
    "methods": _methods,
}


def _print_section(name: str, section: dict[str, Any]) -> None:
    print(f"== {name}")
    for key, value in section.items():
        if isinstance(value, dict):
            fields = ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
            )
            print(f"  {key}: {fields}")
        else:
            print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")


def run_perf(args: argparse.Namespace) -> int:
    """Run the selected benchmarks, print them, and write ``--json FILE`` if asked."""
    from mixbench.bench.engine import resolve_device

    device = str(resolve_device(args.device))
    names = args.only or list(BENCHMARKS)
    for name in names:
        if name not in BENCHMARKS:
            raise UsageError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    if args.steps < 1 or args.warmup < 0:
        raise UsageError("--steps must be >= 1 and --warmup >= 0")
    result: dict[str, Any] = {"device": device}
    for name in names:
        print(f"running benchmark {name!r} on {device} ...", file=sys.stderr)
        result[name] = BENCHMARKS[name](device, args.steps, args.warmup)
        _print_section(name, result[name])
    if args.json_path is not None:
        atomic_write_text(args.json_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0
