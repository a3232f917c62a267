"""MTP multi-task pretraining: data, model, ``rsfm-train mtp`` run, checkpoint/resume, encoder export.

Everything runs on a synthetic fixture in the real folder layouts (``make_multitask_fixture``), with a small
decoder configuration so a step takes well under a second on a 2-core CPU.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from training.cli import main as cli_main
from training.data.multitask import (
    SOURCE_TASKS,
    MultiTaskDataset,
    StepBatchSampler,
    augment,
    build_sources,
    collate_multitask,
    make_multitask_fixture,
)
from training.models.mtp import DatasetSpec, MultiTaskModel, encoder_state_dict, total_loss

TF_MEAN, TF_STD = [127.5] * 3, [127.5] * 3
SMALL = ["--semseg-channels", "16", "--det-channels", "16", "--roi-fc-channels", "32", "--roi-samples", "32"]


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return make_multitask_fixture(tmp_path_factory.mktemp("mtpdata"), size=96, images=2)


@pytest.fixture(scope="module")
def sources(fixture_root):
    return build_sources(fixture_root, list(SOURCE_TASKS))


def _specs(sources):
    return [DatasetSpec(s.name, {t: s.classes(t) for t in s.tasks}) for s in sources]


def _small_model(sources, seed=0):
    from training.models.registry import create_model
    from training.mtp import set_norm_mode

    torch.manual_seed(seed)
    enc = create_model("efficientnet_lite0")
    model = MultiTaskModel(enc, _specs(sources), semseg_channels=16, semseg_dropout=0.0, det_channels=16,
                           roi_fc_channels=32, roi_samples=32)
    model.train()
    set_norm_mode(model, "frozen")
    return model


# ------------------------------------------------------------------------------------------------- data
def test_sources_read_every_label_type(sources):
    by_name = {s.name: s for s in sources}
    assert set(by_name) == set(SOURCE_TASKS)
    dubai = by_name["dubai_seg"].load(0)
    assert dubai.semseg is not None and set(np.unique(dubai.semseg)) <= {0, 2, 255}
    assert (dubai.semseg[:2] == 255).all()  # black rows of the mask are "ignore"
    nwpu = by_name["nwpu_vhr10"].load(0)
    assert nwpu.polygon_labels == [0, 9]  # airplane, vehicle (COCO ids 1 and 10 -> 0-based)
    isaid = by_name["isaid"].load(0)
    assert sorted(isaid.instance_labels.values()) == [0, 1]  # ship, storage_tank by palette colour
    assert by_name["dota"].classes("rotdet")[5] == "large-vehicle"
    assert by_name["dota"].load(0).polygon_labels == [5, 5]


def test_unknown_source_and_missing_folder_say_what_to_change(tmp_path, fixture_root):
    with pytest.raises(ValueError, match="valid: dubai_seg"):
        build_sources(fixture_root, ["nope"])
    with pytest.raises(FileNotFoundError, match="--data-root"):
        build_sources(tmp_path, ["dota"])


def test_hold_out_drops_a_downstream_split_by_file_number_or_folder(fixture_root, tmp_path):
    from pathlib import Path

    from training.data.splits import held_out

    root = Path("/data/Tile 7/dubai")  # a folder name above the root must not count as a group
    assert held_out(root / "Tile 1/images/image_part_003.jpg", root, "Tile 1,Tile 2")
    assert not held_out(root / "Tile 3/images/image_part_003.jpg", root, "Tile 1,Tile 2")
    assert not held_out(root / "Tile 3/images/x.jpg", root, "Tile 7")
    assert held_out(root / "images/471.jpg", root, "441-520")
    assert not held_out(root / "images/440.jpg", root, "441-520")

    nwpu, dubai = build_sources(fixture_root, ["nwpu_vhr10", "dubai_seg"])
    assert nwpu.hold_out("2-9") == 1 and [p.name for p, _ in nwpu.items] == ["001.jpg"] and len(nwpu) == 1
    with pytest.raises(ValueError, match="matches no image"):
        dubai.hold_out("Tile 9")  # a typo must not silently hold out nothing
    with pytest.raises(ValueError, match="leaves source 'dubai_seg' no image"):
        dubai.hold_out("Tile 1")
    assert len(dubai) == 2  # a refused hold-out changes nothing


def test_augment_keeps_labels_consistent_with_pixels(sources):
    nwpu = next(s for s in sources if s.name == "nwpu_vhr10")
    raw = nwpu.load(0)
    for seed in range(6):
        out = augment(raw, nwpu.tasks, 64, np.random.default_rng(seed), TF_MEAN, TF_STD)
        ins, rot = out["insseg"], out["rotdet"]
        assert out["image"].shape == (3, 64, 64)
        h, w = out["valid_hw"]
        for box, mask in zip(ins["boxes_xyxy"], ins["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert len(ys) > 0
            # the polygon's bounds contain the rasterised pixels (PIL also fills the outline: 1.5 px slack)
            assert xs.min() >= box[0] - 1.5 and xs.max() + 1 <= box[2] + 1.5
            assert ys.min() >= box[1] - 1.5 and ys.max() + 1 <= box[3] + 1.5
        assert (rot["boxes_cxcywha"][:, 0] <= w + 1e-3).all() and (rot["boxes_cxcywha"][:, 1] <= h + 1e-3).all()
        assert (rot["boxes_cxcywha"][:, 2] >= rot["boxes_cxcywha"][:, 3]).all()  # regularised w >= h
        assert len(ins["labels"]) == len(ins["masks"]) == len(ins["boxes_xyxy"])


def test_min_area_rect_of_rotated_square_is_recovered(sources):
    """The fixture's airplane is a square rotated by a known angle: the rotated box must find its size."""
    nwpu = next(s for s in sources if s.name == "nwpu_vhr10")
    raw = nwpu.load(0)
    out = augment(raw, ("rotdet",), 96, np.random.default_rng(0), TF_MEAN, TF_STD, scale_range=(1.0, 1.0),
                  flip=False, photometric=False)
    side = 96 * 0.15 * math.sqrt(2)  # square with half-diagonal r = 0.15 * size
    rb = out["rotdet"]["boxes_cxcywha"][0]
    assert rb[2].item() == pytest.approx(side, abs=0.5) and rb[3].item() == pytest.approx(side, abs=0.5)
    assert rb[0].item() == pytest.approx(96 * 0.35, abs=0.5) and rb[1].item() == pytest.approx(96 * 0.4, abs=0.5)


