"""The method-speed benchmark: the cost of a training step of each method relative to ERM.

MultiMix's point is many loss terms at little cost, so each method's full training step
(forward, loss, backward, SGD step) is timed against ERM's on the same network, batch and
process. Methods are interleaved step by step (round robin, the order rotated every round)
after a warm-up, so that drifts of a shared machine hit all methods alike, and each method's
time is the median over its measured steps.

The branch each method is timed on is its mixing branch: coins that would send a batch to a
cheaper path are forced (``cutmix``, ``saliencymix`` and ``guidedmixup`` ``prob = 1``,
``alignmixup`` ``align_prob = 1``, ``multimix``/``dense_multimix`` ``prob = 1``; ``puzzlemix``,
``comixup``, ``fmix``, ``resizemix``, ``gridmixup`` and ``smoothmix`` mix every batch by
default); with their default coins
the other half of the batches is ERM or input mixup, which costs no more. ``multimix`` and
``dense_multimix`` run with ``n = 1000`` (r = 16 positions at 32x32 on PreActResNet-18), and
also with their ``ce`` parameter set (``multimix [ce]``: the clean cross-entropy added to the
mixed loss). Methods whose optional extras are missing are skipped and named.

Beside the time, each entry reports its measured compute: the network's full forward passes
and BatchNorm statistics updates per step (:class:`mixbench.bench.train.compute.ComputeCounter`):
the method's declared passes (``MixMethod.passes_per_step``: 1; 2 for RegMixup and MixupE,
which add a pass on the clean batch, and for PuzzleMix, Co-Mixup and GuidedMixup's "ap"
variant, whose saliency pass counts), with one BatchNorm update fewer where that pass runs in
eval mode (``MixMethod.bn_updates_per_step``).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mixbench.bench.train.compute import ComputeCounter
from mixbench.methods import (
    check_requirements,
    check_supports,
    get_method,
    get_method_class,
    list_methods,
    requirement_message,
)
from mixbench.models import create_model

__all__ = ["BENCH_PARAMS", "BENCH_SETS", "TARGETS", "bench_entries", "perf_methods"]

#: Parameters under which each method is timed: the mixing branch, always taken.
BENCH_PARAMS: dict[str, dict[str, Any]] = {
    "cutmix": {"prob": 1.0},
    "saliencymix": {"prob": 1.0},
    "alignmixup": {"align_prob": 1.0},
    "multimix": {"prob": 1.0, "n": 1000},
    "dense_multimix": {"prob": 1.0, "n": 1000},
    "guidedmixup": {"prob": 1.0},
}

#: Named parameter sets timed as entries of their own, ``"<method> [<set>]"``.
BENCH_SETS: dict[str, tuple[str, ...]] = {"multimix": ("ce",), "dense_multimix": ("ce",)}

#: The speed goals: a method's step time over ERM's on its mixing branch.
TARGETS: dict[str, float] = {
    "mixup": 1.05,
    "cutmix": 1.05,
    "fmix": 1.05,
    "resizemix": 1.05,
    "gridmixup": 1.05,
    "smoothmix": 1.05,
    "multimix": 1.05,
    "multimix [ce]": 1.05,
    "manifold_mixup": 1.10,
    "alignmixup": 1.10,
    "dense_multimix": 1.15,
    "dense_multimix [ce]": 1.15,
}


def bench_entries(methods: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{label: (method, parameters)}`` of what is timed: each method on its mixing branch,
    and each of its sets in :data:`BENCH_SETS` on the same branch."""
    entries: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in methods:
        branch = BENCH_PARAMS.get(name, {})
        entries[name] = (name, dict(branch))
        for set_name in BENCH_SETS.get(name, ()):
            values = get_method_class(name).param_sets[set_name]
            entries[f"{name} [{set_name}]"] = (name, {**values, **branch})
    return entries


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def perf_methods(
    *,
    device: str = "cpu",
    width: int = 64,
    batch_size: int = 128,
    image_size: int = 32,
    num_classes: int = 10,
    warmup: int = 2,
    steps: int = 5,
    methods: Sequence[str] | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Median training-step time of each method and its ratio to ERM's.

    One PreActResNet-18 (``width``; 64 is the paper's network) and one SGD optimizer (lr
    0.01, momentum 0.9, weight decay 5e-4) are shared by all methods, trained on one fixed
    random batch of ``batch_size`` images of ``image_size`` pixels. After ``warmup`` rounds,
    ``steps`` rounds are timed; a round runs one full training step of every method.

    Args:
        device: where to run ("cpu", "cuda", "cuda:1", ...).
        width: channels of the network's first stage.
        batch_size: images per step.
        image_size: side of the square images.
        num_classes: number of classes.
        warmup: untimed rounds first.
        steps: timed rounds; each method's figure is the median of these.
        methods: method names (default: every registered method whose optional extras are
            installed and that trains the network; the others are named on standard error,
            and a named method that cannot train it is a ``UsageError``); ``erm`` is always
            added.
        progress: print one line per round on standard error.
        threads: torch's intra-op threads during the benchmark (default: left as set).

    Returns:
        ``{label: {"step_ms", "ratio_vs_erm", "min_ms", "ratio_min_vs_erm", "cpu_ms",
        "ratio_cpu_vs_erm", "passes_per_step", "bn_updates_per_step", "params"}}`` (and
        ``"target"``, ``"meets_target"`` where a speed goal is set): the median wall-clock step
        time in ms and its ratio to ERM's median (the headline figures); the fastest step and
        its ratio to ERM's fastest, and the median CPU time of the process per step and its
        ratio (both less sensitive to other processes sharing the CPU); the network passes and
        BatchNorm updates per step; the parameters the method ran with. Labels are method
        names, and ``"<method> [<set>]"`` for the parameter sets of :data:`BENCH_SETS`.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(
            device, width, batch_size, image_size, num_classes, warmup, steps, methods, progress
        )
    finally:
        torch.set_num_threads(saved_threads)


def _run(
    device: str,
    width: int,
    batch_size: int,
    image_size: int,
    num_classes: int,
    warmup: int,
    steps: int,
    methods: Sequence[str] | None,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    dev = torch.device(device)
    if methods is not None:
        names = list(methods)
        for name in names:  # a method named explicitly must have its optional extras
            check_requirements(get_method_class(name))
    else:  # every registered method whose optional extras are installed
        names = []
        for name in list_methods():
            missing = requirement_message(get_method_class(name))
            if missing is None:
                names.append(name)
            else:
                print(f"perf: {name} skipped: {missing}", file=sys.stderr)
    if "erm" not in names:
        names.insert(0, "erm")
    entries = bench_entries(names)
    names = list(entries)
    instances = {label: get_method(method, **params) for label, (method, params) in entries.items()}

    model = create_model("preactresnet18", num_classes, width=width, seed=0).to(dev).train()
    for label in list(names):  # a method that needs another network (TransMix: a ViT)
        reason = instances[label].supports(model)
        if reason is not None:
            if methods is not None and entries[label][0] in methods:
                check_supports(instances[label], model, "preactresnet18")
            print(f"perf: {label} skipped: {reason}", file=sys.stderr)
            names.remove(label)
            del instances[label]
    counter = ComputeCounter(model)
    passes: dict[str, list[float]] = {name: [] for name in names}
    bn_updates: dict[str, list[int]] = {name: [] for name in names}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    data = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=data).to(dev)
    labels = torch.randint(num_classes, (batch_size,), generator=data).to(dev)

    def step(name: str) -> tuple[float, float]:
        counter.reset()
        _sync(dev)
        start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with counter.in_step(images.shape[0]):
            loss = instances[name].loss(model, images, labels)
        loss.backward()
        optimizer.step()
        _sync(dev)
        elapsed = (time.perf_counter() - start) * 1e3, (time.process_time() - start_cpu) * 1e3
        passes[name].append(counter.passes)
        bn_updates[name].append(counter.bn_updates)
        return elapsed

    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + steps):
        shift = round_ % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            elapsed, elapsed_cpu = step(name)
            if round_ >= warmup:
                times[name].append(elapsed)
                cpu[name].append(elapsed_cpu)
        if progress:
            phase = "warm-up" if round_ < warmup else "timed"
            done = {n: round(t[-1]) for n, t in times.items() if t}
            print(
                f"perf methods: round {round_ + 1}/{warmup + steps} ({phase}) {done}",
                file=sys.stderr,
            )

    counter.remove()
    erm_median, erm_min = statistics.median(times["erm"]), min(times["erm"])
    erm_cpu = statistics.median(cpu["erm"])
    norms = sum(isinstance(m, _BatchNorm) for m in model.modules())
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        ratio = statistics.median(times[name]) / erm_median
        out[name] = {
            "step_ms": statistics.median(times[name]),
            "ratio_vs_erm": ratio,
            "min_ms": min(times[name]),
            "ratio_min_vs_erm": min(times[name]) / erm_min,
            "cpu_ms": statistics.median(cpu[name]),
            "ratio_cpu_vs_erm": statistics.median(cpu[name]) / erm_cpu,
            "passes_per_step": statistics.fmean(passes[name]),
            "bn_updates_per_step": statistics.fmean(bn_updates[name]) / norms,
            "params": dict(instances[name].hparams),
        }
        if name in TARGETS:
            out[name].update(target=TARGETS[name], meets_target=ratio <= TARGETS[name])
    return out


if __name__ == "__main__":  # python -m mixbench.bench.perf.methods [threads]
    import json

    count = int(sys.argv[1]) if len(sys.argv) > 1 else None
    print(json.dumps(perf_methods(threads=count), indent=2, default=list))
