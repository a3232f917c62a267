"""SAMRS-style multi-task pretraining data: per step one sample from each source, with its label types.

MTP (Wang et al., 2024, spec §2.1/§2.4) pretrains on SAMRS subsets whose images carry three label types
(semantic mask, instance masks + boxes, rotated boxes) and draws one image **per source per step**. The
sources at hand here each carry a subset of those labels (see :data:`SOURCE_TASKS`):

=============  ===========================  ====================================================
source         label types                  file layout under the data root
=============  ===========================  ====================================================
dubai_seg      semseg (6 classes)           ``Tile N/images/*.jpg`` + ``Tile N/masks/*.png`` (RGB colours)
nwpu_vhr10     insseg + rotdet (10)         ``images/*.jpg`` + ``annotations.json`` (COCO polygons;
                                            rotated boxes = minimum-area rectangles of the polygons)
dota           rotdet (15, DOTA v1.0)       ``images/*.png`` + ``labelTxt/*.txt`` (quadrilaterals)
isaid          insseg (15)                  ``X.png`` + ``X_instance_id_RGB.png`` + ``X_instance_color_RGB.png``
hrsid          insseg (1: ship)             same layout as isaid
=============  ===========================  ====================================================

Each reader here keeps the labels in a compact geometric form (polygons, or one instance-id map) until
after the random crop, so a 131-instance iSAID image never becomes 131 full-size masks. The train pipeline
follows the official one (§2.1): random flip p=0.75 over {horizontal, vertical, diagonal}, random
keep-ratio resize of the long side to ``S * U(0.5, 2.0)``, random ``S x S`` crop, drop empty instances,
photometric jitter, normalise, pad to ``S x S`` (image 0, semantic label 255). Boxes and rotated boxes are
recomputed from the cropped polygons / masks, so they always match the pixels.

Determinism (what makes resume and the 1-vs-N-process equivalence exact): the sample drawn for source
``k`` at *global position* ``g`` is ``perm_k(epoch = g // len_k)[g % len_k]``, where ``perm`` is a seeded
permutation, and its augmentation uses a generator seeded with ``(seed, k, g)``. At step ``t``, rank ``r``
of ``W`` with ``b`` images per source takes positions ``t*W*b + r*b + i``; so 2 ranks x 1 image see exactly
the images (and crops) that 1 rank x 2 images sees, and a resumed run continues the same stream.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import Dataset, Sampler

from training.data import DatasetNotFoundError
from training.data.dota import DOTA_V1_CLASSES, parse_dota_label
from training.data.instance_png import HRSID_PALETTE, ISAID_PALETTE
from training.data.splits import held_out

__all__ = [
    "DOTA_V1_CLASSES",
    "ISAID_CLASSES",
    "NWPU_CLASSES",
    "SOURCE_TASKS",
    "TASKS",
    "DatasetNotFoundError",
    "MultiTaskDataset",
    "RawSample",
    "Source",
    "StepBatchSampler",
    "augment",
    "build_sources",
    "collate_multitask",
    "make_multitask_fixture",
]

TASKS: tuple[str, ...] = ("semseg", "insseg", "rotdet")
SOURCE_TASKS: dict[str, tuple[str, ...]] = {
    "dubai_seg": ("semseg",),
    "nwpu_vhr10": ("insseg", "rotdet"),
    "dota": ("rotdet",),
    "isaid": ("insseg",),
    "hrsid": ("insseg",),
}
IGNORE_INDEX = 255

DUBAI_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Building", (60, 16, 152)),
    ("Land (unpaved area)", (132, 41, 246)),
    ("Road", (110, 193, 228)),
    ("Vegetation", (254, 221, 58)),
    ("Water", (226, 169, 41)),
    ("Unlabeled", (155, 155, 155)),
)
NWPU_CLASSES: tuple[str, ...] = (
    "airplane", "ship", "storage_tank", "baseball_diamond", "tennis_court", "basketball_court",
    "ground_track_field", "harbor", "bridge", "vehicle",
)
# Class lists / palettes have one definition each, in the format readers.
ISAID_CLASSES = ISAID_PALETTE
HRSID_CLASSES = HRSID_PALETTE


# ---------------------------------------------------------------------------------------------------------
# Raw samples and sources
# ---------------------------------------------------------------------------------------------------------
@dataclass
class RawSample:
    """One image with its labels in compact form, at the file's resolution.

    Attributes:
        image: ``H x W x 3`` uint8 RGB.
        semseg: ``H x W`` uint8 class ids (255 = ignore), or None.
        instance_ids: ``H x W`` int64 instance ids (0 = no instance), or None.
        instance_labels: instance id -> class index (0-based), with ``instance_ids``.
        polygons: per instance a list of ``(P, 2)`` float arrays (x, y pixels; several parts allowed).
        polygon_labels: class index (0-based) per polygon instance.
    """

    image: np.ndarray
    semseg: np.ndarray | None = None
    instance_ids: np.ndarray | None = None
    instance_labels: dict[int, int] = field(default_factory=dict)
    polygons: list[list[np.ndarray]] | None = None
    polygon_labels: list[int] = field(default_factory=list)


class Source:
    """Base class of a pretraining source: a name, the label types it has, class lists, ``load(i)``.

    Subclasses keep one tuple per image in ``items``, the image path first (what :meth:`hold_out` filters).
    """

    name: str = ""
    tasks: tuple[str, ...] = ()
    items: list[tuple]

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"source {self.name!r}: folder {self.root} does not exist; pass --data-root pointing at the "
                f"folder that holds {self.name}/ (e.g. /work/shared/data) or drop it with --sources")

    def classes(self, task: str) -> list[str]:
        """Class names (index order) of label type ``task``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> RawSample:
        raise NotImplementedError

    def hold_out(self, spec: str) -> int:
        """Drop the images a downstream split keeps back (``"471-520"`` file numbers, or ``"Tile 1,Tile 2"``
        folder names; see :func:`training.data.splits.held_out`); returns how many were dropped.

        Raises:
            ValueError: ``spec`` matches no image (a typo would otherwise silently hold out nothing), or all.
        """
        kept = [it for it in self.items if not held_out(Path(it[0]), self.root, spec)]
        dropped = len(self.items) - len(kept)
        if dropped == 0:
            raise ValueError(f"hold-out {spec!r} matches no image of source {self.name!r} under {self.root}")
        if not kept:
            raise ValueError(f"hold-out {spec!r} leaves source {self.name!r} no image; drop it with --sources")
        self.items = kept
        return dropped


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
    """``... x 3`` uint8 -> int64 ``r*65536 + g*256 + b``."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class DubaiSegSource(Source):
    """Dubai colour masks -> class ids 0..5; black (unannotated) and unknown colours -> 255."""

    name = "dubai_seg"
    tasks = ("semseg",)

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.items: list[tuple[Path, Path]] = []
        for img in sorted(self.root.glob("*/images/*.jpg")):
            mask = img.parent.parent / "masks" / (img.stem + ".png")
            if mask.is_file():
                self.items.append((img, mask))
        if not self.items:
            raise DatasetNotFoundError(f"no 'Tile N/images/*.jpg' with a matching masks/*.png under {self.root}")
        self._lut_keys = np.array([_rgb_key(np.array(c, dtype=np.uint8)) for _, c in DUBAI_COLORS])

    def classes(self, task: str) -> list[str]:
        return [n for n, _ in DUBAI_COLORS]

    def load(self, index: int) -> RawSample:
        img_path, mask_path = self.items[index]
        keys = _rgb_key(_read_rgb(mask_path))
        seg = np.full(keys.shape, IGNORE_INDEX, dtype=np.uint8)
        for cls, key in enumerate(self._lut_keys):
            seg[keys == key] = cls
        return RawSample(image=_read_rgb(img_path), semseg=seg)


class CocoPolygonSource(Source):
    """COCO instances with polygon segmentations (NWPU VHR-10): polygons -> masks, boxes and rotated boxes."""

    name = "nwpu_vhr10"
    tasks = ("insseg", "rotdet")

    def __init__(self, root: str | Path, annotation_file: str = "annotations.json") -> None:
        super().__init__(root)
        ann_path = self.root / annotation_file
        if not ann_path.is_file():
            raise DatasetNotFoundError(f"{ann_path} is missing; the COCO file must sit next to images/")
        coco = json.loads(ann_path.read_text())
        cats = sorted(coco["categories"], key=lambda c: c["id"])
        self._cat_index = {c["id"]: i for i, c in enumerate(cats)}
        self._names = [c["name"] for c in cats]
        per_image: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            if ann.get("iscrowd", 0) or not isinstance(ann.get("segmentation"), list):
                continue  # RLE crowd regions carry no instance polygon
            per_image.setdefault(ann["image_id"], []).append(ann)
        self.items: list[tuple[Path, list[dict]]] = []
        for im in sorted(coco["images"], key=lambda i: i["id"]):
            path = self.root / "images" / im["file_name"]
            if path.is_file() and per_image.get(im["id"]):
                self.items.append((path, per_image[im["id"]]))
        if not self.items:
            raise DatasetNotFoundError(f"no annotated image of {ann_path} exists under {self.root / 'images'}")

    def classes(self, task: str) -> list[str]:
        return list(self._names)

    def load(self, index: int) -> RawSample:
        path, anns = self.items[index]
        polys, labels = [], []
        for ann in anns:
            parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in ann["segmentation"] if len(p) >= 6]
            if parts:
                polys.append(parts)
                labels.append(self._cat_index[ann["category_id"]])
        return RawSample(image=_read_rgb(path), polygons=polys, polygon_labels=labels)


class DotaSource(Source):
    """DOTA ``labelTxt`` quadrilaterals (DOTA v1.0 classes); rotated boxes only."""

    name = "dota"
    tasks = ("rotdet",)

    def __init__(self, root: str | Path, class_names: Sequence[str] = DOTA_V1_CLASSES) -> None:
        super().__init__(root)
        self._names = list(class_names)
        self.items: list[tuple[Path, Path]] = []
        for lbl in sorted((self.root / "labelTxt").glob("*.txt")):
            imgs = [p for ext in (".png", ".jpg", ".tif") if (p := self.root / "images" / (lbl.stem + ext)).is_file()]
            if imgs:
                self.items.append((imgs[0], lbl))
        if not self.items:
            raise DatasetNotFoundError(f"no labelTxt/*.txt with a matching images/* file under {self.root}")

    def classes(self, task: str) -> list[str]:
        return list(self._names)

    def load(self, index: int) -> RawSample:
        img_path, lbl_path = self.items[index]
        label = parse_dota_label(lbl_path, self._names)  # raises naming file and line on a bad label
        polys = [[p.reshape(4, 2).astype(np.float64)] for p in label["polygons"].numpy()]
        return RawSample(image=_read_rgb(img_path), polygons=polys, polygon_labels=label["labels"].tolist())


class InstancePngSource(Source):
    """iSAID-layout instance PNGs: ``X.png``, ``X_instance_id_RGB.png`` (one colour per instance) and
    ``X_instance_color_RGB.png`` (class palette). Used for iSAID (15 classes) and HRSID (ship)."""

    def __init__(self, root: str | Path, name: str, palette: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
        self.name = name
        self.tasks = ("insseg",)
        super().__init__(root)
        self._palette = list(palette)
        self._pal_keys = {int(_rgb_key(np.array(c, dtype=np.uint8))): i for i, (_, c) in enumerate(palette)}
        self.items: list[tuple[Path, Path, Path]] = []
        for ids in sorted(self.root.glob("*_instance_id_RGB.png")):
            stem = ids.name[: -len("_instance_id_RGB.png")]
            img, col = self.root / f"{stem}.png", self.root / f"{stem}_instance_color_RGB.png"
            if img.is_file() and col.is_file():
                self.items.append((img, ids, col))
        if not self.items:
            raise DatasetNotFoundError(f"no X.png + X_instance_id_RGB.png + X_instance_color_RGB.png under {self.root}")

    def classes(self, task: str) -> list[str]:
        return [n for n, _ in self._palette]

    def load(self, index: int) -> RawSample:
        img_path, id_path, col_path = self.items[index]
        ids = _rgb_key(_read_rgb(id_path))
        cls_keys = _rgb_key(_read_rgb(col_path))
        labels: dict[int, int] = {}
        for inst in np.unique(ids):
            if inst == 0:
                continue
            keys, counts = np.unique(cls_keys[ids == inst], return_counts=True)
            order = np.argsort(-counts)
            cls = next((self._pal_keys[int(k)] for k in keys[order] if int(k) in self._pal_keys), None)
            if cls is None:
                ids[ids == inst] = 0  # instance of a colour outside the palette: not a labelled object
            else:
                labels[int(inst)] = cls
        return RawSample(image=_read_rgb(img_path), instance_ids=ids, instance_labels=labels)


def build_sources(data_root: str | Path, names: Sequence[str]) -> list[Source]:
    """Build the named sources from ``data_root/<name>/``.

    Raises:
        ValueError: an unknown source name (the message lists the valid ones).
        DatasetNotFoundError: a folder or its files are missing.
    """
    root = Path(data_root)
    out: list[Source] = []
    for name in names:
        if name == "dubai_seg":
            out.append(DubaiSegSource(root / name))
        elif name == "nwpu_vhr10":
            out.append(CocoPolygonSource(root / name))
        elif name == "dota":
            out.append(DotaSource(root / name))
        elif name == "isaid":
            out.append(InstancePngSource(root / name, "isaid", ISAID_CLASSES))
        elif name == "hrsid":
            out.append(InstancePngSource(root / name, "hrsid", HRSID_CLASSES))
        else:
            raise ValueError(f"unknown pretraining source {name!r}; valid: {', '.join(SOURCE_TASKS)}")
    return out


# ---------------------------------------------------------------------------------------------------------
# Augmentation (crop first at the file's resolution, then resize the crop: memory stays ~S x S)
# ---------------------------------------------------------------------------------------------------------
def _resize(t: torch.Tensor, size: tuple[int, int], nearest: bool) -> torch.Tensor:
    """``C x h x w`` -> ``C x size``; bilinear (antialiased when shrinking) or nearest for labels."""
    if tuple(t.shape[-2:]) == size:
        return t
    if nearest:
        return F.interpolate(t[None].double(), size=size, mode="nearest-exact")[0].to(t.dtype)
    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _flip(t: torch.Tensor, flip: str) -> torch.Tensor:
    if flip in ("horizontal", "diagonal"):
        t = t.flip(-1)
    if flip in ("vertical", "diagonal"):
        t = t.flip(-2)
    return t


def _clip_polygon(parts: list[np.ndarray], w: int, h: int):
    """Union of the polygon parts clipped to ``[0, w] x [0, h]`` (a shapely geometry, possibly empty)."""
    from shapely.geometry import Polygon, box
    from shapely.ops import unary_union

    geoms = []
    for p in parts:
        poly = Polygon(p)
        if not poly.is_valid:
            poly = poly.buffer(0)  # self-intersecting annotation: repair instead of dropping it
        geoms.append(poly)
    return unary_union(geoms).intersection(box(0, 0, w, h))


def _exterior_points(geom) -> np.ndarray:
    """All exterior vertices of a (multi)polygon, ``(K, 2)``."""
    polys = list(geom.geoms) if hasattr(geom, "geoms") else [geom]
    pts = [np.asarray(g.exterior.coords) for g in polys if g.geom_type == "Polygon" and not g.is_empty]
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def _rasterize(geom, w: int, h: int) -> np.ndarray:
    """Fill a (multi)polygon into an ``h x w`` uint8 mask (pixel centres at +0.5)."""
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    polys = list(geom.geoms) if hasattr(geom, "geoms") else [geom]
    for g in polys:
        if g.geom_type != "Polygon" or g.is_empty:
            continue
        draw.polygon([(x - 0.5, y - 0.5) for x, y in g.exterior.coords], fill=1)
        for hole in g.interiors:
            draw.polygon([(x - 0.5, y - 0.5) for x, y in hole.coords], fill=0)
    return np.asarray(img, dtype=np.uint8)


def augment(raw: RawSample, tasks: Sequence[str], crop_size: int, rng: np.random.Generator,
            mean: Sequence[float], std: Sequence[float], scale_range: tuple[float, float] = (0.5, 2.0),
            flip: bool = True, photometric: bool = True, min_instance_px: int = 4) -> dict:
    """Random flip / keep-ratio resize / crop / photometric jitter / normalise / pad of one raw sample.

    Args:
        raw: the sample at the file's resolution.
        tasks: label types to produce (subset of :data:`TASKS`).
        crop_size: S, the square training size in pixels.
        rng: the sample's own generator (seeded by source and position for reproducibility).
        mean, std: per-band normalisation in 0-255 units.
        scale_range: long side is resized to ``S * U(scale_range)``; ``(1, 1)`` fits the image into S.
        min_instance_px: instances with fewer mask pixels (insseg) or less area (rotdet) are dropped.

    Returns:
        dict with ``image`` (3 x S x S float32, normalised, padding 0), ``valid_hw`` (h, w of the content
        before padding) and, per task: ``semseg`` (S x S int64, pad 255); ``insseg`` = dict(boxes_xyxy
        (N, 4) float32, labels (N,) int64 0-based, masks (N, S, S) uint8); ``rotdet`` = dict(boxes_cxcywha
        (N, 5) float32 in :mod:`training.ops.rotated` convention, labels (N,) int64 0-based).
    """
    from training.ops.rotated import min_area_rect

    H, W = raw.image.shape[:2]
    S = int(crop_size)
    r = float(rng.uniform(*scale_range))
    f = S * r / max(H, W)  # keep-ratio factor (mmcv rescale to a square scale)
    rh, rw = max(1, round(H * f)), max(1, round(W * f))
    ch, cw = min(S, rh), min(S, rw)
    y0 = int(rng.integers(0, rh - ch + 1))
    x0 = int(rng.integers(0, rw - cw + 1))
    # The same window in file pixels; the crop is resized to exactly ch x cw afterwards.
    oy0, ox0 = min(H - 1, int(y0 / f)), min(W - 1, int(x0 / f))
    oh, ow = max(1, min(H - oy0, round(ch / f))), max(1, min(W - ox0, round(cw / f)))
    sy, sx = ch / oh, cw / ow
    flip_kind = "none"
    if flip and rng.random() < 0.75:
        flip_kind = ("horizontal", "vertical", "diagonal")[int(rng.integers(0, 3))]

    img = torch.from_numpy(np.array(raw.image[oy0:oy0 + oh, ox0:ox0 + ow])).permute(2, 0, 1).float()
    img = _flip(_resize(img, (ch, cw), nearest=False), flip_kind)
    if photometric:  # PhotoMetricDistortion's brightness / contrast parts
        if rng.random() < 0.5:
            img = img + float(rng.uniform(-32, 32))
        if rng.random() < 0.5:
            img = img * float(rng.uniform(0.5, 1.5))
        img = img.clamp(0, 255)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    image = torch.zeros(3, S, S)
    image[:, :ch, :cw] = (img - m) / s
    out: dict = {"image": image, "valid_hw": (ch, cw)}

    if "semseg" in tasks:
        if raw.semseg is None:
            raise ValueError("task 'semseg' asked for a sample without a semantic mask")
        seg = torch.from_numpy(np.array(raw.semseg[oy0:oy0 + oh, ox0:ox0 + ow]))[None].long()
        seg = _flip(_resize(seg, (ch, cw), nearest=True), flip_kind)[0]
        full = torch.full((S, S), IGNORE_INDEX, dtype=torch.long)
        full[:ch, :cw] = seg
        out["semseg"] = full

    want_ins, want_rot = "insseg" in tasks, "rotdet" in tasks
    if not (want_ins or want_rot):
        return out
    boxes, labels, masks, rboxes, rlabels = [], [], [], [], []
    if raw.polygons is not None:
        for parts, label in zip(raw.polygons, raw.polygon_labels, strict=True):
            moved = []
            for p in parts:
                q = (p - [ox0, oy0]) * [sx, sy]
                if flip_kind in ("horizontal", "diagonal"):
                    q[:, 0] = cw - q[:, 0]
                if flip_kind in ("vertical", "diagonal"):
                    q[:, 1] = ch - q[:, 1]
                moved.append(q)
            geom = _clip_polygon(moved, cw, ch)
            if geom.is_empty or geom.area < min_instance_px:
                continue
            if want_ins:
                mask = _rasterize(geom, cw, ch)
                if int(mask.sum()) >= min_instance_px:
                    full_m = np.zeros((S, S), np.uint8)
                    full_m[:ch, :cw] = mask
                    masks.append(full_m)
                    boxes.append(geom.bounds)
                    labels.append(label)
            if want_rot:
                pts = _exterior_points(geom)
                rb = min_area_rect(torch.from_numpy(pts))
                if float(rb[2] * rb[3]) >= min_instance_px:
                    rboxes.append(rb.float())
                    rlabels.append(label)
    elif raw.instance_ids is not None:
        if want_rot:
            raise ValueError("rotated boxes from instance-id maps are not supported; give the source polygons")
        ids = torch.from_numpy(np.array(raw.instance_ids[oy0:oy0 + oh, ox0:ox0 + ow]))[None]
        ids = _flip(_resize(ids, (ch, cw), nearest=True), flip_kind)[0].numpy()
        for inst in np.unique(ids):
            if inst == 0 or int(inst) not in raw.instance_labels:
                continue
            mask = (ids == inst).astype(np.uint8)
            if int(mask.sum()) < min_instance_px:
                continue
            ys, xs = np.nonzero(mask)
            full_m = np.zeros((S, S), np.uint8)
            full_m[:ch, :cw] = mask
            masks.append(full_m)
            boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
            labels.append(raw.instance_labels[int(inst)])
    else:
        raise ValueError(f"tasks {tuple(tasks)} need polygons or instance ids, the sample has neither")
    if want_ins:
        out["insseg"] = {
            "boxes_xyxy": torch.tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.tensor(labels, dtype=torch.long),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, S, S, dtype=torch.uint8),
        }
    if want_rot:
        out["rotdet"] = {
            "boxes_cxcywha": torch.stack(rboxes) if rboxes else torch.zeros(0, 5),
            "labels": torch.tensor(rlabels, dtype=torch.long),
        }
    return out


# ---------------------------------------------------------------------------------------------------------
# Deterministic per-step sampling across sources and ranks
# ---------------------------------------------------------------------------------------------------------
def _permutation(n: int, seed: int, source: int, epoch: int) -> list[int]:
    gen = torch.Generator()
    gen.manual_seed((seed * 1_000_003 + source * 7_919 + epoch) % (2**63 - 1))
    return torch.randperm(n, generator=gen).tolist()


class StepBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields, per training step, the keys ``(source, position, index)`` of this rank's samples.

    Args:
        lengths: number of images of each source.
        per_source: images per source per step on this rank (official MTP: 1).
        rank, world_size: this process's share (positions ``t*W*b + r*b + i``).
        start_step, num_steps: the steps to cover (a resumed run starts at its saved step).
        seed: shuffling seed; each source is reshuffled every time it is exhausted.
    """

    def __init__(self, lengths: Sequence[int], per_source: int, rank: int, world_size: int, start_step: int,
                 num_steps: int, seed: int = 0) -> None:
        if any(n < 1 for n in lengths):
            raise ValueError(f"every source needs at least one image, got lengths {list(lengths)}")
        self.lengths, self.b, self.rank, self.world = list(lengths), int(per_source), int(rank), int(world_size)
        self.start, self.num, self.seed = int(start_step), int(num_steps), int(seed)
        self._perms: dict[tuple[int, int], list[int]] = {}

    def __len__(self) -> int:
        return self.num

    def index(self, source: int, position: int) -> int:
        """Dataset index of ``source`` at global ``position``."""
        n = self.lengths[source]
        epoch = position // n
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            self._perms[key] = _permutation(n, self.seed, source, epoch)
        return self._perms[key][position % n]

    def keys(self, step: int) -> list[tuple[int, int, int]]:
        out = []
        for k in range(len(self.lengths)):
            for i in range(self.b):
                g = step * self.world * self.b + self.rank * self.b + i
                out.append((k, g, self.index(k, g)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.start + self.num):
            yield self.keys(step)


class MultiTaskDataset(Dataset):
    """Map-style dataset over keys ``(source, position, index)`` (from :class:`StepBatchSampler`).

    Args:
        sources: the pretraining sources; each sample gets the label types of its source.
        crop_size: S in pixels.
        mean, std: normalisation in 0-255 units (the backbone's).
        seed: augmentation seed; the generator of a sample is seeded with ``(seed, source, position)``.
        augment_kwargs: forwarded to :func:`augment` (``scale_range``, ``flip``, ``photometric``).
    """

    cache_max_images = 8  # sources at most this small keep their decoded samples in memory

    def __init__(self, sources: Sequence[Source], crop_size: int, mean: Sequence[float], std: Sequence[float],
                 seed: int = 0, **augment_kwargs) -> None:
        if not sources:
            raise ValueError("MultiTaskDataset needs at least one source")
        self.sources = list(sources)
        self.crop_size, self.mean, self.std, self.seed = int(crop_size), list(mean), list(std), int(seed)
        self.augment_kwargs = augment_kwargs
        # Sources of a few images are drawn every step: keep their decoded samples (a few MB each).
        self._cache: dict[tuple[int, int], RawSample] = {}

    @property
    def lengths(self) -> list[int]:
        return [len(s) for s in self.sources]

    def __len__(self) -> int:
        return sum(self.lengths)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        k, position, index = key
        src = self.sources[k]
        rng = np.random.default_rng([self.seed, k, position])
        raw = self._cache.get((k, index))
        if raw is None:
            raw = src.load(index)
            if len(src) <= self.cache_max_images:
                self._cache[(k, index)] = raw
        sample = augment(raw, src.tasks, self.crop_size, rng, self.mean, self.std, **self.augment_kwargs)
        sample["source"] = k
        return sample


def collate_multitask(samples: list[dict]) -> list[dict]:
    """Group one step's samples by source, in source order.

    Returns:
        one dict per source: ``source`` (int), ``images`` (B x 3 x S x S), and per label type present
        ``semseg`` (B x S x S) or ``insseg`` / ``rotdet`` (lists of B target dicts).
    """
    groups: dict[int, list[dict]] = {}
    for s in samples:
        groups.setdefault(s["source"], []).append(s)
    out = []
    for k in sorted(groups):
        items = groups[k]
        batch: dict = {"source": k, "images": torch.stack([s["image"] for s in items])}
        if "semseg" in items[0]:
            batch["semseg"] = torch.stack([s["semseg"] for s in items])
        for task in ("insseg", "rotdet"):
            if task in items[0]:
                batch[task] = [s[task] for s in items]
        out.append(batch)
    return out


# ---------------------------------------------------------------------------------------------------------
# Tiny fixture in the real folder layouts (tests, benchmarks)
# ---------------------------------------------------------------------------------------------------------
def make_multitask_fixture(root: str | Path, size: int = 96, images: int = 2, seed: int = 0) -> Path:
    """Write a few-KB synthetic copy of every source's layout under ``root`` and return ``root``.

    Images are smooth noise with bright rectangles / discs at the labelled objects, so the three losses have
    something learnable. Layouts match the real ones: ``dubai_seg/Tile 1/{images,masks}``,
    ``nwpu_vhr10/{images,annotations.json}``, ``dota/{images,labelTxt}``, ``isaid/`` and ``hrsid/`` PNGs.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)

    def background() -> np.ndarray:
        base = rng.integers(40, 90, size=(size // 8, size // 8, 3)).astype(np.uint8)
        return np.array(Image.fromarray(base).resize((size, size), Image.BILINEAR))

    def rect(img, x0, y0, x1, y1, color):
        img[y0:y1, x0:x1] = color

    # dubai_seg: left half building, right half road, with an ignore (black) strip
    d = root / "dubai_seg" / "Tile 1"
    (d / "images").mkdir(parents=True, exist_ok=True)
    (d / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        img, mask = background(), np.zeros((size, size, 3), np.uint8)
        cut = int(rng.integers(size // 3, 2 * size // 3))
        mask[:, :cut] = DUBAI_COLORS[0][1]
        mask[:, cut:] = DUBAI_COLORS[2][1]
        mask[:2] = 0
        img[:, :cut] = np.clip(img[:, :cut].astype(int) + 120, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / "images" / f"image_part_{i:03d}.jpg", quality=95)
        Image.fromarray(mask).save(d / "masks" / f"image_part_{i:03d}.png")

    # nwpu_vhr10: COCO polygons (a rotated square "airplane" and an axis-aligned "vehicle")
    n = root / "nwpu_vhr10"
    (n / "images").mkdir(parents=True, exist_ok=True)
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": i + 1, "name": c} for i, c in enumerate(NWPU_CLASSES)]}
    for i in range(images):
        img = background()
        cx, cy, r = size * 0.35, size * 0.4, size * 0.15
        ang = float(rng.uniform(0, math.pi / 2))
        poly = [(cx + r * math.cos(ang + k * math.pi / 2), cy + r * math.sin(ang + k * math.pi / 2)) for k in range(4)]
        ImageDraw.Draw(im := Image.fromarray(img)).polygon(poly, fill=(230, 230, 230))
        img = np.asarray(im).copy()
        x0, y0 = int(size * 0.6), int(size * 0.6)
        rect(img, x0, y0, x0 + size // 6, y0 + size // 10, (200, 30, 30))
        Image.fromarray(img).save(n / "images" / f"{i + 1:03d}.jpg", quality=95)
        coco["images"].append({"id": i, "file_name": f"{i + 1:03d}.jpg", "height": size, "width": size})
        vx = [x0, y0, x0 + size // 6, y0, x0 + size // 6, y0 + size // 10, x0, y0 + size // 10]
        coco["annotations"] += [
            {"id": 2 * i, "image_id": i, "category_id": 1, "iscrowd": 0,
             "segmentation": [[round(v, 1) for p in poly for v in p]], "bbox": [0, 0, 1, 1], "area": 1},
            {"id": 2 * i + 1, "image_id": i, "category_id": 10, "iscrowd": 0,
             "segmentation": [vx], "bbox": [0, 0, 1, 1], "area": 1},
        ]
    (n / "annotations.json").write_text(json.dumps(coco))

    # dota: two rotated "large-vehicle" quads
    t = root / "dota"
    (t / "images").mkdir(parents=True, exist_ok=True)
    (t / "labelTxt").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        img = background()
        lines = ["imagesource:synthetic", "gsd:0.5"]
        im = Image.fromarray(img)
        for cx, cy in ((size * 0.3, size * 0.3), (size * 0.7, size * 0.65)):
            a = float(rng.uniform(0, math.pi))
            u, v = (math.cos(a), math.sin(a)), (-math.sin(a), math.cos(a))
            w, h = size * 0.22, size * 0.1
            quad = [(cx + su * u[0] * w / 2 + sv * v[0] * h / 2, cy + su * u[1] * w / 2 + sv * v[1] * h / 2)
                    for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
            ImageDraw.Draw(im).polygon(quad, fill=(240, 240, 60))
            lines.append(" ".join(f"{c:.1f}" for p in quad for c in p) + " large-vehicle 0")
        im.save(t / "images" / f"P{i:04d}.png")
        (t / "labelTxt" / f"P{i:04d}.txt").write_text("\n".join(lines) + "\n")

    # isaid / hrsid: instance-id + class-colour PNGs
    for name, palette in (("isaid", ISAID_CLASSES), ("hrsid", HRSID_CLASSES)):
        s = root / name
        s.mkdir(parents=True, exist_ok=True)
        for i in range(images):
            img, ids, col = background(), np.zeros((size, size, 3), np.uint8), np.zeros((size, size, 3), np.uint8)
            for j, (x0, y0) in enumerate(((size // 5, size // 5), (size // 2, size // 2))):
                cls = palette[j % len(palette)][1]
                w = size // 5
                rect(img, x0, y0, x0 + w, y0 + w, (220, 220, 220))
                rect(ids, x0, y0, x0 + w, y0 + w, (10 * (j + 1), 5, 0))
                rect(col, x0, y0, x0 + w, y0 + w, cls)
            stem = f"P{i:04d}"
            Image.fromarray(img).save(s / f"{stem}.png")
            Image.fromarray(ids).save(s / f"{stem}_instance_id_RGB.png")
            Image.fromarray(col).save(s / f"{stem}_instance_color_RGB.png")
    return root
