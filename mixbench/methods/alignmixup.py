"""AlignMixup: Improving Representations By Interpolating Aligned Features
(Venkataramanan et al., CVPR 2022, arXiv 2103.15375).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods.base import MixMethod, Param, concentration_param
from mixbench.methods.functional import align_mix, alignment_cost, mix, sinkhorn
from mixbench.methods.mixup import mixing_draws, pooling_reason, require_staged
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("alignmixup")
class AlignMixup(MixMethod):
    """AlignMixup (Venkataramanan et al., CVPR 2022, arXiv 2103.15375): mix aligned features.

    Per mini-batch one ``lam ~ Beta(alpha, alpha)`` and a permutation. A coin (alignment with
    probability ``align_prob``) chooses input mixup with that ``lam``, or alignment-mixing of
    the last feature map ``A`` (b, d, r) with ``A2 = A[perm]``: squared Euclidean costs
    between positions, an entropic OT plan by log-domain Sinkhorn (``eps``, ``max_iter``,
    ``tol``; detached), ``R = r * P``, and a second fair coin picks the direction,
    ``lam * A + (1 - lam) * A2 @ R^T`` or ``lam * A @ R + (1 - lam) * A2``. The mix is pooled
    and classified; loss ``lam * CE(out, Y) + (1 - lam) * CE(out, Y[perm])`` (both branches;
    with ``loss="decoupled"`` the decoupled mixup loss).

    Defaults: ``alpha = 2.0``, ``align_prob = 0.5``, ``eps = 0.1`` and ``max_iter = 100``
    follow the paper and its official code as far as they could be read here; the stop rule
    ``tol = 0.1`` (change of the row potential in cost units) is this project's choice. The
    costs, the transport plan and the transported mix are computed in float32 also under
    autocast, as the official code (which has no autocast) computes them. Draw order: the
    alignment coin, ``lam`` (CPU generator), ``perm``, then (alignment only) the direction
    coin (CPU generator).

    Version 2: the transported mix in float32 under autocast (version 1 mixed in the
    autocast dtype). Without autocast (every CPU run) both versions compute the same.

    On a Vision Transformer the feature map is the grid of patch tokens, so the tokens are
    aligned and mixed; the mix is pooled as the ViT pools, which needs a ViT that pools by the
    mean of its patch tokens (``global_pool='avg'``): one that reads its class token cannot
    run the alignment branch and is refused (:meth:`supports`).
    """

    version = 2
    changes = {
        2: "under autocast the transported mix is computed in float32, as the official code "
        "computes it (CPU runs, which have no autocast, are unchanged)"
    }

    description = (
        "AlignMixup: mix feature maps aligned by optimal transport (Venkataramanan et al.)"
    )
    paper = "Venkataramanan et al., CVPR 2022, arXiv:2103.15375"
    params = {
        "alpha": concentration_param(2.0, "Beta(alpha, alpha) concentration of the mixing ratio"),
        "align_prob": Param(
            0.5,
            float,
            "probability of alignment-mixing of features (otherwise input mixup)",
            minimum=0.0,
            maximum=1.0,
            search=("float", 0.0, 1.0, False),
        ),
        "eps": Param(
            0.1,
            float,
            "entropic regularisation of the Sinkhorn solver (cost units)",
            minimum=0.0,
            exclusive_minimum=True,
        ),
        "max_iter": Param(100, int, "most Sinkhorn iterations", minimum=1),
        "tol": Param(
            0.1,
            float,
            "Sinkhorn stops once the row potential changes by less (summed, batch mean)",
            minimum=0.0,
        ),
        **two_label_params(),
    }

    def supports(self, model: nn.Module) -> str | None:
        """Any model whose pool takes a feature map (not a ViT that reads its class token)."""
        return pooling_reason(model) if self.align_prob > 0 else None

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The AlignMixup loss of one mini-batch."""
        cpu = self.generator("cpu")
        align = float(torch.rand((), generator=cpu)) < self.align_prob
        lam, perm = mixing_draws(self, self.alpha, images.shape[0], images.device)
        if not align:
            return two_label_loss(self, model(mix(images, lam, perm)), labels, lam, perm)
        require_staged(model, self.name, "features", "pool", "head")
        align_second = float(torch.rand((), generator=cpu)) < 0.5
        feats = model.features(images)
        b, d, h, w = feats.shape
        a = feats.reshape(b, d, h * w)
        a2 = a[perm]
        plan = sinkhorn(alignment_cost(a, a2), self.eps, self.max_iter, self.tol)
        mixed = align_mix(a, a2, plan, lam, align_second)
        logits = model.head(model.pool(mixed.reshape(b, d, h, w)))
        return two_label_loss(self, logits, labels, lam, perm)
