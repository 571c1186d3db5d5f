"""Dense MultiMix, from "Embedding Space Interpolation Beyond Mini-Batch, Beyond Pairs and
Beyond Examples" (Venkataramanan et al., NeurIPS 2023, arXiv 2311.05538).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods.base import Param
from mixbench.methods.functional import (
    dense_attention,
    dense_multimix,
    one_hot,
    soft_cross_entropy,
)
from mixbench.methods.mixup import num_classes_of
from mixbench.methods.multimix import (
    MULTIMIX_CE_SET,
    MULTIMIX_PAPER_SET,
    MULTIMIX_PARAMS,
    MultiMixBase,
)
from mixbench.methods.registry import register_method


@register_method("dense_multimix")
class DenseMultiMix(MultiMixBase):
    """Dense MultiMix (Venkataramanan et al., NeurIPS 2023, arXiv 2311.05538): mix positions.

    On a Dense MultiMix batch the network runs once to the last feature map ``F`` (b, d, r);
    every position inherits its example's label. For each of ``n`` generated examples and
    each position ``j``, ``lam[k, j] ~ Dirichlet(alpha * ones(m))``, weighted by the
    attention ``a`` (b, r) and renormalised over the examples; the weighted sums of the
    positions' features and labels are classified by the linear head at every position, and
    the cross-entropy is averaged over all n * r terms.

    ``attention``: ``"similarity"`` (default, the paper's: the l1-normalised, rectified
    similarity of each position to the example's pooled embedding, detached), ``"softmax"``
    (softmax over positions of those similarities over ``sqrt(d)``, this project's variant)
    or ``"none"`` (uniform, an ablation). The other parameters are MultiMix's
    (:class:`mixbench.methods.multimix.MultiMix`), with the same caveats: the paper's n,
    alpha, prob and fallback could not be confirmed against its code. Every default is the
    paper's (the ``paper`` set; ``clean_weight = 0``, mixed examples only); the ``ce`` set
    adds the clean cross-entropy to Dense MultiMix batches, from their one forward pass. With
    ``m`` < b every generated example and position draws its own m examples.
    Draw order: the coin (CPU generator); then the Dirichlet weights on the device (with
    ``m`` < b, the subsets' uniform keys first), or the fallback's ``lam`` and ``perm``.

    Version 2: as MultiMix's (paper default ``clean_weight = 0``, no second pass on fallback
    batches, subsets per generated example and position).

    On a Vision Transformer the positions are the patch tokens (the class token left out):
    tokens are interpolated with their attention, the MultiMix paper's reading for sequence
    data. Only the clean term pools the map, so on a ViT that reads its class token the
    variants with ``clean_weight > 0`` are refused (:meth:`supports`).
    """

    pools_features = False

    description = (
        "Dense MultiMix: attention-weighted mixing of feature-map positions (Venkataramanan et al.)"
    )
    paper = "Venkataramanan et al., NeurIPS 2023, arXiv:2311.05538"
    version = 2
    changes = {
        2: "the paper's clean_weight = 0 (mixed examples only) is the default (1.0 before), the "
        "clean term no longer runs a second pass on fallback batches, and with m < b every "
        "generated example and position draws its own m examples (one subset per batch before)"
    }
    params = {
        **MULTIMIX_PARAMS,
        "attention": Param(
            "similarity",
            str,
            "per-position confidence: similarity to the pooled embedding, its softmax, or none",
            choices=("similarity", "softmax", "none"),
        ),
    }
    param_sets = {
        "paper": {**MULTIMIX_PAPER_SET, "attention": "similarity"},
        "ce": {**MULTIMIX_CE_SET, "attention": "similarity"},
    }

    def mixed_loss(
        self, model: nn.Module, feats: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """The dense loss over the n * r generated position embeddings."""
        b, d, h, w = feats.shape
        features = feats.reshape(b, d, h * w)
        attention = dense_attention(features, self.attention)
        targets = one_hot(labels, num_classes_of(model))
        gen = self.generator(features.device)
        z_mix, targets_mix = dense_multimix(
            features, targets, attention, self.n, self.alpha, gen, m=self.subset_size(b)
        )
        # (r, n, ...) is the contiguous layout; the mean over all n * r terms ignores order.
        logits = model.head(z_mix.transpose(0, 1))
        return soft_cross_entropy(logits, targets_mix.transpose(0, 1))