def test_sampler_two_ranks_see_what_one_rank_with_double_batch_sees():
    lengths = [3, 1, 5]
    one = StepBatchSampler(lengths, 2, rank=0, world_size=1, start_step=0, num_steps=4, seed=7)
    r0 = StepBatchSampler(lengths, 1, rank=0, world_size=2, start_step=0, num_steps=4, seed=7)
    r1 = StepBatchSampler(lengths, 1, rank=1, world_size=2, start_step=0, num_steps=4, seed=7)
    for a, b0, b1 in zip(one, r0, r1, strict=True):
        for k in range(len(lengths)):
            assert [key for key in a if key[0] == k] == [next(x for x in b0 if x[0] == k),
                                                          next(x for x in b1 if x[0] == k)]
    # every source is walked through as a permutation per epoch
    seen = [one.index(2, g) for g in range(5)]
    assert sorted(seen) == list(range(5))
    # a resumed sampler continues the same stream
    resumed = StepBatchSampler(lengths, 2, 0, 1, start_step=2, num_steps=2, seed=7)
    assert list(resumed) == list(one)[2:]


def test_dataset_sample_is_a_function_of_its_key(sources):
    ds = MultiTaskDataset(sources, 64, TF_MEAN, TF_STD, seed=3)
    a, b = ds[(1, 5, 0)], ds[(1, 5, 0)]
    assert torch.equal(a["image"], b["image"])
    assert torch.equal(a["rotdet"]["boxes_cxcywha"], b["rotdet"]["boxes_cxcywha"])
    c = ds[(1, 6, 0)]  # same image, another stream position: another crop
    assert not torch.equal(a["image"], c["image"])


# ------------------------------------------------------------------------------------------------ model
def test_model_keys_heads_and_encoder_split(sources):
    model = _small_model(sources)
    keys = list(model.state_dict())
    assert {k.split(".", 1)[0] for k in keys} == {"encoder", "semseg", "insseg", "rotdet"}
    sd = model.state_dict()
    # per-dataset output layers with each dataset's class count (+1 background for the box classifiers)
    assert sd["semseg.decode_head.classifier.heads.dubai_seg.weight"].shape[0] == 6
    assert sd["insseg.roi_head.bbox_head.fc_cls.heads.nwpu_vhr10.weight"].shape[0] == 11
    assert sd["insseg.roi_head.bbox_head.fc_reg.heads.isaid.weight"].shape[0] == 4 * 15
    assert sd["insseg.roi_head.mask_head.conv_logits.heads.hrsid.weight"].shape[0] == 1
    assert sd["rotdet.roi_head.bbox_head.fc_cls.heads.dota.weight"].shape[0] == 16
    assert sd["rotdet.roi_head.bbox_head.fc_reg.heads.nwpu_vhr10.weight"].shape[0] == 5
    assert not any(k.startswith("semseg.") and "nwpu" in k for k in keys)  # no semseg head without masks
    enc = encoder_state_dict({"model": {f"module.{k}": v for k, v in sd.items()}})
    assert set(enc) == set(model.encoder.state_dict())
    with pytest.raises(KeyError, match="MTP checkpoint"):
        encoder_state_dict({"backbone.x": torch.zeros(1)})


