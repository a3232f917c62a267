"""Scene classification from class folders (AID layout: ``root/<Class>/<class>_<n>.jpg``).

Two layouts are read:

* ``root/<split>/<Class>/*`` (explicit split folders, e.g. EuroSAT ``train``/``val``), or
* ``root/<Class>/*`` - one folder per class; the split is cut **per class in file-number order** (natural
  sort): the first ``1 - val_fraction - test_fraction`` of each class train, then val, then test. Contiguous
  blocks instead of a random shuffle, because AID's neighbouring numbers are often near-duplicates and a random
  split overstated accuracy by 5-6 points on unseen images (ARCHITECTURE.md).

Sample: ``image`` uint8 ``3 x H x W``, ``label`` int64 scalar, ``path`` str.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from training.data import DatasetNotFoundError, check_split, read_rgb

__all__ = ["SceneFolder", "natural_key"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
# Fixed colours for up to 30 classes (model packages need one per class); tab20 + extra, as #RRGGBB.
_PALETTE = [
    "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF",
    "#AEC7E8", "#FFBB78", "#98DF8A", "#FF9896", "#C5B0D5", "#C49C94", "#F7B6D2", "#C7C7C7", "#DBDB8D", "#9EDAE5",
    "#393B79", "#637939", "#8C6D31", "#843C39", "#7B4173", "#3182BD", "#E6550D", "#31A354", "#756BB1", "#636363",
]


def natural_key(name: str) -> tuple:
    """Sort key that orders ``x_2`` before ``x_10``."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


def _images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))


class SceneFolder(Dataset):
    """Class-folder scene classification reader.

    Args:
        root: dataset folder.
        split: ``train``, ``val``, ``test`` or ``all``.
        transforms: callable on the sample dict.
        val_fraction / test_fraction: per-class fractions for the single-folder layout.

    Attributes:
        classes: ``[(name, "#RRGGBB")]`` in label order (folder names, sorted).
        targets: label of every item (for stratified subsets).

    Raises:
        DatasetNotFoundError: no class folders with images under ``root``.
        ValueError: bad split or fractions.
    """

    splits = ("train", "val", "test", "all")

    def __init__(self, root: str | Path, split: str = "train", transforms: Callable | None = None,
                 val_fraction: float = 0.2, test_fraction: float = 0.0):
        self.root = Path(root)
        self.split = check_split(split, self.splits)
        self.transforms = transforms
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"scene folder {self.root} does not exist; check --data / root")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction + test_fraction must be < 1; got {val_fraction} + {test_fraction}")
        split_root = self.root / split
        explicit = split != "all" and split_root.is_dir()
        base = split_root if explicit else self.root
        class_dirs = sorted((p for p in base.iterdir() if p.is_dir() and _images(p)), key=lambda p: p.name)
        if not class_dirs:
            raise DatasetNotFoundError(
                f"no class folders with images under {base}: expected {base}/<ClassName>/*.jpg"
            )
        names = [p.name for p in class_dirs]
        self.classes = [(n, _PALETTE[i % len(_PALETTE)]) for i, n in enumerate(names)]
        self.items: list[tuple[Path, int]] = []
        for label, d in enumerate(class_dirs):
            files = _images(d)
            if not explicit and split != "all":
                n = len(files)
                n_test = round(test_fraction * n)
                n_val = round(val_fraction * n)
                n_train = n - n_val - n_test
                files = {"train": files[:n_train], "val": files[n_train : n_train + n_val],
                         "test": files[n_train + n_val :]}[split]
            self.items += [(f, label) for f in files]
        if not self.items:
            raise ValueError(f"split {split!r} of {self.root} is empty; change val_fraction/test_fraction")
        self.targets = [lbl for _, lbl in self.items]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        path, label = self.items[i]
        image = torch.from_numpy(read_rgb(path)).permute(2, 0, 1)
        sample = {"image": image, "label": torch.tensor(label, dtype=torch.long), "path": str(path)}
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample
