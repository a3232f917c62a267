"""Model definitions: backbones, necks, task heads. See :mod:`training.models.registry`."""

from training.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
