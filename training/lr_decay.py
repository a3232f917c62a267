"""Parameter groups for AdamW with layer-wise learning-rate decay (MTP spec section 3 / 7.8).

For a ViT backbone with ``L`` blocks the official finetune configs give ``pos_embed``/``patch_embed`` layer
id 0, ``blocks.i`` id ``i + 1`` and everything else (necks, heads) id ``L + 1``; a parameter's lr is scaled by
``decay ** (L + 1 - id)``. Backbones opt in by exposing ``layer_id(name) -> int`` (name relative to the
backbone) and ``num_layers`` (``L``); for any other backbone every group has scale 1.0. Norm weights, biases
and names the model lists in ``no_weight_decay()`` get weight decay 0.
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["param_groups_layer_decay"]


def param_groups_layer_decay(model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0,
                             backbone_attr: str = "backbone") -> list[dict]:
    """Split ``model``'s trainable parameters into AdamW groups.

    Args:
        model: task model; its backbone is ``getattr(model, backbone_attr)``.
        lr: base learning rate (the head's lr).
        weight_decay: decoupled weight decay for matrices/kernels.
        layer_decay: per-layer factor (< 1 shrinks early layers' lr); 1.0 disables it.
        backbone_attr: attribute holding the backbone.

    Returns:
        A list of dicts with ``params``, ``lr``, ``weight_decay``, ``lr_scale`` (keep ``lr_scale`` and multiply
        it into the scheduled lr) and ``name`` (for logs).
    """
    backbone = getattr(model, backbone_attr, None)
    layer_id = getattr(backbone, "layer_id", None)
    num_layers = getattr(backbone, "num_layers", None)
    use_decay = layer_decay != 1.0 and callable(layer_id) and num_layers is not None
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    prefix = f"{backbone_attr}."
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = p.ndim <= 1 or name in skip or name.endswith(".bias")
        if use_decay and name.startswith(prefix):
            lid = int(layer_id(name[len(prefix):]))
        else:
            lid = int(num_layers) + 1 if use_decay else 0
        scale = layer_decay ** (int(num_layers) + 1 - lid) if use_decay else 1.0
        key = (lid, no_wd)
        if key not in groups:
            groups[key] = {"params": [], "lr": lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if no_wd else weight_decay,
                           "name": f"layer{lid}_{'no_decay' if no_wd else 'decay'}"}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]
