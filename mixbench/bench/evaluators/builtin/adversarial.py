"""``fgsm`` and ``pgd``: top-1 under L-infinity attacks in pixel space on a subset of test images.

The model runs in eval mode behind the data set's normalisation (images in [0, 1]), under
autocast on CUDA. Only the examples the model classifies correctly are attacked, as AutoAttack
does: an example counts as robust only when it is correct both clean and attacked, so the
accuracy under attack never exceeds the clean accuracy of the subset, stored beside it
(``attack_clean_top1``). Both evaluators draw the same subset (purpose ``"attack"``); PGD's
random start comes from its own stream (purpose ``"pgd"``), so either gives the same numbers
alone or together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mixbench.bench.evaluators._attacks import default_attack_settings, fgsm, pgd
from mixbench.bench.evaluators.base import (
    ColumnSpec,
    EvalContext,
    EvalResult,
    Evaluator,
    examples_text,
    register_evaluator,
)
from mixbench.bench.evaluators.data import as_unit
from mixbench.bench.evaluators.runtime import autocast, restored_modes, synchronize
from mixbench.errors import UsageError

__all__ = ["FGSM", "PGD", "adversarial_accuracy", "attack_legend", "attack_settings"]


def attack_settings(config: Any, image_size: tuple[int, int]) -> dict[str, float | int]:
    """FGSM and PGD settings of an eval config with unset values taken from the image size.

    Defaults (:func:`~mixbench.bench.evaluators.default_attack_settings`): eps 8/255 and PGD step
    2/255 up to 32 pixels, eps 4/255 and step 1/255 on larger images; ``pgd_steps`` as set.
    """
    default = default_attack_settings(tuple(image_size))
    return {
        "fgsm_eps": config.fgsm_eps if config.fgsm_eps is not None else default["fgsm"]["eps"],
        "pgd_eps": config.pgd_eps if config.pgd_eps is not None else default["pgd"]["eps"],
        "pgd_step_size": (
            config.pgd_step_size
            if config.pgd_step_size is not None
            else default["pgd"]["step_size"]
        ),
        "pgd_steps": int(config.pgd_steps),
    }


def adversarial_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    fgsm_eps: float | None,
    pgd_eps: float | None,
    pgd_step_size: float = 2 / 255,
    pgd_steps: int = 10,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Clean, FGSM and PGD top-1 of ``model`` on ``images`` in one batched pass.

    Only the examples the model classifies correctly are attacked; an example counts as correct
    under an attack when it is correct both clean and attacked, so neither attack's accuracy can
    exceed the clean one. FGSM (``fgsm_eps``) and PGD with a random start (``pgd_eps``,
    ``pgd_step_size``, ``pgd_steps``, its start drawn by ``generator``) run in eval mode in pixel
    space; ``None`` for an eps skips that attack.

    Args:
        model: maps [0, 1] images to logits (see :class:`NormalizedModel`).
        images: (n, C, H, W) uint8, or float in [0, 1]; labels (n,) integer labels.
        batch_size: examples per batch; device, amp_dtype: where and in which precision to run.
        heartbeat: called after every batch.

    Returns:
        ``{"clean_top1", "fgsm_top1", "pgd_top1", "examples", "fgsm_seconds", "pgd_seconds"}``;
        the entries of a skipped attack are left out.
    """
    device = torch.device(device)
    if images.shape[0] == 0:
        raise UsageError("the attack subset is empty: the test split has no images")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    clean = fgsm_correct = pgd_correct = 0
    seconds = {"fgsm": 0.0, "pgd": 0.0}

    def predict(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        with torch.no_grad(), autocast(device, amp_dtype):
            return model(x).argmax(dim=1)

    with restored_modes(model):
        for start in range(0, images.shape[0], batch_size):
            x = as_unit(images[start : start + batch_size].to(device, non_blocking=True))
            y = labels[start : start + batch_size].to(device, non_blocking=True)
            right = predict(x) == y
            clean += int(right.sum())
            keep = right.nonzero().flatten()
            if keep.numel():
                xs, ys = x[keep], y[keep]
                if fgsm_eps is not None:
                    began = time.perf_counter()
                    adv = fgsm(model, xs, ys, fgsm_eps, amp_dtype=amp_dtype)
                    fgsm_correct += int((predict(adv) == ys).sum())
                    synchronize(device)
                    seconds["fgsm"] += time.perf_counter() - began
                if pgd_eps is not None:
                    began = time.perf_counter()
                    adv = pgd(
                        model, xs, ys, pgd_eps, pgd_step_size, pgd_steps,
                        generator=generator, amp_dtype=amp_dtype,
                    )  # fmt: skip
                    pgd_correct += int((predict(adv) == ys).sum())
                    synchronize(device)
                    seconds["pgd"] += time.perf_counter() - began
            if heartbeat is not None:
                heartbeat()
    n = int(images.shape[0])
    out: dict[str, Any] = {"clean_top1": clean / n, "examples": n}
    if fgsm_eps is not None:
        out["fgsm_top1"] = fgsm_correct / n
        out["fgsm_seconds"] = seconds["fgsm"]
    if pgd_eps is not None:
        out["pgd_top1"] = pgd_correct / n
        out["pgd_seconds"] = seconds["pgd"]
    return out


def fraction_of_255(x: float) -> str:
    """``8/255`` for 8/255, ``0.5/255`` for half a grey level, else the plain number."""
    levels = x * 255
    if abs(levels - round(levels, 1)) < 1e-6:
        rounded = round(levels, 1)
        text = f"{int(rounded)}" if rounded == int(rounded) else f"{rounded}"
        return f"{text}/255"
    return f"{x:g}"


def _attack_text(settings: dict[str, Any]) -> str:
    parts = []
    if "fgsm_eps" in settings:
        parts.append(f"FGSM eps {fraction_of_255(settings['fgsm_eps'])}")
    if "pgd_eps" in settings:
        parts.append(
            f"PGD eps {fraction_of_255(settings['pgd_eps'])}, step "
            f"{fraction_of_255(settings['pgd_step_size'])}, {settings['pgd_steps']} steps from a "
            "random start"
        )
    if not parts:
        return ""
    amp = f", autocast {settings['amp']}" if settings.get("amp") else ""
    return f"{'; '.join(parts)}, on {examples_text(settings['examples'])}{amp}"


def attack_legend(settings: list[dict[str, Any]]) -> str:
    """The FGSM / PGD sentence under a table, from the attack settings its cells stored."""
    texts = list(dict.fromkeys(t for s in settings if (t := _attack_text(s))))
    if not texts:
        return ""
    return (
        "FGSM / PGD: top-1 under L∞ attacks in pixel space (images in [0, 1], the model in "
        f"eval mode): {' / '.join(texts)}, drawn with each cell's seed. An example counts only "
        "when it is classified correctly both clean and attacked, so these never exceed the "
        "clean accuracy."
    )


class _Attack(Evaluator):
    """One L-infinity attack on the ``attack_subset`` test images (FGSM or PGD)."""

    #: Both attacks store their settings in one entry, ``eval_settings["attack"]``.
    settings_key = "attack"
    attack = ""

    def run(self, context: EvalContext) -> EvalResult:
        config = context.cell.eval
        settings = attack_settings(config, context.bundle.image_size)
        images, labels = context.subset(config.attack_subset, "attack")
        wanted = self.attack
        result = adversarial_accuracy(
            context.model,
            images,
            labels,
            fgsm_eps=settings["fgsm_eps"] if wanted == "fgsm" else None,
            pgd_eps=settings["pgd_eps"] if wanted == "pgd" else None,
            pgd_step_size=settings["pgd_step_size"],
            pgd_steps=settings["pgd_steps"],
            generator=context.generator("pgd"),
            batch_size=config.batch_size,
            device=context.device,
            amp_dtype=context.amp_dtype,
            heartbeat=context.beat,
        )
        amp = None if context.amp_dtype is None else str(context.amp_dtype).replace("torch.", "")
        return EvalResult(
            metrics={
                "attack_clean_top1": result["clean_top1"],
                f"{wanted}_top1": result[f"{wanted}_top1"],
            },
            timings={f"eval_seconds_{wanted}": result[f"{wanted}_seconds"]},
            settings={
                **{k: v for k, v in settings.items() if k.split("_")[0] == wanted},
                "examples": result["examples"],
                "norm": "Linf",
                "space": "pixel",
                "random_start": True,
                "amp": amp,
            },
        )

    def legend(self, settings: list[dict[str, Any]], shown: set[str], table_eval: dict) -> str:
        return attack_legend(settings)


def _attack_column(attack: str, position: float) -> tuple[ColumnSpec, ...]:
    """The one column of an attack: its top-1, always shown, with a robustness-plot panel."""
    name = attack.upper()
    return (
        ColumnSpec(key=f"{attack}_top1", header=f"{name} (%)", optional=False,
                   position=position, plot=f"{name} top-1 (%)"),
    )  # fmt: skip


@register_evaluator("fgsm")
class FGSM(_Attack):
    """Top-1 under the fast gradient sign method (one step of size eps)."""

    description = "top-1 under FGSM (L-inf, pixel space) on a fixed subset of test images"
    order, attack, columns = 20, "fgsm", _attack_column("fgsm", 30)


@register_evaluator("pgd")
class PGD(_Attack):
    """Top-1 under projected gradient descent from a random start."""

    description = "top-1 under PGD (L-inf, pixel space, random start) on a fixed test subset"
    order, attack, columns = 30, "pgd", _attack_column("pgd", 31)
