"""The legend under each leaderboard table: what the columns mean and the evaluators' settings.

Everything comes from the stored results: the table's eval config (``config["eval"]`` of its
cells) and the settings the evaluators resolved and stored with their metrics
(``metrics["eval_settings"]``: attack eps and steps, subset sizes, corruptions, severities).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mixbench.leaderboard.tables import Table

DASH = "—"


def fraction_of_255(x: float) -> str:
    """``8/255`` for 8/255, ``0.5/255`` for half a grey level, else the plain number."""
    levels = x * 255
    if abs(levels - round(levels, 1)) < 1e-6:
        rounded = round(levels, 1)
        text = f"{int(rounded)}" if rounded == int(rounded) else f"{rounded}"
        return f"{text}/255"
    return f"{x:g}"


def _severities(values: Iterable[int]) -> str:
    values = sorted(values)
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}–{values[-1]}"
    return ", ".join(str(v) for v in values)


def _examples(n: Any) -> str:
    return f"{int(n):,} test image{'s' if int(n) != 1 else ''}"


def _distinct(texts: Iterable[str]) -> str:
    seen: list[str] = []
    for text in texts:
        if text and text not in seen:
            seen.append(text)
    return " / ".join(seen)


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
    return f"{'; '.join(parts)}, on {_examples(settings['examples'])}{amp}"


def _generated_text(settings: dict[str, Any]) -> str:
    return (
        f"{', '.join(settings['corruptions'])} at severities {_severities(settings['severities'])}"
        f" on {_examples(settings['examples'])}"
    )


def _official_text(settings: dict[str, Any]) -> str:
    if "benchmark" not in settings:
        return ""
    missing = settings.get("missing") or []
    missing_text = f" (missing from the files: {', '.join(missing)})" if missing else ""
    return (
        f"{settings['benchmark']}, {len(settings['corruptions'])} corruptions{missing_text} at "
        f"severities {_severities(settings['severities'])}, "
        f"{int(settings['examples']):,} images per corruption and severity"
    )


def legend(table: Table, shown: Iterable[str]) -> str:
    """The legend paragraph(s) under ``table``; ``shown`` are the headers of its columns."""
    shown = set(shown)
    bins = table.eval.get("calibration_bins", 15)
    found = table.eval_settings
    out = [
        "top-1: last-epoch test accuracy, mean ± standard deviation over seeds. "
        "Δ ERM: difference of the mean top-1 to ERM's in the same table (percentage points). "
        "best-epoch top-1: the best evaluated epoch, selected on the test set as the papers do "
        "(optimistic; shown for comparison only). NLL: test negative log-likelihood. "
        f"ECE / OE: expected calibration error and overconfidence error of the test set, "
        f"{bins} equal-width bins. ECE counts under- and overconfidence alike, OE only "
        "overconfidence (weighted by the confidence), so a model left underconfident, as mixup "
        "methods often leave it, can show a larger ECE and a smaller OE than ERM."
    ]
    if "conf. − acc. (pp)" in shown:
        out.append(
            "conf. − acc.: mean confidence (top softmax probability) minus accuracy on the test "
            "set, from the stored reliability bins, in percentage points: positive when the model "
            "is overconfident, negative when it is underconfident (not marked best: either sign "
            "is a calibration error)."
        )
    attacks = _distinct(_attack_text(s["attack"]) for s in found if "attack" in s)
    if attacks:
        out.append(
            "FGSM / PGD: top-1 under L∞ attacks in pixel space (images in [0, 1], the model in "
            f"eval mode): {attacks}, drawn with each cell's seed. An example counts only when it "
            "is classified correctly both clean and attacked, so these never exceed the clean "
            "accuracy."
        )
    generated = _distinct(
        _generated_text(s["generated_corruptions"]) for s in found if "generated_corruptions" in s
    )
    if generated:
        out.append(
            "corr. generated: mean top-1 over mixbench's *generated* corruptions (made with "
            f"tensor operations, no download; not the official benchmark): {generated}."
        )
    official = _distinct(
        _official_text(s["official_corruptions"]) for s in found if "official_corruptions" in s
    )
    if official:
        out.append(
            "corr. official: mean top-1 over the official corruption benchmark "
            f"(Hendrycks & Dietterich, arXiv 1903.12261): {official}."
        )
    if "align." in shown or "unif." in shown:
        embedding = _distinct(
            f"{_examples(s['embedding']['examples'])}, t = {s['embedding']['t']:g}"
            for s in found
            if "embedding" in s
        )
        out.append(
            "align. / unif.: alignment (mean squared distance between normalised embeddings of "
            "the same class; lower is tighter) and uniformity (log of the mean Gaussian potential "
            "between normalised embeddings; lower is more uniform) of the pooled test embeddings "
            f"(Wang & Isola, arXiv 2005.10242){': ' + embedding if embedding else ''}."
        )
    if "passes/step" in shown:
        out.append(
            "passes/step: the network's full forward passes per training step, counted during "
            "training (1.00: the network runs once per batch, as for ERM; 2.00: twice); a dash "
            "for cells recorded before it was counted."
        )
    out.append(
        "train img/s: training throughput. cost ×ERM: training wall time relative to ERM's in "
        "the same table, shown only where the row's cells ran on the same kind of machine as "
        "ERM's (shared machines still add noise to it). #: rank by mean top-1. Bold: the best "
        "value of each column among the rows with two or more seeds (a one-seed row is never "
        f"marked best: its lead may be seed noise). {DASH}: not measured."
    )
    text = " ".join(out)
    if table.notes:
        text += "\n\n" + "\n".join(f"- {note}" for note in table.notes)
    return text
