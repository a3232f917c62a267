"""Local-LM settings (dtype, threads) and the streaming decoder, without loading a language model."""

from __future__ import annotations

import random

import pytest

from backend.chat.lm import (
    LMError,
    _IncrementalDecoder,
    chat_dtype,
    chat_threads,
    cpu_flags,
    cpu_has_native_bf16,
)

SPR = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\nbogomips\t: 4000\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
ZEN4 = "flags\t\t: fpu avx2 avx512f avx512_bf16\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_cpu_flags_parsing():
    assert {"amx_bf16", "avx512_bf16"} <= cpu_flags(SPR)
    assert cpu_flags(ARM) == {"fp", "asimd", "bf16", "i8mm"}
    assert cpu_flags("no flags line here") == set()


def test_native_bf16_needs_an_x86_bf16_flag():
    import torch

    mkldnn = torch.backends.mkldnn.is_available()
    assert cpu_has_native_bf16(SPR) is mkldnn
    assert cpu_has_native_bf16(ZEN4) is mkldnn  # AVX512-BF16 without AMX is enough
    assert cpu_has_native_bf16(SKYLAKE) is False  # AVX-512 but no bf16 dot products: bf16 would be emulated
    assert cpu_has_native_bf16(ARM) is False  # not an oneDNN x86 bf16 path: stays fp32
    assert cpu_has_native_bf16("") is False


def test_chat_dtype_auto_and_override(monkeypatch):
    import torch

    monkeypatch.delenv("RSFM_CHAT_DTYPE", raising=False)
    assert chat_dtype(SKYLAKE) == "fp32"
    assert chat_dtype(SPR) == ("bf16" if torch.backends.mkldnn.is_available() else "fp32")
    monkeypatch.setenv("RSFM_CHAT_DTYPE", "auto")
    assert chat_dtype(SKYLAKE) == "fp32"
    monkeypatch.setenv("RSFM_CHAT_DTYPE", "fp32")
    assert chat_dtype(SPR) == "fp32"  # the override wins over the CPU
    monkeypatch.setenv("RSFM_CHAT_DTYPE", " BF16 ")
    assert chat_dtype(SKYLAKE) == "bf16"
    monkeypatch.setenv("RSFM_CHAT_DTYPE", "fp16")
    with pytest.raises(LMError, match="RSFM_CHAT_DTYPE must be one of auto, fp32, bf16"):
        chat_dtype(SPR)


def test_chat_threads_default_depends_on_the_wait_policy(monkeypatch):
    import os

    monkeypatch.delenv("RSFM_CHAT_THREADS", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert chat_threads() == max(1, min(2, os.cpu_count() or 1))
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert chat_threads() == max(1, min(2, os.cpu_count() or 1))
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert chat_threads() == 1  # spinning OpenMP threads: 2 threads were catastrophic under load
    monkeypatch.setenv("RSFM_CHAT_THREADS", "3")
    assert chat_threads() == 3
    monkeypatch.setenv("RSFM_CHAT_THREADS", "0")
    assert chat_threads() == 1
    monkeypatch.setenv("RSFM_CHAT_THREADS", "two")
    with pytest.raises(LMError, match="RSFM_CHAT_THREADS must be a positive integer"):
        chat_threads()


@pytest.fixture(scope="module")
def byte_bpe():
    """A real byte-level BPE tokenizer (the kind SmolLM2 uses), trained in memory on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    text = ["There are 3 ships [F7] in the north-west quarter.", "Water covers 50% of the area, 0.04 km² [F2].",
            "Café — naïve façade über straße: 12.5 m².", "Land cover vegetation 37.5%, mostly SE.\nO1 ship 0.95"]
    tk.train_from_iterator(text * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_end|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tk


@pytest.mark.parametrize("text", ["There are 3 ships [F7] in the north-west quarter.",
                                  "Café naïve 0.04 km² — über\nline two  with  spaces",
                                  "日本語 mixes 3-byte characters, and 🚢 a 4-byte one."])
def test_incremental_decoder_streams_the_full_text(byte_bpe, text):
    ids = byte_bpe.encode(text).ids
    dec = _IncrementalDecoder(byte_bpe)
    streamed = []
    for t in ids:
        s = dec.push(t)
        assert "\ufffd" not in s  # half a UTF-8 character is never shown
        assert s.startswith("".join(streamed))  # only ever appends
        streamed.append(s[len("".join(streamed)):])
    assert "".join(streamed) == dec.full() == byte_bpe.decode(ids) == text
    assert dec.start > 0  # it did move its window (decodes a word, not the whole answer, per step)


def test_incremental_decoder_on_random_byte_tokens(byte_bpe):
    """Any id sequence (split UTF-8 included): the stream is always a prefix of the final full decode."""
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(byte_bpe.get_vocab_size()) for _ in range(30)]
        dec = _IncrementalDecoder(byte_bpe)
        for t in ids:
            s = dec.push(t)
        assert dec.full().startswith(s)
