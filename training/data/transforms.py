"""Joint augmentations for dict samples: the same geometry is applied to every image and mask in a sample.

A sample is a dict (see :mod:`training.data`). Image keys (``image``, ``image1``, ``image2``) hold tensors
``C x H x W`` in the data's units (uint8 or float, e.g. 0-255); mask keys (``mask``) hold integer ``H x W``
label maps. Readers hand out uint8 views so that crops are cut before any copy; ``RandomScaleCrop`` returns
float32 images and int64 masks, ``Normalize`` float32 images.
Other keys (``label``, ``path``) pass through untouched. Every transform takes and returns a sample and
draws its randomness from ``torch``'s global generator (seed it with ``torch.manual_seed``; DataLoader workers
get distinct seeds automatically).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

Sample = dict[str, Any]

IMAGE_KEYS: tuple[str, ...] = ("image", "image1", "image2")
MASK_KEYS: tuple[str, ...] = ("mask",)

__all__ = [
    "ColorJitter",
    "Compose",
    "Normalize",
    "RandomFlip",
    "RandomRot90",
    "RandomScaleCrop",
    "Sample",
    "apply_spatial",
    "pad_to",
]


def apply_spatial(sample: Sample, fn: Callable[[torch.Tensor, bool], torch.Tensor]) -> Sample:
    """Apply ``fn(tensor, is_mask)`` to every image and mask key of ``sample``; returns a new dict."""
    out = dict(sample)
    for k in IMAGE_KEYS:
        if k in out:
            out[k] = fn(out[k], False)
    for k in MASK_KEYS:
        if k in out:
            out[k] = fn(out[k], True)
    return out


def _hw(sample: Sample) -> tuple[int, int]:
    for k in IMAGE_KEYS + MASK_KEYS:
        if k in sample:
            return int(sample[k].shape[-2]), int(sample[k].shape[-1])
    raise KeyError(f"sample has no image or mask key (expected one of {IMAGE_KEYS + MASK_KEYS}); got {sorted(sample)}")


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample


class RandomFlip:
    """Horizontal and (independently) vertical flips, each with probability ``p``."""

    def __init__(self, p: float = 0.5, vertical: bool = True):
        self.p, self.vertical = p, vertical

    def __call__(self, sample: Sample) -> Sample:
        if torch.rand(()) < self.p:
            sample = apply_spatial(sample, lambda t, _m: t.flip(-1))
        if self.vertical and torch.rand(()) < self.p:
            sample = apply_spatial(sample, lambda t, _m: t.flip(-2))
        return sample


class RandomRot90:
    """Rotate by k * 90 degrees, k uniform in {0, 1, 2, 3} (overhead imagery has no "up")."""

    def __call__(self, sample: Sample) -> Sample:
        k = int(torch.randint(0, 4, ()))
        if k == 0:
            return sample
        return apply_spatial(sample, lambda t, _m: torch.rot90(t, k, dims=(-2, -1)))


def pad_to(t: torch.Tensor, h: int, w: int, value: float) -> torch.Tensor:
    """Pad bottom/right so that ``t`` is at least ``h x w`` (no-op when already large enough)."""
    ph, pw = max(0, h - t.shape[-2]), max(0, w - t.shape[-1])
    if ph == 0 and pw == 0:
        return t
    return F.pad(t, (0, pw, 0, ph), value=value)


class RandomScaleCrop:
    """Random crop of ``size x size`` output pixels after a random rescale by ``s`` in ``scale`` (log-uniform).

    A window of ``size / s`` source pixels is cut first and then resized (bilinear for images, nearest for
    masks), so large images are never resized as a whole. ``s > 1`` zooms in (coarser apparent GSD is
    ``gsd / s``). Images smaller than the window are padded with ``fill`` and masks with ``ignore_index``.

    Args:
        size: output side in pixels.
        scale: ``(min, max)`` zoom factors; ``(1, 1)`` = plain random crop.
        ignore_index: mask value for padding.
        fill: image value for padding (in data units).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (1.0, 1.0), ignore_index: int = 255,
                 fill: float = 0.0):
        if size <= 0 or not (0 < scale[0] <= scale[1]):
            raise ValueError(f"RandomScaleCrop needs size > 0 and 0 < scale[0] <= scale[1]; got {size}, {scale}")
        self.size, self.scale, self.ignore_index, self.fill = size, scale, ignore_index, fill

    def __call__(self, sample: Sample) -> Sample:
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        s = math.exp(lo + (hi - lo) * float(torch.rand(())))
        win = max(1, round(self.size / s))
        h, w = _hw(sample)
        top = int(torch.randint(0, max(h - win, 0) + 1, ()))
        left = int(torch.randint(0, max(w - win, 0) + 1, ()))

        def crop(t: torch.Tensor, is_mask: bool) -> torch.Tensor:
            t = t[..., top : top + win, left : left + win]
            t = pad_to(t, win, win, self.ignore_index if is_mask else self.fill)
            if win == self.size:
                return t.long() if is_mask else t.float()
            if is_mask:
                return F.interpolate(t[None, None].float(), size=(self.size, self.size), mode="nearest")[0, 0].long()
            return F.interpolate(t[None].float(), size=(self.size, self.size), mode="bilinear",
                                 align_corners=False, antialias=win > self.size)[0]

        return apply_spatial(sample, crop)


class ColorJitter:
    """Random brightness (multiplicative) and contrast around each band's mean, drawn independently per image
    key (two dates of a change pair differ in lighting too). Values stay in data units, clipped to
    ``[0, max_value]``.

    Args:
        brightness: factor drawn from ``[1 - b, 1 + b]``.
        contrast: factor drawn from ``[1 - c, 1 + c]``.
        p: probability of jittering an image at all.
        max_value: upper clip (255 for uint8 data).
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, p: float = 0.8, max_value: float = 255.0):
        self.brightness, self.contrast, self.p, self.max_value = brightness, contrast, p, max_value

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for k in IMAGE_KEYS:
            if k not in out or torch.rand(()) >= self.p:
                continue
            x = out[k].float()
            b = 1 + self.brightness * (2 * float(torch.rand(())) - 1)
            c = 1 + self.contrast * (2 * float(torch.rand(())) - 1)
            mean = x.mean(dim=(-2, -1), keepdim=True)
            out[k] = ((x - mean) * c + mean * b).clamp(0, self.max_value)
        return out


class Normalize:
    """``(x - mean) / std`` per band on every image key; ``mean``/``std`` in the data's units (e.g. 0-255)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(list(std), dtype=torch.float32)[:, None, None]

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for k in IMAGE_KEYS:
            if k in out:
                x = out[k].float()
                if x.shape[0] != self.mean.shape[0]:
                    raise ValueError(f"{k} has {x.shape[0]} bands but Normalize has {self.mean.shape[0]} mean values")
                out[k] = (x - self.mean) / self.std
        return out
