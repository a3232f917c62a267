"""LoRA and bias/scale adapters of the chat LM (backend/chat/lm_tuning.py) on a tiny random Llama: identity at
init, only adapter weights train, exact save/load, a copy that leaves the shared LM alone, and clear errors."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from backend.chat.lm import LMError
from backend.chat.lm_tuning import (
    ADAPTER_FILE,
    LMTuning,
    LoRALinear,
    ScaleShift,
    adapted_copy,
    adapter_state,
    attach,
    load_adapter_state,
    save_adapter,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from tiny_lm import tiny_lm as make_tiny_lm  # noqa: E402

pytestmark = pytest.mark.slow  # importing transformers

WORDS = ["ships", "water", "three", "how", "many", "yes", "no", "."]
MSGS = [{"role": "system", "content": "the water"}, {"role": "user", "content": "how many ships"}]


def tiny():
    return make_tiny_lm(WORDS, initializer_range=0.5)


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def perturb(model) -> None:
    torch.manual_seed(7)
    with torch.no_grad():
        for p in (p for p in model.parameters() if p.requires_grad):
            p.normal_(0, 0.3)


@pytest.mark.parametrize(("mode", "wrapper", "count"), [("lora", LoRALinear, 4), ("bias-scale", ScaleShift, 5)])
def test_attach_is_identity_then_trains_only_the_adapter(mode, wrapper, count):
    lm = tiny()
    ids = lm.prompt_ids(MSGS)
    before = logits(lm.model, ids)
    base = {k: v.clone() for k, v in lm.model.state_dict().items()}
    params = attach(lm.model, LMTuning(mode, rank=2, alpha=4))
    # 2 layers: q_proj + v_proj each (LoRA); 2 norms per layer + the final norm (bias-scale)
    assert sum(isinstance(m, wrapper) for m in lm.model.modules()) == count
    assert params and all(p.requires_grad and p.dtype == torch.float32 for p in params)
    assert sum(p.requires_grad for p in lm.model.parameters()) == len(params)
    assert torch.allclose(logits(lm.model, ids), before, atol=1e-6)  # B = 0 / scale = shift = 0
    # a few steps on one answer: the loss falls and only adapter weights move
    opt = torch.optim.AdamW(params, lr=5e-2)
    target = torch.tensor([lm.tokenizer.convert_tokens_to_ids("three")])
    losses = []
    for _ in range(20):
        out = lm.model(input_ids=ids).logits[0, -1:]
        loss = torch.nn.functional.cross_entropy(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    after = {k.replace(".base.", "."): v for k, v in lm.model.state_dict().items()}  # wrapped weights sit in .base
    for k, v in base.items():
        assert torch.equal(after[k], v), k


def test_adapted_copy_round_trip_and_leaves_the_shared_lm(tmp_path):
    lm = tiny()
    ids = lm.prompt_ids(MSGS)
    plain = logits(lm.model, ids)
    trained = copy.deepcopy(lm.model)
    tuning = LMTuning("lora", rank=2, alpha=4)
    attach(trained, tuning)
    perturb(trained)
    want = logits(trained, ids)
    assert not torch.allclose(want, plain, atol=1e-3)
    path = save_adapter(tmp_path, trained)
    assert path.name == ADAPTER_FILE and set(adapter_state(trained)) == {
        f"model.layers.{i}.self_attn.{m}.{w}" for i in range(2) for m in ("q_proj", "v_proj")
        for w in ("lora_a", "lora_b")}
    other = adapted_copy(lm, tuning, tmp_path)
    assert other is not lm and other.tokenizer is lm.tokenizer
    assert torch.equal(logits(other.model, ids), want)
    assert torch.equal(logits(lm.model, ids), plain)  # the shared LM is untouched
    assert not any(isinstance(m, LoRALinear) for m in lm.model.modules())
    out = other.generate(MSGS, max_tokens=3)  # greedy decoding with the KV cache runs through the wrappers
    assert out.split() and all(w in WORDS + ["the", "user", "system", "assistant", "<|im_start|>"] for w in out.split())
    assert adapted_copy(lm, LMTuning("none"), tmp_path) is lm


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(LMError, match="unknown LM tuning mode 'prefix'"):
        LMTuning("prefix")
    lm = tiny()
    with pytest.raises(LMError, match="no layer of the LM fits"):
        attach(copy.deepcopy(lm.model), LMTuning("lora", targets=["c_attn"]))
    once = copy.deepcopy(lm.model)
    attach(once, LMTuning("lora", rank=2))
    with pytest.raises(LMError, match="already carries an adapter"):
        attach(once, LMTuning("lora", rank=2))
    # an adapter of another rank / mode does not load silently
    state = adapter_state(once)
    other = copy.deepcopy(lm.model)
    attach(other, LMTuning("lora", rank=3))
    with pytest.raises(LMError, match="wrong shape"):
        load_adapter_state(other, state)
    bs = copy.deepcopy(lm.model)
    attach(bs, LMTuning("bias-scale"))
    with pytest.raises(LMError, match="missing"):
        load_adapter_state(bs, state)
    with pytest.raises(LMError, match="cannot read the LM adapter"):
        adapted_copy(lm, LMTuning("lora", rank=2), tmp_path / "nowhere")
