"""Co-Mixup: Saliency Guided Joint Mixup with Supermodular Diversity
(Kim, Choo, Jeong and Song, ICLR 2021, arXiv 2102.03065).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mixbench.errors import UsageError
from mixbench.methods.base import MixMethod, Param, concentration_param, probability_param
from mixbench.methods.extras import require_extra
from mixbench.methods.functional import (
    _comixup_draws,
    _comixup_solve,
    block_saliency,
    comixup_compatibility,
    comixup_mix,
    cross_entropy,
    one_hot,
    soft_binary_cross_entropy,
    soft_cross_entropy,
)
from mixbench.methods.gradients import clean_term, saliency_pass
from mixbench.methods.graphcut import process_pool
from mixbench.methods.registry import register_method


@register_method("comixup")
class CoMixup(MixMethod):
    """Co-Mixup (Kim, Choo, Jeong and Song, ICLR 2021, arXiv 2102.03065): many-to-many mixing.

    With probability ``prob`` (default 1.0) a mini-batch is mixed, otherwise it is an ERM
    batch. The input-gradient saliency of the clean batch (a train-mode pass whose clean
    cross-entropy is kept when ``clean_lam > 0``; an eval-mode pass taking only the input
    gradient when ``clean_lam = 0``) gives each example's most salient place (8 x 8 window
    average) and the (b, b) L1 distances between them. The batch is cut into consecutive
    chunks of ``part`` examples (the last may be shorter). In each chunk of m examples, m
    outputs are built jointly on a ``block_num`` x ``block_num`` grid of blocks, each block a
    whole input block or half of one and half of another: graph cuts (GCO's alpha-beta swap)
    minimise minus the saliency shown, plus ``beta`` times the label changes between
    neighbouring blocks, plus ``gamma`` times the overlap of inputs between outputs
    (thresholded at ``tau``, ``tau_type`` hard or soft, weighted by the compatibility through
    ``omega``), plus ``eta`` times a Dirichlet(``alpha``) prior shared by the chunk, for
    ``n_iter`` rounds (:func:`~mixbench.methods.functional.comixup_masks`). Output k is
    ``sum_j up(M[k, :, :, j]) * x_j``, its target the block sum of ``M[k] @ Y`` normalised.
    One forward pass over the b outputs; loss ``"ce"`` (default), the soft-target
    cross-entropy, or ``"bce"``, the official CIFAR code's binary cross-entropy on the softmax
    outputs (the ``paper`` set), plus the clean term ``2 * clean_lam / c * CE(f(x), Y)``
    under ``"bce"`` (c classes) and ``clean_lam * CE(f(x), Y)`` under ``"ce"``.

    Defaults, the official CIFAR settings: ``alpha 2.0, part 20, block_num 4, beta 0.32,
    gamma 1.0, tau 0.83, tau_type "hard", eta 0.05, omega 0.001, n_iter 4, resolve True,
    clean_lam 1.0`` (``n_iter = 3`` is the official faster setting). ``workers > 0`` solves
    the chunks in a pool of that many processes, with identical results.
    Draw order: the coin (CPU generator); then, chunk by chunk, the Dirichlet weights and the
    initial labels (CPU generator); all of them are drawn before any chunk is solved.

    Cost: 2F + 2B (the saliency pass and the mixed step), plus up to ``n_iter * b`` small
    graph cuts on the CPU (``block_num ** 2`` nodes, up to m + 3 labels each) and one
    device-to-host copy of the saliency. Project choices: ``loss = "ce"`` by default (all of
    mixbench's protocols train on one loss); ``A = (1 - omega) I`` when a chunk's distances
    are all 0, where the official code divides by zero; a last chunk of one example gives
    that example unchanged, where GCO would abort on a single label. Images must be square,
    of a side divisible by ``block_num`` and at least 8. Needs the optional extra
    ``mixbench[graphcut]``.
    """

    description = "Co-Mixup: jointly graph-cut salient blocks into diverse mixes (Kim et al.)"
    paper = "Kim, Choo, Jeong and Song, ICLR 2021, arXiv:2102.03065"
    requires = ("graphcut",)
    forward_passes = 2
    params = {
        "alpha": concentration_param(
            2.0, "Dirichlet(alpha) concentration of the prior over inputs, one draw per chunk"
        ),
        "part": Param(
            20, int, "examples per chunk solved jointly (the last may be shorter)", minimum=1
        ),
        "block_num": Param(
            4,
            int,
            "blocks per side of the mixing grid (must divide the image side)",
            minimum=1,
            search=("categorical", (2, 4, 8)),
        ),
        "beta": Param(
            0.32,
            float,
            "weight of label changes between neighbouring blocks (smoothness)",
            minimum=0.0,
            search=("float", 0.05, 1.0, True),
        ),
        "gamma": Param(
            1.0,
            float,
            "weight of the overlap of inputs between outputs (diversity)",
            minimum=0.0,
            search=("float", 0.1, 4.0, True),
        ),
        "tau": Param(
            0.83,
            float,
            "overlap threshold, as a share of the blocks of one output",
            minimum=0.0,
            search=("float", 0.5, 1.0, False),
        ),
        "tau_type": Param(
            "hard",
            str,
            "overlap penalty above tau: all of it (hard) or the excess (soft)",
            choices=("hard", "soft"),
        ),
        "eta": Param(
            0.05,
            float,
            "weight of the Dirichlet prior over inputs",
            minimum=0.0,
            search=("float", 0.01, 0.5, True),
        ),
        "omega": Param(
            0.001,
            float,
            "weight of the saliency-place distances in the overlap (compatibility)",
            minimum=0.0,
            maximum=1.0,
        ),
        "n_iter": Param(4, int, "rounds of graph cuts over a chunk's outputs", minimum=1),
        "resolve": Param(
            True, bool, "separate outputs that use the same inputs, after round n_iter - 2"
        ),
        "clean_lam": Param(
            1.0,
            float,
            "weight of the clean cross-entropy from the saliency pass (0: eval-mode pass)",
            minimum=0.0,
        ),
        "loss": Param(
            "ce",
            str,
            "soft-target cross-entropy, or the official code's BCE on softmax outputs",
            choices=("ce", "bce"),
        ),
        "prob": probability_param(1.0, "probability that a mini-batch is mixed", searched=False),
        "workers": Param(
            0,
            int,
            "processes solving the chunks (0: in this process); never changes results",
            minimum=0,
        ),
    }

    param_sets = {"paper": {**{k: p.default for k, p in params.items()}, "loss": "bce"}}

    def bn_updates_per_step(self) -> int:
        """Both passes in train mode, except the saliency pass in eval mode when
        ``clean_lam = 0``."""
        return self.passes_per_step() - (1 if self.clean_lam == 0 else 0)

    def _check_images(self, images: torch.Tensor) -> int:
        """The block side for ``images``, or a one-line UsageError."""
        height, width = int(images.shape[-2]), int(images.shape[-1])
        if height != width or height % self.block_num or height < 8:
            raise UsageError(
                f"comixup needs square images of side >= 8 divisible by block_num "
                f"({self.block_num}), got {height} x {width}; set --param comixup.block_num"
            )
        return height // self.block_num

    def mix_masks(self, saliency: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """``(start, stop, masks)`` for every chunk of a batch with ``saliency`` (b, H, W), in
        batch order, ``masks`` (m, n, n, m) for examples ``start:stop``: every chunk's draws
        first (Dirichlet, then initial labels), then the solves, in this process or in the
        pool of ``workers`` processes."""
        require_extra(f"method {self.name!r}", "graphcut")
        cpu = self.generator("cpu")
        n = self.block_num
        unary = block_saliency(saliency, saliency.shape[-1] // n).cpu().numpy()
        compat = comixup_compatibility(saliency).cpu().numpy()
        b = len(unary)
        bounds = [(start, min(start + self.part, b)) for start in range(0, b, self.part)]
        draws = [_comixup_draws(stop - start, n, n, self.alpha, cpu) for start, stop in bounds]
        options = {
            "beta": self.beta,
            "gamma": self.gamma,
            "eta": self.eta,
            "tau": self.tau,
            "tau_type": self.tau_type,
            "omega": self.omega,
            "n_iter": self.n_iter,
            "resolve": self.resolve,
        }
        jobs = [
            (unary[start:stop], compat[start:stop, start:stop], pi.numpy(), labels.numpy())
            for (start, stop), (pi, labels) in zip(bounds, draws, strict=True)
        ]
        if self.workers > 0 and len(jobs) > 1:
            pool = process_pool(self.workers)
            futures = [pool.submit(_comixup_solve, *job, **options) for job in jobs]
            solved: list[np.ndarray] = [future.result() for future in futures]
        else:
            solved = [_comixup_solve(*job, **options) for job in jobs]
        return [
            (start, stop, torch.from_numpy(masks).to(saliency.device))
            for (start, stop), masks in zip(bounds, solved, strict=True)
        ]

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The Co-Mixup loss of one mini-batch (an ERM loss when the coin says so)."""
        self._check_images(images)
        cpu = self.generator("cpu")
        if float(torch.rand((), generator=cpu)) >= self.prob:
            return cross_entropy(model(images), labels)
        saliency, clean = saliency_pass(model, images, labels, keep_clean_loss=self.clean_lam > 0)
        chunks = self.mix_masks(saliency)
        mixed, shares = [], []
        for start, stop, masks in chunks:
            # Identity targets: each output's shares of its chunk's inputs, (m, m).
            identity = torch.eye(stop - start, device=images.device)
            x_part, share = comixup_mix(images[start:stop].detach(), identity, masks)
            mixed.append(x_part)
            shares.append(share)
        logits = model(torch.cat(mixed))  # one forward pass over the b outputs
        classes = logits.shape[1]
        with torch.autocast(images.device.type, enabled=False):  # float32 targets
            targets = torch.cat(
                [
                    share @ one_hot(labels[start:stop], classes)
                    for (start, stop, _), share in zip(chunks, shares, strict=True)
                ]
            )
        if self.loss_kind == "bce":
            loss = soft_binary_cross_entropy(logits, targets)
        else:
            loss = soft_cross_entropy(logits, targets)
        if clean is not None:
            loss = loss + clean_term(clean, self.clean_lam, self.loss_kind, classes)
        return loss
