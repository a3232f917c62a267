"""``rsfm-train chat-projector``: train the visual soft-token projector of the chat head (CHAT_DESIGN §6.2
items 4-5, stage A; issue #7).

The image encoder (the backbone of a model package) stays frozen. :class:`backend.chat.visual.VisualProjector`
learns, and with ``--lm-tuning lora`` or ``bias-scale`` so does a small adapter of the LM (SmolLM2-135M-Instruct;
``backend.chat.lm_tuning``), with its own learning rate ``--lm-lr``; the LM's own weights never change. Pooled
encoder inputs are computed once per image and cached (``--cache-dir``).

Instructions are rendered from labels (MMRS-style: one question, one short answer): COCO boxes of NWPU VHR-10
for the first three groups, AID class folders for the fourth:

* ``facts`` group: the chat head's own prompt (``router.SYSTEM_FREE`` with the compact ground-truth fact
  sheet), a question (count, presence, out-of-vocabulary count, describe) and a short answer that copies the
  numbers and cites the fact IDs (``There are 2 airplanes [F3].``). This is the context the soft tokens meet at
  inference.
* ``caption`` group: no facts, only the image; captions and counts rendered from the labels
  (``3 airplanes and 1 ground track field.``). Here the image is the only source of the answer, so this group
  is what forces the projector to carry visual content.
* ``grounding`` group: no facts; "Where are the ships?" answered with the labelled boxes as numbers in the
  text, ``[x0, y0, x1, y1]`` in percent of the image width and height from the top-left corner
  (``2 ships at [12, 40, 18, 47] and [55, 60, 61, 68].``; the :data:`MAX_BOXES` largest when there are more),
  and absent classes answered ``There are no ...``.
* ``scene`` group: no facts; AID scenes (``--scene-data``, 30 classes): "What kind of scene is this?" →
  ``This is a dense residential scene.``, and a yes/no question for the true class and for another one. The
  AID images come from its train split (:class:`training.data.scenes.SceneFolder`, per-class blocks, val and
  test 20 % each); its test split is the evaluation's (``benchmarks/eval_chat_soft.py scene``).

Steps alternate between the groups. Every step takes one image and up to ``--batch`` of its questions: the
prompt part before the soft tokens (system prompt + facts) does not depend on the projector, so it is run once
without gradients and its KV cache is shared by the batch; only the soft tokens, the question and the answer
are back-propagated (about 60-90 tokens instead of 300-500). With LM tuning the prefix does pass through the
adapter (the forward pass is exact), but its keys and values are a stop-gradient: the adapter learns from the
soft-token, question and answer positions only. This keeps a step at about the projector-only cost.

Held-out loss is logged on images ``--val`` (default 441-460), with the true image's tokens and with another
image's tokens (``shuffled``): when both are equal the projector learnt a fixed soft prompt, not the image.
Images from ``--eval-first`` (461) on are the chat evaluation's and are refused.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.chat.facts import plural_class
from backend.chat.lm_tuning import MODES

DATA = Path("/work/shared/data/nwpu_vhr10")
OUT_OF_VOCAB_TRAIN = ["golf course", "solar panel", "greenhouse", "lighthouse", "oil rig", "cemetery"]
COUNT_Q = ["How many {pl} are there?", "How many {pl} can you see?", "Count the {pl} in this image."]
PRESENCE_Q = ["Is there a {c} in this image?", "Are there any {pl}?"]
DESCRIBE_Q = ["Describe this image.", "What is in this image?", "Give a short description of the scene."]
GROUND_Q = ["Where are the {pl}?", "Locate the {pl} in this image.", "Give the bounding boxes of the {pl}."]
SCENE_Q = ["What kind of scene is this?", "Classify this remote sensing image.",
           "What is the scene category of this image?"]
SCENE_YESNO_Q = "Is this {scene}?"
MAX_BOXES = 5  # boxes written per answer: the largest ones (long answers cost training time and LM context)
SCENE_DATA = Path("/work/shared/data/aid")
SCENE_FRACTIONS = {"val_fraction": 0.2, "test_fraction": 0.2}  # AID split of the scene group and its evaluation
GROUPS = ("caption", "facts", "grounding", "scene")


def caption(counts: dict[str, int]) -> str:
    """``{"airplane": 3, "ground_track_field": 1}`` → ``3 airplanes and 1 ground track field``."""
    parts = [f"{n} {plural_class(c, n)}" for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if not parts:
        return "no objects of the known classes"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass
class Sample:
    """One instruction: ``messages`` (system/user) and the answer ``target``; ``group`` is one of :data:`GROUPS`;
    ``about``: the class a grounding or scene question asks about (for evaluation)."""

    image: str
    group: str
    messages: list[dict[str, str]]
    target: str
    about: str = ""


def render_instructions(image: str, counts: dict[str, int], classes: list[str], sheet: Any | None,
                        rng: random.Random) -> list[Sample]:
    """Instructions of one image from its per-class label counts (see the module doc).

    Args:
        image: image key (file stem).
        counts: label counts per class (classes with 0 omitted).
        classes: every class name of the label set.
        sheet: the ground-truth ``FactSheet`` (for the ``facts`` group and its fact IDs); None: captions only.
        rng: question sampler.
    """
    present = sorted(counts)
    absent = [c for c in classes if c not in counts]
    asked = present + rng.sample(absent, min(2, len(absent)))
    out: list[Sample] = []
    # caption group: the image alone
    cap = caption(counts)
    out.append(Sample(image, "caption", [{"role": "user", "content": rng.choice(DESCRIBE_Q)}],
                      f"The image shows {cap}."))
    for c in asked:
        n = counts.get(c, 0)
        q = rng.choice(COUNT_Q).format(pl=plural_class(c))
        ans = f"There {'is' if n == 1 else 'are'} {n} {plural_class(c, n)}." if n else f"There are no {plural_class(c)}."
        out.append(Sample(image, "caption", [{"role": "user", "content": q}], ans))
    for c in ([rng.choice(present)] if present else []) + ([rng.choice(absent)] if absent else []):
        q = rng.choice(PRESENCE_Q).format(c=c.replace("_", " "), pl=plural_class(c))
        out.append(Sample(image, "caption", [{"role": "user", "content": q}], "Yes." if counts.get(c) else "No."))
    if sheet is None:
        return out
    from backend.chat.facts import norm_class
    from backend.chat.router import SYSTEM_FREE

    system = {"role": "system", "content": SYSTEM_FREE.format(facts=sheet.to_prompt_text())}

    def fid(c: str, kind: str) -> str:
        key = norm_class(c)
        for f in sheet.by_kind(kind):
            if (f.classes == [key]) if kind == "count" else (key in f.classes):
                return f" [{f.id}]"
        return ""

    def facts(q: str, a: str) -> None:
        out.append(Sample(image, "facts", [system, {"role": "user", "content": q}], a))

    for c in asked:
        n = counts.get(c, 0)
        q = rng.choice(COUNT_Q).format(pl=plural_class(c))
        if n:
            facts(q, f"There {'is' if n == 1 else 'are'} {n} {plural_class(c, n)}{fid(c, 'count')}.")
        else:
            facts(q, f"No {plural_class(c)} were detected{fid(c, 'absent')}.")
    for c in ([rng.choice(present)] if present else []) + ([rng.choice(absent)] if absent else []):
        q = rng.choice(PRESENCE_Q).format(c=c.replace("_", " "), pl=plural_class(c))
        n = counts.get(c, 0)
        facts(q, f"Yes, there {'is' if n == 1 else 'are'} {n} {plural_class(c, n)}{fid(c, 'count')}." if n else
              f"No, no {c.replace('_', ' ')} was detected{fid(c, 'absent')}.")
    x = rng.choice(OUT_OF_VOCAB_TRAIN)
    facts(rng.choice(COUNT_Q).format(pl=plural_class(x)),
          f"I cannot tell: {plural_class(x)} are not among the classes in the facts.")
    parts = [f"{n} {plural_class(c, n)}{fid(c, 'count')}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    desc = ("The image shows " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])
            + ".") if parts else "No objects of the known classes were detected" + (
        fid(absent[0], "absent") if absent else "") + "."
    facts(rng.choice(DESCRIBE_Q), desc)
    return out


def box_percent(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A pixel box ``(x0, y0, x1, y1)`` in whole percent of the image ``size`` (w, h), clipped to 0-100."""
    w, h = size
    x0, y0, x1, y1 = (min(100, max(0, round(100 * v))) for v in (box[0] / w, box[1] / h, box[2] / w, box[3] / h))
    return x0, y0, x1, y1


