"""Semantic segmentation with colour-coded RGB masks (Dubai aerial imagery layout), split by tile.

Layout (the Humans-in-the-Loop "Semantic segmentation of aerial imagery" release; ``shared/data/dubai_seg``)::

    root/
      mask_colors.json            {"classes": [{"title", "color": "#RRGGBB", "rgb": [r,g,b]}, ...],
                                   "ignore": {"rgb": [0,0,0]}}   (optional "ignore" entry)
      Tile 1/images/image_part_001.jpg   Tile 1/masks/image_part_001.png
      Tile 2/...

Any folder holding ``images/`` and ``masks/`` is a *group* (a tile). Splits are made of whole groups, so no
two splits share a tile: neighbouring patches of one tile are strongly correlated, and a patch-level split
would overstate accuracy. Mask pixels take the index of their colour in ``mask_colors.json``; the ignore
colour (black for Dubai: unannotated) becomes ``ignore_index``.

Note: the Dubai release's ``classes.json`` lists the annotation tool's colours, which never occur in the masks;
this reader only trusts ``mask_colors.json`` (or colours passed in ``classes``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data import DatasetNotFoundError, check_split, read_rgb

__all__ = [
    "DUBAI_TEST_TILES",
    "DUBAI_VAL_TILES",
    "ColorMaskSegmentation",
    "DubaiSegmentation",
    "hex_to_rgb",
    "load_mask_colors",
    "rgb_to_index",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
# Held-back tiles of the default model (chosen once, before training; see docs/results/landcover.md):
# Tile 2 (smallest, every class present) picks the checkpoint; Tile 1 is only ever reported.
DUBAI_VAL_TILES: tuple[str, ...] = ("Tile 2",)
DUBAI_TEST_TILES: tuple[str, ...] = ("Tile 1",)


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` -> ``(r, g, b)``."""
    c = color.lstrip("#")
    if len(c) != 6:
        raise ValueError(f"colour {color!r} is not #RRGGBB")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def load_mask_colors(path: str | Path) -> tuple[list[tuple[str, str]], tuple[int, int, int] | None]:
    """Read ``mask_colors.json`` -> ``([(name, "#RRGGBB"), ...], ignore_rgb or None)``.

    Raises:
        DatasetNotFoundError: the file is missing.
        ValueError: the file lacks a ``classes`` list.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetNotFoundError(
            f"no {p.name} in {p.parent}: colour-mask datasets need a mask_colors.json listing the colours the masks "
            "really use ({'classes': [{'title': ..., 'color': '#RRGGBB'}]}); write one or pass classes=..."
        )
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data.get("classes"), list) or not data["classes"]:
        raise ValueError(f"{p} has no 'classes' list")
    classes = []
    for c in data["classes"]:
        color = c.get("color") or "#{:02X}{:02X}{:02X}".format(*c["rgb"])
        classes.append((str(c.get("title") or c.get("name")), color.upper()))
    ignore = data.get("ignore")
    ignore_rgb = tuple(ignore["rgb"]) if ignore and "rgb" in ignore else None
    return classes, ignore_rgb


def rgb_to_index(rgb: np.ndarray, colors: Sequence[tuple[int, int, int]], ignore_index: int = 255,
                 ignore_rgb: tuple[int, int, int] | None = (0, 0, 0), unknown: str = "error",
                 where: str = "mask") -> np.ndarray:
    """Map an ``H x W x 3`` uint8 colour mask to ``H x W`` int64 class indices.

    Args:
        rgb: the colour mask.
        colors: RGB triple of class ``i`` at position ``i``.
        ignore_index: value written for ``ignore_rgb`` (and unknown colours with ``unknown="ignore"``).
        ignore_rgb: colour meaning "not annotated", or None.
        unknown: ``"error"`` (default) or ``"ignore"`` for colours that are in neither list.
        where: file name used in error messages.

    Raises:
        ValueError: unknown colours with ``unknown="error"``; the message lists up to 5 of them.
    """
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    out = np.full(code.shape, -1, dtype=np.int64)
    for i, (r, g, b) in enumerate(colors):
        out[code == ((r << 16) | (g << 8) | b)] = i
    if ignore_rgb is not None:
        r, g, b = ignore_rgb
        out[code == ((r << 16) | (g << 8) | b)] = ignore_index
    bad = out < 0
    if bad.any():
        if unknown != "ignore":
            vals = np.unique(code[bad])[:5]
            found = ", ".join(f"#{v:06X}" for v in vals)
            raise ValueError(
                f"{where} contains colours that are not classes: {found}; add them to mask_colors.json "
                "or read with unknown='ignore'"
            )
        out[bad] = ignore_index
    return out


class ColorMaskSegmentation(Dataset):
    """Colour-mask segmentation in the tiled layout described in the module docstring.

    Args:
        root: dataset folder.
        split: ``train`` (all groups not in val/test), ``val``, ``test`` or ``all``.
        transforms: callable on the sample dict (see :mod:`training.data.transforms`).
        val_groups / test_groups: group (tile folder) names of the held-back splits; they must not overlap.
        classes: ``[(name, "#RRGGBB")]``; default: read ``root/mask_colors.json``.
        ignore_index: label for unannotated pixels (and padding).
        cache: keep decoded images and label maps in memory (uint8/uint8; ~4 bytes per pixel).

    Sample: ``image`` uint8 ``3 x H x W`` (0-255), ``mask`` uint8 ``H x W`` (int64 if ``ignore_index`` > 255),
    ``path`` str; :class:`~training.data.transforms.RandomScaleCrop` / ``Normalize`` turn them into int64 /
    float32.

    Raises:
        DatasetNotFoundError: ``root`` or its groups are missing.
        ValueError: bad split name, overlapping or unknown group names, empty split.
    """

    splits = ("train", "val", "test", "all")

    def __init__(self, root: str | Path, split: str = "train", transforms: Callable | None = None,
                 val_groups: Sequence[str] = (), test_groups: Sequence[str] = (),
                 classes: Sequence[tuple[str, str]] | None = None, ignore_index: int = 255, cache: bool = True):
        self.root = Path(root)
        self.split = check_split(split, self.splits)
        self.transforms = transforms
        self.ignore_index = ignore_index
        self.cache = cache
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"segmentation data folder {self.root} does not exist; check --data / root")
        if classes is None:
            classes, ignore_rgb = load_mask_colors(self.root / "mask_colors.json")
        else:
            ignore_rgb = (0, 0, 0)
        self.classes: list[tuple[str, str]] = [(n, c.upper()) for n, c in classes]
        self.class_rgb = [hex_to_rgb(c) for _, c in self.classes]
        self.ignore_rgb = ignore_rgb

        groups = sorted(p.name for p in self.root.iterdir() if (p / "images").is_dir() and (p / "masks").is_dir())
        if not groups:
            raise DatasetNotFoundError(
                f"no groups under {self.root}: expected sub-folders like 'Tile 1/' holding images/ and masks/"
            )
        val, test = list(val_groups), list(test_groups)
        for name in val + test:
            if name not in groups:
                raise ValueError(f"held-back group {name!r} is not under {self.root}; groups: {', '.join(groups)}")
        if set(val) & set(test):
            raise ValueError(f"val and test groups overlap: {sorted(set(val) & set(test))}; held-back tiles must differ")
        chosen = {
            "train": [g for g in groups if g not in val and g not in test],
            "val": val,
            "test": test,
            "all": groups,
        }[split]
        self.groups = chosen
        self.items: list[tuple[Path, Path]] = []
        for g in chosen:
            for img in sorted((self.root / g / "images").iterdir()):
                if img.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                mask = self.root / g / "masks" / (img.stem + ".png")
                if not mask.is_file():
                    raise DatasetNotFoundError(f"image {img} has no mask {mask}; every image needs masks/<stem>.png")
                self.items.append((img, mask))
        if not self.items:
            raise ValueError(f"split {split!r} of {self.root} is empty (groups {chosen}); pass val/test groups that "
                             "leave images for it")
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self._cache:
            return self._cache[i]
        img_path, mask_path = self.items[i]
        image = read_rgb(img_path)
        mask = rgb_to_index(read_rgb(mask_path), self.class_rgb, self.ignore_index, self.ignore_rgb,
                            where=str(mask_path)).astype(np.uint8 if self.ignore_index < 256 else np.int64)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{img_path} is {image.shape[1]}x{image.shape[0]} but its mask is "
                             f"{mask.shape[1]}x{mask.shape[0]}; image and mask must be the same size")
        if self.cache:
            self._cache[i] = (image, mask)
        return image, mask

    def pixel_counts(self) -> list[int]:
        """Pixels per image (for area-weighted sampling of crops), read from file headers only."""
        from PIL import Image

        counts = []
        for img, _ in self.items:
            with Image.open(img) as im:
                counts.append(im.width * im.height)
        return counts

    def __getitem__(self, i: int) -> dict:
        image, mask = self._load(i)
        # uint8 views, no copy: crops are cut before any conversion (a Tile 8 patch is 3.2 Mpx).
        sample = {"image": torch.from_numpy(image).permute(2, 0, 1), "mask": torch.from_numpy(mask),
                  "path": str(self.items[i][0])}
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


class DubaiSegmentation(ColorMaskSegmentation):
    """The Dubai aerial land-cover set (6 classes) with the project's tile split (val Tile 2, test Tile 1)."""

    def __init__(self, root: str | Path, split: str = "train", transforms: Callable | None = None,
                 val_groups: Sequence[str] = DUBAI_VAL_TILES, test_groups: Sequence[str] = DUBAI_TEST_TILES,
                 **kwargs):
        super().__init__(root, split, transforms, val_groups=val_groups, test_groups=test_groups, **kwargs)
