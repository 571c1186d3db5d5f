"""``embedding``: alignment and uniformity of the pooled test embeddings of a staged network.

Alignment is the mean squared distance between normalised embeddings of the same class (lower
is tighter), uniformity the log of the mean Gaussian potential between normalised embeddings
(lower is more uniform), on ``eval.embedding_subset`` test images; a network without an
``embed(x)`` method is skipped with a note.
"""

from __future__ import annotations

from typing import Any

import torch

from mixbench.bench.evaluators._embedding import embedding_quality
from mixbench.bench.evaluators.base import (
    ColumnSpec,
    EvalContext,
    EvalResult,
    Evaluator,
    examples_text,
    register_evaluator,
)
from mixbench.bench.evaluators.data import as_unit
from mixbench.errors import UsageError

__all__ = ["Embedding", "embeddings"]


def embeddings(context: EvalContext, images: torch.Tensor) -> torch.Tensor:
    """Pooled embeddings (n, d), float32 on the CPU, of [0, 1] or uint8 ``images``."""
    normalize = context.model
    batch_size = context.cell.eval.batch_size
    out = []
    with context.eval_mode(), torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = as_unit(images[start : start + batch_size].to(context.device))
            x = (x - normalize.mean) / normalize.std
            with context.autocast():
                out.append(context.backbone.embed(x).float().cpu())
    return torch.cat(out)


@register_evaluator("embedding")
class Embedding(Evaluator):
    """Alignment and uniformity (Wang and Isola) of the pooled test embeddings."""

    description = "alignment and uniformity of the pooled test embeddings"
    order = 60
    note_key = "embedding_note"
    columns = (
        ColumnSpec(key="alignment", header="align.", higher_is_better=False, fmt=".3f",
                   position=50),
        ColumnSpec(key="uniformity", header="unif.", higher_is_better=False, fmt=".3f",
                   position=51),
    )  # fmt: skip

    def run(self, context: EvalContext) -> EvalResult:
        config = context.cell.eval
        if not callable(getattr(context.backbone, "embed", None)):
            name = type(context.backbone).__name__
            return EvalResult(
                metrics={}, notes=[f"embedding quality skipped: {name} has no embed(x) method"]
            )
        images, labels = context.subset(config.embedding_subset, "embedding")
        z = embeddings(context, images)
        settings = {"examples": int(z.shape[0]), "t": config.uniformity_t}
        try:
            metrics = embedding_quality(z, labels, t=config.uniformity_t, num_samples=None)
        except UsageError as exc:  # e.g. no two embeddings of one class in a tiny subsample
            return EvalResult(
                metrics={}, settings=settings, notes=[f"embedding quality skipped: {exc}"]
            )
        return EvalResult(metrics=dict(metrics), settings=settings)

    def legend(self, settings: list[dict[str, Any]], shown: set[str], table_eval: dict) -> str:
        if "align." not in shown and "unif." not in shown:
            return ""
        found = dict.fromkeys(
            f"{examples_text(s['examples'])}, t = {s['t']:g}" for s in settings if "examples" in s
        )
        return (
            "align. / unif.: alignment (mean squared distance between normalised embeddings of "
            "the same class; lower is tighter) and uniformity (log of the mean Gaussian potential "
            "between normalised embeddings; lower is more uniform) of the pooled test embeddings "
            f"(Wang & Isola, arXiv 2005.10242){': ' + ' / '.join(found) if found else ''}."
        )
