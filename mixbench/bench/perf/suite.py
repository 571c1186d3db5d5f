"""Every speed benchmark in one run, in one JSON file (what ``mixbench perf`` runs).

Each benchmark measures ratios within one run (the machines are shared and noisy, so absolute
times are only indicative). Benchmarks register in ``BENCHMARKS``: a name and a function
``(PerfOptions) -> dict`` whose result becomes that name's section of the JSON:

- ``methods``: each method's training step against ERM's (:mod:`mixbench.bench.perf.methods`);
- ``loader``, ``engine``, ``end_to_end``: the data path (:mod:`mixbench.bench.perf.data`);
- ``adapters``: a torchvision or timm network's step through its adapter against the bare
  network's (:mod:`mixbench.bench.perf.adapters`).

Without ``--data-root`` the loader and end-to-end benchmarks read the ``synthetic`` data set
written as JPEG files into a temporary folder; with it, that image folder.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.errors import UsageError
from mixbench.fileio import atomic_write_text


@dataclass
class PerfOptions:
    """What every benchmark is told: device, sizes, the data and a scratch folder.

    ``quick`` shrinks every benchmark to seconds (to check that it runs, not to measure).
    ``scratch`` is a temporary folder removed after the run; ``shared`` holds what one
    benchmark prepares for another (the JPEG folder).
    """

    device: str
    steps: int = 5
    warmup: int = 2
    data_root: Path | None = None
    quick: bool = False
    methods: list[str] | None = None
    width: int = 64
    scratch: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    shared: dict[str, Any] = field(default_factory=dict)


#: The network width of ``--quick`` runs (seconds, not figures).
QUICK_WIDTH = 4


def _methods(opts: PerfOptions) -> dict[str, Any]:
    from mixbench.bench.perf.methods import perf_methods

    if opts.quick:
        return perf_methods(
            device=opts.device,
            steps=1,
            warmup=0,
            width=QUICK_WIDTH,
            batch_size=8,
            progress=False,
            methods=opts.methods,
        )
    return perf_methods(
        device=opts.device,
        steps=opts.steps,
        warmup=opts.warmup,
        width=opts.width,
        methods=opts.methods,
    )


def image_folder(opts: PerfOptions) -> Path:
    """The image folder of the data benchmarks: ``--data-root``, or the synthetic data set
    written as JPEG files into the scratch folder (once per run)."""
    from mixbench.bench.perf.data import check_image_folder, write_jpeg_folder

    if opts.data_root is not None:
        return check_image_folder(opts.data_root)
    if "folder" not in opts.shared:
        sizes = {"n_train": 512, "n_test": 64} if opts.quick else {}
        print("perf: writing the synthetic images as JPEG files ...", file=sys.stderr)
        opts.shared["folder"] = write_jpeg_folder(opts.scratch / "synthetic-jpeg", **sizes)
    return opts.shared["folder"]


def _loader(opts: PerfOptions) -> dict[str, Any]:
    from mixbench.bench.perf.data import perf_loader

    sizes: dict[str, Any] = {}
    if opts.quick:
        sizes = {"batch_size": 32, "warmup_batches": 1, "min_batches": 2, "min_seconds": 0.0}
    return perf_loader(image_folder(opts), device=opts.device, **sizes)


def _engine(opts: PerfOptions) -> dict[str, Any]:
    from mixbench.bench.perf.data import perf_engine

    if opts.quick:
        sizes = {"rounds": 1, "warmup": 0, "steps_per_epoch": 2, "batch_size": 8}
        sizes["width"] = QUICK_WIDTH
    else:
        sizes = {"rounds": opts.steps, "warmup": opts.warmup}
    return perf_engine(device=opts.device, workdir=opts.scratch, **sizes)


def _end_to_end(opts: PerfOptions) -> dict[str, Any]:
    from mixbench.bench.perf.data import perf_end_to_end

    if opts.quick:
        sizes = {"rounds": 1, "warmup": 0, "steps": 2, "batch_size": 8, "width": QUICK_WIDTH}
    else:
        sizes = {"rounds": opts.steps, "warmup": opts.warmup}
    return perf_end_to_end(image_folder(opts), device=opts.device, **sizes)


def _adapters(opts: PerfOptions) -> dict[str, Any]:
    from mixbench.bench.perf.adapters import perf_adapters

    if opts.quick:
        tiny_vit = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
        backbones = {"tv:resnet18": {}, "timm:vit_tiny_patch16_224": tiny_vit}
        return perf_adapters(
            device=opts.device, batch_size=4, rounds=1, warmup=0, steps=1, backbones=backbones
        )
    return perf_adapters(device=opts.device, rounds=opts.steps, warmup=opts.warmup)


BENCHMARKS: dict[str, Callable[[PerfOptions], dict[str, Any]]] = {
    "methods": _methods,
    "loader": _loader,
    "engine": _engine,
    "end_to_end": _end_to_end,
    "adapters": _adapters,
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


def run_perf(
    *,
    device: str = "auto",
    only: list[str] | None = None,
    methods: list[str] | None = None,
    steps: int = 5,
    warmup: int = 2,
    threads: int | None = None,
    data_root: str | Path | None = None,
    quick: bool = False,
    json_path: Path | None = None,
    width: int = 64,
) -> dict[str, Any]:
    """Run the benchmarks ``only`` names (all by default), print each section and return them
    (also written to ``json_path`` if given).

    ``threads`` sets torch's intra-op threads for the run (restored afterwards); ``quick``
    shrinks every benchmark to seconds; ``methods`` restricts the methods benchmark to those
    methods (ERM always added as the reference); ``width`` is the first-stage width of the
    methods benchmark's PreActResNet-18 (64: the papers' network; 16: the ``short`` and
    ``long`` presets').
    """
    import torch

    from mixbench.bench.train.engine import resolve_device

    device = str(resolve_device(device))
    names = only or list(BENCHMARKS)
    for name in names:
        if name not in BENCHMARKS:
            raise UsageError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    if steps < 1 or warmup < 0:
        raise UsageError("--steps must be >= 1 and --warmup >= 0")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if width < 1:
        raise UsageError(f"--width must be >= 1, got {width}")
    result: dict[str, Any] = {"device": device}
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    result["threads"] = torch.get_num_threads()
    result["width"] = QUICK_WIDTH if quick else width  # the methods benchmark's network
    try:
        with tempfile.TemporaryDirectory(prefix="mixbench-perf-") as scratch:
            opts = PerfOptions(
                device=device,
                steps=steps,
                warmup=warmup,
                data_root=Path(data_root).expanduser() if data_root else None,
                quick=quick,
                methods=list(methods) if methods else None,
                width=width,
                scratch=Path(scratch),
            )
            for name in names:
                print(f"running benchmark {name!r} on {device} ...", file=sys.stderr)
                result[name] = BENCHMARKS[name](opts)
                _print_section(name, result[name])
    finally:
        torch.set_num_threads(saved_threads)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result
