"""The functional core of the mixup methods: pure tensor functions, no module state.

Every method class in :mod:`mixbench.methods` is a thin wrapper that runs the backbone and
calls these functions. They hold no state, never modify their inputs, and draw random numbers
only through an explicit ``torch.Generator`` argument (``None`` means torch's default one).

Public API (each function's docstring states its equation):

- :func:`mix`: ``lam * x + (1 - lam) * x[perm]``.
- :func:`cutmix_box` and :func:`paste_box`: CutMix's random box and the pasting of it.
- :func:`fine_grained_saliency` and :func:`saliency_box`: SaliencyMix's saliency map (OpenCV,
  the optional extra ``mixbench[saliency]``, imported only when called) and its box.
- :func:`gradient_saliency` and :func:`block_saliency`: the input-gradient saliency of
  PuzzleMix and Co-Mixup, and its normalised block averages.
- :func:`sinkhorn`: entropic optimal transport plans, log-domain, batched.
- :func:`multimix`: Dirichlet interpolation of pooled embeddings and their targets.
- :func:`dense_multimix`: per-position, attention-weighted interpolation of feature maps.
- :func:`alignment_cost`, :func:`align_mix`, :func:`dense_attention`: AlignMixup's and Dense
  MultiMix's remaining arithmetic.
- :func:`decoupled_mix_loss`: Decoupled Mixup's loss for any two-label method;
  :func:`regmixup_batch`: RegMixup's clean-and-mixed batch; :func:`mixupe_regularizer` and
  :func:`mixupe_loss`: MixupE's term and its rescaled loss.
- Helpers: :func:`sample_beta`, :func:`sample_dirichlet`, :func:`one_hot`, :func:`cross_entropy`,
  :func:`mixed_cross_entropy`, :func:`soft_cross_entropy`, :func:`soft_binary_cross_entropy`.
- :func:`comixup_compatibility`, :func:`comixup_masks` and :func:`comixup_mix`: Co-Mixup's
  compatibility of salient places, its joint graph-cut labelling of a chunk (the optional
  extra ``mixbench[graphcut]``, imported only when called) and the assembly of its outputs.
- :func:`low_frequency_image` and :func:`fmix_mask`: FMix's Fourier-sampled image and its
  binarised (or softened) mask.
- :func:`resize_box` and :func:`resize_paste`: ResizeMix's box and the whole partner image
  resized into it.
- :func:`grid_mask`: GridMixup's grid of holes in a random crop.
- :func:`smooth_mask`: SmoothMix's Gaussian blending mask.
- :func:`spectral_residual_saliency`, :func:`blur_normalize`, :func:`guided_pairing` and
  :func:`guided_mask`: GuidedMixup's saliency, its normalised maps, the greedy pairing of
  examples with distant salient regions and the pixel mask from two maps.
- :func:`box_patch_mask` and :func:`transmix_lambda`: TransMix's CutMix box on the ViT's
  patch grid and its attention-based label weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mixbench.errors import UsageError
from mixbench.methods.extras import require_extra

__all__ = [
    "align_mix",
    "alignment_cost",
    "block_saliency",
    "blur_normalize",
    "box_patch_mask",
    "comixup_compatibility",
    "comixup_masks",
    "comixup_mix",
    "cross_entropy",
    "cutmix_box",
    "decoupled_mix_loss",
    "dense_attention",
    "dense_multimix",
    "fine_grained_saliency",
    "fmix_mask",
    "gradient_saliency",
    "grid_mask",
    "guided_mask",
    "guided_pairing",
    "low_frequency_image",
    "mix",
    "mixed_cross_entropy",
    "mixupe_loss",
    "mixupe_regularizer",
    "multimix",
    "one_hot",
    "paste_box",
    "puzzle_graph_terms",
    "puzzle_mask",
    "puzzle_transport",
    "puzzlemix",
    "regmixup_batch",
    "resize_box",
    "resize_paste",
    "saliency_box",
    "sample_beta",
    "sample_dirichlet",
    "sinkhorn",
    "smooth_mask",
    "soft_binary_cross_entropy",
    "soft_cross_entropy",
    "spectral_residual_saliency",
    "transmix_lambda",
    "transport_blocks",
    "transport_cost",
]

Box = tuple[int, int, int, int]


# -- random draws ------------------------------------------------------------------------


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"a concentration alpha must be a finite number > 0, got {alpha!r}")
    return alpha


def _simplex_from_gamma(
    concentration: torch.Tensor, generator: torch.Generator | None, small: bool
) -> torch.Tensor:
    """Normalised Gamma draws along the last dimension: Dirichlet(concentration) samples.

    With ``small`` (some concentration below 1) the draws are made in the log domain,
    ``log G(a) = log G(a + 1) + log(U) / a`` (Marsaglia and Tsang's boost), and normalised by a
    softmax, so that rows whose Gamma draws would all underflow to zero still land on the
    simplex. The caller decides ``small`` from Python numbers: no device synchronisation.
    """
    if not small:
        gamma = torch._standard_gamma(concentration, generator=generator)
        return gamma.div_(gamma.sum(-1, keepdim=True))
    log_gamma = torch._standard_gamma(concentration + 1, generator=generator).log_()
    uniform = torch.rand(
        concentration.shape,
        generator=generator,
        device=concentration.device,
        dtype=concentration.dtype,
    )
    log_gamma.add_(uniform.log_().div_(concentration))
    return torch.softmax(log_gamma, dim=-1)


def _dirichlet_proportional(
    alpha: float,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Positive weights proportional, along the last dimension, to a Dirichlet draw.

    Gamma draws, not yet normalised (already normalised for ``alpha < 1``): callers that
    renormalise anyway (Dense MultiMix's attention weighting) save a pass over the draws.
    """
    if alpha == 1.0:
        return torch.empty(shape, device=device, dtype=dtype).exponential_(generator=generator)
    concentration = torch.full(shape, alpha, device=device, dtype=dtype)
    if alpha > 1.0:
        return torch._standard_gamma(concentration, generator=generator)
    return _simplex_from_gamma(concentration, generator, small=True)


def sample_dirichlet(
    alpha: float,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draws from the symmetric ``Dirichlet(alpha * ones(shape[-1]))``, all at once.

    Each slice along the last dimension of the result (of shape ``shape``) is one draw: its
    entries are non-negative and sum to one. The draws are normalised Gamma variates made
    on ``device`` by ``generator`` (which must live on that device): ``exponential_`` when
    ``alpha == 1`` (a Gamma(1) is an exponential), ``torch._standard_gamma`` otherwise.

    Args:
        alpha: the concentration, > 0.
        shape: the result's shape; the last entry is the number of mixed items.
        generator: the generator to draw from (``None``: torch's default generator).
        device: where to sample (default: the CPU).
        dtype: the result's floating point dtype (draws are made in float32 or float64).
    """
    alpha = _check_alpha(alpha)
    shape = tuple(int(s) for s in shape)
    if not shape or shape[-1] < 1:
        raise ValueError(f"the last dimension of a Dirichlet draw must be >= 1, got {shape}")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    draws = _dirichlet_proportional(alpha, shape, generator, device, work)
    if alpha >= 1.0:
        draws.div_(draws.sum(-1, keepdim=True))
    return draws.to(dtype)


def sample_beta(
    alpha: float,
    generator: torch.Generator | None = None,
    *,
    beta: float | None = None,
    size: Sequence[int] = (),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draws from ``Beta(alpha, beta)`` (``beta`` defaults to ``alpha``), as ``G1 / (G1 + G2)``.

    Two Gamma draws, with the same care for small concentrations as :func:`sample_dirichlet`.
    Returns a tensor of shape ``size`` (a 0-d tensor by default); call ``.item()`` on a CPU
    draw to get a Python float without a device synchronisation.
    """
    alpha = _check_alpha(alpha)
    beta = alpha if beta is None else _check_alpha(beta)
    size = tuple(int(s) for s in size)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if alpha == beta:
        pair = sample_dirichlet(alpha, (*size, 2), generator=generator, device=device, dtype=work)
    else:
        concentration = torch.tensor([alpha, beta], device=device, dtype=work).expand(*size, 2)
        pair = _simplex_from_gamma(concentration.contiguous(), generator, min(alpha, beta) < 1)
    return pair[..., 0].to(dtype)


# -- losses and targets ------------------------------------------------------------------


def one_hot(
    labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The one-hot matrix (b, num_classes) of integer ``labels`` (b,), as floats."""
    return F.one_hot(labels.long(), num_classes).to(dtype)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy of ``logits`` (b, c) against integer ``labels`` (b,), in float32."""
    return F.cross_entropy(logits.float(), labels)


def mixed_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float | torch.Tensor,
    perm: torch.Tensor,
) -> torch.Tensor:
    """``mean_i [lam_i * CE_i(Y) + (1 - lam_i) * CE_i(Y[perm])]`` with integer ``labels``.

    ``lam`` is one float for the batch or a (b,) tensor of per-example weights (the share of
    each mixed example that comes from its own image). Equal to the soft-target
    cross-entropy against ``lam * Y + (1 - lam) * Y[perm]`` (the cross-entropy is linear in
    the target), without building one-hot matrices; computed in float32.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    if isinstance(lam, torch.Tensor) and lam.dim() > 0:
        if lam.shape != labels.shape:
            raise ValueError(f"expected lam of shape {tuple(labels.shape)}, got {tuple(lam.shape)}")
        weight = lam.to(device=log_probs.device, dtype=torch.float32)
        own = F.nll_loss(log_probs, labels, reduction="none")
        partner = F.nll_loss(log_probs, labels[perm], reduction="none")
        return (weight * own + (1.0 - weight) * partner).mean()
    lam = float(lam)
    return lam * F.nll_loss(log_probs, labels) + (1.0 - lam) * F.nll_loss(log_probs, labels[perm])


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_rows(-sum_c targets * log_softmax(logits))`` in float32.

    ``logits`` and ``targets`` have shape (..., c); the mean runs over every leading position
    (rows of a batch, or all n * r terms of a dense loss).
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"expected logits and targets of the same shape, got {tuple(logits.shape)}"
            f" and {tuple(targets.shape)}"
        )
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(targets.float() * log_probs).sum(-1).mean()


def soft_binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``softmax(logits)`` against ``targets``, mean over all entries.

    What the official Manifold Mixup code computes with ``BCELoss(softmax(out), target)``,
    including BCELoss's clamp of each log at -100, but evaluated from log-probabilities:
    ``log(1 - p)`` of a row's most probable class is the log-sum of the other classes'
    probabilities, so saturated softmax outputs give finite values and finite gradients.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"expected logits and targets of the same shape, got {tuple(logits.shape)}"
            f" and {tuple(targets.shape)}"
        )
    log_p = torch.log_softmax(logits.float(), dim=-1)
    top = log_p == log_p.amax(dim=-1, keepdim=True)
    top = top & (top.cumsum(-1) == 1)  # one entry per row, even on ties
    # p < 1/2 off the top entry, where log1p(-p) is accurate; the top entry is masked so that
    # its (unused) branch has a finite gradient.
    log_rest = torch.log1p(-log_p.masked_fill(top, -math.inf).exp())
    log_top = torch.logsumexp(log_p.masked_fill(top, -math.inf), dim=-1, keepdim=True)
    log_1mp = torch.where(top, log_top, log_rest)
    t = targets.float()
    terms = t * log_p.clamp_min(-100.0) + (1 - t) * log_1mp.clamp_min(-100.0)
    return -terms.mean()


def _row_weights(lam: float | torch.Tensor, rows: int, device: torch.device) -> torch.Tensor:
    """``lam`` as a (rows,) float32 tensor: one float for the batch, or per-example weights."""
    if isinstance(lam, torch.Tensor) and lam.dim() > 0:
        if lam.shape != (rows,):
            raise ValueError(f"expected lam of shape ({rows},), got {tuple(lam.shape)}")
        return lam.to(device=device, dtype=torch.float32)
    return torch.full((rows,), float(lam), device=device, dtype=torch.float32)


def decoupled_mix_loss(
    logits: torch.Tensor,
    labels_a: torch.Tensor,
    labels_b: torch.Tensor,
    lam: float | torch.Tensor,
    eta: float,
    mode: str = "both",
    power: float = 1.0,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Decoupled mixup loss (Liu et al., NeurIPS 2023, arXiv 2203.10761), mean over the rows.

    For a row with logits ``z``, labels ``a != b`` and weights ``lam``, ``1 - lam``:
    ``CE(z, lam Y_a + (1 - lam) Y_b) + w_a Dec(z; a, b) + w_b Dec(z; b, a)``, where
    ``Dec(z; a, b) = -z_a + logsumexp_{c != b} z_c`` is the cross-entropy at ``a`` of the
    softmax that leaves out the other mixed class ``b``. Weights ``w_a = eta * lam ** power``
    and ``w_b = eta * (1 - lam) ** power`` (``power = 0``: a flat ``eta``), restricted by
    ``mode``: ``"both"`` keeps both terms; ``"less"`` keeps the ``a`` term where ``lam <
    threshold`` and the ``b`` term elsewhere (the term of the smaller component at the default
    ``threshold = 0.5``); ``"more"`` keeps the other one. Each weight goes with its own
    component.

    Rows whose two labels coincide get plain cross-entropy, and no decoupled term is added
    where ``lam == 0.5`` exactly or ``min(lam, 1 - lam) <= 1e-3`` (the official code sees
    equal weights, or one-hot rows, there). ``lam`` is one float for the batch or a (b,)
    tensor of per-example weights. Computed in float32 from log-sum-exps: finite for
    saturated logits.
    """
    if mode not in ("both", "less", "more"):
        raise ValueError(f"mode must be 'both', 'less' or 'more', got {mode!r}")
    z = logits.float()
    rows, classes = z.shape
    w = _row_weights(lam, rows, z.device)
    a, b = labels_a.long(), labels_b.long()
    log_p = torch.log_softmax(z, dim=-1)
    nll_a = -log_p.gather(1, a[:, None]).squeeze(1)
    nll_b = -log_p.gather(1, b[:, None]).squeeze(1)
    loss = w * nll_a + (1.0 - w) * nll_b
    differ = a != b
    active = differ & (w != 0.5) & (torch.minimum(w, 1.0 - w) > 1e-3)
    if mode == "both":
        keep_a = keep_b = active
    else:
        low = w < threshold
        keep_a = active & (low if mode == "less" else ~low)
        keep_b = active & (~low if mode == "less" else low)
    weight_a = torch.where(keep_a, eta * w.pow(power), 0.0)
    weight_b = torch.where(keep_b, eta * (1.0 - w).pow(power), 0.0)
    # The other class is left out only where the labels differ: elsewhere the term has weight
    # 0 and must stay finite (leaving out the own class would give an infinite value).
    out_b = F.one_hot(b, classes).bool() & differ[:, None]
    out_a = F.one_hot(a, classes).bool() & differ[:, None]
    dec_a = torch.logsumexp(z.masked_fill(out_b, -math.inf), dim=-1) - z.gather(1, a[:, None])[:, 0]
    dec_b = torch.logsumexp(z.masked_fill(out_a, -math.inf), dim=-1) - z.gather(1, b[:, None])[:, 0]
    return (loss + weight_a * dec_a + weight_b * dec_b).mean()


def regmixup_batch(
    x: torch.Tensor, labels: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RegMixup's one batch of 2b rows: the clean batch, then its mixup.

    Returns ``(x_cat, labels_cat, perm_cat)``: ``x_cat = [x; mix(x, lam, perm)]`` (2b, ...),
    ``labels_cat = [Y; Y]`` and ``perm_cat = [0..b-1; b + perm]``, so that
    ``mixed_cross_entropy(f(x_cat), labels_cat, lam, perm_cat)`` is the RegMixup loss, the mean
    over the 2b rows: ``CE(f(x), Y) / 2 + (lam CE(f(x_mix), Y) + (1 - lam) CE(f(x_mix),
    Y[perm])) / 2`` (the clean rows' two labels coincide). ``x`` is left untouched.
    """
    b = x.shape[0]
    x_cat = torch.cat([x, mix(x, lam, perm)])
    labels_cat = torch.cat([labels, labels])
    own = torch.arange(b, device=perm.device, dtype=perm.dtype)
    return x_cat, labels_cat, torch.cat([own, perm + b])


def mixupe_regularizer(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float, threshold: float = 1.0
) -> torch.Tensor:
    """MixupE's term ``R`` (Zou et al., UAI 2023, arXiv 2212.13381) from clean logits (b, c).

    ``s_i = sum_c z_ic (Y_ic - softmax(z_i)_c)`` (not detached) and ``R = (1 - E) * sum over
    {i : s_i < threshold} of s_i / b``, with ``E = (alpha + 1) / (2 alpha + 1)``, the mean of
    ``Beta(alpha + 1, alpha)``. Float32.
    """
    z = logits.float()
    s = (z * (one_hot(labels, z.shape[-1]) - torch.softmax(z, dim=-1))).sum(-1)
    mean = (alpha + 1.0) / (2.0 * alpha + 1.0)
    return (1.0 - mean) * torch.where(s < threshold, s, 0.0).sum() / z.shape[0]


def mixupe_loss(
    mix_loss: torch.Tensor, regularizer: torch.Tensor, eta: float = 0.001
) -> torch.Tensor:
    """MixupE's loss: ``L = mix_loss - eta * regularizer`` times the detached ratio
    ``|mix_loss| / |L|``, so that its value is ``|mix_loss| * sign(L)`` and its gradient that
    of ``L`` rescaled; ``mix_loss`` itself where ``L == 0`` (no device synchronisation)."""
    total = mix_loss - eta * regularizer
    zero = total == 0
    ratio = (mix_loss.abs() / torch.where(zero, 1.0, total.abs())).detach()
    return torch.where(zero, mix_loss, total * ratio)


# -- input mixing ------------------------------------------------------------------------


def mix(x: torch.Tensor, lam: float | torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]``: a new tensor, ``x`` is left untouched.

    ``lam`` is a float or a tensor broadcastable against ``x`` (e.g. (b, 1, 1, 1) for one
    weight per example); ``perm`` indexes the first dimension. Computed as one fused
    ``torch.lerp`` and differentiable in ``x`` (manifold mixup mixes hidden states).
    """
    if perm.dim() != 1 or perm.shape[0] != x.shape[0]:
        raise ValueError(f"expected perm of shape ({x.shape[0]},), got {tuple(perm.shape)}")
    if isinstance(lam, torch.Tensor):
        lam = lam.to(dtype=x.dtype, device=x.device)
    else:
        lam = float(lam)
    return torch.lerp(x[perm], x, lam)


def cutmix_box(
    height: int,
    width: int,
    lam: float,
    generator: torch.Generator | None = None,
    *,
    center: tuple[int, int] | None = None,
) -> tuple[Box, float]:
    """CutMix's box for mixing ratio ``lam`` and the ratio that the clipped box really gives.

    As the official code's ``rand_bbox``: cut sizes ``cut_h = int(height * sqrt(1 - lam))`` and
    ``cut_w = int(width * sqrt(1 - lam))``, a centre pixel ``(cy, cx)`` uniform over the image
    (drawn with ``generator``, a CPU generator, rows first; or given as ``center``), and rows
    ``cy - cut_h // 2 .. cy + cut_h // 2``, columns likewise, clipped to the image (an odd cut
    gives a box one pixel smaller than the cut). Returns ``((top, bottom, left, right),
    lam_adjusted)``: Python ints as half-open bounds, rows ``[top, bottom)`` and columns
    ``[left, right)``, and ``lam_adjusted = 1 - (bottom - top) * (right - left) / (height *
    width)``.
    """
    height, width, lam = int(height), int(width), float(lam)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    if center is None:
        cy = int(torch.randint(height, (1,), generator=generator))
        cx = int(torch.randint(width, (1,), generator=generator))
    else:
        cy, cx = int(center[0]), int(center[1])
    top, bottom = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    left, right = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    area = (bottom - top) * (right - left)
    return (top, bottom, left, right), 1.0 - area / (height * width)


def paste_box(x: torch.Tensor, box: Box, perm: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` (b, C, H, W) whose ``box`` region holds the same region of ``x[perm]``."""
    top, bottom, left, right = box
    out = x.clone()
    out[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    return out


# -- saliency ------------------------------------------------------------------------------


def fine_grained_saliency(image: torch.Tensor) -> np.ndarray:
    """OpenCV's static fine-grained saliency of one image, quantised: (H, W) ``uint8``.

    ``image`` (C, H, W) is passed as it is, an H x W x C ``float32`` array with the channels in
    the given order (OpenCV reads them as BGR; SaliencyMix's official code passes normalised
    RGB images, and so does this). The map, a float in [0, 1], is quantised as that code does:
    ``uint8(trunc(255 * map))``. Runs on the CPU (one device-to-host copy); needs the optional
    extra ``mixbench[saliency]`` (``opencv-contrib-python-headless``), imported here and
    nowhere else; without it this raises a one-line :class:`~mixbench.errors.UsageError`.
    """
    if image.dim() != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(image.shape)}")
    require_extra("method 'saliencymix'", "saliency")
    import cv2

    if not hasattr(cv2, "saliency"):
        raise UsageError(
            "method 'saliencymix' needs the optional extra 'saliency' "
            "(opencv-contrib-python-headless; the installed cv2 has no saliency module): "
            "pip install 'mixbench[saliency]'"
        )
    array = image.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous().numpy()
    ok, saliency = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(array)
    if not ok:
        raise RuntimeError("OpenCV's fine-grained saliency failed")
    return (np.asarray(saliency, dtype=np.float32) * 255).astype(np.uint8)


def saliency_box(saliency: np.ndarray | torch.Tensor, lam: float) -> tuple[Box, float]:
    """SaliencyMix's box around the most salient pixel, and the ratio it really gives.

    Cut sizes ``cut_h = int(H * sqrt(1 - lam))`` and ``cut_w = int(W * sqrt(1 - lam))`` for a
    ``saliency`` map (H, W); ``(r, q)`` its argmax, the first in row-major order on ties; rows
    ``[r - cut_h // 2, r + cut_h // 2)`` and columns ``[q - cut_w // 2, q + cut_w // 2)``, each
    bound clipped to the image (so a side is ``2 * (cut // 2)``, one pixel short of an odd cut).
    Returns ``((top, bottom, left, right), lam_adjusted)``: Python ints as half-open bounds and
    ``lam_adjusted = 1 - (bottom - top) * (right - left) / (H * W)``.
    """
    values = torch.as_tensor(np.asarray(saliency) if not torch.is_tensor(saliency) else saliency)
    if values.dim() != 2 or values.numel() == 0:
        raise ValueError(f"expected a saliency map (H, W), got shape {tuple(values.shape)}")
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    height, width = int(values.shape[0]), int(values.shape[1])
    flat = values.reshape(-1)
    # The first maximum in row-major order (torch.argmax does not promise which on ties).
    first = int(torch.nonzero(flat == flat.max())[0, 0])
    r, q = divmod(first, width)
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    top, bottom = max(r - cut_h // 2, 0), min(r + cut_h // 2, height)
    left, right = max(q - cut_w // 2, 0), min(q + cut_w // 2, width)
    area = (bottom - top) * (right - left)
    return (top, bottom, left, right), 1.0 - area / (height * width)


# -- input-gradient saliency -----------------------------------------------------------------


def gradient_saliency(grad: torch.Tensor) -> torch.Tensor:
    """``sqrt(mean_over_channels(grad ** 2))``: (b, H, W) float32 for ``grad`` (b, C, H, W),
    the gradient of a loss with respect to the input images."""
    if grad.dim() != 4:
        raise ValueError(f"expected input gradients (b, C, H, W), got shape {tuple(grad.shape)}")
    return grad.detach().float().pow(2).mean(dim=1).sqrt()


def block_saliency(saliency: torch.Tensor, block_size: int) -> torch.Tensor:
    """Average-pool ``saliency`` (b, H, W) over ``block_size`` x ``block_size`` blocks and
    normalise each image to sum 1: (b, H / block_size, W / block_size) float32.

    ``H`` and ``W`` must be multiples of ``block_size``. An all-zero map (no gradient at
    all) gives the uniform distribution over the blocks.
    """
    if saliency.dim() != 3:
        raise ValueError(f"expected saliency maps (b, H, W), got shape {tuple(saliency.shape)}")
    block_size = int(block_size)
    height, width = int(saliency.shape[1]), int(saliency.shape[2])
    if block_size < 1 or height % block_size or width % block_size:
        raise ValueError(
            f"block size {block_size} does not divide the {height} x {width} saliency map"
        )
    pooled = F.avg_pool2d(saliency.float().unsqueeze(1), block_size).squeeze(1)
    total = pooled.sum(dim=(1, 2), keepdim=True)
    uniform = torch.full_like(pooled, 1.0 / (pooled.shape[1] * pooled.shape[2]))
    return torch.where(
        total > 0, pooled / total.clamp_min(torch.finfo(torch.float32).tiny), uniform
    )


# -- PuzzleMix ---------------------------------------------------------------------------


def _pooling_side(block_side: int, neigh_size: int) -> int:
    """The side ``k0`` of the pixel pooling of PuzzleMix's boundary terms:
    ``min(neigh_size, block_side)``, or the largest divisor of ``block_side`` not above
    ``neigh_size`` when that does not divide the block (a project choice; never at 32 or 64
    pixels)."""
    side = max(1, min(int(neigh_size), int(block_side)))
    while block_side % side:
        side -= 1
    return side


def _block_boundaries(
    upper: torch.Tensor, lower: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute differences across the block boundaries of two pooled images.

    ``upper`` and ``lower`` (b, C, n k, n k) are the images shown by the upper (left) and the
    lower (right) node of each edge. Returns the vertical terms (b, n - 1, n), between the last
    pooled row of block row ``i`` of ``upper`` and the first of block row ``i + 1`` of ``lower``,
    averaged over channels and the ``k`` pooled columns of the block column, and the horizontal
    terms (b, n, n - 1) likewise across block columns.
    """
    b, _, side, _ = upper.shape
    n = side // k
    vertical = (upper[:, :, k - 1 : side - 1 : k, :] - lower[:, :, k:side:k, :]).abs().mean(1)
    horizontal = (upper[:, :, :, k - 1 : side - 1 : k] - lower[:, :, :, k:side:k]).abs().mean(1)
    vertical = vertical.reshape(b, n - 1, n, k).mean(-1)
    horizontal = horizontal.reshape(b, n, k, n - 1).mean(2)
    return vertical, horizontal


def puzzle_graph_terms(
    unary: torch.Tensor,
    pixels: torch.Tensor,
    perm: torch.Tensor,
    beta: float = 1.2,
    gamma: float = 0.5,
    neigh_size: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The graph of PuzzleMix's mask: node costs and edge weights on the n x n block grid.

    ``unary`` (b, n, n) is each image's block saliency (:func:`block_saliency`, summing to 1),
    ``pixels`` (b, C, H, W) the batch in [0, 1] pixel units and ``perm`` the partner of each
    example. Showing the own image at a node hides the partner's saliency there
    (``cost_own = unary[perm]``), showing the partner hides the own (``cost_partner =
    unary``). Boundary terms compare the pixels, average-pooled by ``k0 = min(neigh_size,
    W / n)``, across every block edge for the four choices (own or partner above or left,
    own or partner below or right), scaled by ``beta' * gamma`` with ``beta' = beta / (16
    n)``; each edge hands half of its discontinuities to its two nodes' costs and keeps
    ``(D[own, partner] + D[partner, own] - D[own, own] - D[partner, partner]) / 2 + beta'`` as
    its weight. Returns ``(cost_own (b, n, n), cost_partner (b, n, n), edge_v (b, n - 1, n),
    edge_h (b, n, n - 1))`` in float32.
    """
    if unary.dim() != 3 or unary.shape[1] != unary.shape[2]:
        raise ValueError(f"expected block saliency (b, n, n), got shape {tuple(unary.shape)}")
    if pixels.dim() != 4 or pixels.shape[0] != unary.shape[0]:
        raise ValueError(f"expected pixels (b, C, H, W), got shape {tuple(pixels.shape)}")
    n = int(unary.shape[1])
    height, width = int(pixels.shape[2]), int(pixels.shape[3])
    if height != width or width % n:
        raise ValueError(f"a {n} x {n} block grid does not tile {height} x {width} images")
    block_side = width // n
    k0 = _pooling_side(block_side, neigh_size)
    k = block_side // k0
    own = F.avg_pool2d(pixels.float(), k0)
    partner = own[perm]
    scale = beta / (16 * n)
    sources = {"own": own, "partner": partner}
    vertical: dict[tuple[str, str], torch.Tensor] = {}
    horizontal: dict[tuple[str, str], torch.Tensor] = {}
    for upper in sources:
        for lower in sources:
            v, h = _block_boundaries(sources[upper], sources[lower], k)
            vertical[upper, lower] = scale * gamma * v
            horizontal[upper, lower] = scale * gamma * h
    unary = unary.float()
    cost_own = unary[perm].clone()
    cost_partner = unary.clone()
    for terms, first, second in (
        (vertical, np.s_[:, :-1, :], np.s_[:, 1:, :]),
        (horizontal, np.s_[:, :, :-1], np.s_[:, :, 1:]),
    ):
        cost_own[first] += (terms["own", "partner"] + terms["own", "own"]) / 2
        cost_partner[first] += (terms["partner", "own"] + terms["partner", "partner"]) / 2
        cost_own[second] += (terms["partner", "own"] + terms["own", "own"]) / 2
        cost_partner[second] += (terms["own", "partner"] + terms["partner", "partner"]) / 2

    def edge(terms: dict[tuple[str, str], torch.Tensor]) -> torch.Tensor:
        cross = terms["own", "partner"] + terms["partner", "own"]
        return (cross - terms["own", "own"] - terms["partner", "partner"]) / 2 + scale

    return cost_own, cost_partner, edge(vertical), edge(horizontal)


def _label_prior(lam: float, n_labels: int) -> np.ndarray:
    """``-log(p_t + 1e-8)`` of the binomial prior over the ``n_labels`` partner shares
    ``t = l / (n_labels - 1)``: ``p = (lam^2, 2 lam (1 - lam), (1 - lam)^2)`` for three."""
    lam = float(lam)
    degree = n_labels - 1
    probs = [math.comb(degree, i) * lam ** (degree - i) * (1 - lam) ** i for i in range(n_labels)]
    return -np.log(np.asarray(probs, dtype=np.float64) + 1e-8)


def puzzle_mask(
    cost_own: torch.Tensor,
    cost_partner: torch.Tensor,
    edge_v: torch.Tensor,
    edge_h: torch.Tensor,
    lam: float | torch.Tensor | Sequence[float],
    eta: float = 0.2,
    n_labels: int = 3,
    workers: int = 0,
) -> torch.Tensor:
    """PuzzleMix's mask: the minimum-energy labelling of the block graph, by graph cuts.

    Each node takes a partner share ``t`` in ``{0, 1 / (n_labels - 1), ..., 1}`` at node
    energy ``(1 - t) * cost_own + t * cost_partner - (eta / n^2) * log(p_t + 1e-8)``, ``p`` the
    binomial prior of ``lam`` (``lam^2, 2 lam (1 - lam), (1 - lam)^2`` for three labels), and
    each edge costs ``w * (t - t')^2``. Energies and weights are multiplied by ``1000 n^2``
    and truncated to int32, the label distances passed as float32, and every example is
    solved by GCO's alpha-beta swap to convergence, as PuzzleMix's official code does
    (including its int32 overflow for a node holding more than about 8 % of an image's
    saliency at n = 16). The energies are computed in float64 before the truncation, where
    the official code under NumPy 1 kept float32: a rare energy lands one unit away. ``lam``
    is one float or one per example; ``workers > 0`` spreads the examples over a process pool
    without changing any result. Returns the mask ``1 - t`` (b, n, n) float32 on the CPU:
    the share of the own image. Needs the optional extra ``mixbench[graphcut]``.
    """
    require_extra("method 'puzzlemix'", "graphcut")
    from mixbench.methods.graphcut import cut_grid_graphs

    if n_labels < 2:
        raise ValueError(f"n_labels must be at least 2, got {n_labels}")
    own = cost_own.detach().to("cpu", torch.float32).numpy()
    partner = cost_partner.detach().to("cpu", torch.float32).numpy()
    batch, n = own.shape[0], own.shape[1]
    lams = np.broadcast_to(
        np.asarray(lam.detach().cpu() if torch.is_tensor(lam) else lam, dtype=np.float64),
        (batch,),
    )
    large = 1000 * n**2
    shares = np.linspace(0, 1, n_labels)
    priors = np.stack([eta * _label_prior(value, n_labels) / n**2 for value in lams])
    unary = (
        np.stack([(1 - t) * own + t * partner for t in shares], axis=-1) + priors[:, None, None, :]
    )
    unary = (large * unary).astype(np.int32)
    labels = np.arange(n_labels)
    distance = ((labels[:, None] - labels[None, :]) ** 2 / (n_labels - 1) ** 2).astype(np.float32)
    vertical = (large * edge_v.detach().to("cpu", torch.float32).numpy()).astype(np.int32)
    horizontal = (large * edge_h.detach().to("cpu", torch.float32).numpy()).astype(np.int32)
    cuts = cut_grid_graphs(
        [(unary[i], distance, vertical[i], horizontal[i]) for i in range(batch)], workers
    )
    mask = 1.0 - np.stack(cuts).reshape(batch, n, n) / (n_labels - 1)
    return torch.from_numpy(mask.astype(np.float32))


def transport_cost(side: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Squared grid distances between the blocks of a ``side`` x ``side`` grid, divided by
    ``(side - 1)^2``: (side^2, side^2) float32, blocks in row-major order."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    rows, cols = rows.reshape(-1, 1), cols.reshape(-1, 1)
    cost = ((rows - rows.T) ** 2 + (cols - cols.T) ** 2).to(torch.float32)
    return (cost / max(side - 1, 1) ** 2).to(device)


def puzzle_transport(
    mask: torch.Tensor, unary: torch.Tensor, eps: float = 0.8, n_iter: int | None = None
) -> torch.Tensor:
    """PuzzleMix's transport plan: move each image's salient blocks to where it is shown.

    For ``mask`` and ``unary`` (b, m, m), ``z_j = [mask_j > 0]`` and ``C`` the normalised
    squared grid distances (:func:`transport_cost`), the cost of moving block ``i`` to block
    ``j`` is ``K[i, j] = eps * C[i, j] - unary_i * z_j``. Each of ``n_iter`` rounds (default
    ``m``): every source block chooses its cheapest destination (the first on ties), each
    destination's winner is the row of the minimum of ``choice * K`` in its column (the
    first on ties) and wins only if it chose that destination, and every source that chose
    and lost pays +1 on that entry. The plan is the last round's winners: (b, m^2, m^2)
    float32 in {0, 1}, at most one 1 per row and per column; a destination without a winner
    gets nothing.
    """
    if mask.dim() != 3 or mask.shape != unary.shape or mask.shape[1] != mask.shape[2]:
        raise ValueError(
            f"expected mask and unary of one shape (b, m, m), got {tuple(mask.shape)}"
            f" and {tuple(unary.shape)}"
        )
    b, m = int(mask.shape[0]), int(mask.shape[1])
    rounds = m if n_iter is None else int(n_iter)
    shown = (mask > 0).to(torch.float32).reshape(b, 1, m * m)
    cost = eps * transport_cost(m, mask.device).unsqueeze(0) - (
        unary.to(torch.float32).reshape(b, m * m, 1) * shown
    )
    won = torch.zeros(b, m * m, dtype=torch.bool, device=mask.device)
    choice = torch.zeros(b, m * m, dtype=torch.long, device=mask.device)
    for _ in range(rounds):
        choice = cost.argmin(-1)
        won = _transport_winners(cost.gather(-1, choice.unsqueeze(-1)).squeeze(-1), choice)
        cost.scatter_add_(-1, choice.unsqueeze(-1), (~won).to(cost.dtype).unsqueeze(-1))
    plan = torch.zeros_like(cost)
    return plan.scatter_(-1, choice.unsqueeze(-1), won.to(cost.dtype).unsqueeze(-1))


def _transport_winners(value: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """Which sources win the destination they chose, in one round of :func:`puzzle_transport`.

    ``choice`` (b, N) is each source's destination and ``value`` (b, N) its cost there. In the
    dense form, destination ``j``'s winner is the first row of the minimum of column ``j`` of
    ``one_hot(choice) * K``: the chosen costs, and 0 for every source that chose elsewhere.
    This computes the same in O(b N) from the choosers alone.
    """
    b, size = choice.shape
    rows = torch.arange(size, device=choice.device).expand(b, size)
    inf = torch.full((b, size), math.inf, dtype=value.dtype, device=value.device)
    lowest = inf.scatter_reduce(-1, choice, value, reduce="amin")  # inf where none chose
    chosen = torch.zeros(b, size, dtype=torch.long, device=choice.device)
    chosen.scatter_add_(-1, choice, torch.ones_like(choice))
    others = chosen < size  # some source chose elsewhere: the column holds a 0
    column_min = torch.where(others, lowest.clamp_max(0), lowest)
    # The first chooser at the column's minimum...
    at_min = value == column_min.gather(-1, choice)
    first_chooser = torch.full((b, size), size, dtype=torch.long, device=choice.device)
    first_chooser = first_chooser.scatter_reduce(
        -1, choice, torch.where(at_min, rows, size), reduce="amin"
    )
    # ...against the first source that chose elsewhere, when the minimum is that 0.
    first_row_choice = choice[:, :1]
    differs = choice != first_row_choice
    first_differing = torch.where(differs.any(-1), differs.to(torch.int8).argmax(-1), size)
    first_other = torch.where(rows == first_row_choice, first_differing.unsqueeze(-1), 0)
    first_other = torch.where(others & (column_min == 0), first_other, size)
    winner = torch.where(first_chooser <= first_other, first_chooser, size)
    return winner.gather(-1, choice) == rows


def transport_blocks(x: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    """Move the blocks of ``x`` (b, C, H, W) by ``plan`` (b, m^2, m^2): output block ``j``
    is the source block ``i`` with ``plan[i, j] = 1`` (row-major blocks of side H / m), and
    zeros where no source goes."""
    b, channels, height, width = x.shape
    m = math.isqrt(int(plan.shape[-1]))
    if plan.shape != (b, m * m, m * m) or height % m or width % m:
        raise ValueError(
            f"a plan of shape {tuple(plan.shape)} does not fit images of shape {tuple(x.shape)}"
        )
    sh, sw = height // m, width // m
    blocks = x.reshape(b, channels, m, sh, m, sw).permute(0, 1, 2, 4, 3, 5)
    blocks = blocks.reshape(b, channels, m * m, sh, sw)
    moved = torch.einsum("bij,bcipq->bcjpq", plan.to(x.dtype), blocks)
    moved = moved.reshape(b, channels, m, m, sh, sw).permute(0, 1, 2, 4, 3, 5)
    return moved.reshape(b, channels, height, width)


def _as_channels(value: float | Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel statistics as a (1, C, 1, 1) tensor on ``like``'s device (a scalar
    broadcasts)."""
    tensor = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    return tensor.reshape(1, -1, 1, 1) if tensor.dim() else tensor


def puzzlemix(
    x: torch.Tensor,
    saliency: torch.Tensor,
    perm: torch.Tensor,
    lam: float,
    block_num: int,
    mean: float | Sequence[float] | torch.Tensor = 0.0,
    std: float | Sequence[float] | torch.Tensor = 1.0,
    *,
    beta: float = 1.2,
    gamma: float = 0.5,
    eta: float = 0.2,
    neigh_size: int = 4,
    n_labels: int = 3,
    transport: bool = True,
    t_eps: float = 0.8,
    t_size: int = 4,
    workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PuzzleMix batch: ``(x_mix (b, C, H, W), ratio (b,))``.

    ``saliency`` (b, H, W) is :func:`gradient_saliency` of the clean batch; ``block_num`` the
    side n of the block grid (``W / n`` pixels a block; square images); ``mean`` and ``std``
    the data set's per-channel statistics, with which ``pix(x) = x * std + mean`` feeds the
    boundary terms. The mask ``M`` (b, n, n) is :func:`puzzle_mask` of
    :func:`puzzle_graph_terms`; ``ratio = mean(M)``, the own image's share. With
    ``transport``, each image's blocks are moved (:func:`puzzle_transport`,
    :func:`transport_blocks`) at the resolution of ``min(t_size, W / n)`` pixels (``t_size =
    -1``: the block side) so that its salient blocks land where it is shown; then ``x_mix =
    up(M) * T_own(x) + (1 - up(M)) * T_partner(x[perm])``. Needs ``mixbench[graphcut]``.
    """
    if x.dim() != 4 or saliency.shape != (x.shape[0], x.shape[2], x.shape[3]):
        raise ValueError(
            f"expected images (b, C, H, W) and saliency (b, H, W), got {tuple(x.shape)}"
            f" and {tuple(saliency.shape)}"
        )
    height, width = int(x.shape[2]), int(x.shape[3])
    if height != width or width % block_num:
        raise ValueError(
            f"a {block_num} x {block_num} grid does not tile {height} x {width} images"
        )
    block_side = width // block_num
    unary = block_saliency(saliency, block_side)
    pixels = x.detach() * _as_channels(std, x) + _as_channels(mean, x)
    terms = puzzle_graph_terms(unary, pixels, perm, beta=beta, gamma=gamma, neigh_size=neigh_size)
    mask = puzzle_mask(*terms, lam, eta=eta, n_labels=n_labels, workers=workers).to(x.device)
    ratio = mask.mean(dim=(1, 2))
    own, partner = x, x[perm]
    if transport:
        side = block_side if t_size == -1 else min(int(t_size), block_side)
        if side < 1 or width % side:
            raise ValueError(f"transport blocks of {side} pixels do not tile {width}-pixel images")
        grid = width // side
        if grid > block_num:
            fine_mask = F.interpolate(mask.unsqueeze(1), size=grid, mode="nearest").squeeze(1)
            fine_unary = block_saliency(saliency, side)
        else:
            fine_mask, fine_unary = mask, unary
        own = transport_blocks(own, puzzle_transport(fine_mask, fine_unary, eps=t_eps))
        partner = transport_blocks(
            partner, puzzle_transport(1 - fine_mask, fine_unary[perm], eps=t_eps)
        )
    shown = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="nearest").to(x.dtype)
    return shown * own + (1 - shown) * partner, ratio


# -- optimal transport -------------------------------------------------------------------


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch's CPU kernels on one intra-op thread inside the block, then restore.

    Sinkhorn is thousands of kernels on small tensors (b * r * r floats): spread over threads,
    each pays a synchronisation that costs more than the work, and many times more when other
    processes share the cores (measured on 2 shared cores: ~0.13 s on one thread against
    0.2 to 7 s on two, for b = 128 and r = 16).
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sinkhorn(
    cost: torch.Tensor,
    eps: float = 0.1,
    max_iter: int = 100,
    tol: float = 0.1,
    *,
    check_every: int | None = None,
) -> torch.Tensor:
    """Entropic optimal transport plans with uniform marginals, by log-domain Sinkhorn.

    Solves ``min_P <P, C> - eps * H(P)`` for each cost matrix ``C`` of the batch ``cost``
    (b, r, s) on the cost exactly as given (no rescaling), with row marginals ``1/r`` and
    column marginals ``1/s``. The iteration runs on the potentials in log space, so that costs
    of 10^4 and more with ``eps = 0.1`` stay finite: ``f = -eps * logsumexp((g - C) / eps) +
    eps * log(1/r)``, then ``g`` likewise over the other axis. It stops after ``max_iter``
    iterations, or earlier once the change of the row potential ``f`` (cost units), summed
    over positions and averaged over the batch, is below ``tol``. After each iteration the
    column marginals hold exactly; the row marginals hold once converged.

    Works in the cost's dtype (float16 and bfloat16 costs are solved in float32, whose range
    ``C / eps`` needs, and the plan is returned in the cost's dtype). No gradient flows
    through the solver. Returns the plan ``P`` (b, r, s).

    ``check_every`` only changes how often the stop rule is read on the host (default: after
    every iteration on the CPU, every 10 on accelerators, to save synchronisations); the
    potentials of each iteration are kept, so the plan is the same for every value.
    """
    if cost.dim() != 3:
        raise ValueError(
            f"expected a batch of cost matrices (b, r, s), got shape {tuple(cost.shape)}"
        )
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if check_every is not None and check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    b, r, s = cost.shape
    work = cost.dtype if cost.dtype in (torch.float32, torch.float64) else torch.float32
    threads = _one_thread() if cost.device.type == "cpu" else contextlib.nullcontext()
    with torch.no_grad(), threads:
        log_kernel = cost.detach().to(work) / -eps  # (b, r, s)
        log_mu, log_nu = -math.log(r), -math.log(s)
        # Potentials divided by eps: u = f / eps, v = g / eps.
        u = torch.zeros(b, r, dtype=work, device=cost.device)
        v = torch.zeros(b, s, dtype=work, device=cost.device)
        # On an accelerator, the stop rule is read every few iterations (one host sync per
        # block); the potentials of every iteration are kept, so the result is the one that
        # checking after each iteration gives.
        block = check_every or (1 if cost.device.type == "cpu" else 10)
        done = 0
        while done < max_iter:
            steps = min(block, int(max_iter) - done)
            history, changes = [], []
            for _ in range(steps):
                u_new = log_mu - torch.logsumexp(log_kernel + v.unsqueeze(1), dim=2)
                v = log_nu - torch.logsumexp(log_kernel + u_new.unsqueeze(2), dim=1)
                changes.append((u_new - u).abs_().sum(1).mean() * eps)
                history.append((u_new, v))
                u = u_new
            done += steps
            if steps == 1:
                stop = 0 if changes[0].item() < tol else 1
            else:
                below = torch.stack(changes) < tol
                index = torch.arange(steps, device=cost.device)
                stop = int(torch.where(below, index, steps).min())
            if stop < steps:
                u, v = history[stop]
                break
        plan = (log_kernel + u.unsqueeze(2) + v.unsqueeze(1)).exp_()
    return plan.to(cost.dtype)


def alignment_cost(a: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean costs ``C[i, j] = ||a[:, i] - a2[:, j]||^2`` per example, detached.

    ``a`` (b, d, r) and ``a2`` (b, d, s) are feature maps flattened over their positions; the
    result (b, r, s) is computed in float32 (also under autocast: raw feature costs reach
    10^4 and more, beyond what half precision resolves) and clamped at zero.
    """
    if a.dim() != 3 or a2.dim() != 3 or a.shape[:2] != a2.shape[:2]:
        raise ValueError(
            f"expected a (b, d, r) and a2 (b, d, s), got {tuple(a.shape)}, {tuple(a2.shape)}"
        )
    with torch.no_grad(), torch.autocast(a.device.type, enabled=False):
        a, a2 = a.float(), a2.float()
        sq = (a * a).sum(1).unsqueeze(2)  # (b, r, 1)
        sq2 = (a2 * a2).sum(1).unsqueeze(1)  # (b, 1, s)
        cost = torch.baddbmm(sq + sq2, a.transpose(1, 2), a2, alpha=-2.0)
    return cost.clamp_min_(0.0)


def align_mix(
    a: torch.Tensor, a2: torch.Tensor, plan: torch.Tensor, lam: float, align_second: bool
) -> torch.Tensor:
    """AlignMixup's mixing of feature maps ``a`` and ``a2`` (b, d, r) under the plan (b, r, r).

    With ``R = r * plan``: if ``align_second``, ``a2`` is carried to ``a``'s geometry,
    ``lam * a + (1 - lam) * a2 @ R^T``; otherwise ``a`` is carried to ``a2``'s geometry,
    ``lam * a @ R + (1 - lam) * a2``. Differentiable in ``a`` and ``a2``, not in the plan.
    Computed in float32 (also under autocast, as the official code computes it) and returned
    in float32.
    """
    if a.shape != a2.shape or plan.shape != (a.shape[0], a.shape[2], a.shape[2]):
        raise ValueError(
            f"expected a, a2 (b, d, r) and plan (b, r, r), got {tuple(a.shape)}, "
            f"{tuple(a2.shape)}, {tuple(plan.shape)}"
        )
    with torch.autocast(a.device.type, enabled=False):
        a, a2 = a.float(), a2.float()
        transport = plan.detach().float() * plan.shape[1]
        if align_second:
            return torch.lerp(torch.bmm(a2, transport.transpose(1, 2)), a, float(lam))
        return torch.lerp(a2, torch.bmm(a, transport), float(lam))


# -- MultiMix ----------------------------------------------------------------------------


def _subset_weights(
    alpha: float,
    shape: tuple[int, ...],
    b: int,
    m: int | None,
    generator: torch.Generator | None,
    device: torch.device,
    normalise: bool,
) -> torch.Tensor:
    """Dirichlet weights (``shape`` + (b,)) over the b examples of a batch: with ``m < b``,
    each slice draws its own m examples (a random permutation's first m, per slice) and gets
    Dirichlet(alpha * ones(m)) weights on them, zero elsewhere. Not normalised when
    ``normalise`` is false (proportional draws, for callers that renormalise anyway)."""
    if m is None or m >= b:
        if normalise:
            return sample_dirichlet(alpha, (*shape, b), generator=generator, device=device)
        return _dirichlet_proportional(alpha, (*shape, b), generator, device, torch.float32)
    if m < 1:
        raise ValueError(f"m must be >= 1 (or None for the whole batch), got {m}")
    # Random subsets per slice: the m smallest of b uniform keys (a uniform m-subset).
    keys = torch.rand((*shape, b), generator=generator, device=device)
    chosen = keys.topk(m, dim=-1, largest=False).indices  # (..., m)
    if normalise:
        draws = sample_dirichlet(alpha, (*shape, m), generator=generator, device=device)
    else:
        draws = _dirichlet_proportional(alpha, (*shape, m), generator, device, torch.float32)
    return torch.zeros((*shape, b), device=device, dtype=draws.dtype).scatter_(-1, chosen, draws)


def multimix(
    z: torch.Tensor,
    targets: torch.Tensor,
    n: int,
    alpha: float,
    generator: torch.Generator | None = None,
    m: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MultiMix: ``n`` Dirichlet interpolations of the embeddings ``z`` and their targets.

    Draws ``L`` (n, b) on ``z``'s device (batched draws) and returns ``(L @ z, L @ targets,
    L)``: mixed embeddings (n, d), mixed targets (n, c) and the weights (n, b) in float32.
    Each row of ``L`` is ``~ Dirichlet(alpha * ones(b))``; with ``m < b`` each row draws its
    own m examples of the batch and is ``~ Dirichlet(alpha * ones(m))`` on them, zero on the
    others (so that every example can receive loss). ``targets`` is a float matrix (b, c),
    one-hot or soft; the targets are always mixed in full precision, also under autocast.
    """
    if z.dim() != 2 or targets.dim() != 2 or z.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected z (b, d) and targets (b, c), got {tuple(z.shape)} and {tuple(targets.shape)}"
        )
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    alpha = _check_alpha(alpha)
    weights = _subset_weights(alpha, (n,), z.shape[0], m, generator, z.device, normalise=True)
    z_mix = weights.to(z.dtype) @ z
    with torch.autocast(z.device.type, enabled=False):
        targets_mix = weights.to(targets.dtype) @ targets
    return z_mix, targets_mix, weights


def dense_multimix(
    features: torch.Tensor,
    targets: torch.Tensor,
    attention: torch.Tensor,
    n: int,
    alpha: float,
    generator: torch.Generator | None = None,
    m: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense MultiMix: per-position, attention-weighted interpolation of feature maps.

    ``features`` (b, d, r) are feature maps flattened over their r positions, ``targets``
    (b, c) the examples' targets (inherited by every position), ``attention`` (b, r) a
    non-negative confidence per example and position, used exactly as given. For each of
    ``n`` generated examples and each position j, ``L[k, j] ~ Dirichlet(alpha * ones(b))``
    (with ``m < b``: over m examples of its own, zero on the others); the weights
    ``W[k, j, i] = L[k, j, i] * a[i, j] / sum_i' L[k, j, i'] * a[i', j]`` (an example with
    zero attention at j gets zero weight there; where every example of the draw has zero
    attention, the weights fall back to ``L``) mix ``Z[k, j] = sum_i W[k, j, i] F[i, :, j]``
    and ``Y[k, j] = sum_i W[k, j, i] targets[i]``.

    Returns ``(z_mix (n, r, d), targets_mix (n, r, c))``. Both are transposed views of
    position-major (r, n, ...) tensors, the layout of the batched matrix products; a loss that
    averages over all terms can use ``z_mix.transpose(0, 1)``, which is contiguous.
    """
    if features.dim() != 3:
        raise ValueError(f"expected features (b, d, r), got shape {tuple(features.shape)}")
    b, _, r = features.shape
    if attention.shape != (b, r):
        raise ValueError(f"expected attention of shape ({b}, {r}), got {tuple(attention.shape)}")
    if targets.dim() != 2 or targets.shape[0] != b:
        raise ValueError(f"expected targets ({b}, c), got shape {tuple(targets.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    # Gamma draws proportional to L (r, n, b); normalising L first would cancel in W.
    alpha = _check_alpha(alpha)
    gamma = _subset_weights(alpha, (r, n), b, m, generator, features.device, normalise=False)
    att = attention.transpose(0, 1).to(gamma.dtype).unsqueeze(1)  # (r, 1, b)
    weights = gamma * att  # (r, n, b)
    # Where every example of a draw has zero attention, the plain draw stands.
    dead = weights.sum(-1, keepdim=True) == 0
    weights = torch.where(dead, gamma, weights)
    weights.div_(weights.sum(-1, keepdim=True).clamp_min_(torch.finfo(weights.dtype).tiny))
    z_mix = torch.bmm(weights.to(features.dtype), features.permute(2, 0, 1))  # (r, n, d)
    with torch.autocast(features.device.type, enabled=False):
        targets_mix = weights.to(targets.dtype) @ targets  # (r, n, c)
    return z_mix.transpose(0, 1), targets_mix.transpose(0, 1)


def dense_attention(features: torch.Tensor, kind: str = "similarity") -> torch.Tensor:
    """Per-position confidence ``a`` (b, r) of feature maps ``features`` (b, d, r), detached.

    ``"similarity"`` (Dense MultiMix's default): ``normalize_l1(relu(F[i]^T z_i))`` with
    ``z_i = mean_j F[i, :, j]``, the similarity of each position to the pooled embedding; an
    example whose similarities are all <= 0 gets zero attention everywhere. ``"softmax"``:
    the softmax over positions of the same similarities divided by ``sqrt(d)`` (this
    project's variant). ``"none"``: uniform ``1 / r`` (an ablation). Float32.
    """
    b, d, r = features.shape
    if kind == "none":
        return torch.full((b, r), 1.0 / r, device=features.device)
    if kind not in ("similarity", "softmax"):
        raise ValueError(f"attention must be 'similarity', 'softmax' or 'none', got {kind!r}")
    with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
        f = features.float()
        scores = torch.bmm(f.mean(2).unsqueeze(1), f).squeeze(1)  # (b, r)
        if kind == "softmax":
            return torch.softmax(scores / math.sqrt(d), dim=1)
        scores.relu_()
        return scores.div_(scores.sum(1, keepdim=True).clamp_min_(torch.finfo(scores.dtype).tiny))


# -- Co-Mixup ------------------------------------------------------------------------------


def comixup_compatibility(saliency: torch.Tensor, window: int = 8) -> torch.Tensor:
    """Co-Mixup's compatibility: L1 distances between the examples' most salient places.

    ``z = avg_pool2d(saliency, window, stride=1)`` for ``saliency`` (b, H, W); ``p_i`` the
    (row, column) of the first maximum of ``z_i`` in row-major order; returns ``D`` (b, b)
    float32 with ``D[i, j] = |p_i - p_j|_1`` (symmetric, zero diagonal), on the saliency's
    device. ``window`` must not exceed ``H`` or ``W``.
    """
    if saliency.dim() != 3:
        raise ValueError(f"expected saliency maps (b, H, W), got shape {tuple(saliency.shape)}")
    window = int(window)
    b, height, width = (int(s) for s in saliency.shape)
    if window < 1 or window > min(height, width):
        raise ValueError(f"window {window} does not fit the {height} x {width} saliency map")
    with torch.no_grad(), torch.autocast(saliency.device.type, enabled=False):
        z = F.avg_pool2d(saliency.detach().float().unsqueeze(1), window, stride=1).squeeze(1)
        flat = z.reshape(b, -1)
        n = flat.shape[1]
        # The first maximum in row-major order (torch.argmax does not promise which on ties).
        order = torch.arange(n, device=flat.device).expand(b, n)
        first = torch.where(flat == flat.amax(1, keepdim=True), order, n).amin(1)
        rows = torch.div(first, z.shape[-1], rounding_mode="floor")
        position = torch.stack([rows, first - rows * z.shape[-1]], 1).float()  # (b, 2)
        return (position.unsqueeze(1) - position.unsqueeze(0)).abs().sum(-1)


def _comixup_draws(
    m: int, height: int, width: int, alpha: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random inputs of one Co-Mixup chunk of ``m`` examples, in this order: the
    Dirichlet weights ``pi ~ Dirichlet(alpha * ones(m))`` (m,) float32, shared by the chunk's
    outputs, then the initial labels (m, height, width) int64, uniform over the m inputs.
    Both from ``generator`` (a CPU generator), on the CPU."""
    pi = sample_dirichlet(alpha, (m,), generator=generator)
    labels = torch.randint(m, (m, height, width), generator=generator)
    return pi, labels


def _comixup_objective(cost: np.ndarray, masks: np.ndarray, beta: float, gamma: float) -> float:
    """``sum(Cst * M) + beta / 2 * (squared neighbour differences of M) + gamma * (sum_j
    count_j^2 - sum_{k,j} n_kj^2)`` for node costs ``cost`` (m, h, w) and ``masks``
    (outputs, h, w, m), in float64 (``beta`` and ``gamma`` already divided by h * w)."""
    unary = float(np.einsum("jhw,khwj->", cost, masks))
    smooth = float(((masks[:, :-1] - masks[:, 1:]) ** 2).sum())
    smooth += float(((masks[:, :, :-1] - masks[:, :, 1:]) ** 2).sum())
    per_output = masks.sum(axis=(1, 2))  # n_kj
    overlap = float((per_output.sum(0) ** 2).sum() - (per_output**2).sum())
    return unary + beta / 2 * smooth + gamma * overlap


def _comixup_cut(
    node: np.ndarray, counts: np.ndarray | None, beta: float, gco_module
) -> np.ndarray:
    """One output's graph cut: its mask (h, w, m) from node costs ``node`` (h, w, m).

    ``counts`` (m,) are the output's blocks per input in the previous round (``None`` in
    round 0): with two inputs used, one extra label "half each" is offered; with three or
    more, three extra labels for the pairs of the three most used inputs (ties as
    ``torch.topk``). An extra label costs the mean of its pair's costs minus 5e-4 and lies at
    distance 0.25 from its two inputs, 1 from every other label. Potts edges of weight
    ``beta`` on the 4-connected grid; alpha-beta swap to convergence, costs as float32.
    """
    height, width, m = node.shape
    used = np.flatnonzero(counts > 0) if counts is not None else np.empty(0, dtype=np.int64)
    if len(used) == 2:
        pairs = [(int(used[0]), int(used[1]))]
    elif len(used) >= 3:
        top = torch.topk(torch.from_numpy(counts.astype(np.float32)), 3).indices
        a1, a2, a3 = sorted(int(i) for i in top)
        pairs = [(a1, a2), (a1, a3), (a2, a3)]
    else:
        pairs = []
    n_labels = m + len(pairs)
    # Each label's share of each input: the identity, then one row of halves per pair.
    table = np.zeros((n_labels, m), dtype=np.float64)
    table[np.arange(m), np.arange(m)] = 1.0
    distance = 1.0 - np.eye(n_labels, dtype=np.float64)
    unary = np.empty((height, width, n_labels), dtype=np.float64)
    unary[:, :, :m] = node
    for extra, (a, a2) in enumerate(pairs, start=m):
        table[extra, [a, a2]] = 0.5
        distance[extra, [a, a2]] = distance[[a, a2], extra] = 0.25
        unary[:, :, extra] = (node[:, :, a] + node[:, :, a2]) / 2 - 5e-4
    if n_labels == 1:  # a chunk of one example: GCO aborts on a single label
        return table[np.zeros((height, width), dtype=np.int64)]
    labels = gco_module.cut_grid_graph(
        np.ascontiguousarray(unary, dtype=np.float32),
        np.ascontiguousarray(distance, dtype=np.float32),
        np.full((height - 1, width), beta, dtype=np.float32),
        np.full((height, width - 1), beta, dtype=np.float32),
        n_iter=-1,
        algorithm="swap",
    )
    return table[np.asarray(labels, dtype=np.int64).reshape(height, width)]


def _comixup_resolve(masks: np.ndarray) -> np.ndarray:
    """The extra costs ``R`` (outputs, m) that separate outputs using the same inputs: for
    every pair ``k1 < k2`` (row-major order) whose sets of used inputs are equal and hold more
    than one input, ``R[k1][first input] = 1`` and ``R[k2][second input] = 1``."""
    used = masks.sum(axis=(1, 2)) > 0  # (outputs, m)
    extra = np.zeros(used.shape, dtype=np.float64)
    for k1 in range(len(used)):
        inputs = np.flatnonzero(used[k1])
        if len(inputs) < 2:
            continue
        for k2 in range(k1 + 1, len(used)):
            if np.array_equal(used[k1], used[k2]):
                extra[k1, inputs[0]] = 1.0
                extra[k2, inputs[1]] = 1.0
    return extra


def _comixup_solve(
    unary: np.ndarray,
    compat: np.ndarray,
    pi: np.ndarray,
    init_labels: np.ndarray,
    *,
    beta: float = 0.32,
    gamma: float = 1.0,
    eta: float = 0.05,
    tau: float = 0.83,
    tau_type: str = "hard",
    omega: float = 0.001,
    n_iter: int = 4,
    resolve: bool = True,
) -> np.ndarray:
    """The deterministic part of :func:`comixup_masks`, on NumPy arrays: masks (m, h, w, m)
    float32 from ``unary`` (m, h, w), ``compat`` (m, m), the Dirichlet weights ``pi`` (m,)
    and the initial labels ``init_labels`` (m, h, w). Runs in any process (no torch state)."""
    require_extra("method 'comixup'", "graphcut")
    import gco

    m, height, width = unary.shape
    blocks = height * width
    beta, gamma, eta = beta / blocks, gamma / blocks, eta / blocks
    threshold = tau * blocks
    cost = -np.asarray(unary, dtype=np.float64)
    cost = cost - eta * np.log(np.asarray(pi, dtype=np.float64) + 1e-8)[:, None, None]
    compat = np.asarray(compat, dtype=np.float64)
    total = compat.sum()
    # Where every distance is 0 the official code divides by zero; then A = (1 - omega) I.
    a_matrix = (1.0 - omega) * np.eye(m)
    if total > 0:
        a_matrix = a_matrix + omega * m * compat / total
    masks = np.eye(m, dtype=np.float64)[np.asarray(init_labels, dtype=np.int64)]
    count = masks.sum(axis=(0, 1, 2))
    node_base = cost.transpose(1, 2, 0)  # (h, w, m)
    extra_cost = None
    previous = _comixup_objective(cost, masks, beta, gamma)
    for round_ in range(n_iter):
        for k in range(m):
            own = masks[k].sum(axis=(0, 1))
            count = count - own
            q = a_matrix @ count
            over = q > threshold
            penalty = 2 * gamma * over * (q if tau_type == "hard" else q - threshold)
            node = node_base + penalty
            if extra_cost is not None:
                node = node + gamma * extra_cost[k]
            masks[k] = _comixup_cut(node, own if round_ > 0 else None, beta, gco)
            count = count + masks[k].sum(axis=(0, 1))
        if resolve and round_ == n_iter - 2:
            extra_cost = _comixup_resolve(masks)
        objective = _comixup_objective(cost, masks, beta, gamma)
        if objective != 0 and abs(previous - objective) / abs(objective) < 1e-6:
            break
        previous = objective
    return masks.astype(np.float32)


def _check_comixup_inputs(unary: torch.Tensor, compat: torch.Tensor, tau_type: str) -> None:
    if unary.dim() != 3 or unary.shape[0] < 1:
        raise ValueError(f"expected block saliency (m, h, w), got shape {tuple(unary.shape)}")
    m = unary.shape[0]
    if tuple(compat.shape) != (m, m):
        raise ValueError(f"expected compat of shape ({m}, {m}), got {tuple(compat.shape)}")
    if tau_type not in ("hard", "soft"):
        raise ValueError(f"tau_type must be 'hard' or 'soft', got {tau_type!r}")


def comixup_masks(
    unary: torch.Tensor,
    compat: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 0.32,
    gamma: float = 1.0,
    eta: float = 0.05,
    tau: float = 0.83,
    tau_type: str = "hard",
    omega: float = 0.001,
    n_iter: int = 4,
    resolve: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Co-Mixup's joint labelling of one chunk: m outputs assembled block by block from m
    inputs. Returns masks (m, h, w, m) float32 on ``unary``'s device, ``masks[k, r, q, j]``
    the share of input ``j`` in block (r, q) of output ``k``: 0, 1/2 or 1, summing to 1 over
    ``j``.

    ``unary`` (m, h, w) is the block saliency (:func:`block_saliency`, each map summing to
    1), ``compat`` (m, m) the chunk's block of :func:`comixup_compatibility`. With ``n = h *
    w``: node costs ``Cst[j] = -unary[j] - eta / n * log(pi_j + 1e-8)`` with one draw ``pi ~
    Dirichlet(alpha * ones(m))`` shared by the chunk; ``A = (1 - omega) I + omega * m * D /
    sum(D)`` (``(1 - omega) I`` when ``sum(D) = 0``); initial labels uniform over the inputs.
    ``n_iter`` rounds; in each, output k = 1..m in turn is cut on the h x w grid (GCO's
    alpha-beta swap, costs as float32) with node costs ``Cst + 2 gamma / n * [q > tau n] *
    q`` (``"hard"``; ``"soft"``: ``q - tau n``), ``q = A @ count``, ``count`` the blocks per
    input of the other outputs (a half block counts 1/2), Potts edges ``beta / n``. From
    round 1 an output that used two inputs may also take "half of each" (cost the pair's
    mean minus 5e-4, distance 0.25 to both), one that used three or more the three pairs of
    its three most used inputs. After round ``n_iter - 2`` (``resolve``), outputs using the
    same inputs get a cost ``gamma / n`` on one of them each. The rounds stop early when the
    objective changes by less than 1e-6 relative. A chunk of one example (m = 1) gives
    all-ones masks without a cut.

    Draw order: ``pi``, then the initial labels, both from ``generator`` (a CPU generator).
    Needs the optional extra ``mixbench[graphcut]`` (``gco`` is imported here, on first use).
    """
    _check_comixup_inputs(unary, compat, tau_type)
    m, height, width = (int(s) for s in unary.shape)
    pi, labels = _comixup_draws(m, height, width, alpha, generator)
    masks = _comixup_solve(
        unary.detach().to("cpu", torch.float32).numpy(),
        compat.detach().to("cpu", torch.float32).numpy(),
        pi.numpy(),
        labels.numpy(),
        beta=beta,
        gamma=gamma,
        eta=eta,
        tau=tau,
        tau_type=tau_type,
        omega=omega,
        n_iter=int(n_iter),
        resolve=bool(resolve),
    )
    return torch.from_numpy(masks).to(unary.device)


def comixup_mix(
    x: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assemble Co-Mixup's outputs: ``x_out[k] = sum_j up(masks[k, :, :, j]) * x[j]``, with
    ``up`` nearest-neighbour upsampling of the (h, w) block grid to (H, W), and ``y_out[k]``
    the block sum of ``masks[k] @ targets``, normalised to sum 1.

    ``x`` (n, C, H, W), ``targets`` (n, c) and ``masks`` (m, h, w, n); returns ``(x_mix (m,
    C, H, W) in x's dtype, targets_mix (m, c) float32)``, computed in float32 (also under
    autocast), so that whole blocks of one input are copied exactly.
    """
    if x.dim() != 4:
        raise ValueError(f"expected images (n, C, H, W), got shape {tuple(x.shape)}")
    if masks.dim() != 4 or masks.shape[-1] != x.shape[0]:
        raise ValueError(f"expected masks (m, h, w, {x.shape[0]}), got shape {tuple(masks.shape)}")
    if targets.dim() != 2 or targets.shape[0] != x.shape[0]:
        raise ValueError(f"expected targets ({x.shape[0]}, c), got shape {tuple(targets.shape)}")
    with torch.autocast(x.device.type, enabled=False):
        weights = masks.to(x.device, torch.float32)
        up = F.interpolate(weights.permute(0, 3, 1, 2), size=x.shape[-2:], mode="nearest")
        x_mix = torch.einsum("knhw,nchw->kchw", up, x.float()).to(x.dtype)
        y_mix = weights.sum(dim=(1, 2)) @ targets.to(x.device, torch.float32)
        y_mix = y_mix / y_mix.sum(-1, keepdim=True)
    return x_mix, y_mix


# -- FMix ----------------------------------------------------------------------------------


def low_frequency_image(
    height: int,
    width: int,
    decay_power: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FMix's low-frequency image: (height, width) float32 in [0, 1], both ends reached.

    On the real-FFT grid of ``height`` x ``width`` (``width // 2 + 1`` columns), ``f =
    sqrt(fy^2 + fx^2)`` with ``fy`` the FFT frequencies of ``height`` and ``fx`` the real-FFT
    frequencies of ``width``; amplitudes ``a = 1 / max(f, 1 / max(height, width)) **
    decay_power``; the spectrum ``a * (N1 + i N2)`` with ``N1`` and ``N2`` standard normal
    (height, width // 2 + 1) tensors, drawn in that order from ``generator`` (a CPU
    generator); ``g = irfft2(spectrum, size (height, width))`` (computed in float64), then
    ``g = (g - min g) / max(g - min g)``. Returned on the CPU.
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    columns = width // 2 + 1
    fy = torch.fft.fftfreq(height, dtype=torch.float64)
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)
    freq = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    amplitude = freq.clamp_min(1.0 / max(height, width)).pow(-float(decay_power))
    real = torch.randn((height, columns), generator=generator)
    imag = torch.randn((height, columns), generator=generator)
    spectrum = torch.complex(amplitude * real.double(), amplitude * imag.double())
    image = torch.fft.irfft2(spectrum, s=(height, width))
    image = image - image.min()
    peak = image.max()
    if peak > 0:
        image = image / peak
    return image.float()


def fmix_mask(
    height: int,
    width: int,
    lam: float,
    decay_power: float = 3.0,
    max_soft: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FMix's mask for mixing ratio ``lam``: (height, width) float32, on the CPU.

    A :func:`low_frequency_image` ``g`` (its normal draws first), then a fair coin from the
    same ``generator``: ``k = ceil(lam H W)`` when it exceeds 1/2, else ``floor(lam H W)``
    (as the official code). Ranking the entries of ``g`` from the largest (ties in row-major
    order), with ``max_soft = 0`` the ``k`` largest become 1 and the rest 0: exactly ``k``
    ones. With ``max_soft > 0``: ``e = min(max_soft, lam, 1 - lam)``, ``s = int(H W e)``;
    ranks ``< k - s`` are 1, ranks ``>= k + s`` are 0 and ranks in ``[k - s, k + s)`` fall
    linearly from 1 to 0 (``2 s`` values, both ends included: ``k - s + 1`` ones and ``H W - k
    - s + 1`` zeros when ``s >= 1``).
    """
    lam, max_soft = float(lam), float(max_soft)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    if max_soft < 0:
        raise ValueError(f"max_soft must be >= 0, got {max_soft}")
    image = low_frequency_image(height, width, decay_power, generator)
    n = image.numel()
    up = float(torch.rand((), generator=generator)) > 0.5
    k = math.ceil(lam * n) if up else math.floor(lam * n)
    order = torch.argsort(image.reshape(-1), descending=True, stable=True)
    ranks = torch.empty(n, dtype=torch.int64)
    ranks[order] = torch.arange(n)
    soft = int(n * min(max_soft, lam, 1.0 - lam)) if max_soft > 0 else 0
    if soft == 0:
        values = (ranks < k).float()
    else:
        low = k - soft
        values = (1.0 - (ranks - low).double() / (2 * soft - 1)).clamp(0.0, 1.0).float()
    return values.reshape(image.shape)


# -- ResizeMix -----------------------------------------------------------------------------


def resize_box(
    height: int,
    width: int,
    scale: float,
    generator: torch.Generator | None = None,
    *,
    center: tuple[int, int] | None = None,
) -> tuple[Box, float]:
    """ResizeMix's box for side ratio ``scale`` and the mixing ratio it gives.

    Cut sizes ``cut_h = int(height * scale)`` and ``cut_w = int(width * scale)`` (a ratio of
    sides, not of areas), a centre pixel ``(cy, cx)`` uniform over the image (drawn with
    ``generator``, a CPU generator, rows first; or given as ``center``), rows ``[cy - cut_h //
    2, cy + cut_h // 2)`` and columns likewise, clipped to the image (so a side is ``2 * (cut
    // 2)``). Returns ``((top, bottom, left, right), lam_adjusted)``: Python ints as half-open
    bounds and ``lam_adjusted = 1 - (bottom - top) * (right - left) / (height * width)``.
    """
    height, width, scale = int(height), int(width), float(scale)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not 0.0 <= scale <= 1.0:
        raise ValueError(f"scale must lie in [0, 1], got {scale}")
    cut_h, cut_w = int(height * scale), int(width * scale)
    if center is None:
        cy = int(torch.randint(height, (1,), generator=generator))
        cx = int(torch.randint(width, (1,), generator=generator))
    else:
        cy, cx = int(center[0]), int(center[1])
    top, bottom = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    left, right = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    area = (bottom - top) * (right - left)
    return (top, bottom, left, right), 1.0 - area / (height * width)


def resize_paste(
    x: torch.Tensor, box: Box, perm: torch.Tensor, mode: str = "nearest"
) -> torch.Tensor:
    """A copy of ``x`` (b, C, H, W) whose ``box`` holds the whole of ``x[perm]``, resized.

    ``F.interpolate(x[perm], (bottom - top, right - left), mode)``: ``"nearest"`` (torch's
    legacy nearest) or ``"bilinear"`` (``align_corners=False``, no antialiasing). An empty
    box leaves the copy equal to ``x``.
    """
    if x.dim() != 4:
        raise ValueError(f"expected images (b, C, H, W), got shape {tuple(x.shape)}")
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    top, bottom, left, right = (int(v) for v in box)
    out = x.clone()
    if bottom <= top or right <= left:
        return out
    options = {"align_corners": False} if mode == "bilinear" else {}
    out[:, :, top:bottom, left:right] = F.interpolate(
        x[perm], size=(bottom - top, right - left), mode=mode, **options
    )
    return out


# -- GridMixup -----------------------------------------------------------------------------


def grid_mask(
    height: int,
    width: int,
    lam: float,
    n_holes: int,
    hole_aspect_ratio: float = 1.0,
    cut_area_ratio: float = 1.0,
    cut_aspect_ratio: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """GridMixup's mask: (height, width) float32 in {0, 1}, 1 where pixels come from
    ``x[perm]``; on the CPU.

    A crop of ``area = int(H W cut_area_ratio)`` pixels, ``cw = int(sqrt(area /
    cut_aspect_ratio))`` wide and ``ch = int(cw * cut_aspect_ratio)`` tall, its top-left
    ``(int((H - ch) v), int((W - cw) u))`` (truncation toward zero) for ``u`` then ``v``
    uniform in [0, 1) from ``generator`` (a CPU generator). A grid in the crop: ``pw =
    ceil(cw / n_holes)``, ``ph = int(pw * hole_aspect_ratio)``, ``ny = ceil(ch / ph)``; holes
    ``hw = clamp(int(pw sqrt(1 - lam)), 1, pw - 1)`` wide and ``hh = clamp(int(ph sqrt(1 -
    lam)), 1, ph - 1)`` tall at crop coordinates ``(i pw, j ph)``, ``i = 0..n_holes``, ``j =
    0..ny``, each clipped to the crop and shifted by its top-left. ``n_holes <= cw // 2`` is
    required.

    Kept quirk of the reference code: the crop can be larger than the image, so its top-left
    can be negative; each hole is then written with Python's slice rules on the image (a hole
    whose start and end are both negative lands at the opposite border, one whose start is
    negative and end is not usually vanishes, parts beyond the far border are cut), exactly
    as there.
    """
    height, width, lam = int(height), int(width), float(lam)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    if min(hole_aspect_ratio, cut_area_ratio, cut_aspect_ratio) <= 0:
        raise ValueError("the hole aspect, crop area and crop aspect ratios must be > 0")
    n_holes = int(n_holes)
    area = int(height * width * float(cut_area_ratio))
    cut_w = int(math.sqrt(area / float(cut_aspect_ratio)))
    cut_h = int(cut_w * float(cut_aspect_ratio))
    u = float(torch.rand((), generator=generator))
    v = float(torch.rand((), generator=generator))
    if n_holes < 1 or n_holes > cut_w // 2:
        raise ValueError(
            f"n_holes must lie in [1, {cut_w // 2}] for a crop {cut_w} pixels wide, got {n_holes}"
        )
    left, top = int((width - cut_w) * u), int((height - cut_h) * v)
    patch_w = math.ceil(cut_w / n_holes)
    patch_h = int(patch_w * float(hole_aspect_ratio))
    if patch_h < 1:
        raise ValueError(f"hole_aspect_ratio {hole_aspect_ratio} gives grid rows of 0 pixels")
    rows = math.ceil(cut_h / patch_h)
    ratio = math.sqrt(1.0 - lam)
    hole_w = min(max(int(patch_w * ratio), 1), patch_w - 1)
    hole_h = min(max(int(patch_h * ratio), 1), patch_h - 1)
    mask = torch.zeros(height, width)
    for i in range(n_holes + 1):
        x1 = min(patch_w * i, cut_w)
        x2 = min(x1 + hole_w, cut_w)
        for j in range(rows + 1):
            y1 = min(patch_h * j, cut_h)
            y2 = min(y1 + hole_h, cut_h)
            # Python's slice rules, negative bounds included (the kept quirk).
            mask[top + y1 : top + y2, left + x1 : left + x2] = 1.0
    return mask


# -- SmoothMix -----------------------------------------------------------------------------


def smooth_mask(
    height: int,
    width: int,
    sigma_min: float = 0.25,
    sigma_max: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SmoothMix's Gaussian mask: (height, width) float32 in (0, 1], on the CPU.

    Draws, in this order from ``generator`` (a CPU generator): ``ry`` uniform in ``[0,
    height)``, ``rx`` uniform in ``[0, width)`` and ``u ~ U(0, 1)``; the centre is ``(ry - 0.5,
    rx - 0.5)`` (a half-pixel position, as OpenMixup's grid) and ``sigma = (sigma_min +
    (sigma_max - sigma_min) u) * height``; ``G[i, j] = exp(-((i - cy)^2 + (j - cx)^2) / (2
    sigma^2))``, largest at the pixels nearest the centre and symmetric about it (computed in
    float64; values that float32 cannot hold, far from the centre under a small sigma, are
    raised to its smallest normal number, so that the mask stays positive).
    """
    height, width = int(height), int(width)
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not 0.0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min} and {sigma_max}")
    ry = int(torch.randint(height, (1,), generator=generator))
    rx = int(torch.randint(width, (1,), generator=generator))
    u = float(torch.rand((), generator=generator))
    sigma = (sigma_min + (sigma_max - sigma_min) * u) * height
    rows = torch.arange(height, dtype=torch.float64) - (ry - 0.5)
    cols = torch.arange(width, dtype=torch.float64) - (rx - 0.5)
    squared = rows[:, None] ** 2 + cols[None, :] ** 2
    mask = torch.exp(-squared / (2.0 * sigma * sigma)).float()
    return mask.clamp_min(torch.finfo(torch.float32).tiny)  # no underflow to 0 far away


# -- GuidedMixup ---------------------------------------------------------------------------


def _gaussian_blur(maps: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` of (b, H, W) float32 maps: a ``kernel`` x ``kernel``
    Gaussian of ``sigma`` (its 1-D taps ``exp(-x^2 / (2 sigma^2))`` at ``x = -(k - 1) / 2 ..
    (k - 1) / 2``, normalised) on reflect padding."""
    kernel = int(kernel)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"a blur kernel must be an odd size >= 1, got {kernel}")
    if not sigma > 0:
        raise ValueError(f"a blur sigma must be > 0, got {sigma}")
    half = (kernel - 1) * 0.5
    taps = torch.linspace(-half, half, kernel, device=maps.device, dtype=torch.float32)
    taps = torch.exp(-0.5 * (taps / float(sigma)).pow(2))
    taps = taps / taps.sum()
    weight = (taps[:, None] * taps[None, :]).view(1, 1, kernel, kernel)
    pad = kernel // 2
    padded = maps.unsqueeze(1)
    if pad:
        padded = F.pad(padded, (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, weight).squeeze(1)


def spectral_residual_saliency(
    x: torch.Tensor,
    blur: int = 7,
    sigma: float = 3.0,
    box: int = 3,
    max_size: int = 128,
) -> torch.Tensor:
    """The spectral-residual saliency of each image: (b, H, W) float32, no gradient.

    On the batch ``x`` (b, C, H, W) as given (normalised images): the gray image ``0.2989 R +
    0.587 G + 0.114 B`` (one channel: itself); images taller than ``max_size`` first resized
    to ``max_size`` x ``max_size`` (bilinear, antialiased, as torchvision's ``Resize``); ``F =
    fft2(gray)``, amplitude ``|F| = sqrt(re^2 + im^2 + 1e-10)``, ``L = log |F|``, residual
    ``R = exp(L - box_mean(L))`` with a ``box`` x ``box`` mean filter on replicate padding;
    ``F' = F * R / |F|`` (the phase kept); ``s = |ifft2(F')|`` (the modulus); a Gaussian blur
    (``blur`` x ``blur``, ``sigma``, reflect padding); then the resize back to H x W if one
    was done. Computed in float32, outside autocast.
    """
    if x.dim() != 4:
        raise ValueError(f"expected images (b, C, H, W), got shape {tuple(x.shape)}")
    box = int(box)
    if box < 1 or box % 2 == 0:
        raise ValueError(f"the mean filter must have an odd size >= 1, got {box}")
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        images = x.detach().float()
        channels = images.shape[1]
        if channels == 3:
            gray = 0.2989 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
        elif channels == 1:
            gray = images[:, 0]
        else:
            raise ValueError(f"expected 1 or 3 channels, got {channels}")
        height, width = int(gray.shape[-2]), int(gray.shape[-1])
        resized = height > int(max_size)
        if resized:
            gray = F.interpolate(
                gray[:, None],
                size=(int(max_size), int(max_size)),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[:, 0]
        freq = torch.fft.fft2(gray)
        magnitude = (freq.real.pow(2) + freq.imag.pow(2) + 1e-10).sqrt()
        log_mag = magnitude.log()
        pad = box // 2
        padded = F.pad(log_mag[:, None], (pad, pad, pad, pad), mode="replicate")
        mean_filter = torch.full((1, 1, box, box), 1.0 / (box * box), device=x.device)
        residual = (log_mag - F.conv2d(padded, mean_filter)[:, 0]).exp()
        saliency = torch.fft.ifft2(freq * (residual / magnitude)).abs()
        saliency = _gaussian_blur(saliency, blur, sigma)
        if resized:
            saliency = F.interpolate(
                saliency[:, None],
                size=(height, width),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[:, 0]
        return saliency.contiguous()


def blur_normalize(saliency: torch.Tensor, kernel: int = 7, sigma: float = 3.0) -> torch.Tensor:
    """Gaussian-blur each map of ``saliency`` (b, H, W) (``kernel`` x ``kernel``, ``sigma``,
    reflect padding, as torchvision's ``gaussian_blur``) and normalise it to sum 1: (b, H, W)
    float32, no gradient. An all-zero map gives the uniform map ``1 / (H W)``."""
    if saliency.dim() != 3:
        raise ValueError(f"expected saliency maps (b, H, W), got shape {tuple(saliency.shape)}")
    with torch.no_grad(), torch.autocast(saliency.device.type, enabled=False):
        blurred = _gaussian_blur(saliency.detach().float(), kernel, sigma)
        total = blurred.sum(dim=(1, 2), keepdim=True)
        uniform = torch.full_like(blurred, 1.0 / (blurred.shape[1] * blurred.shape[2]))
        return torch.where(
            total > 0, blurred / total.clamp_min(torch.finfo(torch.float32).tiny), uniform
        )


def guided_pairing(saliency: torch.Tensor) -> torch.Tensor:
    """GuidedMixup's greedy pairing: ``perm`` (b,) int64 on the saliency's device, a single
    cycle through the batch (no fixed point for b >= 2).

    ``D`` the L2 distances between the flattened maps of ``saliency`` (b, H, W) (computed
    pairwise in float32, not through a matrix product), the diagonal excluded. The largest
    entry ``(i, j)`` (the first in row-major order) gives ``perm[i] = j``; from ``j`` the walk
    goes on to the farthest example not yet visited (the first on ties), ``b - 2`` times; the
    last one's partner is ``i``. The (b, b) matrix is copied to the CPU once and walked there
    (b argmax steps).
    """
    if saliency.dim() < 2:
        raise ValueError(f"expected saliency maps (b, ...), got shape {tuple(saliency.shape)}")
    b = int(saliency.shape[0])
    if b <= 1:
        return torch.zeros(b, dtype=torch.int64, device=saliency.device)
    with torch.no_grad(), torch.autocast(saliency.device.type, enabled=False):
        flat = saliency.detach().float().reshape(1, b, -1)
        dist = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")[0]
    d = dist.cpu().numpy().astype(np.float64)
    np.fill_diagonal(d, -np.inf)
    first, last = divmod(int(np.argmax(d)), b)
    partner = np.empty(b, dtype=np.int64)
    partner[first] = last
    d[:, first] = -np.inf
    for _ in range(b - 2):
        d[:, last] = -np.inf
        step = int(np.argmax(d[last]))
        partner[last] = step
        last = step
    partner[last] = first
    return torch.from_numpy(partner).to(saliency.device)


def guided_mask(
    saliency_a: torch.Tensor, saliency_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GuidedMixup's pixel mask of the first images against their partners: ``(mask (b, H, W),
    ratio (b,))``, both float32, with ``mask = a / (a + b)`` per pixel (1/2 where both are 0)
    and ``ratio = mean(mask)`` per example."""
    if saliency_a.shape != saliency_b.shape or saliency_a.dim() != 3:
        raise ValueError(
            f"expected two saliency batches (b, H, W) of one shape, got "
            f"{tuple(saliency_a.shape)} and {tuple(saliency_b.shape)}"
        )
    with torch.no_grad(), torch.autocast(saliency_a.device.type, enabled=False):
        a, b = saliency_a.detach().float(), saliency_b.detach().float()
        total = a + b
        mask = torch.where(total > 0, a / total.masked_fill(total == 0, 1.0), 0.5)
        return mask, mask.mean(dim=(1, 2))


# -- TransMix ------------------------------------------------------------------------------


def box_patch_mask(box: Box, height: int, width: int, grid: tuple[int, int]) -> torch.Tensor:
    """The CutMix ``box`` (top, bottom, left, right) of an ``height`` x ``width`` image on a
    patch grid ``(h, w)``: a float32 (h, w) mask, 1 where the patch shows the pasted box.

    The pixel mask (1 inside the box) is down-sampled by nearest-neighbour interpolation, as
    TransMix's official code does (``nn.Upsample(size)``, mode ``nearest``): patch ``(i, j)``
    takes the pixel ``(floor(i * height / h), floor(j * width / w))``.
    """
    top, bottom, left, right = (int(v) for v in box)
    pixels = torch.zeros(1, 1, int(height), int(width))
    pixels[..., top:bottom, left:right] = 1.0
    return F.interpolate(pixels, size=tuple(int(g) for g in grid), mode="nearest")[0, 0]


def transmix_lambda(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TransMix's label weight of each example's own image: ``lam`` (b,), float32.

    ``attention`` (b, n) is the class token's attention to the n patch tokens (last block,
    mean over heads); ``mask`` (n,), (h, w) with h * w = n, or per example (b, n) / (b, h, w),
    is 1 on the patches that show the partner image (the pasted box) and 0 on the example's
    own. ``lam_i = sum_j a_ij (1 - m_ij) / sum_j a_ij``: the share of the attention that falls
    on the example's own patches (1 - lam on the partner's). An all-zero attention row gives
    the own image's share of the patches. Detached; no gradient reaches the attention.
    """
    if attention.dim() != 2:
        raise ValueError(f"expected attention (b, n), got shape {tuple(attention.shape)}")
    b, n = attention.shape
    with torch.no_grad(), torch.autocast(attention.device.type, enabled=False):
        m = mask.detach().to(device=attention.device, dtype=torch.float32)
        if m.shape == (b, n) or (m.dim() == 3 and m.numel() == b * n):
            per_example = m.reshape(b, n)
        elif m.numel() == n:
            per_example = m.reshape(1, n).expand(b, n)
        else:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not match {n} patches per example"
            )
        a = attention.detach().float()
        total = a.sum(1)
        own = (a * (1.0 - per_example)).sum(1)
        fallback = (1.0 - per_example).mean(1)
        return torch.where(total > 0, own / total.clamp_min(torch.finfo(a.dtype).tiny), fallback)
