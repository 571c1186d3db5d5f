"""Measured compute: how many network passes a method's training step really makes.

A method's extra cost is part of its result: a method that runs the network twice per step
trains on twice the compute of ERM. :class:`ComputeCounter` counts the backbone's full forward
passes (calls of its ``stem``, the first module every full pass runs; the whole backbone's
forward for a model without one) made by training steps: every pass inside
:meth:`ComputeCounter.in_step` (a saliency pass in eval mode is compute of the step too), and
outside it every pass in training mode; evaluation passes (eval mode, outside a step) are not
counted. A pass is counted in units of the step's batch where the step names it
(``in_step(batch)``): a call on 2b images (RegMixup's clean and mixed halves in one call)
counts as two passes, as it costs two. It also counts the updates of BatchNorm running
statistics (forward calls, in training mode, of BatchNorm layers that track them), per
training step: one per call, whatever its rows. The engine stores the means with each cell
(``passes_per_step``, ``bn_updates_per_step``), ``mixbench perf`` reports them per method,
and the leaderboard shows them beside the cost in time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["ComputeCounter"]


class ComputeCounter:
    """Counts full forward passes and BatchNorm statistics updates of ``backbone`` in training.

    ``steps`` is advanced by the caller (:meth:`step`, once per optimisation step). The
    counts survive a resume through :meth:`state_dict` / :meth:`load_state_dict`. Hooks cost
    one Python call per counted module call and synchronise nothing.
    """

    def __init__(self, backbone: nn.Module) -> None:
        self.passes: float = 0
        self.bn_updates = 0
        self.steps = 0
        self._in_step = False
        self._batch: int | None = None
        # The first module of every pass: a wrapped library network names it (its stem
        # container is not what its own forward calls), a StagedNet's is its stem.
        entry = getattr(backbone, "entry_module", None) or getattr(backbone, "stem", None)
        self._entry = entry if isinstance(entry, nn.Module) else backbone
        self._norms = [
            m for m in backbone.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
        ]
        self._handles = [self._entry.register_forward_pre_hook(self._count_pass)]
        self._handles += [m.register_forward_pre_hook(self._count_norm) for m in self._norms]

    def _count_pass(self, module: nn.Module, args: Any) -> None:
        if module.training or self._in_step:
            rows = _rows(args)
            if self._batch and rows is not None and rows != self._batch:
                self.passes += rows / self._batch
            else:
                self.passes += 1

    def _count_norm(self, module: nn.Module, args: Any) -> None:
        if module.training:
            self.bn_updates += 1

    @contextlib.contextmanager
    def in_step(self, batch: int | None = None) -> Iterator[None]:
        """Inside the block every full forward pass counts, in whatever mode the model is
        (wrap a method's loss computation: its eval-mode passes are training compute).

        ``batch``, the step's number of images, makes a pass count in units of it: a call
        on ``2 * batch`` rows counts 2 (without it, every call counts 1)."""
        previous = self._in_step, self._batch
        self._in_step, self._batch = True, batch
        try:
            yield
        finally:
            self._in_step, self._batch = previous

    def step(self) -> None:
        """One optimisation step has run."""
        self.steps += 1

    def passes_per_step(self) -> float | None:
        """Mean full forward passes per step (1.0 for a method that runs the network once)."""
        return self.passes / self.steps if self.steps else None

    def bn_updates_per_step(self) -> float | None:
        """Mean updates of each BatchNorm layer's running statistics per step (None without
        BatchNorm layers)."""
        if not self.steps or not self._norms:
            return None
        return self.bn_updates / (len(self._norms) * self.steps)

    def reset(self) -> None:
        """Forget the counts."""
        self.passes = self.bn_updates = self.steps = 0

    def remove(self) -> None:
        """Detach the hooks (the counts stay readable)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict[str, float]:
        return {"passes": self.passes, "bn_updates": self.bn_updates, "steps": self.steps}

    def load_state_dict(self, state: dict[str, float]) -> None:
        passes = float(state["passes"])
        self.passes = int(passes) if passes.is_integer() else passes
        self.bn_updates = int(state["bn_updates"])
        self.steps = int(state["steps"])


def _rows(args: Any) -> int | None:
    """The number of rows of a module call's first tensor argument (None without one)."""
    first = args[0] if isinstance(args, tuple) and args else None
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape else None