def test_encoder_runs_once_per_step_on_all_images(sources):
    model = _small_model(sources)
    calls = []
    model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    orig = model.encoder.forward_intermediates
    model.encoder.forward_intermediates = lambda x: (calls.append(x.shape[0]), orig(x))[1]
    ds = MultiTaskDataset(sources, 64, TF_MEAN, TF_STD)
    batches = collate_multitask([ds[k] for k in StepBatchSampler(ds.lengths, 1, 0, 1, 0, 1).keys(0)])
    losses = model(batches)
    assert calls == [5]  # one call, the 5 sources' images concatenated
    tasks = {k.split(".")[0] for k in losses}
    assert tasks == {"semseg", "insseg", "rotdet"}
    assert "insseg.nwpu_vhr10.loss_mask" in losses and "rotdet.dota.loss_rpn_bbox" in losses
    assert all(torch.isfinite(v) for v in losses.values())


def test_batch_of_two_equals_mean_of_single_images(sources):
    """Per-image loss semantics: what makes N processes x 1 image equal 1 process x N images."""
    model = _small_model(sources)
    ds = MultiTaskDataset(sources, 64, TF_MEAN, TF_STD)
    sampler = StepBatchSampler(ds.lengths, 2, 0, 1, 0, 1)
    keys = sampler.keys(0)
    both = collate_multitask([ds[k] for k in keys])
    seeds = [[100 * b["source"] + i for i in range(2)] for b in both]
    with torch.no_grad():
        joint = total_loss(model(both, seeds=seeds))
        singles = []
        for i in range(2):
            part = collate_multitask([ds[k] for k in keys[i::2]])
            singles.append(total_loss(model(part, seeds=[[s[i]] for s in seeds])))
    assert joint.item() == pytest.approx((singles[0].item() + singles[1].item()) / 2, rel=1e-5)


# --------------------------------------------------------------------------------------- CLI and resume
def _run(root, out, *extra):
    args = ["mtp", "--backbone", "efficientnet_lite0", "--init", "random", "--data-root", str(root),
            "--crop-size", "64", "--log-every", "1", "--out", str(out), "--threads", "1", *SMALL, *extra]
    assert cli_main(args) == 0
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_cli_trains_all_three_tasks_and_total_loss_falls(fixture_root, tmp_path):
    log = _run(fixture_root, tmp_path / "run", "--steps", "14", "--lr", "1e-3", "--no-augment",
               "--scale-range", "1", "1")
    assert [r["step"] for r in log] == list(range(1, 15))
    for r in log:
        assert set(r["task_losses"]) == {"semseg", "insseg", "rotdet"}
        assert all(math.isfinite(v) for v in r["losses"].values())
    first = np.mean([r["loss"] for r in log[:3]])
    last = np.mean([r["loss"] for r in log[-3:]])
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file()


