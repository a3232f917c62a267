"""Bi-temporal change detection pairs: LEVIR-CD (``A/ B/ label/``) and OSCD (``<city>/img1.png img2.png cm.png``).

Sample: ``image1`` (earlier date) and ``image2`` (later date) uint8 ``3 x H x W``, ``mask`` uint8 ``H x W`` with
1 = change, 0 = no change, ``path`` str. When the two dates differ in size by a few pixels (an upstream
LEVIR-CD pair is 768x384 vs 768x383), both are cropped to the common extent.

Splits:

* LEVIR-CD: ``root/<split>/{A,B,label}`` (the full release) or one ``root/{A,B,label}`` folder whose file names
  carry the split as a prefix (``train_36_0512_0512.png``, as in the BIT_CD samples).
* OSCD: the official city lists (:data:`OSCD_SPLITS`), or ``cities=`` to choose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data import DatasetNotFoundError, check_split, read_rgb

__all__ = ["OSCD_SPLITS", "LevirCD", "OSCDPairs", "binary_change_mask"]

# Daudt et al. 2018, the official OSCD train/test cities.
OSCD_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("abudhabi", "aguasclaras", "beihai", "beirut", "bercy", "bordeaux", "cupertino", "hongkong",
              "mumbai", "nantes", "paris", "pisa", "rennes", "saclay_e"),
    "test": ("brasilia", "chongqing", "dubai", "lasvegas", "milano", "montpellier", "norcia", "rio", "saclay_w",
             "valencia"),
}


def binary_change_mask(path: str | Path) -> np.ndarray:
    """Read a change label (grey 0/255, or RGB(A) black/white) as ``H x W`` uint8 with 1 = change."""
    from PIL import Image

    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"))
    return (grey > 127).astype(np.uint8)


def _pair_sample(p1: Path, p2: Path, label: Path | None, transforms: Callable | None) -> dict:
    a, b = read_rgb(p1), read_rgb(p2)
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    sample = {"image1": torch.from_numpy(a[:h, :w].copy()).permute(2, 0, 1),
              "image2": torch.from_numpy(b[:h, :w].copy()).permute(2, 0, 1), "path": str(p1)}
    if label is not None:
        m = binary_change_mask(label)
        if m.shape[0] < h or m.shape[1] < w:
            raise ValueError(f"label {label} is {m.shape[1]}x{m.shape[0]}, smaller than its images ({w}x{h})")
        sample["mask"] = torch.from_numpy(m[:h, :w].copy())
    if transforms is not None:
        sample = transforms(sample)
    return sample


class LevirCD(Dataset):
    """LEVIR-CD style ``A/``, ``B/``, ``label/`` folders (see module docstring for the split rule).

    Raises:
        DatasetNotFoundError: the A/B/label folders or a file's counterpart are missing.
        ValueError: bad split or empty split.
    """

    splits = ("train", "val", "test", "all")

    def __init__(self, root: str | Path, split: str = "train", transforms: Callable | None = None):
        self.root = Path(root)
        self.split = check_split(split, self.splits)
        self.transforms = transforms
        base = self.root / split if (self.root / split / "A").is_dir() else self.root
        for sub in ("A", "B", "label"):
            if not (base / sub).is_dir():
                raise DatasetNotFoundError(f"LEVIR-CD folder {base / sub} is missing; --data must hold A/, B/ and "
                                           "label/ (or train/, val/, test/ each holding them)")
        files = sorted(p for p in (base / "A").iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif"))
        if base == self.root and split != "all":
            files = [p for p in files if p.name.startswith(f"{split}_")]
        self.items: list[tuple[Path, Path, Path]] = []
        for a in files:
            b, lbl = base / "B" / a.name, base / "label" / a.name
            for p in (b, lbl):
                if not p.is_file():
                    raise DatasetNotFoundError(f"{a} has no counterpart {p}; every A/ image needs B/ and label/")
            self.items.append((a, b, lbl))
        if not self.items:
            raise ValueError(f"split {split!r} of {self.root} is empty (file names need a '{split}_' prefix, or use "
                             "split='all')")
        self.classes = [("no change", "#000000"), ("change", "#FF0000")]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return _pair_sample(*self.items[i], self.transforms)


class OSCDPairs(Dataset):
    """OSCD RGB city pairs ``root/<city>/img1.png, img2.png, cm.png``.

    Args:
        root: folder with one sub-folder per city.
        split: ``train``/``test`` (official lists, restricted to the cities present), or ``all``; OSCD has
            no official ``val``: pass its cities with ``cities=`` (and ``exclude=`` them from ``train``).
        cities: explicit city list (overrides ``split``).
        exclude: cities to leave out (e.g. the validation cities from the training split).

    Raises:
        DatasetNotFoundError: a chosen city lacks a file.
        ValueError: bad split, or no city of the split is present.
    """

    splits = ("train", "val", "test", "all")

    def __init__(self, root: str | Path, split: str = "train", transforms: Callable | None = None,
                 cities: Sequence[str] | None = None, exclude: Sequence[str] = ()):
        self.root = Path(root)
        self.split = check_split(split, self.splits)
        self.transforms = transforms
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"OSCD folder {self.root} does not exist; check --data / root")
        present = sorted(p.name for p in self.root.iterdir() if (p / "img1.png").is_file())
        if cities is not None:
            chosen = list(cities)
        elif split == "all":
            chosen = present
        else:
            chosen = [c for c in OSCD_SPLITS.get(split, ()) if c in present]
        chosen = [c for c in chosen if c not in set(exclude)]
        if not chosen:
            raise ValueError(f"no OSCD city of split {split!r} under {self.root} (present: {present}); "
                             "pass cities=[...] (finetune: --val-groups CITY for validation) or split='all'")
        self.items = []
        for c in chosen:
            d = self.root / c
            for name in ("img1.png", "img2.png", "cm.png"):
                if not (d / name).is_file():
                    raise DatasetNotFoundError(f"OSCD city {c}: {d / name} is missing")
            self.items.append((d / "img1.png", d / "img2.png", d / "cm.png"))
        self.cities = chosen
        self.groups = chosen  # same attribute name as the tiled readers, for run metadata
        self.classes = [("no change", "#000000"), ("change", "#FF0000")]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return _pair_sample(*self.items[i], self.transforms)
