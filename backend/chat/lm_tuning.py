"""Parameter-efficient tuning of the chat LM, trained with the visual soft-token projector (CHAT_DESIGN §6.2
stage A; issue #7 item 3). Optional: a projector trained with ``--lm-tuning none`` leaves the LM as it is.

Two modes, both small and both written here in plain PyTorch (no peft):

* ``lora``: a low-rank update ``W + (alpha / r) · B A`` on chosen linear layers of every block (default the
  attention's query and value projections, as in the LoRA paper). ``B`` starts at zero, so an untrained adapter
  is the identity.
* ``bias-scale``: a learned per-channel scale and shift after every normalisation layer,
  ``y = norm(x) · (1 + s) + b``, starting at ``s = b = 0``. SmolLM2's linear layers have no biases and its
  RMSNorms no shift, so this is how "bias/scale tuning" reaches a Llama-style LM.

Adapter parameters are fp32 even when the LM runs in bf16 (AdamW steps of 1e-4 vanish in bf16); each update
is computed in fp32 and rounded once to the LM's dtype.

The adapted LM is a copy (:func:`adapted_copy`): the cached built-in LM that plain chat uses is never touched.
Files: ``lm_adapter.safetensors`` beside the projector, its settings in ``projector.json`` (``lm_tuning``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backend.chat.lm import LMError

ADAPTER_FILE = "lm_adapter.safetensors"
MODES = ("none", "lora", "bias-scale")


@dataclass
class LMTuning:
    """What of the LM is tuned.

    Attributes:
        mode: ``none``, ``lora`` or ``bias-scale``.
        rank: LoRA rank ``r``.
        alpha: LoRA scale numerator (the update is multiplied by ``alpha / rank``).
        targets: names of the linear layers that get LoRA (matched against the last part of module names).
    """

    mode: str = "none"
    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LMError(f"unknown LM tuning mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode == "lora" and self.rank < 1:
            raise LMError(f"LoRA rank must be at least 1, got {self.rank}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LMTuning:
        d = d or {}
        return cls(**{k: d[k] for k in ("mode", "rank", "alpha", "targets") if k in d})


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) · x Aᵀ Bᵀ``; ``base`` stays frozen, ``A`` and ``B`` are fp32."""

    def __init__(self, base: nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # the init nn.Linear gives its weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x.float(), self.lora_a), self.lora_b) * self.scaling
        return self.base(x) + update.to(x.dtype)


class ScaleShift(nn.Module):
    """``base(x) · (1 + scale) + shift`` per channel, in fp32, rounded once to the input's dtype."""

    def __init__(self, base: nn.Module, width: int) -> None:
        super().__init__()
        self.base = base
        self.scale = nn.Parameter(torch.zeros(width))
        self.shift = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return (y.float() * (1 + self.scale) + self.shift).to(y.dtype)


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")


def attach(model: nn.Module, tuning: LMTuning) -> list[nn.Parameter]:
    """Wrap ``model``'s layers in place for ``tuning`` and freeze everything else.

    Returns:
        The adapter parameters (the only ones with ``requires_grad``); empty for mode ``none``.

    Raises:
        LMError: no layer matches (e.g. LoRA targets the LM does not have).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if tuning.mode == "none":
        return []
    if any(isinstance(m, (LoRALinear, ScaleShift)) for m in model.modules()):
        raise LMError("this LM already carries an adapter; attach to a fresh copy (adapted_copy)")
    chosen: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if (tuning.mode == "lora" and last in tuning.targets and hasattr(m, "in_features")) or (
                tuning.mode == "bias-scale" and _is_norm(m)):
            chosen.append((name, m))
    if not chosen:
        raise LMError(f"no layer of the LM fits LM tuning {tuning.mode!r} (targets {tuning.targets}); "
                      "check --lora-targets against the LM's module names")
    for name, m in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if tuning.mode == "lora":
            wrapped: nn.Module = LoRALinear(m, tuning.rank, tuning.alpha)
        else:
            wrapped = ScaleShift(m, int(m.weight.shape[0]))
        setattr(parent, attr, wrapped)
    return adapter_parameters(model)


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters of an attached ``model``, in a stable order."""
    return [p for _, p in adapter_named_parameters(model)]


def adapter_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (LoRALinear, ScaleShift)):
            out += [(f"{name}.{k}", p) for k, p in m.named_parameters(recurse=False)]
    return out


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights as a flat fp32 state dict (what :func:`save_adapter` writes)."""
    return {k: p.detach().cpu().float().contiguous() for k, p in adapter_named_parameters(model)}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into an attached ``model``; keys and shapes must match exactly.

    Raises:
        LMError: missing, unexpected or misshapen tensors (the adapter was trained for another LM or mode).
    """
    params = dict(adapter_named_parameters(model))
    missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    bad = [k for k in params.keys() & state.keys() if tuple(params[k].shape) != tuple(state[k].shape)]
    if missing or extra or bad:
        raise LMError(f"the LM adapter does not fit this LM (missing {missing[:3]}, unexpected {extra[:3]}, "
                      f"wrong shape {bad[:3]}); it was trained for another LM or tuning mode: retrain it")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state[k])


def save_adapter(out_dir: str | Path, model: nn.Module) -> Path:
    from safetensors.torch import save_file

    path = Path(out_dir) / ADAPTER_FILE
    save_file(adapter_state(model), str(path), metadata={"format": "rsfm-chat-lm-adapter"})
    return path


def adapted_copy(lm: Any, tuning: LMTuning, adapter_dir: str | Path) -> Any:
    """A copy of ``lm`` (a ``_TorchLM``) with the trained adapter in ``adapter_dir`` attached; ``lm`` itself is
    left untouched (plain chat keeps using it). Mode ``none`` returns ``lm``.

    Raises:
        LMError: the adapter file is missing, unreadable or does not fit the LM.
    """
    if tuning.mode == "none":
        return lm
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from backend.chat.lm import _TorchLM

    path = Path(adapter_dir) / ADAPTER_FILE
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LMError(f"cannot read the LM adapter {path} ({e}); the projector was trained with LM tuning "
                      f"{tuning.mode!r}, so retrain it or restore the file") from None
    model = copy.deepcopy(lm.model)
    attach(model, tuning)
    load_adapter_state(model, state)
    return _TorchLM(model.eval(), lm.tokenizer, lm.dtype)


__all__ = ["ADAPTER_FILE", "MODES", "LMTuning", "LoRALinear", "ScaleShift", "adapted_copy", "adapter_parameters",
           "adapter_state", "attach", "load_adapter_state", "save_adapter"]
