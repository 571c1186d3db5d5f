"""Backbones from torchvision and timm, wrapped as :class:`~mixbench.models.StagedNet`.

A model named ``tv:<name>`` is built with ``torchvision.models.get_model(name, weights=None,
num_classes=...)`` and one named ``timm:<name>`` with ``timm.create_model(name,
pretrained=False, num_classes=..., **options)``; :func:`adapt` then cuts the network at its own
stage boundaries (a ResNet's ``layer1..4``, a ConvNeXt's stages, a ViT's blocks in groups) into
the stem, stages, pool and head that the mixup methods reach into. The wrapper adds no layer
and no computation: the network is its only child module (its parameters and ``state_dict``
are the wrapped network's, under ``net.``), :meth:`AdaptedNet.forward` is the network's own
forward, and the staged path ``forward_from(forward_to(x, k), k)`` runs the network's own
modules in its own order. No weights are ever downloaded: ``pretrained`` and ``weights`` are
refused.

Supported families: torchvision ResNet, WideResNet and ResNeXt (all ``torchvision.models.ResNet``);
timm ResNet, ConvNeXt and Vision Transformer / DeiT (``VisionTransformer`` with a plain
classifier head). Another family is a one-line :class:`~mixbench.errors.UsageError`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mixbench.config import parse_literal
from mixbench.errors import UsageError
from mixbench.models.staged import StagedNet

__all__ = [
    "PREFIXES",
    "SUPPORTED_FAMILIES",
    "AdaptedNet",
    "ViTNet",
    "build_external",
    "is_external",
]

#: Model-name prefixes of the adapters and the library each builds from.
PREFIXES = {"tv": "torchvision", "timm": "timm"}

#: What the adapters wrap, for messages and ``mixbench models``.
SUPPORTED_FAMILIES = (
    "tv: ResNet, WideResNet, ResNeXt (e.g. tv:resnet18, tv:wide_resnet50_2, tv:resnext50_32x4d)",
    "timm: ResNet, ConvNeXt, ViT/DeiT (e.g. timm:resnet18, timm:convnext_atto, "
    "timm:vit_tiny_patch16_224, timm:deit_tiny_patch16_224)",
)

#: How many stages a ViT's blocks are grouped into (fewer when it has fewer blocks).
VIT_STAGES = 4


def is_external(name: str) -> bool:
    """Whether ``name`` names a torchvision or timm model (``tv:...`` or ``timm:...``)."""
    prefix, sep, _ = name.partition(":")
    return bool(sep) and prefix in PREFIXES


def _family_error(name: str, family: str) -> UsageError:
    return UsageError(
        f"model {name!r} is a {family}, which mixbench cannot cut into stages; supported: "
        + "; ".join(SUPPORTED_FAMILIES)
    )


def _coerce_options(options: dict[str, Any]) -> dict[str, Any]:
    """String options (from a command line) as TOML literals: ``"32"`` is 32, ``"avg"`` stays."""
    return {k: parse_literal(v) if isinstance(v, str) else v for k, v in options.items()}


class AdaptedNet(StagedNet):
    """A torchvision or timm network seen as a :class:`StagedNet` (see the module docstring).

    Args:
        net: the wrapped network (its only child module).
        name: the model's mixbench name (``tv:resnet18``).
        stem: the callable applied to the image before stage 1.
        stages: the stages, in order; they hold the network's own modules.
        head_of: ``head_of(net)`` is the network's final linear classifier.
        pool_of: ``pool_of(net, h)`` maps the last stage's output ``h`` to the embedding the
            classifier reads.
        strides: the down-sampling strides (see :meth:`StagedNet.final_map_size`).
        min_input_size: the smallest square input side.
        entry_of: ``entry_of(net)`` is the network's first module (default: ``net.conv1``).
    """

    #: Whether :meth:`pool` accepts a feature map (b, d, h, w); a ViT that reads its class
    #: token cannot pool a map of patch tokens alone (see :class:`ViTNet`).
    pools_feature_map: bool = True

    def __init__(
        self,
        net: nn.Module,
        name: str,
        stem: Callable[[torch.Tensor], torch.Tensor],
        stages: Sequence[Callable[[torch.Tensor], torch.Tensor]],
        head_of: Callable[[nn.Module], nn.Linear],
        pool_of: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        strides: Sequence[int] = (),
        min_input_size: int = 32,
        entry_of: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        nn.Module.__init__(self)  # not StagedNet's: the network's modules stay where they are
        if not stages:
            raise ValueError("a StagedNet needs at least one stage")
        self.net = net
        self.model_name = name
        # Plain attributes (a list, callables): not registered a second time as children.
        object.__setattr__(self, "_stem", stem)  # a container would register as a child
        self._stages = list(stages)
        self._head_of = head_of
        self._pool_of = pool_of
        self._entry_of = entry_of or _first_conv
        self.strides = tuple(int(s) for s in strides)
        self.min_input_size = int(min_input_size)  # type: ignore[misc]

    @property
    def entry_module(self) -> nn.Module:
        """The first module that every pass runs (the network's first layer), where a pass
        counter hooks: the forward and the staged path both call it once per pass."""
        return self._entry_of(self.net)

    @property
    def stem(self) -> Callable[[torch.Tensor], torch.Tensor]:  # type: ignore[override]
        """The part of the network before stage 1."""
        return self._stem

    @property
    def stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:  # type: ignore[override]
        """The network's stages, in order."""
        return self._stages

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        """The network's own final linear classifier."""
        return self._head_of(self.net)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """The network's own pooling (and what sits between it and the classifier)."""
        return self._pool_of(self.net, feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped network's own forward (the staged path computes the same)."""
        return self.net(x)


class ViTNet(AdaptedNet):
    """A timm Vision Transformer as a staged network.

    The stem is the patch embedding with the class (and register) tokens and the position
    embedding; the blocks are grouped into up to four stages, the last ending with the final
    norm; hidden states are token sequences (b, prefix + n, d). :meth:`features` is the
    patch-token grid (b, d, h, w) without the prefix tokens; :meth:`embed` is what the ViT's
    own head reads (the class token or the mean of the patch tokens, per its
    ``global_pool``). :meth:`pool` takes a token sequence, or a grid when the ViT pools by
    the mean of its patch tokens (``global_pool='avg'``); a ViT that reads its class token
    cannot pool a grid of patch tokens (``pools_feature_map`` is False).
    """

    def __init__(self, net: nn.Module, name: str) -> None:
        blocks = list(net.blocks)
        groups = _split(len(blocks), VIT_STAGES)
        stages: list[nn.Module] = [nn.Sequential(*blocks[a:b]) for a, b in groups]
        stages[-1] = nn.Sequential(*stages[-1], net.norm)
        patch = int(net.patch_embed.patch_size[0])
        super().__init__(
            net,
            name,
            self._embed_tokens,
            stages,
            _classifier,
            _vit_pool,
            strides=(patch,),
            min_input_size=int(net.patch_embed.patch_size[0]),
            entry_of=_patch_embed,
        )
        self.prefix_tokens = int(net.num_prefix_tokens)
        #: The one input side the ViT takes (its position embedding is for that grid), or
        #: None when it resamples the embedding (``dynamic_img_size``).
        self.input_size = None if net.dynamic_img_size else int(net.patch_embed.img_size[0])
        self.pools_feature_map = (
            net.global_pool == "avg" and net.attn_pool is None and not net.pool_include_prefix
        )

    def _embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        return net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """The ViT's own pooling of tokens (b, n, d), or the mean of a patch grid (b, d, h, w)
        when the ViT pools by the mean of its patch tokens; then its ``fc_norm``."""
        net = self.net
        if h.dim() == 3:
            return net.forward_head(h, pre_logits=True)
        if h.dim() != 4:
            raise ValueError(f"expected tokens (b, n, d) or a grid (b, d, h, w), got {h.shape}")
        if not self.pools_feature_map:
            raise UsageError(
                f"model {self.model_name!r} reads its class token, which a grid of patch tokens "
                f"does not hold: set its option global_pool='avg' (--set "
                f"model_options.{self.model_name}.global_pool=avg) to pool patch tokens"
            )
        return net.head_drop(net.fc_norm(h.flatten(2).mean(2)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The patch-token grid (b, d, h, w) after the final norm, without prefix tokens."""
        return self.token_grid(self.forward_to(x, self.num_stages))

    def token_grid_size(self, n: int) -> tuple[int, int]:
        """The patch grid (h, w) of ``n`` patch tokens: the network's own grid, or a square."""
        grid = tuple(int(g) for g in self.net.patch_embed.grid_size)
        if grid[0] * grid[1] == n:
            return grid[0], grid[1]
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"{n} patch tokens do not form a square grid")
        return side, side

    def token_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (b, prefix + h * w, d) as a grid (b, d, h, w)."""
        patches = tokens[:, self.prefix_tokens :]
        b, n, d = patches.shape
        h, w = self.token_grid_size(n)
        return patches.transpose(1, 2).reshape(b, d, h, w)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """What the ViT's head reads: the class token, or the mean of the patch tokens."""
        return self.pool(self.forward_to(x, self.num_stages))

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the last block's attention of the class token to the patch tokens,
        averaged over heads (b, h * w), from one forward pass (TransMix's input).

        The attention row is recomputed from the last block's query and key projections
        (captured by a hook on its ``qkv`` layer: the fused attention kernel does not return
        it): ``softmax(q_cls k^T * scale)`` over all tokens, then the patch columns. Detached.
        """
        if self.net.cls_token is None:
            raise UsageError(f"model {self.model_name!r} has no class token")
        attn = self.net.blocks[-1].attn
        captured: list[torch.Tensor] = []
        hook = attn.qkv.register_forward_hook(lambda m, i, out: captured.append(out.detach()))
        try:
            logits = self.net(x)
        finally:
            hook.remove()
        qkv = captured[-1]
        b, n, _ = qkv.shape
        heads, dim = attn.num_heads, attn.head_dim
        qkv = qkv.reshape(b, n, 3, heads, dim).permute(2, 0, 3, 1, 4)
        with torch.no_grad():
            q, k = attn.q_norm(qkv[0][:, :, :1]), attn.k_norm(qkv[1])
            row = torch.softmax((q.float() * attn.scale) @ k.float().transpose(-2, -1), dim=-1)
        weights = row[:, :, 0, self.prefix_tokens :].mean(1)
        return logits, weights


def _first_conv(net: nn.Module) -> nn.Module:
    return net.conv1


def _convnext_stem(net: nn.Module) -> nn.Module:
    return net.stem


def _patch_embed(net: nn.Module) -> nn.Module:
    return net.patch_embed


def _classifier(net: nn.Module) -> nn.Linear:
    return net.get_classifier()


def _fc(net: nn.Module) -> nn.Linear:
    return net.fc


def _tv_pool(net: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    return torch.flatten(net.avgpool(feats), 1)


def _timm_pool(net: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    return net.forward_head(feats, pre_logits=True)


def _vit_pool(net: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    raise AssertionError("ViTNet.pool overrides this")  # pragma: no cover


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """``n`` items in ``min(parts, n)`` contiguous groups of near-equal size, larger first."""
    parts = max(1, min(parts, n))
    sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def _adapt_resnet(net: nn.Module, name: str, act: nn.Module, head: Any, pool: Any) -> AdaptedNet:
    """A torchvision or timm ResNet (the two name only their activation, pooling and head
    differently): stem, ``layer1..4``."""
    stem = nn.Sequential(net.conv1, net.bn1, act, net.maxpool)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    return AdaptedNet(net, name, stem, stages, head, pool, strides=(2, 2, 2, 2, 2))


def _adapt_timm_convnext(net: nn.Module, name: str) -> AdaptedNet:
    stages: list[nn.Module] = list(net.stages)
    stages[-1] = nn.Sequential(stages[-1], net.norm_pre)
    stride = int(net.stem[0].stride[0])
    return AdaptedNet(
        net,
        name,
        net.stem,
        stages,
        _classifier,
        _timm_pool,
        strides=(stride, *(2,) * (len(stages) - 1)),
        entry_of=_convnext_stem,
    )


def _check_no_weights(name: str, options: dict[str, Any]) -> None:
    for key in ("pretrained", "weights", "pretrained_cfg", "pretrained_cfg_overlay"):
        if key in options:
            raise UsageError(
                f"model {name!r}: option {key!r} is refused: mixbench trains from scratch and "
                "never downloads weights; drop the option"
            )


def _require(module: str, name: str) -> None:
    if importlib.util.find_spec(module) is None:
        extra = " 'mixbench[timm]'" if module == "timm" else f" {module}"
        raise UsageError(f"model {name!r} needs the package {module!r}: pip install{extra}")


def _build_tv(name: str, arch: str, num_classes: int, options: dict[str, Any]) -> AdaptedNet:
    _require("torchvision", name)
    from torchvision import models as tvm  # slow import, only when needed

    if arch not in tvm.list_models(module=tvm):
        raise UsageError(
            f"unknown torchvision model {arch!r}: see torchvision.models.list_models(); "
            f"supported families: {SUPPORTED_FAMILIES[0]}"
        )
    try:
        net = tvm.get_model(arch, weights=None, num_classes=num_classes, **options)
    except (TypeError, ValueError, AssertionError) as err:  # options the network refuses
        raise UsageError(f"model {name!r}: {err}") from None
    if not isinstance(net, tvm.ResNet):
        raise _family_error(name, type(net).__name__)
    return _adapt_resnet(net, name, net.relu, _fc, _tv_pool)


def _build_timm(name: str, arch: str, num_classes: int, options: dict[str, Any]) -> AdaptedNet:
    _require("timm", name)
    import timm
    from timm.models.convnext import ConvNeXt
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(arch):
        raise UsageError(
            f"unknown timm model {arch!r}: see timm.list_models(); supported families: "
            f"{SUPPORTED_FAMILIES[1]}"
        )
    try:
        net = timm.create_model(arch, pretrained=False, num_classes=num_classes, **options)
    except (TypeError, ValueError, AssertionError) as err:  # options the network refuses
        raise UsageError(f"model {name!r}: {err}") from None
    if isinstance(net, VisionTransformer):
        plain = type(net).forward_head is VisionTransformer.forward_head
        if not plain or net.attn_pool is not None or net.global_pool not in ("token", "avg"):
            raise _family_error(name, f"{type(net).__name__} with this head")
        return ViTNet(net, name)
    if isinstance(net, ResNet):
        return _adapt_resnet(net, name, net.act1, _classifier, _timm_pool)
    if isinstance(net, ConvNeXt):
        return _adapt_timm_convnext(net, name)
    raise _family_error(name, type(net).__name__)


def build_external(name: str, num_classes: int, **options: Any) -> AdaptedNet:
    """The torchvision (``tv:<name>``) or timm (``timm:<name>``) network ``name``, wrapped.

    ``options`` go to the library's constructor (strings are read as TOML literals, so
    ``img_size=32`` works from a command line); ``pretrained`` and ``weights`` are refused.
    Unknown names, missing packages and unsupported families are one-line ``UsageError``\\s.
    """
    prefix, _, arch = name.partition(":")
    if prefix not in PREFIXES or not arch:
        raise UsageError(f"model {name!r}: expected tv:<name> or timm:<name>")
    _check_no_weights(name, options)
    options = _coerce_options(options)
    if prefix == "tv":
        return _build_tv(name, arch, num_classes, options)
    return _build_timm(name, arch, num_classes, options)
