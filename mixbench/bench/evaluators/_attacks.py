"""L-infinity adversarial attacks in pixel space, and accuracy under them.

FGSM follows Goodfellow et al., "Explaining and Harnessing Adversarial Examples" (ICLR 2015,
arXiv 1412.6572); PGD with a random start follows Madry et al., "Towards Deep Learning Models
Resistant to Adversarial Attacks" (ICLR 2018, arXiv 1706.06083).

Images are in [0, 1] and the model maps such images to logits; :class:`NormalizedModel` puts a
data set's normalisation in front of a model trained on normalised inputs. The attacks run the
model in eval mode with gradients for the inputs only, and leave the model as they found it:
its modules' train/eval flags, its parameters' ``requires_grad`` and ``.grad``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.bench.evaluators.runtime import autocast as _autocast
from mixbench.errors import UsageError

#: An attack: ``(model, images, labels) -> adversarial images``.
Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)``: turns a model of normalised inputs into one of [0, 1] images.

    Args:
        model: maps normalised (batch, C, H, W) images to logits.
        mean, std: per-channel normalisation (length C), as used by the data pipeline.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
    ) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.shape != std_t.shape:
            raise ValueError(f"mean has {mean_t.numel()} channels but std has {std_t.numel()}")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.model = model
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` in [0, 1], shape (batch, C, H, W)."""
        return self.model((images - self.mean) / self.std)


def default_attack_settings(image_size: int | Sequence[int]) -> dict[str, dict[str, float]]:
    """The default FGSM and PGD settings for images of ``image_size`` pixels (side or (H, W)).

    Up to 32 pixels (CIFAR): FGSM eps 8/255; PGD eps 8/255, step 2/255, 10 steps. Larger images
    (Tiny-ImageNet, ImageNet): eps 4/255 and PGD step 1/255, still 10 steps.
    """
    side = max(image_size) if isinstance(image_size, Sequence) else int(image_size)
    eps, step = (8 / 255, 2 / 255) if side <= 32 else (4 / 255, 1 / 255)
    return {"fgsm": {"eps": eps}, "pgd": {"eps": eps, "step_size": step, "steps": 10}}


@contextlib.contextmanager
def _attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration, then every flag restored."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training


def _check_attack_inputs(images: torch.Tensor, labels: torch.Tensor, eps: float) -> None:
    if images.ndim < 2 or not images.is_floating_point():
        raise ValueError(
            f"expected a float batch of images, got {images.dtype} {tuple(images.shape)}"
        )
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"expected labels of shape ({images.shape[0]},), got {tuple(labels.shape)}"
        )
    if not eps >= 0:
        raise UsageError(f"attack eps must be >= 0, got {eps!r}")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError(
            "attacks work on images in [0, 1]; wrap the model in NormalizedModel and pass "
            "unnormalised images"
        )


