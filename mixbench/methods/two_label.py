"""The loss of a two-label method, shared: soft-target cross-entropy, BCE or decoupled.

A *two-label* method trains on targets ``lam_i * Y + (1 - lam_i) * Y[perm]`` (``lam`` one
float per batch or a (b,) tensor of per-example weights). Such a method adds the loss option
in two lines: its ``params`` take ``**two_label_params()`` and its loss ends with
``two_label_loss(self, logits, labels, lam, perm)``::

    params = {"alpha": Param(...), **two_label_params()}

    def loss(self, model, images, labels):
        lam, perm = mixing_draws(self, self.alpha, images.shape[0], images.device)
        logits = model(mix(images, lam, perm))
        return two_label_loss(self, logits, labels, lam, perm)

The choices of ``loss`` are ``"ce"`` (the default, soft-target cross-entropy: every method of
mixbench's own protocols trains on it), the method's own extras (``"bce"``, passed as
``two_label_params("bce")``: the official codes' binary cross-entropy on the softmax outputs)
and ``"decoupled"``: :func:`~mixbench.methods.functional.decoupled_mix_loss` with
``dm_eta`` (0.1), ``dm_mode`` (``"both"``, ``"less"`` or ``"more"``) and ``dm_power`` (1.0),
OpenMixup's base decoupled setting. The base class keeps the resolved ``loss`` as the
attribute ``loss_kind``.

Keys: the ``dm_*`` parameters are declared ``key_default`` (left out of a cell's key while
at their defaults), and so is ``loss`` itself for a method that had no ``loss`` parameter
before (``keyed=False``, the default), so that adding the option keeps every stored cell's
key; a method whose ``loss`` parameter predates the option passes ``keyed=True``.
"""

from __future__ import annotations

import torch

from mixbench.methods.base import MixMethod, Param
from mixbench.methods.functional import (
    decoupled_mix_loss,
    mix,
    mixed_cross_entropy,
    one_hot,
    soft_binary_cross_entropy,
)

__all__ = ["DM_MODES", "two_label_loss", "two_label_params"]

#: The modes of the decoupled term: both components, the smaller one, the larger one.
DM_MODES = ("both", "less", "more")

_LOSS_HELP = {
    "ce": "soft-target cross-entropy",
    "bce": "the official code's BCE on softmax outputs",
    "decoupled": "decoupled mixup (dm_eta, dm_mode, dm_power)",
}


def two_label_params(*extra: str, keyed: bool = False) -> dict[str, Param]:
    """The declarations of a two-label method's loss: ``loss`` with the choices ``"ce"``
    (default), ``extra`` (e.g. ``"bce"``) and ``"decoupled"``, then ``dm_eta``, ``dm_mode``
    and ``dm_power``. ``keyed=True`` keeps ``loss`` in every cell's key (a method whose
    ``loss`` parameter predates the decoupled option, so its stored cells hold it)."""
    choices = ("ce", *extra, "decoupled")
    return {
        "loss": Param(
            "ce",
            str,
            ", or ".join(_LOSS_HELP.get(c, c) for c in choices),
            choices=choices,
            key_default=not keyed,
        ),
        "dm_eta": Param(
            0.1,
            float,
            "loss='decoupled': weight eta of the decoupled terms",
            minimum=0.0,
            key_default=True,
        ),
        "dm_mode": Param(
            "both",
            str,
            "loss='decoupled': both terms, or only that of the smaller (less) or larger (more) "
            "component",
            choices=DM_MODES,
            key_default=True,
        ),
        "dm_power": Param(
            1.0,
            float,
            "loss='decoupled': weights eta * lam ** power (0: flat eta, 1: linear)",
            minimum=0.0,
            key_default=True,
        ),
    }


def two_label_loss(
    method: MixMethod,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float | torch.Tensor,
    perm: torch.Tensor,
) -> torch.Tensor:
    """The loss of mixed ``logits`` (b, c) against ``lam * Y + (1 - lam) * Y[perm]`` under
    the method's resolved ``loss`` (its ``loss_kind``; ``"ce"`` for a method without one):

    - ``"ce"``: :func:`~mixbench.methods.functional.mixed_cross_entropy`;
    - ``"bce"``: :func:`~mixbench.methods.functional.soft_binary_cross_entropy` against the
      mixed one-hot targets (mean over all b * c entries);
    - ``"decoupled"``: :func:`~mixbench.methods.functional.decoupled_mix_loss` with labels
      ``Y`` and ``Y[perm]`` and the method's ``dm_eta``, ``dm_mode`` and ``dm_power``.

    ``lam`` is one float for the batch or a (b,) tensor of per-example weights.
    """
    kind = getattr(method, "loss_kind", "ce")
    if kind == "ce":
        return mixed_cross_entropy(logits, labels, lam, perm)
    if kind == "decoupled":
        return decoupled_mix_loss(
            logits,
            labels,
            labels[perm],
            lam,
            method.dm_eta,
            method.dm_mode,
            method.dm_power,
        )
    if kind == "bce":
        targets = one_hot(labels, logits.shape[-1])
        if isinstance(lam, torch.Tensor) and lam.dim() > 0:
            weight = lam.to(device=targets.device, dtype=targets.dtype).unsqueeze(1)
            mixed = weight * targets + (1 - weight) * targets[perm]
        else:
            mixed = mix(targets, lam, perm)
        return soft_binary_cross_entropy(logits, mixed)
    raise ValueError(f"unknown two-label loss {kind!r}")
