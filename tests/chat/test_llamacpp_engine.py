"""The built-in LM on llama.cpp (llama-cpp-python, the GGUF as shipped): prompt parity with transformers,
streaming, stop strings, the reused prompt cache, the context limit and the engine setting."""

from __future__ import annotations

import importlib.util
import os

import pytest

from backend.chat.lm import BuiltinBackend, LMError, chat_engine

HAS_LLAMACPP = importlib.util.find_spec("llama_cpp") is not None
# `make venv` installs llama-cpp-python, so CI must not silently skip these
needs_llamacpp = pytest.mark.skipif(not HAS_LLAMACPP and os.environ.get("CI") != "true",
                                    reason="llama-cpp-python is not installed (make venv installs it)")

SYSTEM = "You answer questions about a satellite image. Facts: [F1] 3 ships. [F2] 1 harbor. [F3] water 40 %."


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def lm():
    return BuiltinBackend.load("llamacpp")


@needs_llamacpp
def test_prompt_tokens_match_transformers_template():
    """Both engines must see the same prompt: the GGUF's chat template rendered by llama.cpp's Jinja2
    formatter and tokenized by llama.cpp equals transformers' apply_chat_template on the same GGUF."""
    from transformers import AutoTokenizer

    from backend.chat.lm import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)  # nosec B615
    msgs = chat("How many ships are there?") + [{"role": "assistant", "content": "3 ships [F1]."},
                                                 {"role": "user", "content": "And harbors?"}]
    ref = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert BuiltinBackend.load("llamacpp").prompt_tokens(msgs) == list(ref)


@needs_llamacpp
def test_generate_streams_and_reports_timings(lm):
    pieces: list[str] = []
    text = lm.generate(chat("How many ships are there?"), max_tokens=24, on_token=pieces.append)
    assert text.strip() and "".join(pieces) == text
    s = lm.last_stats
    assert 0 < s["new_tokens"] <= 24 and s["prompt_tokens"] > 40
    assert 0 < s["prefill_s"] <= s["total_s"]


@needs_llamacpp
def test_ignore_eos_runs_exactly_max_tokens_and_stop_cuts(lm):
    lm.generate(chat("Describe the image."), max_tokens=20, ignore_eos=True)
    assert lm.last_stats["new_tokens"] == 20
    full = lm.generate(chat("Describe the image."), max_tokens=20, ignore_eos=True)
    words = full.split()
    assert len(words) >= 3
    stop = " " + words[2]
    cut = lm.generate(chat("Describe the image."), max_tokens=20, stop=[stop])
    assert cut == full[: full.index(stop)]


@needs_llamacpp
def test_prompt_cache_is_reused_and_changes_nothing(lm):
    """A second question on the same facts evaluates only the new tokens, and its answer is the same as from
    a cold cache (the dropped tail of the previous answer must not leak into the new one)."""
    lm.llm.reset()
    cold = lm.generate(chat("Is there a harbor?"), max_tokens=24)
    assert lm.last_stats["reused_tokens"] == 0
    lm.generate(chat("How many ships are there?"), max_tokens=24)
    warm = lm.generate(chat("Is there a harbor?"), max_tokens=24)
    a, b = lm.prompt_tokens(chat("How many ships are there?")), lm.prompt_tokens(chat("Is there a harbor?"))
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert shared > len(lm.prompt_tokens([{"role": "system", "content": SYSTEM}])) - 5  # the system turn
    assert lm.last_stats["reused_tokens"] == shared
    assert warm == cold
    # the very same prompt again: everything but its last token is reused, the answer is unchanged
    again = lm.generate(chat("Is there a harbor?"), max_tokens=24)
    assert lm.last_stats["reused_tokens"] == lm.last_stats["prompt_tokens"] - 1
    assert again == cold


@needs_llamacpp
def test_context_overflow_is_a_clear_error(lm):
    with pytest.raises(LMError, match="context of .* start a new conversation"):
        lm.generate(chat("Describe the image."), max_tokens=10**6)


def test_engine_setting(monkeypatch):
    monkeypatch.setenv("RSFM_CHAT_ENGINE", "vllm")
    with pytest.raises(LMError, match="RSFM_CHAT_ENGINE must be one of auto, llamacpp, torch"):
        chat_engine()
    monkeypatch.setenv("RSFM_CHAT_ENGINE", " Torch ")
    assert chat_engine() == "torch"
    monkeypatch.delenv("RSFM_CHAT_ENGINE")
    assert chat_engine() == ("llamacpp" if HAS_LLAMACPP else "torch")
    # asking for llama.cpp where it is not installed names the fix
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    monkeypatch.setenv("RSFM_CHAT_ENGINE", "llamacpp")
    with pytest.raises(LMError, match="pip install llama-cpp-python"):
        chat_engine()
    monkeypatch.setenv("RSFM_CHAT_ENGINE", "auto")
    assert chat_engine() == "torch"
