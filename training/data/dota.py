"""DOTA labelTxt reader (oriented objects as 8-point quadrilaterals).

Layout (official DOTA): ``root/<split>/images/*.png`` and ``root/<split>/labelTxt/*.txt``; with
``split="all"`` the ``images`` / ``labelTxt`` folders sit directly under ``root``. Each label file may start
with ``imagesource:`` / ``gsd:`` lines, then one object per line: ``x1 y1 x2 y2 x3 y3 x4 y4 class difficult``.

Sample keys (fixed): ``image`` float32 ``3 x H x W`` (0-255), ``polygons`` float32 ``(N, 8)``,
``boxes_cxcywha`` float32 ``(N, 5)`` (minimum-area rectangle of each quadrilateral, regularised, angle
counter-clockwise on the image), ``boxes_xyxy`` float32 ``(N, 4)`` (hull of the quadrilateral), ``labels``
int64 ``(N,)``, ``difficult`` bool ``(N,)``, ``gsd_m`` float (nan if absent), ``path`` str.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from training.data import DatasetNotFoundError, check_split, read_rgb, to_image_tensor
from training.data.box_transforms import polygons_to_rboxes

__all__ = ["DOTA", "DOTA_V1_CLASSES", "DOTA_V2_CLASSES", "parse_dota_label"]

DOTA_V1_CLASSES: tuple[str, ...] = (
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
    "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
    "swimming-pool", "helicopter",
)  # fmt: skip
DOTA_V2_CLASSES: tuple[str, ...] = DOTA_V1_CLASSES + ("container-crane", "airport", "helipad")

SPLITS = ("all", "train", "val", "test")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".bmp")


def parse_dota_label(path: str | Path, classes: Sequence[str]) -> dict[str, Any]:
    """Read one labelTxt file.

    Returns:
        ``{"polygons": (N, 8) float32, "labels": (N,) int64, "difficult": (N,) bool, "gsd_m": float}``.

    Raises:
        ValueError: a line is malformed or names a class not in ``classes`` (the message gives file and line).
    """
    index = {c: i for i, c in enumerate(classes)}
    polys, labels, difficult, gsd = [], [], [], math.nan
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("imagesource:"):
            continue
        if line.startswith("gsd:"):
            value = line.split(":", 1)[1].strip()
            gsd = float(value) if value and value.lower() != "null" else math.nan
            continue
        parts = line.split()
        if len(parts) < 9:
            raise ValueError(f"{path}:{lineno}: expected 'x1 y1 ... x4 y4 class [difficult]', got {line!r}")
        try:
            coords = [float(v) for v in parts[:8]]
        except ValueError:
            raise ValueError(f"{path}:{lineno}: coordinates are not numbers: {line!r}") from None
        if parts[8] not in index:
            raise ValueError(f"{path}:{lineno}: class {parts[8]!r} is not one of {', '.join(classes)}; pass classes=")
        polys.append(coords)
        labels.append(index[parts[8]])
        difficult.append(len(parts) > 9 and parts[9] == "1")
    return {
        "polygons": torch.tensor(polys, dtype=torch.float32).reshape(-1, 8),
        "labels": torch.tensor(labels, dtype=torch.long),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
        "gsd_m": gsd,
    }


class DOTA(Dataset):
    """DOTA-format oriented-object dataset.

    Args:
        root: dataset folder (see module docstring for the layout).
        split: ``all``, ``train``, ``val`` or ``test``.
        transforms: callable applied to each sample dict.
        classes: class names in label order (default DOTA v1.0's 15).

    Raises:
        DatasetNotFoundError: the images or labelTxt folder is missing, or an image has no label file.
        ValueError: unknown split, empty image folder.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        classes: Sequence[str] = DOTA_V1_CLASSES,
    ) -> None:
        self.root = Path(root)
        self.split = check_split(split, SPLITS)
        self.transforms = transforms
        self.classes = list(classes)
        base = self.root if split == "all" else self.root / split
        self.image_dir, self.label_dir = base / "images", base / "labelTxt"
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise DatasetNotFoundError(f"DOTA folder {d} not found; check root and split "
                                           f"(expected <root>[/<split>]/images and labelTxt)")  # fmt: skip
        self.images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not self.images:
            raise ValueError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) in {self.image_dir}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.images[index]
        label_path = self.label_dir / f"{path.stem}.txt"
        if not label_path.is_file():
            raise DatasetNotFoundError(f"image {path} has no label file {label_path}")
        ann = parse_dota_label(label_path, self.classes)
        polys = ann["polygons"]
        pts = polys.view(-1, 4, 2)
        sample = {
            "image": to_image_tensor(read_rgb(path)),
            "polygons": polys,
            "boxes_cxcywha": polygons_to_rboxes(polys),
            "boxes_xyxy": torch.cat([pts.amin(1), pts.amax(1)], 1) if len(polys) else torch.zeros(0, 4),
            "labels": ann["labels"],
            "difficult": ann["difficult"],
            "gsd_m": ann["gsd_m"],
            "path": str(path),
        }
        return self.transforms(sample) if self.transforms else sample
