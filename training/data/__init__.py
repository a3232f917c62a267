"""Dataset readers (one file per format, torchgeo style) and joint augmentations.

Every reader takes ``(root, split, transforms)`` and returns dict samples with fixed keys:

=====================  ==========================================================================
reader                 sample keys
=====================  ==========================================================================
masks (segmentation)   ``image`` float32 ``C x H x W`` (data units, 0-255), ``mask`` int64 ``H x W``
scenes (AID folders)   ``image`` float32 ``C x H x W``, ``label`` int64 scalar
change_pairs           ``image1``, ``image2`` float32 ``C x H x W``, ``mask`` int64 ``H x W`` (1 = change)
=====================  ==========================================================================

All readers also give ``path`` (str). This package's ``__init__`` only holds what every reader shares, so
importing one reader never imports the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["DatasetNotFoundError", "check_split", "read_rgb", "to_image_tensor"]


class DatasetNotFoundError(FileNotFoundError):
    """The files a reader expects are not under ``root``; the message names the path and the flag to change."""


def check_split(split: str, valid: Sequence[str]) -> str:
    """Return ``split`` or raise ``ValueError`` listing the valid choices."""
    if split not in valid:
        raise ValueError(f"split {split!r} is not valid; choose one of {', '.join(valid)}")
    return split


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB (palette, grey and RGBA images are converted)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))  # a writable copy (torch.from_numpy needs one)


def to_image_tensor(arr: np.ndarray) -> torch.Tensor:
    """``H x W x C`` array -> float32 tensor ``C x H x W`` in the same units."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()