def box_text(box: tuple[float, float, float, float], size: tuple[int, int]) -> str:
    """A pixel box as the answers write it: ``[x0, y0, x1, y1]`` in whole percent (:func:`box_percent`)."""
    return "[" + ", ".join(str(v) for v in box_percent(box, size)) + "]"


def grounding_answer(cls: str, boxes: list[tuple[float, float, float, float]], size: tuple[int, int]) -> str:
    """``2 ships at [12, 40, 18, 47] and [55, 60, 61, 68].``: every box (at most the :data:`MAX_BOXES` largest)
    in reading order, top to bottom then left to right; ``There are no ships.`` without boxes."""
    n = len(boxes)
    if not n:
        return f"There are no {plural_class(cls)}."
    kept = sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))[:MAX_BOXES]
    kept.sort(key=lambda b: (round(b[1] / size[1] * 10), b[0]))  # reading order at a tenth of the height
    txt = [box_text(b, size) for b in kept]
    where = txt[0] if len(txt) == 1 else ", ".join(txt[:-1]) + " and " + txt[-1]
    head = f"{n} {plural_class(cls, n)}" + (f", the {len(kept)} largest" if n > len(kept) else "")
    return f"{head} at {where}."


def render_grounding(image: str, objects: list[tuple[str, tuple[float, float, float, float]]], size: tuple[int, int],
                     classes: list[str], rng: random.Random) -> list[Sample]:
    """``grounding`` instructions of one image: every present class and one absent class, boxes in the text.

    Args:
        image: image key.
        objects: ``(class name, pixel box x0 y0 x1 y1)`` of every labelled object.
        size: image width and height in pixels.
        classes: every class name of the label set.
        rng: question sampler.
    """
    by_cls: dict[str, list[tuple[float, float, float, float]]] = {}
    for c, b in objects:
        by_cls.setdefault(c, []).append(b)
    absent = [c for c in classes if c not in by_cls]
    asked = sorted(by_cls) + rng.sample(absent, min(1, len(absent)))
    return [Sample(image, "grounding", [{"role": "user", "content": rng.choice(GROUND_Q).format(pl=plural_class(c))}],
                   grounding_answer(c, by_cls.get(c, []), size), c) for c in asked]


