"""Write tiny synthetic datasets (a few KB) in the layouts the dense readers expect, for tests and demos.

The images are *learnable*: each class has its own colour plus noise, so a few optimiser steps lower the loss.

    python -m training.data.make_fixture OUT_DIR     # writes OUT_DIR/{seg,scenes,levir,oscd}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["FIXTURE_CLASSES", "write_all", "write_color_masks", "write_levir", "write_oscd", "write_scenes"]

# (name, mask colour, image colour): image colours differ from mask colours, as in real data.
FIXTURE_CLASSES = [
    ("Building", "#3C1098", (200, 60, 60)),
    ("Water", "#E2A929", (40, 80, 200)),
    ("Vegetation", "#FEDD3A", (60, 180, 60)),
]


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def _label_map(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    """Blocky random label map (8 px cells), so classes form regions."""
    cells = rng.integers(0, k, size=(-(-h // 8), -(-w // 8)))
    return np.kron(cells, np.ones((8, 8), dtype=np.int64))[:h, :w]


def write_color_masks(root: str | Path, groups: int = 3, per_group: int = 2, size: int = 48, seed: int = 0) -> Path:
    """``root/Tile g/images/*.jpg`` + ``masks/*.png`` + ``mask_colors.json``; a few black (ignore) pixels."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    colors = {"classes": [{"title": n, "color": c, "rgb": list(_hex(c))} for n, c, _ in FIXTURE_CLASSES],
              "ignore": {"title": "unannotated", "color": "#000000", "rgb": [0, 0, 0]}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "mask_colors.json").write_text(json.dumps(colors))
    for g in range(1, groups + 1):
        for sub in ("images", "masks"):
            (root / f"Tile {g}" / sub).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_group + 1):
            h, w = size, size + 8 * i  # sizes differ, as Dubai patches do
            lab = _label_map(rng, h, w, len(FIXTURE_CLASSES))
            img = np.zeros((h, w, 3), dtype=np.float64)
            mask = np.zeros((h, w, 3), dtype=np.uint8)
            for k, (_, mc, ic) in enumerate(FIXTURE_CLASSES):
                img[lab == k] = ic
                mask[lab == k] = _hex(mc)
            mask[0, :3] = 0  # unannotated pixels
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"Tile {g}" / "images" / f"image_part_{i:03d}.png")
            Image.fromarray(mask).save(root / f"Tile {g}" / "masks" / f"image_part_{i:03d}.png")
    return root


def write_scenes(root: str | Path, per_class: int = 5, size: int = 32, seed: int = 0) -> Path:
    """``root/<Class>/<class>_<n>.jpg`` for the fixture classes (AID layout, numbered 1..N)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name, _, ic in FIXTURE_CLASSES:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            img = np.clip(np.array(ic, dtype=np.float64) + rng.normal(0, 20, (size, size, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(d / f"{name.lower()}_{n}.jpg", quality=95)
    return root


def _change_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    before = np.clip(rng.normal(120, 15, (h, w, 3)), 0, 255)
    after = np.clip(before + rng.normal(0, 5, (h, w, 3)), 0, 255)
    change = _label_map(rng, h, w, 4) == 0  # ~25 % changed, in blocks
    after[change] = (230, 230, 240)  # new bright roofs
    return before.astype(np.uint8), after.astype(np.uint8), (change * 255).astype(np.uint8)


def write_levir(root: str | Path, size: int = 32, seed: int = 0) -> Path:
    """``root/{A,B,label}/<split>_<n>.png`` (BIT_CD sample naming): 3 train, 1 val, 2 test pairs."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in ("train_1", "train_2", "train_3", "val_1", "test_1", "test_2"):
        a, b, m = _change_pair(rng, size, size)
        Image.fromarray(a).save(root / "A" / f"{name}.png")
        Image.fromarray(b).save(root / "B" / f"{name}.png")
        Image.fromarray(m).save(root / "label" / f"{name}.png")
    return root


def write_oscd(root: str | Path, size: int = 40, seed: int = 0) -> Path:
    """``root/<city>/img1.png, img2.png, cm.png`` (RGBA, white = change): two official train cities, one test."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for city in ("beirut", "cupertino", "dubai"):
        d = root / city
        d.mkdir(parents=True, exist_ok=True)
        a, b, m = _change_pair(rng, size, size + 4)
        Image.fromarray(a).save(d / "img1.png")
        Image.fromarray(b).save(d / "img2.png")
        rgba = np.stack([m, m, m, np.full_like(m, 255)], axis=-1)
        Image.fromarray(rgba).save(d / "cm.png")
    return root


def write_all(root: str | Path) -> dict[str, Path]:
    root = Path(root)
    return {"seg": write_color_masks(root / "seg"), "scenes": write_scenes(root / "scenes"),
            "levir": write_levir(root / "levir"), "oscd": write_oscd(root / "oscd")}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m training.data.make_fixture OUT_DIR")
    for k, v in write_all(sys.argv[1]).items():
        print(k, v)