def test_resume_continues_at_the_right_step_with_the_same_optimizer_state(fixture_root, tmp_path):
    full = tmp_path / "full"
    _run(fixture_root, full, "--steps", "4", "--save-every", "2", "--lr", "5e-4")
    mid = torch.load(full / "checkpoint_2.pt", weights_only=False)
    assert mid["step"] == 2 and mid["scheduler"]["last_epoch"] == 2
    resumed = tmp_path / "resumed"
    log = _run(fixture_root, resumed, "--steps", "4", "--lr", "5e-4", "--resume", str(full / "checkpoint_2.pt"))
    assert [r["step"] for r in log] == [3, 4]
    a = torch.load(full / "checkpoint_last.pt", weights_only=False)
    b = torch.load(resumed / "checkpoint_last.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for pid in sa:
        assert int(sa[pid]["step"]) == int(sb[pid]["step"]) == 4
        torch.testing.assert_close(sb[pid]["exp_avg_sq"], sa[pid]["exp_avg_sq"], rtol=1e-4, atol=1e-10)
    assert a["scheduler"] == b["scheduler"]
    # a checkpoint of another backbone is refused with a message saying what to pass
    with pytest.raises(SystemExit, match="--backbone"):
        _run(fixture_root, tmp_path / "bad", "--steps", "4", "--sources", "dota", "--resume",
             str(full / "checkpoint_2.pt"))


def test_exported_encoder_loads_strictly_into_the_finetune_backbone(fixture_root, tmp_path):
    from safetensors.torch import load_file

    from training.models.registry import create_model

    out = tmp_path / "exp"
    _run(fixture_root, out, "--steps", "1", "--sources", "dubai_seg,dota")
    sd = load_file(str(out / "encoder.safetensors"))
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["backbone"] == "efficientnet_lite0" and meta["mtp_steps"] == 1
    backbone = create_model(meta["backbone"], **meta["backbone_kwargs"])
    backbone.load_state_dict(sd, strict=True)  # every key, no prefix, same shapes
    ckpt = torch.load(out / "checkpoint_last.pt", weights_only=False)
    for k, v in encoder_state_dict(ckpt).items():
        assert torch.equal(sd[k], v)
    # the finetune task model takes it as its backbone, strictly too
    seg = create_model("upernet_segmenter", backbone="efficientnet_lite0", num_classes=3)
    seg.backbone.load_state_dict(sd, strict=True)


def test_hold_out_is_recorded_in_encoder_json_and_bad_specs_name_the_fix(fixture_root, tmp_path):
    out = tmp_path / "held"
    _run(fixture_root, out, "--steps", "1", "--sources", "nwpu_vhr10,dota", "--hold-out", "nwpu_vhr10=2-2")
    assert json.loads((out / "encoder.json").read_text())["held_out"] == {"nwpu_vhr10": "2-2"}
    with pytest.raises(ValueError, match="SOURCE=SPEC"):
        _run(fixture_root, tmp_path / "bad1", "--steps", "1", "--sources", "dota", "--hold-out", "2-2")
    with pytest.raises(ValueError, match="not in --sources"):
        _run(fixture_root, tmp_path / "bad2", "--steps", "1", "--sources", "dota", "--hold-out", "nwpu_vhr10=2-2")


def test_init_file_loads_an_encoder_and_rejects_a_foreign_one(fixture_root, tmp_path):
    from safetensors.torch import save_file

    from training.models.registry import create_model
    from training.mtp import load_encoder_weights

    src = create_model("efficientnet_lite0")
    path = tmp_path / "enc.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = create_model("efficientnet_lite0")
    missing, unexpected = load_encoder_weights(dst, path)
    assert missing == [] and unexpected == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    bad = tmp_path / "bad.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(ValueError, match="--backbone"):
        load_encoder_weights(dst, bad)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,kwargs", [("vit_t_rvsa", {"img_size": 64}), ("internimage_t", {})])
def test_other_backbones_train_an_mtp_step(sources, backbone, kwargs):
    """The MTP model is backbone-agnostic: any RSFM pyramid backbone gets all three decoders."""
    from training.models.registry import create_model
    from training.mtp import backbone_normalisation, set_norm_mode

    torch.manual_seed(0)
    enc = create_model(backbone, **kwargs)
    model = MultiTaskModel(enc, _specs(sources), semseg_channels=16, det_channels=16, roi_fc_channels=32,
                           roi_samples=32)
    model.train()
    set_norm_mode(model, "frozen")
    mean, std = backbone_normalisation(enc)
    assert mean == (123.675, 116.28, 103.53)  # ImageNet statistics of the MTP configs
    ds = MultiTaskDataset(sources, 64, mean, std)
    batches = collate_multitask([ds[k] for k in StepBatchSampler(ds.lengths, 1, 0, 1, 0, 1).keys(0)])
    loss = total_loss(model(batches))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("encoder.") and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_init_mae_maps_an_mae_checkpoint_onto_the_vit_encoder(tmp_path):
    """MAE layout: cls token in pos_embed (other grid), mask token, decoder; no feature pyramid."""
    from training.models.registry import create_model
    from training.mtp import load_encoder_weights

    torch.manual_seed(1)
    src = create_model("vit_t_rvsa", img_size=128)  # 8 x 8 token grid
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith(("fpn", "norm."))}
    sd["pos_embed"] = torch.cat([torch.zeros(1, 1, sd["pos_embed"].shape[-1]), sd["pos_embed"]], 1)
    sd["cls_token"] = torch.zeros(1, 1, sd["pos_embed"].shape[-1])
    sd["mask_token"] = torch.zeros(1, 1, 8)
    sd["decoder_embed.weight"] = torch.zeros(8, 8)
    path = tmp_path / "mae.pth"
    torch.save({"model": sd}, path)
    dst = create_model("vit_t_rvsa", img_size=64)  # 4 x 4 grid: pos_embed must be resized
    missing, _ = load_encoder_weights(dst, path)
    assert missing and all(k.startswith(("fpn", "norm.")) for k in missing)
    assert dst.pos_embed.shape == (1, 16, 192)
    k = "blocks.0.mlp.fc1.weight"
    assert torch.equal(dst.state_dict()[k], src.state_dict()[k])


def test_batch_norm_with_one_image_per_source_is_refused_with_the_fix(fixture_root, tmp_path):
    with pytest.raises(SystemExit, match="--norm frozen or --batch-per-source 2"):
        _run(fixture_root, tmp_path / "bn", "--steps", "1", "--norm", "batch")
    with pytest.raises(SystemExit, match="--init-weights"):
        _run(fixture_root, tmp_path / "mae", "--steps", "1", "--init", "mae")