def scene_name(folder: str) -> str:
    """AID folder name as words: ``DenseResidential`` → ``dense residential``."""
    import re

    return " ".join(w.lower() for w in re.findall(r"[A-Z][a-z]*|[a-z]+", folder))


def a_scene(folder: str) -> str:
    """``an airport scene``, ``a beach scene``."""
    name = scene_name(folder)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} scene"


def render_scene(image: str, cls: str, classes: list[str], rng: random.Random) -> list[Sample]:
    """``scene`` instructions of one image of class ``cls`` (of ``classes``, AID folder names): the class
    question, and a yes/no question for the true class and for another class."""
    def ask(q: str, a: str, about: str) -> Sample:
        return Sample(image, "scene", [{"role": "user", "content": q}], a, about)

    other = rng.choice([c for c in classes if c != cls])
    return [ask(rng.choice(SCENE_Q), f"This is {a_scene(cls)}.", cls),
            ask(SCENE_YESNO_Q.format(scene=a_scene(cls)), "Yes.", cls),
            ask(SCENE_YESNO_Q.format(scene=a_scene(other)), "No.", other)]


def scene_images(root: str | Path, split: str, per_class: int) -> list[tuple[str, Path, str]]:
    """``per_class`` AID images of every class, spread evenly over the class's block of ``split``, as
    ``(key, path, class folder)``; keys are ``aid/<Class>/<stem>``."""
    from training.data.scenes import SceneFolder

    ds = SceneFolder(root, split, **SCENE_FRACTIONS)
    out = []
    for label, (name, _) in enumerate(ds.classes):
        paths = [p for p, lbl in ds.items if lbl == label]
        step = max(1, len(paths) // max(1, per_class))
        out += [(f"aid/{name}/{p.stem}", p, name) for p in paths[::step][:per_class]]
    return out


# ------------------------------------------------------------------------------------------------ tensors


@dataclass
class Encoded:
    """A sample as token ids: ``prefix`` (before the soft tokens, shared by the group), ``suffix`` (after them,
    question + answer + end of turn) and ``n_prompt`` (suffix tokens before the answer: not in the loss)."""

    image: str
    group: str
    prefix: tuple[int, ...]
    suffix: list[int]
    n_prompt: int


def encode(lm: Any, s: Sample) -> Encoded:
    """Token ids of ``s`` exactly as :class:`backend.chat.visual.SoftTokenBackend` lays out the prompt."""
    from backend.chat.visual import user_turn_start

    tok = lm.tokenizer
    ids = lm.prompt_ids(s.messages)
    pos = user_turn_start(tok, s.messages, ids)
    row = ids[0].tolist()
    ans = tok(s.target, add_special_tokens=False)["input_ids"] + [lm.end_of_turn]
    return Encoded(s.image, s.group, tuple(row[:pos]), row[pos:] + ans, len(row) - pos)


def batch_loss(lm: Any, projector: torch.nn.Module, feats: torch.Tensor, batch: list[Encoded]) -> torch.Tensor:
    """Mean answer-token cross-entropy of ``batch`` (one shared prefix) with ``feats``: ``N x D`` (one image for
    every row) or ``B x N x D`` (one image per row)."""
    import torch.nn.functional as F

    model = lm.model
    emb = model.get_input_embeddings()
    prefix = torch.tensor([batch[0].prefix])
    b = len(batch)
    past = None
    if prefix.shape[1]:
        with torch.no_grad():
            past = model(input_ids=prefix, use_cache=True).past_key_values
        if b > 1:
            past.batch_repeat_interleave(b)
    width = max(len(e.suffix) for e in batch)
    pad = batch[0].suffix[-1]
    ids = torch.tensor([e.suffix + [pad] * (width - len(e.suffix)) for e in batch])
    labels = torch.full((b, width), -100)
    for i, e in enumerate(batch):  # right padding: causal attention never lets a real token see the padding
        labels[i, e.n_prompt:len(e.suffix)] = torch.tensor(e.suffix[e.n_prompt:])
    soft = projector(feats if feats.ndim == 3 else feats[None].expand(b, -1, -1))
    n = soft.shape[1]
    with torch.no_grad():
        text = emb(ids)
    x = torch.cat([soft.to(text.dtype), text], dim=1)
    logits = model(inputs_embeds=x, past_key_values=past, use_cache=past is not None).logits
    # position t predicts token t+1; the soft tokens themselves are never targets
    pred = logits[:, n:-1].float()
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def group_batches(encoded: list[Encoded]) -> dict[tuple[str, str, tuple[int, ...]], list[Encoded]]:
    """Samples keyed by (image, group, prefix): one key's samples can share a prefix KV cache."""
    out: dict[tuple[str, str, tuple[int, ...]], list[Encoded]] = {}
    for e in encoded:
        out.setdefault((e.image, e.group, e.prefix), []).append(e)
    return out


def evaluate(lm: Any, projector: torch.nn.Module, feats: dict[str, torch.Tensor],
             groups: dict[tuple, list[Encoded]], shuffle: bool = False) -> dict[str, float]:
    """Mean held-out loss per group; ``shuffle``: each image gets the next image's tokens (control)."""
    images = sorted({k[0] for k in groups})
    other = {im: images[(i + 1) % len(images)] for i, im in enumerate(images)}
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for (im, grp, _), batch in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            f = feats[other[im] if shuffle else im]
            sums.setdefault(grp, []).append(float(batch_loss(lm, projector, f, batch)))
    out = {g: sum(v) / len(v) for g, v in sums.items()}
    out["all"] = sum(sum(v) for v in sums.values()) / sum(len(v) for v in sums.values())
    return out


def train_projector(lm: Any, projector: torch.nn.Module, feats: dict[str, torch.Tensor], train: list[Encoded],
                    val: list[Encoded] | None = None, *, steps: int = 300, batch: int = 4, lr: float = 5e-4,
                    weight_decay: float = 0.01, warmup: int = 20, seed: int = 0, max_minutes: float | None = None,
                    eval_every: int = 100, log: Any = None, lm_params: list[torch.nn.Parameter] | None = None,
                    lm_lr: float = 2e-4, groups_cycle: list[str] | None = None,
                    images_per_step: int = 1) -> dict[str, Any]:
    """AdamW on the projector and, if given, the LM adapter's ``lm_params`` (learning rate ``lm_lr``, no weight
    decay); every other LM weight is frozen. Cosine schedule after a linear warm-up; gradient clip 1.0 over all
    trained parameters.

    Step ``i`` trains on group ``groups_cycle[i % len(groups_cycle)]`` (default: every group in turn, sorted).
    ``images_per_step``: rows of up to this many images per step, ``batch`` questions each, for groups whose
    images share one prefix (the image-only groups: no fact sheet); a fact-sheet prefix differs per image, so
    facts steps stay one image each.

    Returns the history: ``train`` (step, group, loss, seconds), ``val`` / ``val_shuffled`` per evaluation,
    ``steps_done``, ``wall_s``.
    """
    tuned = {id(p) for p in lm_params or []}  # the adapter trains, the LM's own weights never
    for p in lm.model.parameters():
        p.requires_grad_(id(p) in tuned)
    rng = random.Random(seed)  # noqa: S311  # nosec B311 (sampling, not crypto)
    torch.manual_seed(seed)
    groups = group_batches(train)
    by_group: dict[str, list[tuple]] = {}
    for k in groups:
        by_group.setdefault(k[1], []).append(k)
    names = list(groups_cycle or sorted(by_group))
    unknown = sorted(set(names) - set(by_group))
    if unknown:
        raise ValueError(f"no training instructions of group(s) {unknown}; groups are {sorted(by_group)}")
    by_prefix: dict[tuple, list[tuple]] = {}  # (group, prefix) -> image keys sharing that prefix
    for k in groups:
        by_prefix.setdefault((k[1], k[2]), []).append(k)
    val_groups = group_batches(val) if val else None
    proj_params = [p for p in projector.parameters() if p.requires_grad]
    adapter = list(lm_params or [])
    params = proj_params + adapter
    opt = torch.optim.AdamW([{"params": proj_params}, {"params": adapter, "lr": lm_lr, "weight_decay": 0.0}],
                            lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) /
                                                                               max(1, steps - warmup))))
    hist: dict[str, Any] = {"train": [], "val": [], "val_shuffled": []}

    def say(msg: str) -> None:
        if log is not None:
            print(msg, file=log, flush=True)

    def run_val(step: int) -> None:
        if not val_groups:
            return
        projector.eval()
        v = evaluate(lm, projector, feats, val_groups)
        vs = evaluate(lm, projector, feats, val_groups, shuffle=True)
        projector.train()
        hist["val"].append({"step": step, **v})
        hist["val_shuffled"].append({"step": step, **vs})
        say(f"val step {step}: {json.dumps(v)} shuffled-image {json.dumps(vs)}")

    t0 = time.perf_counter()
    run_val(0)
    projector.train()
    done = 0
    for step in range(steps):
        if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            say(f"time budget of {max_minutes} min reached after {step} steps")
            break
        grp = names[step % len(names)]
        key = rng.choice(by_group[grp])
        keys = [key]
        if images_per_step > 1:
            mates = [k for k in by_prefix[(grp, key[2])] if k != key]
            keys += rng.sample(mates, min(images_per_step - 1, len(mates)))
        chosen = [e for k in keys for e in rng.sample(groups[k], min(batch, len(groups[k])))]
        f = feats[key[0]] if len(keys) == 1 else torch.stack([feats[e.image] for e in chosen])
        loss = batch_loss(lm, projector, f, chosen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        done = step + 1
        hist["train"].append({"step": done, "group": grp, "loss": float(loss), "s": time.perf_counter() - t0})
        if done % 10 == 0:
            recent = hist["train"][-20:]
            say(f"step {done}/{steps} loss(last 20) {sum(r['loss'] for r in recent) / len(recent):.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {time.perf_counter() - t0:.0f}s")
        if eval_every and done % eval_every == 0 and done < steps:
            run_val(done)
    run_val(done)
    projector.eval()
    hist["steps_done"] = done
    hist["wall_s"] = time.perf_counter() - t0
    return hist


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``chat-projector``'s options on ``p``."""
    p.add_argument("--data", default=str(DATA), help="NWPU VHR-10 folder (annotations.json, images/)")
    p.add_argument("--out", required=True, help="projector directory to write")
    p.add_argument("--encoder", default="rsfm-detection-nwpu-efflite0",
                   help="model package whose backbone gives the features (name under resources/models or path), "
                        "or the folder of an MTP pretraining run (encoder.json + encoder.safetensors)")
    p.add_argument("--train", type=int, nargs=2, default=[1, 440], metavar=("FIRST", "LAST"),
                   help="training image numbers (NNN.jpg)")
    p.add_argument("--val", type=int, nargs=2, default=[441, 460], metavar=("FIRST", "LAST"),
                   help="held-out image numbers for the logged validation loss")
    p.add_argument("--eval-first", type=int, default=461,
                   help="images from this number on belong to the chat evaluation and are refused")
    p.add_argument("--grid", type=int, default=4)
    p.add_argument("--mlp-dim", type=int, default=1024)
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4, help="questions per step (all of one image)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--groups", nargs="+", choices=GROUPS, default=None,
                   help="instruction groups of consecutive steps, cycled (default: every group once, sorted); e.g. "
                        "caption caption facts grounding scene trains the image-only captions twice as often")
    p.add_argument("--scene-data", default=str(SCENE_DATA),
                   help="AID class folders for the scene group (its train split; val for the logged loss)")
    p.add_argument("--scene-train-per-class", type=int, default=10,
                   help="AID training images per class (0: no scene group)")
    p.add_argument("--scene-val-per-class", type=int, default=1, help="AID validation images per class")
    p.add_argument("--images-per-step", type=int, default=1,
                   help="image-only steps (caption, grounding, scene) take --batch questions from each of this "
                        "many images (one shared prefix)")
    p.add_argument("--lm-tuning", choices=MODES, default="none",
                   help="also tune the LM: LoRA on --lora-targets, or a scale and shift after every norm layer")
    p.add_argument("--lm-lr", type=float, default=2e-4, help="learning rate of the LM adapter")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-targets", nargs="+", default=["q_proj", "v_proj"],
                   help="linear layers (last part of the module name) that get LoRA")
    p.add_argument("--cache-dir", default="/tmp/chat_soft",  # noqa: S108  # nosec B108 (a cache, not a secret)
                   help="where pooled encoder features are cached")


