"""mixbench's own evaluators, one module each; every module of this package is imported (and
so registers its evaluators) when :mod:`mixbench.bench.evaluators` is."""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_module.name}")
