"""Safe loading of official MTP checkpoint files (MTP_SPEC §1.8, §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.checkpoints import (
    CheckpointMismatchError,
    LoadReport,
    UnsafeCheckpointError,
    extract_state_dict,
    fill_deterministic_,
    load_checkpoint_file,
    load_weights,
    split_mtp_checkpoint,
)
from training.models.intern_image import InternImage, InternImageConfig
from training.models.vit_rvsa import vit_t_rvsa

_MARKER: list[str] = []


class _HistoryBuffer:
    """Stands for an MMEngine class: not importable by the loader's allow-list."""

    def __init__(self) -> None:
        self.data = [1.0, 2.0]


def _record(text: str) -> None:
    _MARKER.append(text)


class _Evil:
    """Unpickling this would call a module-level function (the shape of an ``os.system`` payload)."""

    def __reduce__(self):
        return (_record, ("executed",))


class _EvilBoundMethod:
    """Unpickling this would call a bound method obtained through ``getattr``."""

    def __reduce__(self):
        return (_MARKER.append, ("executed",))


def _official_container(state_dict: dict[str, torch.Tensor]) -> dict:
    """The pretraining script's container: epoch, iteration, state_dict, optimizer, scheduler, numpy loss."""
    return {
        "epoch": 3,
        "iteration": 80000,
        "state_dict": state_dict,
        "optimizer": {
            "state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(2)}},
            "param_groups": [{"lr": 6e-5, "weight_decay": 0.05, "layer_name": "layer_0", "params": [0]}],
        },
        "scheduler": {"T_max": 80000, "eta_min": 0, "last_epoch": 80000},
        "loss_pretrain": np.array([1.5, 1.25, 1.0]),
    }


def _vit_sd() -> dict[str, torch.Tensor]:
    m = vit_t_rvsa(img_size=64)
    fill_deterministic_(m)
    return m.state_dict()


def test_official_encoder_file_loads_strict(tmp_path):
    sd = _vit_sd()
    path = tmp_path / "last_vit_t_rvsa_ss_is_rd_pretrn_model_encoder.pth"
    torch.save(_official_container(sd), path)
    obj = load_checkpoint_file(path)
    assert isinstance(obj["loss_pretrain"], np.ndarray) and obj["loss_pretrain"][1] == 1.25
    model = vit_t_rvsa(img_size=64)
    report = load_weights(model, path)
    assert report.ok and report.loaded == len(sd)
    assert "every weight of the model was loaded" in str(report)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k].to(v.dtype), msg=k)


def test_full_mtp_checkpoint_is_split(tmp_path):
    enc = _vit_sd()
    dec = {
        "semsegdecoder.decode_head.conv_seg.weight": torch.randn(1, 256, 1, 1),
        "semseghead_1.1.weight": torch.randn(19, 256, 1, 1),
        "rotdetdecoder.rpn_head.rpn_reg.weight": torch.randn(18, 256, 1, 1),
        "inssegroiboxhead_fc_reg3.weight": torch.randn(148, 1024),
    }
    full = {f"encoder.{k}": v for k, v in enc.items()} | dec
    e, d = split_mtp_checkpoint({f"module.{k}": v for k, v in full.items()})
    assert set(e) == set(enc) and set(d) == set(dec)  # original decoder names kept
    path = tmp_path / "last_vit_t_rvsa_ss_is_rd_pretrn_model.pth"
    torch.save(_official_container(full), path)
    assert load_weights(vit_t_rvsa(img_size=64), path).ok
    e2, d2 = split_mtp_checkpoint(enc)
    assert set(e2) == set(enc) and d2 == {}


def test_internimage_backbone_prefix_file(tmp_path):
    cfg = InternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(2, 2, 4, 8))
    src = InternImage(cfg)
    path = tmp_path / "finetuned.pth"
    torch.save(
        {"meta": {"epoch": 1}, "state_dict": {f"backbone.{k}": v for k, v in src.state_dict().items()}}, path
    )
    report = load_weights(InternImage(cfg), path)
    assert report.ok, str(report)


def test_arbitrary_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _vit_sd(), "payload": _Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="outside the allow-list") as info:
        load_checkpoint_file(path)
    assert "placeholder_unknown=True" in str(info.value)
    with pytest.raises(UnsafeCheckpointError):
        load_weights(vit_t_rvsa(img_size=64), path)
    # Even the tolerant mode must not run the payload: it becomes an inert placeholder.
    obj = load_checkpoint_file(path, placeholder_unknown=True)
    assert _MARKER == []
    assert "placeholder" in repr(obj["payload"])
    # A call chain through getattr cannot be rebuilt from placeholders: refused, still not executed.
    path2 = tmp_path / "evil2.pth"
    torch.save({"payload": _EvilBoundMethod()}, path2)
    with pytest.raises(UnsafeCheckpointError, match="getattr"):
        load_checkpoint_file(path2)
    with pytest.raises(UnsafeCheckpointError, match="cannot|placeholder"):
        load_checkpoint_file(path2, placeholder_unknown=True)
    assert _MARKER == []


def test_mmengine_style_file_with_placeholders(tmp_path):
    path = tmp_path / "mmengine.pth"
    container = {
        "meta": {"epoch": 12},
        "state_dict": {f"backbone.{k}": v for k, v in _vit_sd().items()},
        "message_hub": {"log_scalars": {"loss": _HistoryBuffer()}},
    }
    torch.save(container, path)
    with pytest.raises(UnsafeCheckpointError, match="_HistoryBuffer"):
        load_weights(vit_t_rvsa(img_size=64), path)
    report = load_weights(vit_t_rvsa(img_size=64), path, placeholder_unknown=True)
    assert report.ok
    assert any("_HistoryBuffer" in p for p in report.placeholders)
    assert "inert placeholders" in str(report)


def test_mismatch_is_reported_in_plain_words(tmp_path):
    sd = _vit_sd()
    sd.pop("blocks.0.attn.qkv.weight")
    sd["blocks.0.extra.weight"] = torch.zeros(3)
    sd["fpn2.0.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(vit_t_rvsa(img_size=64), sd)
    msg = str(info.value)
    assert "1 weights of the model were not in the file" in msg and "blocks.0.attn.qkv.weight" in msg
    assert "have no place in the model" in msg and "blocks.0.extra.weight" in msg
    assert "fpn2.0.bias (file (7,), model (192,))" in msg
    report = load_weights(vit_t_rvsa(img_size=64), sd, strict=False)
    assert isinstance(report, LoadReport) and not report.ok
    assert report.missing == ["blocks.0.attn.qkv.weight"]
    sd.pop("blocks.0.extra.weight")
    sd["fpn2.0.bias"] = torch.zeros(192)
    ok = load_weights(vit_t_rvsa(img_size=64), sd, allowed_missing=["blocks.0.attn.qkv.weight"])
    assert ok.ok


def test_safetensors_and_containers(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in _vit_sd().items()}
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    assert load_weights(vit_t_rvsa(img_size=64), path).ok
    assert set(extract_state_dict({"model": sd})) == set(sd)
    assert set(extract_state_dict({f"module.{k}": v for k, v in sd.items()})) == set(sd)
    with pytest.raises(ValueError, match="no tensors"):
        extract_state_dict({"epoch": 1})
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint_file(tmp_path / "missing.pth")


def test_generic_model_backbone_prefix():
    """A model without a checkpoint_filter_fn still gets MMEngine's ``backbone.`` prefix removed."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items()} | {"decode_head.w": torch.zeros(1)}
    report = load_weights(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), sd)
    assert report.ok and report.loaded == len(net.state_dict())
