"""Dense MultiMix, from "Embedding Space Interpolation Beyond Mini-Batch, Beyond Pairs and
Beyond Examples" (Venkataramanan et al., NeurIPS 2023, arXiv 2311.05538).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods import register_method
from mixbench.methods.base import Param
from mixbench.methods.functional import (
    dense_attention,
    dense_multimix,
    one_hot,
    soft_cross_entropy,
)
from mixbench.methods.mixup import num_classes_of
from mixbench.methods.multimix import (
    MULTIMIX_PAPER_SET,
    MULTIMIX_PARAMS,
    MultiMixBase,
    with_defaults,
)

#: Dense MultiMix's defaults that differ from the paper's, chosen from its own cells of the
#: ``sweep-multimix`` preset (``docs/multimix-sweep.md``): a clean cross-entropy term.
DENSE_MULTIMIX_CHOSEN_DEFAULTS: dict[str, object] = {"clean_weight": 1.0}


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
    alpha, prob and fallback could not be confirmed here. Every default is the paper's (the
    ``paper`` set) except ``clean_weight = 1.0``, chosen from evidence: the ``sweep-multimix``
    preset (CIFAR-10, PreActResNet-18 width 16, 30 epochs, CPU; ``docs/multimix-sweep.md``)
    gave 78.6 ± 0.3 % top-1 over 3 seeds with it against 70.2 % with the paper's settings.
    Draw order: the coin (CPU generator); then the subset permutation (only when m < b) and
    the Dirichlet weights on the device, or the fallback's ``lam`` and ``perm``.
    """

    description = (
        "Dense MultiMix: attention-weighted mixing of feature-map positions (Venkataramanan et al.)"
    )
    paper = "Venkataramanan et al., NeurIPS 2023, arXiv:2311.05538"
    params = {
        **with_defaults(MULTIMIX_PARAMS, DENSE_MULTIMIX_CHOSEN_DEFAULTS),
        "attention": Param(
            "similarity",
            str,
            "per-position confidence: similarity to the pooled embedding, its softmax, or none",
            choices=("similarity", "softmax", "none"),
        ),
    }
    param_sets = {"paper": {**MULTIMIX_PAPER_SET, "attention": "similarity"}}

    def mixed_loss(
        self, model: nn.Module, feats: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """The dense loss over the n * r generated position embeddings."""
        b, d, h, w = feats.shape
        features = feats.reshape(b, d, h * w)
        attention = dense_attention(features, self.attention)
        targets = one_hot(labels, num_classes_of(model))
        device = features.device
        m = self.subset_size(b)
        if m < b:
            keep = torch.randperm(b, generator=self.generator(device), device=device)[:m]
            features, attention, targets = features[keep], attention[keep], targets[keep]
        gen = self.generator(device)
        z_mix, targets_mix = dense_multimix(features, targets, attention, self.n, self.alpha, gen)
        # (r, n, ...) is the contiguous layout; the mean over all n * r terms ignores order.
        logits = model.head(z_mix.transpose(0, 1))
        return soft_cross_entropy(logits, targets_mix.transpose(0, 1))
