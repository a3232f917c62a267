"""Chat head latency and memory on this machine (CHAT_DESIGN §6.5 F).

Measures, on the chat test fixture (tests/chat/chat_fixtures.py: 200 x 100 px raster, land cover, 6 boxes):

* fact-sheet build time and size (words / LM tokens);
* template answer latency (no LM);
* builtin SmolLM2-135M (transformers + gguf, fp32): load time, RSS after load and peak RSS, prompt tokens,
  time to first token, decode tokens/s, end-to-end per question, for ``free`` and ``phrase`` modes.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_chat.py --repeats 3 --out docs/bench/chat.json

Medians over ``--repeats`` runs are reported (the VM is noisy and shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "chat"))

QUESTIONS = [
    ("free", "Describe this image."),
    ("free", "What is notable about the ships?"),
    ("phrase", "How many ships are there?"),
    ("phrase", "What share of the image is water?"),
]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--no-lm", action="store_true", help="only facts and templates")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import torch
    from chat_fixtures import make_fixture

    from backend.chat.facts import PerceptionOutput, build_fact_sheet
    from backend.chat.router import answer_question

    res: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "python": platform.python_version(), "torch": torch.__version__,
                             "load_avg_at_start": os.getloadavg()}, "repeats": args.repeats}
    fx = make_fixture(Path(tempfile.mkdtemp()) / "fx")
    outs = [PerceptionOutput(fx["landcover"]), PerceptionOutput(fx["detections"])]
    times = []
    for _ in range(max(5, args.repeats)):
        t = time.perf_counter()
        sheet = build_fact_sheet(fx["raster"], outs)
        times.append(time.perf_counter() - t)
    res["facts"] = {"build_s_median": statistics.median(times), "facts": len(sheet.facts),
                    "words": len(sheet.to_text().split())}
    times = []
    for _ in range(20):
        t = time.perf_counter()
        answer_question("How many ships are there?", sheet)
        times.append(time.perf_counter() - t)
    res["template_answer_s_median"] = statistics.median(times)
    res["rss_mb_before_lm"] = rss_mb()
    if not args.no_lm:
        import transformers

        from backend.chat.lm import BuiltinBackend, smollm2_gguf_path

        t = time.perf_counter()
        lm = BuiltinBackend()
        load_s = time.perf_counter() - t
        tok = lm._lm.tokenizer
        res["builtin"] = {"load_s": load_s, "rss_mb_after_load": rss_mb(),
                          "gguf_mb": smollm2_gguf_path().stat().st_size / 2**20,
                          "transformers": transformers.__version__,
                          "fact_sheet_tokens": len(tok(sheet.to_text())["input_ids"]), "runs": []}
        lm.generate([{"role": "user", "content": "hi"}], max_tokens=4)  # warm-up
        for mode, q in QUESTIONS:
            for r in range(args.repeats):
                pieces: list[str] = []
                t0 = time.perf_counter()
                a = answer_question(q, sheet, backend=lm, mode=mode, max_tokens=args.max_tokens,
                                    on_token=pieces.append)
                e2e = time.perf_counter() - t0
                n_new = len(tok(a.raw_lm_text or "")["input_ids"])
                gen = a.timings_s.get("generate", e2e)
                ttft = a.timings_s.get("first_token", gen)
                run = {"mode": mode, "question": q, "repeat": r, "ttft_s": ttft, "generate_s": gen,
                       "new_tokens": n_new, "decode_tok_s": (n_new - 1) / max(1e-6, gen - ttft) if n_new > 1 else None,
                       "e2e_s": e2e, "verified_ok": a.verification["ok"], "answer_mode": a.mode,
                       "answer": a.text, "raw": a.raw_lm_text}
                res["builtin"]["runs"].append(run)
                print(json.dumps({k: v for k, v in run.items() if k not in ("answer", "raw")}), flush=True)
        res["builtin"]["peak_rss_mb"] = peak_rss_mb()
        for mode in ("free", "phrase"):
            runs = [x for x in res["builtin"]["runs"] if x["mode"] == mode]
            res["builtin"][f"{mode}_median"] = {
                k: statistics.median([x[k] for x in runs if x[k] is not None])
                for k in ("ttft_s", "decode_tok_s", "e2e_s", "new_tokens")}
    res["machine"]["load_avg_at_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in res.items() if k != "builtin"}, indent=1))
    if "builtin" in res:
        print(json.dumps({k: v for k, v in res["builtin"].items() if k != "runs"}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
