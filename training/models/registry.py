"""Name -> factory registry for every architecture a model package can name.

Factories are registered with :func:`register_model` next to their definition (one module per
architecture family, as timm does). ``create_model(name, **kwargs)`` is the only way the backend and the
package loader build a model, so a ``config.json`` names exactly one definition.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# Modules whose import registers factories. Imported lazily so that ``import training.models`` stays cheap.
_MODEL_MODULES: tuple[str, ...] = (
    "training.models.efficientnet",
    "training.models.vit_rvsa",
    "training.models.intern_image",
    "training.models.segmentation",
    "training.models.classification",
    "training.models.change",
    "training.models.detection",
)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its ``__name__``; use as a decorator."""
    name = fn.__name__
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def _import_all() -> None:
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a family not written yet must not break the others
            if exc.name != mod:
                raise


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    _import_all()
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the architecture registered as ``name`` with ``kwargs``.

    Raises:
        KeyError: ``name`` is not registered; the message lists the valid names.
    """
    if name not in _REGISTRY:
        _import_all()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None
    return factory(**kwargs)
