"""Visual soft tokens (backend/chat/visual.py) on a tiny random LM and a tiny encoder: no shared data, no
SmolLM2, no network. Slow only because importing transformers takes 10-70 s on the shared 2-core machine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from backend.chat.lm import LMError
from backend.chat.visual import (
    FeatureExtractor,
    ProjectorConfig,
    SoftBackendFactory,
    SoftTokenBackend,
    VisualProjector,
    load_projector,
    pool_scales,
    save_projector,
    splice,
    user_turn_start,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from tiny_lm import tiny_lm as make_tiny_lm  # noqa: E402

pytestmark = pytest.mark.slow

WORDS = ["<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", "ships", "water", "three", "the",
         "is", "are", "there", "how", "many", "[F1]", "[F2]", "yes", "no", "."]
MSGS = [{"role": "system", "content": "the water is three"}, {"role": "user", "content": "how many ships"}]


class TinyEncoder(nn.Module):
    """Four conv maps at strides 4/8/16/32 (the backbone interface the extractor needs)."""

    def __init__(self) -> None:
        super().__init__()
        self.out_channels = [4, 6, 8, 10]
        chans = [3, *self.out_channels]
        self.stages = nn.ModuleList(
            [nn.Conv2d(chans[i], chans[i + 1], 4 if i == 0 else 3, stride=4 if i == 0 else 2,
                       padding=0 if i == 0 else 1) for i in range(4)])

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for s in self.stages:
            x = torch.relu(s(x))
            outs.append(x)
        return outs


def tiny_lm():
    return make_tiny_lm(WORDS)


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def cfg(**kw) -> ProjectorConfig:
    return ProjectorConfig(in_channels=[4, 6, 8, 10], hidden_size=16, grid=2, mlp_dim=32, **kw)


def test_pool_and_projector_shapes():
    maps = [torch.randn(2, c, 64 // s, 48 // s) for c, s in zip([4, 6, 8, 10], [4, 8, 16, 32], strict=True)]
    pooled = pool_scales(maps, grid=3)
    assert pooled.shape == (2, 3 * 3 + 1, 2 * 28)
    # token 0 is the global pool: the mean / max of each whole map
    assert torch.allclose(pooled[0, 0, :4], maps[0][0].mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(pooled[0, 0, 4:8], maps[0][0].amax(dim=(1, 2)))
    c = cfg()
    assert (c.feature_dim, c.num_tokens) == (56, 5)
    proj = VisualProjector(c)
    assert proj(torch.randn(3, 5, 56)).shape == (3, 5, 16)
    with pytest.raises(ValueError, match="grid=2"):
        proj(torch.randn(3, 10, 56))


def test_match_scale_sets_output_std():
    proj = VisualProjector(cfg())
    proj.match_scale(0.05)
    with torch.no_grad():
        std = float(proj(torch.randn(256, 5, 56)).std())
    assert 0.03 < std < 0.08


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    proj = VisualProjector(cfg(training={"steps": 3}))
    with torch.no_grad():
        proj.slot.normal_()
    save_projector(tmp_path / "p", proj)
    back = load_projector(tmp_path / "p")
    x = torch.randn(2, 5, 56)
    assert torch.equal(proj(x), back(x))
    assert back.cfg.training == {"steps": 3} and back.cfg.grid == 2
    # wrong shapes in the config → a clear error, not a silent partial load
    import json

    d = json.loads((tmp_path / "p" / "projector.json").read_text())
    d["mlp_dim"] = 64
    (tmp_path / "p" / "projector.json").write_text(json.dumps(d))
    with pytest.raises(LMError, match="do not fit"):
        load_projector(tmp_path / "p")
    d["format"] = "something-else"
    (tmp_path / "p" / "projector.json").write_text(json.dumps(d))
    with pytest.raises(LMError, match="not a chat projector"):
        load_projector(tmp_path / "p")
    with pytest.raises(LMError, match="not a chat projector directory"):
        load_projector(tmp_path / "missing")


def test_user_turn_start_and_splice(lm):
    ids = lm.prompt_ids(MSGS)
    pos = user_turn_start(lm.tokenizer, MSGS, ids)
    words = [WORDS[i] for i in ids[0].tolist()]
    assert words[pos - 2:pos + 3] == ["<|im_start|>", "user", "how", "many", "ships"]
    emb = torch.randn(1, ids.shape[1], 16)
    soft = torch.randn(5, 16)
    out = splice(emb, soft, pos)
    assert out.shape == (1, ids.shape[1] + 5, 16)
    assert torch.equal(out[0, pos:pos + 5], soft) and torch.equal(out[0, pos + 5:], emb[0, pos:])
    # no user turn: tokens go at the end
    only_sys = MSGS[:1]
    ids2 = lm.prompt_ids(only_sys)
    assert user_turn_start(lm.tokenizer, only_sys, ids2) == ids2.shape[1]


def test_soft_tokens_change_logits_and_generate(lm):
    torch.manual_seed(2)
    proj = VisualProjector(cfg())
    proj.match_scale(1.0)
    with torch.no_grad():
        tokens = proj(torch.randn(1, 5, 56))[0]
    be = SoftTokenBackend(lm, tokens, "img.tif")
    assert be.compact_prompt and be.name == "soft"
    ids = lm.prompt_ids(MSGS)
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits[0, -1]
        soft = lm.model(inputs_embeds=be.embed_fn(MSGS)(ids)).logits[0, -1]
    assert not torch.allclose(plain, soft, atol=1e-4)
    out = be.generate(MSGS, max_tokens=5)
    assert all(w in WORDS for w in out.split())
    assert be.last_insert_pos == user_turn_start(lm.tokenizer, MSGS, ids)
    assert be.last_stats["prompt_tokens"] == ids.shape[1]
    assert be.describe()["soft_tokens"] == 5


def test_factory_reads_image_and_caches(lm, tmp_path):
    import numpy as np
    import rasterio

    img = tmp_path / "chip.tif"
    data = np.random.default_rng(0).integers(0, 255, (3, 100, 150), dtype=np.uint8)
    with rasterio.open(img, "w", driver="GTiff", width=150, height=100, count=3, dtype="uint8") as dst:
        dst.write(data)
    torch.manual_seed(3)
    ext = FeatureExtractor(TinyEncoder(), [127.5] * 3, [127.5] * 3, grid=2, max_side=64)
    x = ext.read(img)
    assert x.shape == (1, 3, 64, 64)  # 150 x 100 → 64 x 43, padded to multiples of 32
    assert ext(img).shape == (5, 56)
    fac = SoftBackendFactory(VisualProjector(cfg()), ext, lm, "proj")
    be = fac.for_image(img)
    assert isinstance(be, SoftTokenBackend) and be.tokens.shape == (5, 16)
    assert fac.for_image(img).tokens is be.tokens  # cached per image
    assert len(fac.encode_s) == 1
    assert fac.describe()["soft_tokens"] == 5


def test_projector_with_lm_adapter_round_trip(lm, tmp_path):
    """A projector trained with LoRA saves its adapter beside it; loading gives an adapted copy of the LM whose
    soft-token logits equal the trained model's, and the shared LM stays as it was."""
    import copy

    import numpy as np
    import rasterio

    from backend.chat.lm_tuning import ADAPTER_FILE, LMTuning, attach
    from backend.chat.visual import load_soft_backend

    img = tmp_path / "chip.tif"
    with rasterio.open(img, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(np.random.default_rng(1).integers(0, 255, (3, 64, 64), dtype=np.uint8))
    torch.manual_seed(4)
    ext = FeatureExtractor(TinyEncoder(), [127.5] * 3, [127.5] * 3, grid=2, max_side=64)
    tuning = LMTuning("lora", rank=2, alpha=4)
    proj = VisualProjector(cfg(lm_tuning=tuning.to_dict()))
    trained = copy.deepcopy(lm.model)
    with torch.no_grad():
        for p in attach(trained, tuning):
            p.normal_(0, 0.3)
    with pytest.raises(ValueError, match="pass the adapted LM"):
        save_projector(tmp_path / "p", proj)
    save_projector(tmp_path / "p", proj, trained)
    assert (tmp_path / "p" / ADAPTER_FILE).is_file()
    ids = lm.prompt_ids(MSGS)
    with torch.no_grad():
        tokens = proj(ext(img)[None])[0]
        want = trained(inputs_embeds=SoftTokenBackend(lm, tokens).embed_fn(MSGS)(ids)).logits
        plain = lm.model(input_ids=ids).logits
    fac = load_soft_backend(tmp_path / "p", lm=lm, extractor=ext)
    assert fac.lm is not lm and fac.describe()["lm_tuning"] == "lora"
    be = fac.for_image(img)
    with torch.no_grad():
        got = fac.lm.model(inputs_embeds=be.embed_fn(MSGS)(ids)).logits
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.equal(lm.model(input_ids=ids).logits, plain)  # the shared LM is not adapted
    assert all(w in WORDS for w in be.generate(MSGS, max_tokens=4).split())
    (tmp_path / "p" / ADAPTER_FILE).unlink()
    with pytest.raises(LMError, match="cannot read the LM adapter"):
        load_soft_backend(tmp_path / "p", lm=lm, extractor=ext)


def test_extractor_from_an_mtp_encoder_folder(tmp_path):
    """--encoder may be the folder rsfm-train mtp exports (encoder.json + encoder.safetensors): the backbone is
    rebuilt from the registry and its weights loaded; a file that does not fit is a clear error."""
    import json

    import numpy as np
    import rasterio
    from safetensors.torch import save_file

    from training.models.registry import create_model

    torch.manual_seed(0)
    enc = create_model("efficientnet_lite0").eval()
    folder = tmp_path / "mtp_run"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(folder / "encoder.safetensors"))
    meta = {"backbone": "efficientnet_lite0", "backbone_kwargs": {}, "mean": [127.5] * 3, "std": [127.5] * 3}
    (folder / "encoder.json").write_text(json.dumps(meta))
    img = tmp_path / "chip.tif"
    with rasterio.open(img, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8))
    ext = FeatureExtractor.from_package(str(folder), grid=2)
    assert all(torch.equal(a, b) for a, b in zip(ext.encoder.state_dict().values(), enc.state_dict().values(),
                                                 strict=True))
    direct = FeatureExtractor(enc, [127.5] * 3, [127.5] * 3, grid=2)
    assert torch.allclose(ext(img), direct(img)) and ext(img).shape[0] == 5  # 2 x 2 grid + global
    save_file({"head.weight": torch.zeros(2, 2)}, str(folder / "encoder.safetensors"))  # not this backbone
    with pytest.raises(LMError, match="cannot load the MTP encoder"):
        FeatureExtractor.from_package(str(folder), grid=2)
