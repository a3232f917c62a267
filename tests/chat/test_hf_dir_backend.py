"""The hf_dir backend on a tiny local Hugging Face model directory written by the test (offline).

Slow only because importing transformers takes 10-70 s on the shared 2-core machine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from backend.chat.lm import HFDirBackend, LMError, make_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from tiny_lm import tiny_parts  # noqa: E402

WORDS = ["<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", "ships", "water", "three", "the",
         "is", "are", "there", "how", "many", "[F1]", "[F2]", "yes", "no", "."]


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinylm")
    model, tok = tiny_parts(WORDS, layers=1)
    tok.save_pretrained(d)
    model.save_pretrained(d)
    return d


def test_generates_and_streams(tiny_dir):
    lm = make_backend({"name": "hf_dir", "path": str(tiny_dir)})
    assert isinstance(lm, HFDirBackend)
    pieces: list[str] = []
    out = lm.generate([{"role": "user", "content": "how many ships"}], max_tokens=6, on_token=pieces.append)
    assert "".join(pieces) == out
    assert len(pieces) <= 6 and all(w in WORDS for w in out.split())  # at most max_tokens, from the vocab
    again = HFDirBackend(str(tiny_dir))
    assert again._lm is lm._lm  # cached: loaded once per directory
    assert again.generate([{"role": "user", "content": "how many ships"}], max_tokens=6) == out  # greedy


def test_bad_directory(tmp_path):
    with pytest.raises(LMError, match="config.json"):
        HFDirBackend(str(tmp_path))
    with pytest.raises(LMError, match="needs 'path'"):
        make_backend({"name": "hf_dir"})


def test_bf16_weights_fixed_length_and_stats(tiny_dir, tmp_path, monkeypatch):
    """RSFM_CHAT_DTYPE=bf16 keeps the weights in bf16; ignore_eos runs exactly max_tokens steps; last_stats."""
    import shutil

    import torch

    d = tmp_path / "tiny_bf16"  # another folder: backends are cached per resolved path
    shutil.copytree(tiny_dir, d)
    monkeypatch.setenv("RSFM_CHAT_DTYPE", "bf16")
    monkeypatch.setenv("RSFM_CHAT_THREADS", "1")
    lm = HFDirBackend(str(d))
    assert next(lm._lm.model.parameters()).dtype == torch.bfloat16
    assert lm.describe()["dtype"] == "bf16" and lm.describe()["threads"] == 1
    msgs = [{"role": "user", "content": "how many ships"}]
    lm._lm.generate(msgs, max_tokens=9, ignore_eos=True)
    st = lm._lm.last_stats
    assert st["new_tokens"] == 9 and st["prompt_tokens"] == lm._lm.prompt_ids(msgs).shape[1]
    assert 0 < st["prefill_s"] <= st["total_s"]
    # RSFM_CHAT_DTYPE=fp32 on the same model: fp32 weights, generation works
    monkeypatch.setenv("RSFM_CHAT_DTYPE", "fp32")
    d32 = tmp_path / "tiny_fp32"
    shutil.copytree(tiny_dir, d32)
    lm32 = HFDirBackend(str(d32))
    assert next(lm32._lm.model.parameters()).dtype == torch.float32
    assert all(w in WORDS for w in lm32.generate(msgs, max_tokens=6).split())


def test_int8_quantises_every_linear_layer(tiny_dir, tmp_path, monkeypatch):
    """RSFM_CHAT_DTYPE=int8: every nn.Linear becomes a dynamically quantised int8 layer and generation works."""
    import shutil

    import torch

    d = tmp_path / "tiny_int8"
    shutil.copytree(tiny_dir, d)
    monkeypatch.setenv("RSFM_CHAT_DTYPE", "int8")
    monkeypatch.setenv("RSFM_CHAT_THREADS", "1")
    lm = HFDirBackend(str(d))
    mods = list(lm._lm.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in mods)
    assert any(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in mods)
    assert lm.describe()["dtype"] == "int8"
    msgs = [{"role": "user", "content": "how many ships"}]
    assert all(w in WORDS for w in lm.generate(msgs, max_tokens=6).split())
