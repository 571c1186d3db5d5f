"""TransMix: Attend to Mix for Vision Transformers (Chen et al., CVPR 2022, arXiv 2111.09833)."""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods.base import (
    MixMethod,
    Param,
    check_supports,
    concentration_param,
    probability_param,
)
from mixbench.methods.functional import (
    box_patch_mask,
    cross_entropy,
    cutmix_box,
    paste_box,
    sample_beta,
    transmix_lambda,
)
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("transmix")
class TransMix(MixMethod):
    """TransMix (Chen et al., CVPR 2022, arXiv 2111.09833): CutMix labelled by attention.

    Vision Transformers only. With probability ``prob`` a mini-batch gets CutMix's input
    mixing (``lam ~ Beta(alpha, alpha)`` sizes the box, pasted from ``x[perm]``; otherwise an
    ERM batch). The mixed batch runs once through the ViT, which also returns the class
    token's attention to the patch tokens in its last block, averaged over heads
    (``forward_with_attention``, :class:`mixbench.models.ViTNet`). The box is down-sampled to
    the patch grid (nearest, :func:`~mixbench.methods.functional.box_patch_mask`) and
    :func:`~mixbench.methods.functional.transmix_lambda` gives each example the attention's
    share on its own patches, ``lam_attn`` (b,). As in the official code (Beckschen/TransMix),
    the label weight averages it with the area weight: ``lam = area_weight * lam_area + (1 -
    area_weight) * lam_attn`` with ``area_weight = 0.5`` (the code's fixed ``ratio``; 0 is
    the paper's equation alone). Loss ``lam_i * CE(f(x_mix)_i, Y_i) + (1 - lam_i) *
    CE(f(x_mix)_i, Y[perm]_i)``, or the decoupled loss with ``loss="decoupled"``.

    Project choices: CutMix only (the paper's DeiT recipe switches between Mixup and CutMix
    with probability 0.5, and TransMix re-weights only the CutMix batches); the box is
    CutMix's ``rand_bbox`` as in :class:`~mixbench.methods.cutmix.CutMix`, and the partner a
    random permutation (the official code pairs each image with the flipped batch); the
    attention is detached (labels get no gradient). Defaults ``alpha = 1.0`` and ``prob =
    1.0`` (the code's CutMix alpha; every batch mixed). Draw order: the coin, ``lam``, the box
    centre (CPU generator), then ``perm``.

    On a model without a class token's attention (a CNN, or a ViT without a class token) it
    refuses with a one-line error (:meth:`supports`).
    """

    description = "TransMix: CutMix with labels from the ViT's class-token attention (Chen et al.)"
    paper = "Chen et al., CVPR 2022, arXiv:2111.09833"
    params = {
        "alpha": concentration_param(
            1.0, "Beta(alpha, alpha) concentration of the box's area ratio"
        ),
        "prob": probability_param(
            1.0, "probability that a mini-batch is mixed (otherwise plain ERM)", searched=False
        ),
        "area_weight": Param(
            0.5,
            float,
            "weight of the area ratio in the label weight (official code 0.5; 0: attention only)",
            minimum=0.0,
            maximum=1.0,
        ),
        **two_label_params(),
    }

    def supports(self, model: nn.Module) -> str | None:
        """A Vision Transformer with a class token (``forward_with_attention``)."""
        if not hasattr(model, "forward_with_attention"):
            return (
                "TransMix needs a Vision Transformer with a class token (its labels come from "
                "the class token's attention), e.g. timm:vit_tiny_patch16_224"
            )
        if getattr(getattr(model, "net", None), "cls_token", True) is None:
            return "TransMix needs a class token, and this Vision Transformer has none"
        return None

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The TransMix loss of one mini-batch (an ERM loss when the coin says so)."""
        check_supports(self, model)
        cpu = self.generator("cpu")
        if float(torch.rand((), generator=cpu)) >= self.prob:
            return cross_entropy(model(images), labels)
        lam_area = float(sample_beta(self.alpha, cpu))
        height, width = images.shape[-2], images.shape[-1]
        box, lam_area = cutmix_box(height, width, lam_area, cpu)
        perm = torch.randperm(
            images.shape[0], generator=self.generator(images.device), device=images.device
        )
        logits, attention = model.forward_with_attention(paste_box(images, box, perm))
        mask = box_patch_mask(box, height, width, model.token_grid_size(attention.shape[1]))
        lam_attn = transmix_lambda(attention, mask)
        lam = self.area_weight * lam_area + (1.0 - self.area_weight) * lam_attn
        return two_label_loss(self, logits, labels, lam, perm)
