"""Dense data readers (colour masks, scene folders, change pairs) and joint augmentations on tiny fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import DatasetNotFoundError
from training.data.change_pairs import LevirCD, OSCDPairs
from training.data.make_fixture import (
    FIXTURE_CLASSES,
    write_color_masks,
    write_levir,
    write_oscd,
    write_scenes,
)
from training.data.masks import ColorMaskSegmentation, load_mask_colors, rgb_to_index
from training.data.scenes import SceneFolder
from training.data.transforms import (
    ColorJitter,
    Compose,
    Normalize,
    RandomFlip,
    RandomRot90,
    RandomScaleCrop,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    return {"seg": write_color_masks(root / "seg"), "scenes": write_scenes(root / "scenes"),
            "levir": write_levir(root / "levir"), "oscd": write_oscd(root / "oscd")}


# ------------------------------------------------------------------------------------------ colour masks
def test_rgb_to_index_maps_colours_ignore_and_rejects_unknown():
    rgb = np.array([[[60, 16, 152], [0, 0, 0]], [[226, 169, 41], [1, 2, 3]]], dtype=np.uint8)
    colors = [(60, 16, 152), (226, 169, 41)]
    out = rgb_to_index(rgb, colors, ignore_index=255, unknown="ignore")
    assert out.tolist() == [[0, 255], [1, 255]]
    with pytest.raises(ValueError, match="#010203"):
        rgb_to_index(rgb, colors)


def test_mask_colors_file_is_used_not_classes_json(data):
    classes, ignore = load_mask_colors(data["seg"] / "mask_colors.json")
    assert [c for _, c in classes] == [c for _, c, _ in FIXTURE_CLASSES]
    assert ignore == (0, 0, 0)


def test_color_mask_splits_by_group_and_samples(data):
    train = ColorMaskSegmentation(data["seg"], "train", val_groups=["Tile 2"], test_groups=["Tile 3"])
    val = ColorMaskSegmentation(data["seg"], "val", val_groups=["Tile 2"], test_groups=["Tile 3"])
    test = ColorMaskSegmentation(data["seg"], "test", val_groups=["Tile 2"], test_groups=["Tile 3"])
    assert train.groups == ["Tile 1"] and val.groups == ["Tile 2"] and test.groups == ["Tile 3"]
    paths = [{str(p) for p, _ in ds.items} for ds in (train, val, test)]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    s = train[0]
    assert s["image"].shape[0] == 3 and s["image"].shape[1:] == s["mask"].shape
    assert s["mask"][0, :3].tolist() == [255, 255, 255]  # black -> ignore
    assert set(s["mask"].unique().tolist()) <= {0, 1, 2, 255}
    # The labels agree with the image colours written by the fixture (class k has colour FIXTURE_CLASSES[k]).
    img = s["image"].float()
    for k, (_, _, ic) in enumerate(FIXTURE_CLASSES):
        sel = s["mask"] == k
        if sel.any():
            mean = img[:, sel].mean(1)
            assert torch.allclose(mean, torch.tensor(ic, dtype=torch.float32), atol=15)
    assert len(train.pixel_counts()) == len(train)


def test_color_mask_errors_name_the_fix(data, tmp_path):
    with pytest.raises(ValueError, match="overlap"):
        ColorMaskSegmentation(data["seg"], "train", val_groups=["Tile 2"], test_groups=["Tile 2"])
    with pytest.raises(ValueError, match="Tile 9"):
        ColorMaskSegmentation(data["seg"], "val", val_groups=["Tile 9"])
    with pytest.raises(ValueError, match="choose one of"):
        ColorMaskSegmentation(data["seg"], "validation")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ColorMaskSegmentation(tmp_path / "nope")
    (tmp_path / "Tile 1" / "images").mkdir(parents=True)
    (tmp_path / "Tile 1" / "masks").mkdir()
    with pytest.raises(DatasetNotFoundError, match="mask_colors.json"):
        ColorMaskSegmentation(tmp_path)
    (tmp_path / "mask_colors.json").write_text(json.dumps({"classes": [{"title": "a", "color": "#010101"}]}))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "Tile 1" / "images" / "x.png")
    with pytest.raises(DatasetNotFoundError, match="masks/<stem>.png"):
        ColorMaskSegmentation(tmp_path, "all")


# ------------------------------------------------------------------------------------------- scenes
def test_scene_folder_contiguous_per_class_split(data):
    train = SceneFolder(data["scenes"], "train", val_fraction=0.2, test_fraction=0.2)
    val = SceneFolder(data["scenes"], "val", val_fraction=0.2, test_fraction=0.2)
    test = SceneFolder(data["scenes"], "test", val_fraction=0.2, test_fraction=0.2)
    assert [c for c, _ in train.classes] == sorted(n for n, _, _ in FIXTURE_CLASSES)
    assert (len(train), len(val), len(test)) == (9, 3, 3)
    # Natural order: numbers 1-3 train, 4 val, 5 test in every class.
    assert sorted({p.name.split("_")[1] for p, _ in val.items}) == ["4.jpg"]
    assert sorted({p.name.split("_")[1] for p, _ in test.items}) == ["5.jpg"]
    s = train[0]
    assert s["image"].shape == (3, 32, 32) and s["label"].dtype == torch.long
    assert train.targets.count(0) == 3


def test_scene_folder_explicit_split_dirs(tmp_path):
    write_scenes(tmp_path / "train", per_class=2)
    write_scenes(tmp_path / "val", per_class=1)
    assert len(SceneFolder(tmp_path, "train")) == 6
    assert len(SceneFolder(tmp_path, "val")) == 3


def test_scene_folder_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="ClassName"):
        SceneFolder(tmp_path)


# ----------------------------------------------------------------------------------------- change pairs
def test_levir_split_by_prefix_and_binary_mask(data):
    assert len(LevirCD(data["levir"], "train")) == 3
    assert len(LevirCD(data["levir"], "test")) == 2
    assert len(LevirCD(data["levir"], "all")) == 6
    s = LevirCD(data["levir"], "val")[0]
    assert s["image1"].shape == s["image2"].shape == (3, 32, 32)
    assert set(s["mask"].unique().tolist()) <= {0, 1} and s["mask"].sum() > 0
    # Changed pixels are the bright new roofs of the later image.
    assert s["image2"][:, s["mask"] == 1].float().mean() > 200


def test_levir_missing_counterpart(tmp_path):
    write_levir(tmp_path)
    (tmp_path / "B" / "train_1.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="counterpart"):
        LevirCD(tmp_path, "train")


def test_oscd_official_city_split_and_rgba_label(data):
    train, test = OSCDPairs(data["oscd"], "train"), OSCDPairs(data["oscd"], "test")
    assert train.cities == ["beirut", "cupertino"] and test.cities == ["dubai"]
    assert OSCDPairs(data["oscd"], "train", exclude=["cupertino"]).cities == ["beirut"]
    s = train[0]
    assert s["mask"].shape == (40, 44) and set(s["mask"].unique().tolist()) == {0, 1}
    with pytest.raises(ValueError, match="cities"):
        OSCDPairs(data["oscd"], "val")


def test_pair_of_unequal_sizes_is_cropped(tmp_path):
    write_levir(tmp_path)
    a = np.asarray(Image.open(tmp_path / "B" / "test_1.png"))
    Image.fromarray(a[:-1]).save(tmp_path / "B" / "test_1.png")  # one row shorter, as upstream test_113
    s = LevirCD(tmp_path, "test")[0]
    assert s["image1"].shape == s["image2"].shape == (3, 31, 32) and s["mask"].shape == (31, 32)


# ------------------------------------------------------------------------------------------ transforms
def _coded_sample(h=20, w=30):
    """Image whose band 0 encodes the pixel index; mask = same index: geometry must stay aligned."""
    idx = torch.arange(h * w).reshape(h, w)
    return {"image": torch.stack([idx.float(), idx.float(), idx.float()]), "image2": idx[None].float().repeat(3, 1, 1),
            "mask": idx.clone(), "label": torch.tensor(3)}


@pytest.mark.parametrize("seed", range(6))
def test_geometric_transforms_keep_image_and_masks_aligned(seed):
    torch.manual_seed(seed)
    t = Compose([RandomFlip(), RandomRot90(), RandomScaleCrop(16, (1.0, 1.0))])
    s = t(_coded_sample())
    assert s["image"].shape == (3, 16, 16) and s["mask"].shape == (16, 16)
    assert torch.equal(s["image"][0].long(), s["mask"]) and torch.equal(s["image2"][0].long(), s["mask"])
    assert s["label"].item() == 3 and s["mask"].dtype == torch.long


def test_scale_crop_resizes_and_pads_with_ignore():
    torch.manual_seed(0)
    s = RandomScaleCrop(24, (0.5, 0.5), ignore_index=255)(_coded_sample(10, 10))
    assert s["image"].shape == (3, 24, 24)
    assert (s["mask"] == 255).any()  # the 48 px window ran past a 10 px image
    zoom = RandomScaleCrop(8, (2.0, 2.0))(_coded_sample(10, 10))  # 4 px window -> 8 px: nearest keeps values
    assert set(zoom["mask"].unique().tolist()) <= set(range(100))
    with pytest.raises(ValueError, match="scale"):
        RandomScaleCrop(8, (2.0, 1.0))


def test_normalize_and_jitter():
    s = {"image": torch.full((3, 4, 4), 127.5), "mask": torch.zeros(4, 4, dtype=torch.long)}
    n = Normalize([127.5] * 3, [127.5] * 3)(s)
    assert torch.allclose(n["image"], torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="bands"):
        Normalize([0.0] * 4, [1.0] * 4)(s)
    torch.manual_seed(1)
    j = ColorJitter(p=1.0)({"image": torch.rand(3, 8, 8) * 255})
    assert j["image"].min() >= 0 and j["image"].max() <= 255