def _input_gradient(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, amp_dtype: torch.dtype | None
) -> torch.Tensor:
    """Gradient of the summed cross-entropy with respect to ``x`` only.

    The loss is summed over the batch, not averaged, so that float16 gradients do not underflow
    on large batches; only the gradient's sign is used.
    """
    x = x.detach().requires_grad_(True)
    with _autocast(x.device, amp_dtype):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fast gradient sign method: ``clamp(x + eps * sign(grad_x CE), 0, 1)``.

    Goodfellow et al., "Explaining and Harnessing Adversarial Examples", arXiv 1412.6572.

    Args:
        model: maps [0, 1] images to logits (see :class:`NormalizedModel`).
        images: (batch, C, H, W) floats in [0, 1].
        labels: (batch,) integer labels.
        eps: L-infinity radius in pixel units (8/255 is 8 grey levels).
        amp_dtype: run the model under ``torch.autocast`` with this dtype (e.g.
            ``torch.float16`` on CUDA); ``None`` for full precision.

    Returns:
        Adversarial images, detached, of the dtype of ``images``, within ``eps`` of ``images``
        and inside [0, 1].
    """
    _check_attack_inputs(images, labels, eps)
    x0 = images.detach()
    with _attack_mode(model):
        grad = _input_gradient(model, x0.float(), labels, amp_dtype)
    x_adv = (x0.float() + eps * grad.sign()).clamp_(0.0, 1.0)
    return x_adv.to(images.dtype)


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the cross-entropy from a random start in the eps ball.

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
    arXiv 1706.06083. Start: ``x0 + U(-eps, eps)`` clamped to [0, 1]; then ``steps`` times
    ``x <- project(x + step_size * sign(grad_x CE))``, where ``project`` clips to the eps ball
    around ``x0`` and to [0, 1]. The final iterate is returned.

    Args:
        model, images, labels, eps, amp_dtype: as for :func:`fgsm`.
        step_size: L-infinity step per iteration, in pixel units.
        steps: number of gradient steps (0 returns the random start).
        generator: draws the random start (on its own device; the draw is then moved to the
            images' device). ``None`` uses a fresh generator seeded with 0, so the attack is
            deterministic either way.

    Returns:
        Adversarial images, detached, of the dtype of ``images``, within ``eps`` of ``images``
        and inside [0, 1].
    """
    _check_attack_inputs(images, labels, eps)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise UsageError(f"PGD steps must be an int >= 0, got {steps!r}")
    if not step_size > 0:
        raise UsageError(f"PGD step_size must be > 0, got {step_size!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x0 = images.detach().float()
    noise = torch.rand(x0.shape, generator=generator, device=generator.device)
    delta = (2 * noise - 1).to(x0.device) * eps
    x = (x0 + delta).clamp_(0.0, 1.0)
    lower, upper = (x0 - eps).clamp(min=0.0), (x0 + eps).clamp(max=1.0)
    with _attack_mode(model):
        for _ in range(steps):
            grad = _input_gradient(model, x, labels, amp_dtype)
            x = torch.minimum(torch.maximum(x + step_size * grad.sign(), lower), upper)
    return x.detach().to(images.dtype)


def _batches(
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        images, labels = data
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size], labels[start : start + batch_size]
        return
    for batch in data:
        yield batch[0], batch[1]


def robust_accuracy(
    model: nn.Module,
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
    attack: Attack | None,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    limit: int | None = None,
) -> dict[str, float | int]:
    """Top-1 accuracy of ``model`` on adversarial examples made by ``attack``, over batches.

    Args:
        model: maps [0, 1] images to logits (see :class:`NormalizedModel`).
        data: a tuple ``(images, labels)`` of tensors (split into ``batch_size`` batches) or an
            iterable of ``(images, labels)`` batches (a DataLoader); images in [0, 1], float
            or uint8 (divided by 255).
        attack: ``(model, images, labels) -> adversarial images``, e.g.
            ``functools.partial(pgd, eps=8 / 255, step_size=2 / 255, steps=10,
            generator=g, amp_dtype=torch.float16)``; ``None`` for clean accuracy.
        batch_size: batch size when ``data`` is a tuple of tensors.
        device: where to run; default the device of the model's first parameter.
        amp_dtype: autocast dtype for the final, gradient-free prediction.
        limit: evaluate at most this many examples (the first ones).

    Returns:
        ``{"accuracy": float in [0, 1], "count": examples evaluated}``.
    """
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    correct, seen = 0, 0
    modes = [(m, m.training) for m in model.modules()]
    try:
        for images, labels in _batches(data, batch_size):
            if limit is not None and seen >= limit:
                break
            if limit is not None:
                images, labels = images[: limit - seen], labels[: limit - seen]
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if not images.is_floating_point():
                images = images.float().div_(255)
            if attack is not None:
                images = attack(model, images, labels)
            model.eval()
            with torch.no_grad(), _autocast(device, amp_dtype):
                predicted = model(images).argmax(dim=1)
            correct += int((predicted == labels).sum())
            seen += int(labels.shape[0])
    finally:
        for m, training in modes:
            m.training = training
    if seen == 0:
        raise UsageError("robust_accuracy got no examples: the evaluation set is empty")
    return {"accuracy": correct / seen, "count": seen}
