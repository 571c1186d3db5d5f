"""Harnessing Hard Mixed Samples with Decoupled Regularizer (Decoupled Mixup)
(Liu et al., NeurIPS 2023, arXiv 2203.10761).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods.base import MixMethod, Param
from mixbench.methods.functional import decoupled_mix_loss, mix
from mixbench.methods.mixup import Mixup, mixing_draws
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import DM_MODES


@register_method("decouplemix")
class DecoupleMix(MixMethod):
    """Decoupled Mixup (Liu et al., NeurIPS 2023, arXiv 2203.10761): input mixup with the
    decoupled mixup loss.

    Per mini-batch one ``lam ~ Beta(alpha, alpha)`` and a permutation, ``x_mix = lam * x +
    (1 - lam) * x[perm]``, and for each row with logits ``z`` and labels ``a = y_i``, ``b =
    y_perm[i]`` the loss ``CE(z, lam Y_a + (1 - lam) Y_b) + w_a Dec(z; a, b) + w_b Dec(z; b,
    a)``, where ``Dec(z; a, b) = -z_a + logsumexp_{c != b} z_c`` is the cross-entropy at the
    own class of the softmax that leaves out the other mixed class. Weights ``w_a = eta *
    lam ** power`` and ``w_b = eta * (1 - lam) ** power``; ``mode`` keeps both terms
    (``"both"``), only that of the smaller component (``"less"``) or only that of the larger
    (``"more"``). Rows whose two labels coincide get plain cross-entropy; no decoupled term
    where ``lam = 0.5`` exactly or ``min(lam, 1 - lam) <= 1e-3``. Mean over all rows.

    The same loss is the option ``loss="decoupled"`` of every two-label method, where
    ``eta``, ``mode`` and ``power`` are called ``dm_eta``, ``dm_mode`` and ``dm_power``:
    ``decouplemix`` is ``mixup`` with ``loss="decoupled"``.

    Defaults: ``alpha 1.0, eta 0.1, mode "both", power 1.0``, OpenMixup's base decoupled
    setting (also its ImageNet ResNet-50 one). The ``paper`` set is OpenMixup's CIFAR-100
    ResNet-18 mixup configuration: ``alpha 0.2, eta 0.01, mode "more", power 0.5``.
    ``power`` is OpenMixup's ``lam_idx`` with ``lam_scale_mode = "pow"`` (0: a flat ``eta``).

    Project choices: the mean over all rows (the official loss averages the mixed rows and
    the same-label rows separately and adds the two means); each weight applied to its own
    component (the official loss pairs its two weights with the two mixed classes in the
    order of the first example's class indices, so in about half the batches ``w_a`` goes
    with the ``b`` term, a quirk not reproduced); per-example ``lam`` supported.
    Draw order: ``lam`` (CPU generator), then ``perm``. Cost: one forward and one backward
    pass, as mixup; the loss itself is negligible.
    """

    description = (
        "DecoupleMix: mixup with a decoupled regulariser of hard mixed samples (Liu et al.)"
    )
    paper = "Liu et al., NeurIPS 2023, arXiv:2203.10761"
    params = {
        "alpha": Mixup.params["alpha"],
        "eta": Param(
            0.1,
            float,
            "weight of the decoupled terms",
            minimum=0.0,
            search=("float", 0.001, 1.0, True),
        ),
        "mode": Param(
            "both",
            str,
            "both decoupled terms, or only that of the smaller (less) or larger (more) component",
            choices=DM_MODES,
        ),
        "power": Param(
            1.0,
            float,
            "weights eta * lam ** power (0: flat eta, 1: linear; OpenMixup's lam_idx)",
            minimum=0.0,
        ),
    }
    param_sets = {"paper": {"alpha": 0.2, "eta": 0.01, "mode": "more", "power": 0.5}}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The decoupled mixup loss of one mini-batch."""
        lam, perm = mixing_draws(self, self.alpha, images.shape[0], images.device)
        logits = model(mix(images, lam, perm))
        return decoupled_mix_loss(
            logits, labels, labels[perm], lam, self.eta, self.mode, self.power
        )