def _features(args: argparse.Namespace, files: dict[str, Path], ext: Any) -> dict[str, torch.Tensor]:
    """Pooled encoder features per image key (``ext``: the ``FeatureExtractor``), computed once and cached as
    safetensors."""
    from safetensors.torch import load_file, save_file

    cache = Path(args.cache_dir) / f"features_{Path(args.encoder).name}_g{args.grid}_m{args.max_side}.safetensors"
    feats: dict[str, torch.Tensor] = load_file(str(cache)) if cache.is_file() else {}
    todo = [k for k in files if k not in feats]
    if todo:
        t0 = time.perf_counter()
        for i, k in enumerate(todo):
            feats[k] = ext(files[k]).contiguous()
            if (i + 1) % 50 == 0:
                print(f"features {i + 1}/{len(todo)} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file(feats, str(cache))
    return {k: feats[k] for k in files}


def run(args: argparse.Namespace) -> int:
    from backend.chat.facts import build_fact_sheet, coco_class_counts, read_coco_objects
    from backend.chat.lm import BuiltinBackend
    from backend.chat.lm_tuning import LMTuning, attach
    from backend.chat.visual import FeatureExtractor, ProjectorConfig, VisualProjector, save_projector

    for name, (a, b) in (("--train", args.train), ("--val", args.val)):
        if b >= args.eval_first:
            raise SystemExit(f"{name} {a}-{b} reaches image {args.eval_first}+, which the chat evaluation uses; "
                             f"keep training and validation images below {args.eval_first}")
    data = Path(args.data)
    ann = json.loads((data / "annotations.json").read_text())
    classes = [c["name"] for c in ann["categories"]]
    by_name = {im["file_name"]: im["id"] for im in ann["images"]}
    split = {"train": range(args.train[0], args.train[1] + 1), "val": range(args.val[0], args.val[1] + 1)}
    files = {f"{n:03d}": data / "images" / f"{n:03d}.jpg" for r in split.values() for n in r
             if f"{n:03d}.jpg" in by_name}
    scenes = {part: scene_images(args.scene_data, part, k) if k else []
              for part, k in (("train", args.scene_train_per_class), ("val", args.scene_val_per_class))}
    scene_classes = sorted({c for part in scenes.values() for _, _, c in part})
    files.update({key: path for part in scenes.values() for key, path, _ in part})
    t0 = time.perf_counter()
    ext = FeatureExtractor.from_package(args.encoder, args.grid, args.max_side)
    feats = _features(args, files, ext)
    feat_s = time.perf_counter() - t0
    print(f"features of {len(feats)} images ready in {feat_s:.0f}s", file=sys.stderr, flush=True)
    lm = BuiltinBackend.load()
    if not hasattr(lm, "model"):
        raise SystemExit("training the projector needs the torch engine of the built-in LM: set RSFM_CHAT_ENGINE=torch")
    per_image = coco_class_counts(ann)
    images = {im["id"]: im for im in ann["images"]}
    rng = random.Random(args.seed)  # noqa: S311  # nosec B311 (sampling, not crypto)
    enc: dict[str, list[Encoded]] = {"train": [], "val": []}
    for part, r in split.items():
        for n in r:
            key = f"{n:03d}"
            if key not in files:
                continue
            iid = by_name[f"{key}.jpg"]
            counts = dict(per_image.get(iid, {}))
            objects = read_coco_objects(ann, iid)
            sheet = build_fact_sheet(str(files[key]), objects=objects, object_classes=classes, score_threshold=0.0)
            meta = images[iid]
            boxes = [(o.cls, tuple(o.geometry.bounds)) for o in objects]
            enc[part] += [encode(lm, s) for s in render_instructions(key, counts, classes, sheet, rng)
                          + render_grounding(key, boxes, (meta["width"], meta["height"]), classes, rng)]
        enc[part] += [encode(lm, s) for key, _, c in scenes[part] for s in render_scene(key, c, scene_classes, rng)]
    print(f"instructions: {len(enc['train'])} train, {len(enc['val'])} val", file=sys.stderr, flush=True)
    hidden = int(lm.model.get_input_embeddings().weight.shape[1])
    in_ch = [int(c) for c in ext.encoder.out_channels]
    cfg = ProjectorConfig(in_channels=in_ch, hidden_size=hidden, grid=args.grid, mlp_dim=args.mlp_dim,
                          encoder=args.encoder, max_side=args.max_side)
    tuning = LMTuning(args.lm_tuning, args.lora_rank, args.lora_alpha, list(args.lora_targets))
    cfg.lm_tuning = tuning.to_dict()
    projector = VisualProjector(cfg)
    emb_std = float(lm.model.get_input_embeddings().weight.float().std())
    projector.match_scale(emb_std)
    torch.manual_seed(args.seed)  # the LoRA A init
    lm_params = attach(lm.model, tuning)
    print(f"LM tuning {tuning.mode}: {sum(p.numel() for p in lm_params):,} adapter parameters", file=sys.stderr)
    hist = train_projector(lm, projector, feats, enc["train"], enc["val"], steps=args.steps, batch=args.batch,
                           lr=args.lr, seed=args.seed, max_minutes=args.max_minutes, eval_every=args.eval_every,
                           log=sys.stderr, lm_params=lm_params, lm_lr=args.lm_lr, groups_cycle=args.groups,
                           images_per_step=args.images_per_step)
    cfg.training = {"data": str(data), "train_images": list(args.train), "val_images": list(args.val),
                    "scene_data": str(args.scene_data) if scenes["train"] else None,
                    "scene_images": {part: len(v) for part, v in scenes.items()},
                    "instructions": {"train": len(enc["train"]), "val": len(enc["val"])}, "seed": args.seed,
                    "steps": hist["steps_done"], "batch": args.batch, "lr": args.lr, "lm_dtype": lm.dtype,
                    "lm_lr": args.lm_lr if lm_params else None, "groups": args.groups or sorted({e.group for e in enc["train"]}),
                    "images_per_step": args.images_per_step,
                    "lm_adapter_parameters": sum(p.numel() for p in lm_params),
                    "feature_s": round(feat_s, 1), "train_s": round(hist["wall_s"], 1),
                    "val": hist["val"], "val_shuffled": hist["val_shuffled"],
                    "command": " ".join(sys.argv)}
    out = save_projector(args.out, projector, lm.model)
    (out / "train_log.json").write_text(json.dumps(hist, indent=1) + "\n")
    print(f"projector written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from training.cli import main

    raise SystemExit(main(["chat-projector", *sys.argv[1:]]))
