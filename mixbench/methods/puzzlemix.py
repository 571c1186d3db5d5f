"""Puzzle Mix: Exploiting Saliency and Local Statistics for Optimal Mixup
(Kim, Choo and Song, ICML 2020, arXiv 2009.06962).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mixbench.errors import UsageError
from mixbench.methods.base import MixMethod, Param, concentration_param, probability_param
from mixbench.methods.functional import cross_entropy, puzzlemix, sample_beta
from mixbench.methods.gradients import clean_term, saliency_pass
from mixbench.methods.registry import register_method
from mixbench.methods.two_label import two_label_loss, two_label_params


@register_method("puzzlemix")
class PuzzleMix(MixMethod):
    """Puzzle Mix (Kim, Choo and Song, ICML 2020, arXiv 2009.06962): saliency-optimal masks.

    With probability ``prob`` (default 1.0: the official code mixes every batch) a
    mini-batch is mixed. The input-gradient saliency of the clean batch (one forward and one
    backward pass; in eval mode and to the input only when ``clean_lam = 0``, so no weight
    gradient and no batch-norm update leaks) is pooled on an n x n block grid, n drawn
    uniformly from ``block_nums``, and each image gets a mask with values in {0, 1/2, 1}
    (``n_labels = 3``) from a graph cut that keeps the salient blocks of both images, keeps the
    seams smooth in pixel space (``beta``, ``gamma``, ``neigh_size``) and stays close to
    ``lam ~ Beta(alpha, alpha)`` (``eta``). With ``transport`` each image's salient blocks
    are moved to where the mask shows it (``t_eps``, at ``t_size``-pixel blocks, -1 for the
    block side). The label weight of each example is its mask's mean. ``loss="ce"``
    (default) is the soft-target cross-entropy, ``loss="bce"`` (the ``paper`` set) the
    official code's binary cross-entropy on the softmax outputs, ``loss="decoupled"`` the
    decoupled mixup loss with the per-example weights; ``clean_lam > 0`` adds the clean loss
    (the saliency pass then runs in train mode): ``2 * clean_lam / c * CE`` under "bce",
    ``clean_lam * CE`` under "ce" and "decoupled".

    The boundary terms read pixel values ``x * std + mean`` from the data set's statistics
    (:meth:`bind_data`); unbound, mean 0 and std 1. Project choices: "ce" by default, so
    that every method of mixbench's own protocols trains on one loss; where a block side is
    not a multiple of ``neigh_size`` (224-pixel images at n = 16), the pixel pooling uses the
    largest divisor of the block side not above it. The masks follow the official code's
    arithmetic, including its int32 truncation of the graph energies; the energies are
    computed in float64 where the official code, under NumPy 1, kept float32, so an energy can
    land one unit away from its value after truncation (12 of 204,000 in a check on random
    saliency maps) and a mask can then differ. Draw order: the coin (only when
    ``prob < 1``), the block count, ``lam`` (CPU generator), then ``perm``.

    Cost: two forward and two backward passes (one backward to the input only when
    ``clean_lam = 0``), b graph cuts on the CPU (at most 256 nodes and 3 labels each;
    ``workers`` processes share them, without changing a result), the block transport on the
    device. Needs the optional extra ``mixbench[graphcut]``.
    """

    description = "PuzzleMix: saliency-guided graph-cut masks with block transport (Kim et al.)"
    paper = "Kim, Choo and Song, ICML 2020, arXiv:2009.06962"
    requires = ("graphcut",)
    forward_passes = 2
    params = {
        "alpha": concentration_param(
            1.0, "Beta(alpha, alpha) concentration of the mixing prior's ratio"
        ),
        "prob": probability_param(
            1.0, "probability that a mini-batch is mixed (otherwise plain ERM)"
        ),
        "block_nums": Param(
            (2, 4, 8, 16),
            tuple,
            "block-grid sides n to draw from uniformly (each must divide the image side)",
        ),
        "beta": Param(
            1.2,
            float,
            "label smoothness: weight of the mask's boundary length",
            minimum=0.0,
            search=("float", 0.0, 2.0, False),
        ),
        "gamma": Param(
            0.5,
            float,
            "data smoothness: weight of the pixel discontinuities across the seams",
            minimum=0.0,
            search=("float", 0.0, 2.0, False),
        ),
        "eta": Param(
            0.2,
            float,
            "weight of the prior that keeps the mask's mixing ratio near lam",
            minimum=0.0,
            search=("float", 0.0, 1.0, False),
        ),
        "neigh_size": Param(4, int, "pixel pooling side of the data smoothness term", minimum=1),
        "n_labels": Param(3, int, "mask levels: 3 gives values {0, 1/2, 1}", choices=(2, 3, 4)),
        "transport": Param(True, bool, "move each image's salient blocks to where it is shown"),
        "t_eps": Param(
            0.8,
            float,
            "transport's weight of the distance moved against the saliency kept",
            minimum=0.0,
            search=("float", 0.1, 2.0, True),
        ),
        "t_size": Param(
            4,
            int,
            "side in pixels of the transported blocks (-1: the mask's block side)",
            minimum=-1,
        ),
        "clean_lam": Param(
            0.0,
            float,
            "weight of the clean-batch loss added to the mixed loss (0: none)",
            minimum=0.0,
        ),
        # "loss" is in the key of the cells stored before the decoupled option: keyed.
        **two_label_params("bce", keyed=True),
        "workers": Param(
            0,
            int,
            "processes for the graph cuts (0: in-process); never changes a result",
            minimum=0,
        ),
    }
    param_sets = {"paper": {**{k: p.default for k, p in params.items()}, "loss": "bce"}}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not self.block_nums or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in self.block_nums
        ):
            raise UsageError(
                f"parameter 'block_nums' must be a non-empty list of grid sides >= 2, "
                f"got {self.block_nums!r}"
            )
        if self.t_size == 0:
            raise UsageError("parameter 't_size' must be a block side >= 1, or -1 for the mask's")
        self.mean: tuple[float, ...] | float = 0.0
        self.std: tuple[float, ...] | float = 1.0

    def bn_updates_per_step(self) -> int:
        """Both passes in train mode, except the saliency pass in eval mode when
        ``clean_lam = 0``."""
        return self.passes_per_step() - (1 if self.clean_lam == 0 else 0)

    def bind_data(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Keep the data set's per-channel statistics for the pixel term ``x * std + mean``."""
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The PuzzleMix loss of one mini-batch (an ERM loss when the coin says so)."""
        cpu = self.generator("cpu")
        if self.prob < 1 and float(torch.rand((), generator=cpu)) >= self.prob:
            return cross_entropy(model(images), labels)
        height, width = int(images.shape[-2]), int(images.shape[-1])
        block_num = self.block_nums[int(torch.randint(len(self.block_nums), (1,), generator=cpu))]
        if height != width or width % block_num:
            raise UsageError(
                f"puzzlemix: a {block_num} x {block_num} block grid does not tile "
                f"{height} x {width} images; use square images and --param "
                f"puzzlemix.block_nums with sides that divide {width}"
            )
        lam = float(sample_beta(self.alpha, cpu))
        perm = torch.randperm(
            images.shape[0], generator=self.generator(images.device), device=images.device
        )
        saliency, clean = saliency_pass(model, images, labels, keep_clean_loss=self.clean_lam > 0)
        mixed, ratio = puzzlemix(
            images.detach(),
            saliency,
            perm,
            lam,
            block_num,
            self.mean,
            self.std,
            beta=self.beta,
            gamma=self.gamma,
            eta=self.eta,
            neigh_size=self.neigh_size,
            n_labels=self.n_labels,
            transport=self.transport,
            t_eps=self.t_eps,
            t_size=self.t_size,
            workers=self.workers,
        )
        logits = model(mixed)
        loss = two_label_loss(self, logits, labels, ratio, perm)
        if clean is not None:
            loss = loss + clean_term(clean, self.clean_lam, self.loss_kind, logits.shape[-1])
        return loss
