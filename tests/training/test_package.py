"""The model-package contract (training/package.py): config validation, round trip, refusing bad packages."""

import json
import os
import stat

import pytest
import torch

from training.models import create_model
from training.package import PackageConfig, PackageError, load_package, save_package

ARCH = {"backbone": "efficientnet_lite0", "num_classes": 2, "channels": 8}


def _config(**over):
    base = dict(name="t", task="semantic_segmentation", architecture="upernet_segmenter", architecture_kwargs=ARCH,
                classes=[{"name": "a", "color": "#000000"}, {"name": "b", "color": "#FFFFFF"}],
                bands=["red", "green", "blue"], mean=[0.0] * 3, std=[1.0] * 3, gsd_m=1.0, gsd_range_m=(0.5, 2.0))
    base.update(over)
    return PackageConfig(**base)


@pytest.mark.parametrize("over, words", [
    ({"task": "segment"}, "task 'segment' is not one of"),
    ({"classes": [{"name": "a", "color": "red"}]}, "use #RRGGBB"),
    ({"mean": [0.0]}, "one value per band"),
    ({"std": [1.0, 0.0, 1.0]}, "std values must be > 0"),
    ({"gsd_range_m": (2.0, 3.0)}, "around gsd_m"),
    ({"tile_size_px": 64, "tile_overlap_px": 60}, "tile_overlap_px"),
])
def test_invalid_configs_name_the_field(over, words):
    with pytest.raises(PackageError, match=words):
        _config(**over)


def test_unknown_and_missing_keys_are_refused(tmp_path):
    d = _config().to_dict()
    with pytest.raises(PackageError, match="unknown keys \\['colour'\\]"):
        PackageConfig.from_dict({**d, "colour": 1})
    del d["bands"]
    with pytest.raises(PackageError, match="incomplete"):
        PackageConfig.from_dict(d)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        PackageConfig.load(tmp_path)


def test_round_trip_gives_identical_outputs_and_readable_files(tmp_path):
    torch.manual_seed(0)
    model = create_model("upernet_segmenter", **ARCH).eval()
    out = save_package(model, _config(), tmp_path / "pkg")
    for name in ("config.json", "model.safetensors", "README.md"):
        mode = stat.S_IMODE(os.stat(out / name).st_mode)
        assert mode & stat.S_IRGRP, f"{name} is {oct(mode)}: packages are shared, not private"
    config, loaded = load_package(out)
    assert config == _config()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert "rsfm" in (out / "README.md").read_text()


def test_mismatched_or_corrupt_weights_are_refused_with_the_fix(tmp_path):
    model = create_model("upernet_segmenter", **ARCH)
    out = save_package(model, _config(), tmp_path / "pkg")
    # same architecture, other class count: same key names, wrong shapes
    cfg = json.loads((out / "config.json").read_text())
    cfg["architecture_kwargs"] = {**ARCH, "num_classes": 3}
    cfg["classes"].append({"name": "c", "color": "#123456"})
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PackageError, match="wrong shapes.*re-export"):
        load_package(out)
    # another architecture altogether: missing/unexpected keys
    cfg["architecture"], cfg["architecture_kwargs"] = "scene_classifier", {"backbone": "efficientnet_lite0",
                                                                           "num_classes": 3}
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PackageError, match="missing.*unexpected"):
        load_package(out)
    (out / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(PackageError, match="unreadable or corrupt"):
        load_package(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(PackageError, match="no weights file"):
        load_package(out)
