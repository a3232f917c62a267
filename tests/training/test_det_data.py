"""Detection readers (COCO, DOTA, instance PNGs) on tiny written fixtures, and geometry-consistent augmentations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from training.data import DatasetNotFoundError
from training.data.box_transforms import (
    DetRandomCrop,
    DetRandomFlip,
    DetRandomResize,
    DetRandomRot90,
    collate_detection,
    crop_sample,
    flip_sample,
    mask_to_rbox,
    masks_to_boxes,
    resize_sample,
    rot90_sample,
)
from training.data.coco import CocoDetection
from training.data.dota import DOTA, parse_dota_label
from training.data.instance_png import HRSID, ISAID, ISAID_PALETTE
from training.ops.rotated import min_area_rect, poly_to_rbox, rbox_iou_pairwise, rbox_to_poly

# ----------------------------------------------------------------------------------------------- fixtures


def write_png(path, arr: np.ndarray) -> None:
    Image.fromarray(arr.astype(np.uint8)).save(path)


@pytest.fixture
def coco_root(tmp_path):
    (tmp_path / "images").mkdir()
    write_png(tmp_path / "images" / "a.png", np.full((40, 50, 3), 100))
    write_png(tmp_path / "images" / "b.png", np.full((30, 30, 3), 50))
    tri = [5.0, 5.0, 25.0, 5.0, 5.0, 25.0]
    rle = {"size": [40, 50], "counts": [40 * 30 + 10, 20, 20, 20, 20, 20, 40 * 50 - (40 * 30 + 10) - 100]}  # column-major
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": 40, "width": 50},
                   {"id": 8, "file_name": "b.png", "height": 30, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [5, 5, 20, 20], "segmentation": [tri], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [30, 10, 3, 20], "segmentation": rle, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5], "segmentation": [], "iscrowd": 1},
        ],
        "categories": [{"id": 5, "name": "ship"}, {"id": 3, "name": "plane"}],
    }  # fmt: skip
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    return tmp_path


def test_coco_reader(coco_root):
    ds = CocoDetection(coco_root)
    assert len(ds) == 2 and ds.classes == ["plane", "ship"]  # sorted by category id
    s = ds[0]
    assert set(s) == {"image", "labels", "boxes_xyxy", "boxes_cxcywha", "masks", "image_id", "path"}
    assert s["image"].shape == (3, 40, 50) and s["image"].dtype == torch.float32
    assert s["labels"].tolist() == [1, 0]  # crowd annotation skipped
    assert s["masks"].shape == (2, 40, 50) and s["masks"].dtype == torch.uint8
    # triangle: rotated box = min-area rect of its 3 vertices (the right isoceles triangle's hull is 20 x 20)
    ref = min_area_rect(torch.tensor([[5.0, 5], [25, 5], [5, 25]]))
    assert torch.allclose(s["boxes_cxcywha"][0], ref)
    assert s["masks"][0].sum() > 150  # ~ half of 20 x 20
    # RLE (column-major counts): columns 30..32, rows 10..29
    expected = torch.zeros(40, 50, dtype=torch.uint8)
    expected[10:30, 30:33] = 1
    assert torch.equal(s["masks"][1], expected)
    assert torch.allclose(masks_to_boxes(s["masks"][1:]), s["boxes_xyxy"][1:])
    empty = ds[1]
    assert empty["labels"].shape == (0,) and empty["masks"].shape == (0, 30, 30)
    assert len(CocoDetection(coco_root, skip_empty=True)) == 1


def test_coco_reader_errors(coco_root, tmp_path_factory):
    with pytest.raises(ValueError, match="choose one of"):
        CocoDetection(coco_root, split="trainval")
    with pytest.raises(DatasetNotFoundError, match="annotations_train.json"):
        CocoDetection(coco_root, split="train")
    (coco_root / "images" / "b.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="b.png"):
        CocoDetection(coco_root)[1]


@pytest.fixture
def dota_root(tmp_path):
    for sub in ("images", "labelTxt"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    write_png(tmp_path / "train" / "images" / "P1.png", np.zeros((60, 80, 3)))
    (tmp_path / "train" / "labelTxt" / "P1.txt").write_text(
        "imagesource:GoogleEarth\ngsd:0.5\n"
        "10 10 30 10 30 20 10 20 plane 0\n"
        "50 20 60 30 50 40 40 30 small-vehicle 1\n"
    )
    return tmp_path


def test_dota_reader(dota_root):
    ds = DOTA(dota_root, split="train")
    s = ds[0]
    assert set(s) == {"image", "polygons", "boxes_cxcywha", "boxes_xyxy", "labels", "difficult", "gsd_m", "path"}
    assert s["labels"].tolist() == [0, 4] and s["difficult"].tolist() == [False, True]
    assert s["gsd_m"] == 0.5
    assert torch.allclose(s["boxes_xyxy"], torch.tensor([[10.0, 10, 30, 20], [40, 20, 60, 40]]))
    assert torch.allclose(s["boxes_cxcywha"][0], torch.tensor([20.0, 15, 20, 10, 0]), atol=1e-5)
    diamond = s["boxes_cxcywha"][1]  # a square rotated by 45 degrees, side 10 * sqrt(2)
    assert torch.allclose(diamond[:4], torch.tensor([50.0, 30, 10 * math.sqrt(2), 10 * math.sqrt(2)]), atol=1e-4)
    assert abs(abs(float(diamond[4])) - math.pi / 4) < 1e-5


def test_dota_reader_errors(dota_root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="labelTxt"):
        DOTA(dota_root, split="all")
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3 4 5 6 7 8 airliner 0\n")
    with pytest.raises(ValueError, match="airliner"):
        parse_dota_label(bad, ["plane"])
    bad.write_text("1 2 3 4 plane\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        parse_dota_label(bad, ["plane"])


@pytest.fixture
def isaid_root(tmp_path):
    img = np.zeros((32, 40, 3))
    ids = np.zeros((32, 40, 3))
    cls = np.zeros((32, 40, 3))
    ids[2:10, 3:20] = (10, 20, 30)  # instance 1: a large vehicle
    cls[2:10, 3:20] = ISAID_PALETTE[7][1]
    ids[15:30, 25:30] = (1, 2, 3)  # instance 2: a plane, with one border pixel unlabelled
    cls[15:30, 25:30] = ISAID_PALETTE[13][1]
    cls[15, 25] = 0
    write_png(tmp_path / "P0001.png", img)
    write_png(tmp_path / "P0001_instance_id_RGB.png", ids)
    write_png(tmp_path / "P0001_instance_color_RGB.png", cls)
    return tmp_path


def test_instance_png_reader(isaid_root):
    ds = ISAID(isaid_root)
    assert len(ds) == 1
    s = ds[0]
    assert set(s) == {"image", "masks", "labels", "boxes_xyxy", "boxes_cxcywha", "path"}
    order = s["labels"].argsort()
    assert s["labels"][order].tolist() == [7, 13]
    assert s["boxes_xyxy"][order].tolist() == [[3.0, 2.0, 20.0, 10.0], [25.0, 15.0, 30.0, 30.0]]
    assert s["masks"][order].flatten(1).sum(1).tolist() == [8 * 17, 15 * 5]
    assert torch.allclose(s["boxes_cxcywha"][order][0], torch.tensor([11.5, 6.0, 17.0, 8.0, 0.0]), atol=1e-5)


def test_instance_png_unknown_colour(isaid_root):
    with pytest.raises(ValueError, match="not in the palette"):
        HRSID(isaid_root)[0]
    (isaid_root / "P0001_instance_id_RGB.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="instance_id_RGB"):
        ISAID(isaid_root)[0]


# ---------------------------------------------------------------------------------------- augmentations


def rasterise(rboxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    masks = []
    for poly in rbox_to_poly(rboxes.double()):
        im = Image.new("L", (w, h))
        ImageDraw.Draw(im).polygon([tuple(p) for p in poly.view(4, 2).tolist()], fill=1)
        masks.append(torch.from_numpy(np.asarray(im)))
    return torch.stack(masks)


def mask_sample(seed: int, h: int = 40, w: int = 56, n: int = 4):
    gen = torch.Generator().manual_seed(seed)
    rb = torch.cat([torch.rand(n, 2, generator=gen) * torch.tensor([w - 16, h - 16]) + 8,
                    torch.rand(n, 2, generator=gen) * 12 + 4, torch.rand(n, 1, generator=gen) * 3 - 1.5], 1)  # fmt: skip
    masks = rasterise(rb, h, w)
    return {
        "image": torch.rand(3, h, w, generator=gen) * 255,
        "masks": masks,
        "labels": torch.arange(n),
        "boxes_xyxy": masks_to_boxes(masks),
        "boxes_cxcywha": torch.stack([mask_to_rbox(m) for m in masks]),
    }


def assert_geometry_matches_masks(s):
    """Boxes equal the masks' boxes; each rotated box is *a* minimum-area rectangle of its mask.

    (Minimum-area rectangles of pixel masks can tie, so the check is "same area and encloses the mask"
    rather than equality with the rectangle recomputed from the transformed mask.)
    """
    assert torch.equal(s["boxes_xyxy"], masks_to_boxes(s["masks"]))
    assert s["image"].shape[-2:] == s["masks"].shape[-2:]
    for rb, m in zip(s["boxes_cxcywha"].double(), s["masks"], strict=True):
        ref = mask_to_rbox(m).double()
        assert float(rb[2] * rb[3]) == pytest.approx(float(ref[2] * ref[3]), rel=1e-4)
        r, c = torch.nonzero(m, as_tuple=True)
        corners = torch.cat([torch.stack([c + dx, r + dy], 1) for dx in (0, 1) for dy in (0, 1)]).double()
        cx, cy, w, h, a = rb.tolist()
        du = (corners[:, 0] - cx) * math.cos(a) - (corners[:, 1] - cy) * math.sin(a)
        dv = (corners[:, 0] - cx) * math.sin(a) + (corners[:, 1] - cy) * math.cos(a)
        assert (du.abs() <= w / 2 + 1e-3).all() and (dv.abs() <= h / 2 + 1e-3).all()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), hflip=st.booleans(), vflip=st.booleans(), k=st.integers(0, 3))
def test_flip_and_rot90_keep_boxes_equal_to_mask_boxes(seed, hflip, vflip, k):
    s = mask_sample(seed)
    out = rot90_sample(flip_sample(s, hflip, vflip), k)
    assert_geometry_matches_masks(out)
    assert out["image"].shape[-2:] == ((40, 56) if k % 2 == 0 else (56, 40))


def test_rot90_moves_pixels_like_the_boxes():
    s = mask_sample(1)
    out = rot90_sample(s, 1)
    # pixel (r, c) of the rotated image is pixel (c, W - 1 - r) of the original
    assert torch.equal(out["image"][:, 5, 7], s["image"][:, 7, 56 - 1 - 5])


@pytest.mark.parametrize("seed", range(4))
def test_crop_and_resize_recompute_geometry(seed):
    s = mask_sample(seed)
    out = crop_sample(s, top=10, left=20, height=24, width=24)
    assert out["image"].shape == (3, 24, 24)
    keep = s["masks"][:, 10:34, 20:44].flatten(1).sum(1) > 0
    assert out["labels"].tolist() == s["labels"][keep].tolist()
    assert torch.equal(out["masks"], s["masks"][keep][:, 10:34, 20:44])
    assert_geometry_matches_masks(out)
    big = resize_sample(s, 2.0)
    assert big["image"].shape == (3, 80, 112)
    assert_geometry_matches_masks(big)
    assert (big["boxes_xyxy"] - s["boxes_xyxy"] * 2).abs().max() <= 1.0  # nearest resampling: within a pixel


def test_polygon_only_crop_matches_rasterised_polygon():
    # DOTA-style sample without masks: polygons are clipped, boxes come from the clipped polygons.
    rb = torch.tensor([[30.0, 20.0, 30.0, 10.0, 0.5], [10.0, 10.0, 8.0, 8.0, 0.0]])
    s = {"image": torch.zeros(3, 40, 60), "polygons": rbox_to_poly(rb).float(), "labels": torch.tensor([0, 1]),
         "boxes_cxcywha": rb.clone(), "boxes_xyxy": torch.zeros(2, 4)}  # fmt: skip
    out = crop_sample(s, top=12, left=25, height=20, width=30)
    assert out["labels"].tolist() == [0]  # the second object is outside the window
    mask = rasterise(rb[:1] - torch.tensor([25.0, 12, 0, 0, 0]), 40, 60)[0, :20, :30]
    box = masks_to_boxes(mask[None])[0]
    assert (out["boxes_xyxy"][0] - box).abs().max() <= 1.0
    # the clipped shape has 5+ vertices, so the stored quadrilateral is its min-area rectangle = the rotated box
    iou = rbox_iou_pairwise(poly_to_rbox(out["polygons"].double()), out["boxes_cxcywha"].double())
    assert float(iou[0]) == pytest.approx(1.0, abs=1e-5)
    assert float(out["boxes_cxcywha"][0, 2] * out["boxes_cxcywha"][0, 3]) < 30 * 10  # smaller than the uncut box


def test_random_pipeline_keeps_consistency():
    torch.manual_seed(0)
    flip, rot, crop, resize = DetRandomFlip(1.0), DetRandomRot90(), DetRandomCrop(32), DetRandomResize((0.8, 1.5))
    for seed in range(5):
        out = crop(rot(flip(resize(mask_sample(seed)))))
        assert out["image"].shape[-2:] == (32, 32)
        assert_geometry_matches_masks(out)
    with pytest.raises(ValueError, match="unknown flip"):
        DetRandomFlip(directions=("sideways",))


def test_collate_pads_images_and_masks():
    a, b = mask_sample(0, h=40, w=56), mask_sample(1, h=30, w=70)
    images, targets = collate_detection([a, b])
    assert images.shape == (2, 3, 64, 96)
    assert torch.equal(images[1, :, :30, :70], b["image"]) and images[1, :, 30:].abs().sum() == 0
    assert targets[1]["masks"].shape == (4, 64, 96)
    assert torch.equal(targets[1]["boxes_xyxy"], masks_to_boxes(targets[1]["masks"]))
