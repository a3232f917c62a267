"""COCO "instances" JSON reader (e.g. NWPU VHR-10): boxes, polygon / RLE masks and derived rotated boxes.

Layout (``split = "all"`` reads ``annotations.json``; another split reads ``annotations_<split>.json``)::

    root/annotations.json
    root/images/<file_name>

Sample keys (fixed): ``image`` float32 ``3 x H x W`` (0-255), ``labels`` int64 ``(N,)`` (0-based, in the
order of the JSON's categories sorted by id), ``boxes_xyxy`` float32 ``(N, 4)`` (from ``bbox``),
``masks`` uint8 ``(N, H, W)`` (polygons rasterised by pycocotools), ``boxes_cxcywha`` float32 ``(N, 5)``
(minimum-area rectangle of each polygon, or of the mask for RLE annotations), ``image_id`` int, ``path`` str.
Crowd annotations are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data import DatasetNotFoundError, check_split, read_rgb, to_image_tensor
from training.data.box_transforms import mask_to_rbox
from training.ops.rotated import min_area_rect

__all__ = ["CocoDetection", "NWPU_VHR10_CLASSES"]

NWPU_VHR10_CLASSES: tuple[str, ...] = (
    "airplane", "ship", "storage_tank", "baseball_diamond", "tennis_court",
    "basketball_court", "ground_track_field", "harbor", "bridge", "vehicle",
)  # fmt: skip

SPLITS = ("all", "train", "val", "test")


class CocoDetection(Dataset):
    """Instances of a COCO JSON as detection samples.

    Args:
        root: folder with the annotation file and ``images/``.
        split: ``all`` (``annotations.json``) or ``train``/``val``/``test`` (``annotations_<split>.json``).
        transforms: callable applied to each sample dict (e.g. :mod:`training.data.box_transforms`).
        ann_file: annotation file to use instead of the split's default (relative to ``root`` or absolute).
        image_dir: image folder relative to ``root``.
        skip_empty: leave out images without (non-crowd) annotations.

    Raises:
        DatasetNotFoundError: the annotation file or image folder is missing.
        ValueError: unknown split, or a malformed annotation file.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        ann_file: str | Path | None = None,
        image_dir: str = "images",
        skip_empty: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = check_split(split, SPLITS)
        self.transforms = transforms
        name = "annotations.json" if split == "all" else f"annotations_{split}.json"
        self.ann_path = self.root / (ann_file or name)
        self.image_dir = self.root / image_dir
        if not self.ann_path.is_file():
            raise DatasetNotFoundError(f"COCO annotation file {self.ann_path} not found; check root or pass ann_file")
        if not self.image_dir.is_dir():
            raise DatasetNotFoundError(f"image folder {self.image_dir} not found; check root or pass image_dir")
        with open(self.ann_path) as f:
            data = json.load(f)
        missing = [k for k in ("images", "annotations", "categories") if k not in data]
        if missing:
            raise ValueError(f"{self.ann_path} lacks {missing}; is it a COCO instances file?")
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.classes = [c["name"] for c in cats]
        self._cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
        self._anns: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            if not a.get("iscrowd", 0):
                self._anns.setdefault(a["image_id"], []).append(a)
        self.images = [im for im in data["images"] if not skip_empty or im["id"] in self._anns]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise DatasetNotFoundError(f"image {path} listed in {self.ann_path} is missing")
        rgb = read_rgb(path)
        h, w = rgb.shape[:2]
        anns = self._anns.get(info["id"], [])
        masks = np.zeros((len(anns), h, w), dtype=np.uint8)
        boxes = np.zeros((len(anns), 4), dtype=np.float32)
        rboxes = torch.zeros((len(anns), 5))
        labels = np.zeros(len(anns), dtype=np.int64)
        for k, a in enumerate(anns):
            x, y, bw, bh = a["bbox"]
            boxes[k] = [x, y, x + bw, y + bh]
            labels[k] = self._cat_to_label[a["category_id"]]
            masks[k] = _decode_segmentation(a["segmentation"], h, w)
            seg = a["segmentation"]
            if isinstance(seg, list) and seg:
                pts = torch.tensor([v for poly in seg for v in poly], dtype=torch.float64).view(-1, 2)
                rboxes[k] = min_area_rect(pts).float()
            else:
                rboxes[k] = mask_to_rbox(torch.from_numpy(masks[k]))
        sample = {
            "image": to_image_tensor(rgb),
            "labels": torch.from_numpy(labels),
            "boxes_xyxy": torch.from_numpy(boxes),
            "boxes_cxcywha": rboxes,
            "masks": torch.from_numpy(masks),
            "image_id": int(info["id"]),
            "path": str(path),
        }
        return self.transforms(sample) if self.transforms else sample


def _decode_segmentation(seg: list | dict, h: int, w: int) -> np.ndarray:
    """COCO polygon list or RLE -> ``(H, W)`` uint8 mask (pycocotools' rasterisation)."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        if not seg:
            return np.zeros((h, w), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(np.uint8)
