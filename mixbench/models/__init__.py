"""Backbones: staged networks (stem, stages ``1..S``, pool, linear head) and their registry.

``register_model(name)`` registers a factory ``f(num_classes, **options) -> StagedNet``,
``create_model(name, num_classes, **options)`` returns a fresh network, ``list_models()`` the
registered names and ``model_info(name)`` a model's description and options. Installed packages
add models through the entry point group ``mixbench.models``. The registry lives in
:mod:`mixbench.models.registry`; the built-in families register themselves when this package is
imported. ``tv:<name>`` and ``timm:<name>`` name torchvision and timm networks
(:mod:`mixbench.models.adapters`).
"""

from __future__ import annotations

# The built-in model families register themselves on import.
from mixbench.models import preactresnet, resnet, wrn  # noqa: F401
from mixbench.models.adapters import AdaptedNet, ViTNet, is_external
from mixbench.models.registry import (
    MODELS,
    ModelFactory,
    check_model_name,
    create_model,
    external_model_help,
    list_models,
    model_info,
    model_options,
    register_model,
)
from mixbench.models.staged import StagedNet, init_weights

__all__ = [
    "MODELS",
    "AdaptedNet",
    "ViTNet",
    "check_model_name",
    "external_model_help",
    "is_external",
    "ModelFactory",
    "StagedNet",
    "create_model",
    "init_weights",
    "list_models",
    "model_info",
    "model_options",
    "register_model",
]
