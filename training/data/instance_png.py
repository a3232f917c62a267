"""Instance masks stored as two RGB PNGs (iSAID, HRSID): an instance-id colour map and a class colour map.

Layout: for each image ``<stem>.png`` in ``root`` (``split="all"``) or ``root/<split>``, the same folder holds
``<stem>_instance_id_RGB.png`` (each instance its own RGB colour, black = background) and
``<stem>_instance_color_RGB.png`` (class colour per pixel, see the palettes below).

Sample keys (fixed): ``image`` float32 ``3 x H x W`` (0-255), ``masks`` uint8 ``(N, H, W)``, ``labels`` int64
``(N,)`` (majority class colour inside each instance), ``boxes_xyxy`` float32 ``(N, 4)`` (pixel-edge box of
each mask), ``boxes_cxcywha`` float32 ``(N, 5)`` (minimum-area rectangle of each mask), ``path`` str.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data import DatasetNotFoundError, check_split, read_rgb, to_image_tensor
from training.data.box_transforms import mask_to_rbox, masks_to_boxes

__all__ = ["InstancePNGDataset", "ISAID", "HRSID", "ISAID_PALETTE", "HRSID_PALETTE"]

# iSAID class colours (iSAID_Devkit), in label order.
ISAID_PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("ship", (0, 0, 63)), ("storage_tank", (0, 63, 63)), ("baseball_diamond", (0, 63, 0)),
    ("tennis_court", (0, 63, 127)), ("basketball_court", (0, 63, 191)), ("Ground_Track_Field", (0, 63, 255)),
    ("Bridge", (0, 127, 63)), ("Large_Vehicle", (0, 127, 127)), ("Small_Vehicle", (0, 0, 127)),
    ("Helicopter", (0, 0, 191)), ("Swimming_pool", (0, 0, 255)), ("Roundabout", (0, 191, 127)),
    ("Soccer_ball_field", (0, 127, 191)), ("plane", (0, 127, 255)), ("Harbor", (0, 100, 155)),
)  # fmt: skip
HRSID_PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (("ship", (128, 0, 0)),)

SPLITS = ("all", "train", "val", "test")
_ID_SUFFIX = "_instance_id_RGB.png"
_CLASS_SUFFIX = "_instance_color_RGB.png"


def _rgb_code(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 -> ``H x W`` int64 ``r * 65536 + g * 256 + b``."""
    c = rgb.astype(np.int64)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


class InstancePNGDataset(Dataset):
    """Images with instance-id and class-colour PNGs.

    Args:
        root: dataset folder; split: ``all`` (files in ``root``) or ``train``/``val``/``test`` (``root/<split>``).
        transforms: callable applied to each sample dict.
        palette: ``(class name, (r, g, b))`` per class, in label order.
        min_pixels: instances with fewer pixels are dropped (annotation specks).

    Raises:
        DatasetNotFoundError: the folder, or an image's id / class PNG, is missing.
        ValueError: unknown split, no images, a class colour not in the palette, or size mismatch.
    """

    palette: Sequence[tuple[str, tuple[int, int, int]]] = ()

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        palette: Sequence[tuple[str, tuple[int, int, int]]] | None = None,
        min_pixels: int = 1,
    ) -> None:
        self.root = Path(root)
        self.split = check_split(split, SPLITS)
        self.transforms = transforms
        self.palette = list(palette if palette is not None else type(self).palette)
        if not self.palette:
            raise ValueError("a palette of (class name, (r, g, b)) is required for InstancePNGDataset")
        self.classes = [name for name, _ in self.palette]
        self._code_to_label = {(r << 16) | (g << 8) | b: i for i, (_, (r, g, b)) in enumerate(self.palette)}
        self.min_pixels = min_pixels
        self.folder = self.root if split == "all" else self.root / split
        if not self.folder.is_dir():
            raise DatasetNotFoundError(f"instance-PNG folder {self.folder} not found; check root and split")
        self.images = sorted(p for p in self.folder.glob("*.png") if not p.name.endswith((_ID_SUFFIX, _CLASS_SUFFIX)))
        if not self.images:
            raise ValueError(f"no images (*.png besides *{_ID_SUFFIX} / *{_CLASS_SUFFIX}) in {self.folder}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.images[index]
        id_path = path.with_name(path.stem + _ID_SUFFIX)
        cls_path = path.with_name(path.stem + _CLASS_SUFFIX)
        for p in (id_path, cls_path):
            if not p.is_file():
                raise DatasetNotFoundError(f"image {path} has no label PNG {p}")
        rgb = read_rgb(path)
        ids = _rgb_code(read_rgb(id_path))
        cls = _rgb_code(read_rgb(cls_path))
        if ids.shape != rgb.shape[:2] or cls.shape != rgb.shape[:2]:
            raise ValueError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]} but its label PNGs are "
                             f"{ids.shape[1]}x{ids.shape[0]} / {cls.shape[1]}x{cls.shape[0]}")  # fmt: skip
        inst_ids, counts = np.unique(ids[ids != 0], return_counts=True)
        inst_ids = inst_ids[counts >= self.min_pixels]
        masks = np.zeros((len(inst_ids), *ids.shape), dtype=np.uint8)
        labels = np.zeros(len(inst_ids), dtype=np.int64)
        keep = np.ones(len(inst_ids), dtype=bool)
        for k, inst in enumerate(inst_ids):
            m = ids == inst
            masks[k] = m
            colours, n = np.unique(cls[m], return_counts=True)
            order = np.argsort(-n, kind="stable")
            colours = [c for c in colours[order] if c != 0]  # black inside an instance = unlabelled border
            if not colours:
                keep[k] = False
                continue
            if int(colours[0]) not in self._code_to_label:
                c = int(colours[0])
                raise ValueError(f"{cls_path}: class colour {(c >> 16, (c >> 8) & 255, c & 255)} is not in the "
                                 f"palette ({', '.join(self.classes)}); pass palette=")  # fmt: skip
            labels[k] = self._code_to_label[int(colours[0])]
        masks_t = torch.from_numpy(masks[keep])
        sample = {
            "image": to_image_tensor(rgb),
            "masks": masks_t,
            "labels": torch.from_numpy(labels[keep]),
            "boxes_xyxy": masks_to_boxes(masks_t),
            "boxes_cxcywha": torch.stack([mask_to_rbox(m) for m in masks_t]) if len(masks_t) else torch.zeros(0, 5),
            "path": str(path),
        }
        return self.transforms(sample) if self.transforms else sample


class ISAID(InstancePNGDataset):
    """iSAID (15 classes, :data:`ISAID_PALETTE`)."""

    palette = ISAID_PALETTE


class HRSID(InstancePNGDataset):
    """HRSID SAR ships (1 class, :data:`HRSID_PALETTE`)."""

    palette = HRSID_PALETTE
