"""``mixbench show METHOD``: a picture of what a method does to one batch, before training with it.

The method's own ``loss`` runs on one batch of the data set, a few times (a few draws of its
randomness), with a *probe* network in place of the backbone: an untrained staged network
(:class:`ProbeNet`) that records what the method feeds it. What was recorded decides the
picture, so the figure needs no knowledge of the method, its name or its kind:

- images different from the clean batch entering the network: an *input-space* mix, drawn as
  the clean batch above the images the network sees (mixup, CutMix, the input branches);
- a hidden state different from the clean one entering a later stage: a *hidden-space* mix,
  drawn as channel-mean maps of the clean and the mixed states (manifold mixup);
- mixed embeddings reaching the linear head: an *embedding-space* mix. The probe appends to
  the last feature map of example ``i`` a small one-hot tag ``e_i``; any linear mixing of the
  features mixes the tags with the same weights, so the head's input reveals them: the (n, b)
  weights of the generated rows as a heat map (MultiMix), or for per-position mixing the
  weights of every position as maps over the feature map (Dense MultiMix).

A method that changes nothing (ERM) gets the clean batch and a line saying so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mixbench.fileio import atomic_write  # noqa: E402
from mixbench.methods import MixMethod, check_supports  # noqa: E402

__all__ = ["Observation", "ProbeNet", "observe", "save_figure", "show_figure"]

_PNG_METADATA = {"Software": None}

#: Size of the one-hot tags appended to the features: small enough not to change what the
#: method computes from the features (costs, attention), large enough to be read back exactly.
TAG_SCALE = 1e-3


class ProbeNet(nn.Module):
    """A staged network that records what a method feeds it (see the module's docstring).

    Offers the staged-backbone interface (``forward``, ``forward_to``, ``forward_from``,
    ``features``, ``pool``, ``head``, ``num_stages``, ``num_classes``) of the wrapped ``net``.
    The last feature map of a batch of ``b`` examples carries ``b`` extra channels, the tags
    ``TAG_SCALE * e_i``; the head strips them (recording them) before the real head.

    Recorded: ``inputs`` (images entering the network), ``hidden`` ((stage, state) entering a
    stage after 0 and before the last), ``clean_hidden`` (stage -> state computed from images),
    ``weights`` (the tags reaching the head, divided by ``TAG_SCALE``) and ``feature_size``
    (the last feature map's (h, w)).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inputs: list[torch.Tensor] = []
        self.hidden: list[tuple[int, torch.Tensor]] = []
        self.clean_hidden: dict[int, torch.Tensor] = {}
        self.weights: list[torch.Tensor] = []
        self.feature_size: tuple[int, int] | None = None
        self._batch = 0

    @property
    def num_stages(self) -> int:
        """The wrapped network's number of stages."""
        return self.net.num_stages

    @property
    def num_classes(self) -> int:
        """The wrapped network's number of classes."""
        return self.net.num_classes

    def _tagged(self, feats: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feats.shape
        self._batch, self.feature_size = b, (h, w)
        tags = TAG_SCALE * torch.eye(b, dtype=feats.dtype, device=feats.device)
        return torch.cat([feats, tags.view(b, b, 1, 1).expand(b, b, h, w)], dim=1)

    def forward_to(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """The wrapped network's hidden state; the last one tagged."""
        if stage == 0:
            return x
        h = self.net.forward_to(x, stage)
        self.clean_hidden[stage] = h.detach()
        return self._tagged(h) if stage == self.num_stages else h

    def forward_from(self, h: torch.Tensor, stage: int) -> torch.Tensor:
        """Logits from a hidden state at ``stage`` (recorded)."""
        if stage == 0:
            self.inputs.append(h.detach())
        elif stage < self.num_stages:
            self.hidden.append((stage, h.detach()))
        if stage == self.num_stages:
            return self.head(self.pool(h))
        return self.net.forward_from(h, stage)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, with the tags appended."""
        return self.forward_to(x, self.num_stages)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """Global average pool (b, d, h, w) -> (b, d)."""
        return feats.mean(dim=(2, 3))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """The real head on the first ``embed_dim`` entries; the tags after them recorded."""
        d = self.net.head.in_features
        if z.shape[-1] == d + self._batch and self._batch:
            self.weights.append(z[..., d:].detach() / TAG_SCALE)
            z = z[..., :d]
        return self.net.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images ``x`` (recorded as an input)."""
        return self.forward_from(x, 0)


@dataclass
class Observation:
    """What a method did to one batch over several draws: the first example of each kind of mix.

    ``draws`` is the number of draws; ``counts`` how many of them showed each kind
    (``"input"``, ``"hidden"``, ``"embedding"``).
    """

    draws: int
    counts: dict[str, int] = field(default_factory=dict)
    input: torch.Tensor | None = None
    hidden: tuple[int, torch.Tensor, torch.Tensor] | None = None
    weights: torch.Tensor | None = None
    feature_size: tuple[int, int] | None = None


def _changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape != b.shape or not torch.allclose(a, b, atol=1e-6)


def observe(
    method: MixMethod, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, draws: int = 8
) -> Observation:
    """Run ``method.loss`` on the normalised batch ``images`` ``draws`` times through a probe.

    The method's own generators are used as they are (seed it first); ``net`` is a staged
    network (left in train mode, as in training).
    """
    check_supports(method, net, f"{type(net).__name__} (the network show draws with)")
    probe = ProbeNet(net)
    probe.train()
    seen = Observation(draws=draws)
    identity = torch.eye(images.shape[0])
    for _ in range(draws):
        probe.inputs.clear()
        probe.hidden.clear()
        probe.weights.clear()
        probe.clean_hidden.clear()
        method.loss(probe, images, labels)
        kinds = set()
        # A call on several batches at once (RegMixup's clean and mixed halves): each part.
        parts = [
            part
            for x in probe.inputs
            for part in (x.split(images.shape[0]) if x.shape[0] % images.shape[0] == 0 else [x])
        ]
        for x in parts:
            if _changed(x, images):
                kinds.add("input")
                if seen.input is None:
                    seen.input = x
        for stage, h in probe.hidden:
            clean = probe.clean_hidden.get(stage)
            if clean is not None and _changed(h, clean):
                kinds.add("hidden")
                if seen.hidden is None:
                    seen.hidden = (stage, clean, h)
        for w in probe.weights:
            if _changed(w.float().cpu(), identity):
                kinds.add("embedding")
                if seen.weights is None:
                    seen.weights = w.float().cpu()
                    seen.feature_size = probe.feature_size
        for kind in kinds:
            seen.counts[kind] = seen.counts.get(kind, 0) + 1
    return seen


# -- drawing ------------------------------------------------------------------------------


def _pictures(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> list[Any]:
    """Normalised (b, C, H, W) images as (H, W, C) arrays in [0, 1] for imshow."""
    pixels = (x.float().cpu() * std + mean).clamp(0, 1)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return [p.permute(1, 2, 0).numpy() for p in pixels]


def _image_row(
    subfig: Any, pictures: list[Any], titles: list[str], heading: str = "the batch"
) -> None:
    axes = subfig.subplots(1, len(pictures), squeeze=False)[0]
    for ax, picture, title in zip(axes, pictures, titles):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    subfig.suptitle(heading, fontsize=9)


def _input_section(subfig: Any, mixed: list[Any], change: torch.Tensor) -> None:
    """The images the network sees, and where they differ from the clean batch."""
    b = len(mixed)
    axes = subfig.subplots(2, b, squeeze=False)
    top = float(change.max()) or 1.0
    for i in range(b):
        axes[0][i].imshow(mixed[i], interpolation="nearest")
        axes[1][i].imshow(change[i].numpy(), cmap="gray", vmin=0.0, vmax=top)
        axes[0][i].set_title(str(i), fontsize=7)
        for ax in (axes[0][i], axes[1][i]):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("seen", fontsize=7)
    axes[1][0].set_ylabel("changed", fontsize=7)
    subfig.suptitle(
        "input space: the images the network sees, and how much each pixel changed", fontsize=9
    )


def _weights_section(subfig: Any, weights: torch.Tensor, size: tuple[int, int] | None) -> None:
    """The (n, b) weights of the first generated rows, or per-position maps for (.., r, .., b)."""
    b = weights.shape[-1]
    if weights.dim() == 2:
        rows = weights[: min(8, weights.shape[0])].numpy()
        ax = subfig.subplots(1, 1)
        sns.heatmap(
            rows,
            ax=ax,
            vmin=0.0,
            vmax=1.0,
            cmap="viridis",
            annot=b <= 10,
            fmt=".2f",
            annot_kws={"fontsize": 7},
            cbar_kws={"label": "weight"},
        )
        ax.set_xlabel("example of the batch")
        ax.set_ylabel("generated example")
        subfig.suptitle(
            f"mixed features reaching the head: weights of {rows.shape[0]} of {weights.shape[0]} "
            f"generated examples over the {b} examples of the batch (rows sum to 1)",
            fontsize=9,
        )
        return
    # Per-position weights: find the positions axis by the feature map's size, the other
    # leading axis holds the generated examples.
    positions = math.prod(size) if size else None
    lead = list(weights.shape[:-1])
    axis = lead.index(positions) if positions in lead else 0
    per_example = weights.movedim(axis, -2).reshape(-1, lead[axis], b)  # (n, r, b)
    h, w = size if size and math.prod(size) == lead[axis] else (1, lead[axis])
    shown = min(3, per_example.shape[0])
    axes = subfig.subplots(shown, b, squeeze=False)
    for k in range(shown):
        for i in range(b):
            ax = axes[k][i]
            ax.imshow(
                per_example[k, :, i].reshape(h, w).numpy(),
                vmin=0.0,
                vmax=1.0,
                cmap="viridis",
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(f"ex. {i}", fontsize=7)
            if i == 0:
                ax.set_ylabel(f"gen. {k}", fontsize=7)
    subfig.suptitle(
        f"mixed features, per position: weight of each batch example (columns) at each of the "
        f"{h}x{w} feature-map positions, for {shown} of {per_example.shape[0]} generated examples",
        fontsize=9,
    )


def _hidden_section(subfig: Any, stage: int, clean: torch.Tensor, mixed: torch.Tensor) -> None:
    b = clean.shape[0]
    axes = subfig.subplots(2, b, squeeze=False)
    for row, (name, state) in enumerate((("clean", clean), ("mixed", mixed))):
        maps = state.float().cpu().mean(dim=1)
        for i in range(b):
            ax = axes[row][i]
            ax.imshow(maps[i].numpy(), cmap="magma", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=7)
    subfig.suptitle(
        f"hidden space: channel mean of the state after stage {stage}, clean and as mixed",
        fontsize=9,
    )


def show_figure(
    method: MixMethod,
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: Any,
    std: Any,
    class_names: list[str] | None = None,
    title: str = "",
    draws: int = 8,
) -> Any:
    """The figure of what ``method`` does to the batch ``images`` (uint8 or [0, 1] floats).

    ``mean`` and ``std`` normalise the images as the training loader does; ``net`` is the
    staged network the probe wraps (any initialisation will do). Returns a matplotlib figure.
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    unit = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    x = (unit - mean_t) / std_t
    seen = observe(method, net, x, labels, draws)
    names = [
        class_names[int(y)] if class_names and int(y) < len(class_names) else str(int(y))
        for y in labels
    ]
    clean_titles = [f"{i}: {n}" for i, n in enumerate(names)]
    width = max(8.0, 1.1 * images.shape[0])
    side = 0.8 * width / images.shape[0]  # inches per image in a row of the batch
    # (height in inches, drawing function of a subfigure); partial binds the values now.
    sections: list[tuple[float, Any]] = [
        (
            side + 0.5,
            partial(_image_row, pictures=_pictures(x, mean_t, std_t), titles=clean_titles),
        )
    ]
    if seen.input is not None:
        change = (seen.input - x).abs().mean(dim=1)
        pictures = _pictures(seen.input, mean_t, std_t)
        sections.append((2 * side + 0.7, partial(_input_section, mixed=pictures, change=change)))
    if seen.hidden is not None:
        stage, clean, mixed = seen.hidden
        hidden = partial(_hidden_section, stage=stage, clean=clean, mixed=mixed)
        sections.append((2 * side + 0.7, hidden))
    if seen.weights is not None:
        height = 3.2 if seen.weights.dim() == 2 else 3.4
        weights = partial(_weights_section, weights=seen.weights, size=seen.feature_size)
        sections.append((height, weights))
    counts = ", ".join(f"{kind} mix in {n}" for kind, n in sorted(seen.counts.items()))
    summary = (
        f"{draws} draws on this batch: {counts}"
        if counts
        else f"{draws} draws on this batch: the method mixes nothing; the network sees the batch"
    )
    fig = plt.figure(figsize=(width, sum(h for h, _ in sections) + 0.8), dpi=100)
    subfigs = fig.subfigures(len(sections), 1, height_ratios=[h for h, _ in sections])
    for subfig, (_, draw) in zip(list(getattr(subfigs, "flat", [subfigs])), sections):
        draw(subfig)
    fig.suptitle(f"{title}\n{summary}", fontsize=10, y=1.0, va="bottom")
    return fig


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG with fixed metadata (the same inputs give the same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path,
        lambda tmp: fig.savefig(tmp, format="png", metadata=_PNG_METADATA, bbox_inches="tight"),
    )
    plt.close(fig)
