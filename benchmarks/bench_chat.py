"""Chat head latency on this machine: "fact sheet + 60 tokens" in free mode (issue #8, CHAT_DESIGN §6.5 F).

Input: the chat test fixture (tests/chat/chat_fixtures.py: 200 x 100 px raster, land cover, 6 boxes, 14 facts).

Measures

* fact-sheet build time; its size in SmolLM2 tokens, full (``to_text``, what the user sees) and compact
  (``to_prompt_text``, what the LM gets);
* template answer latency (no LM);
* builtin SmolLM2-135M on each ``--engines``: llama.cpp (the Q4_1 GGUF as it is) for every ``--threads``, and
  transformers + gguf on torch for every ``--dtypes`` x ``--threads``; load time and RSS; per configuration,
  ``--repeats`` runs (each from a cold prompt cache) of

  - **fixed**: the free-mode prompt (system + compact fact sheet + "Describe this image.") and exactly
    ``--max-tokens`` new tokens (EOS ignored): time to first token (= prefill), decode tokens/s, end to end;
  - **answer**: ``answer_question(..., mode="free")``, i.e. the real answer (stops at EOS) plus verification:
    time to first token, end to end, tokens, verified or not;
  - **follow-up**: a second question on the same sheet right after the answer (60 tokens): llama.cpp reuses
    the KV cache of the shared prompt prefix, torch recomputes it;

  with the 1-minute load average before each run. Medians per configuration.
* per configuration, ``--repeats`` prefills of the full-sheet prompt and of the compact one, interleaved
  (what the compact prompt saves);
* greedy answers to a few questions in every dtype (do bf16 answers stay sensible?).

``--busy N`` starts N pure-Python busy loops for the LM part (simulated load on the shared cores; they are
stopped, by PID, at the end).

Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_chat.py --repeats 3 --out docs/bench/chat.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "chat"))
sys.path.insert(0, str(REPO / "benchmarks"))

QUESTION = "Describe this image."
COMPARE_QUESTIONS = ["Describe this image.", "What is notable about the ships?", "How many vehicles are there?"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def start_busy(n: int) -> list[subprocess.Popen]:
    """``n`` single-threaded busy loops (each keeps one core busy until stopped)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "int8"],
                    help="fp32 runs first: the GGUF is dequantised to fp32 and bf16 is a one-way cast")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--engines", nargs="+", default=["llamacpp", "torch"], choices=["llamacpp", "torch"],
                    help="llamacpp: the GGUF as it is (Q4_1), dtypes do not apply; torch: every --dtypes")
    ap.add_argument("--busy", type=int, default=0, help="busy-loop processes running during the LM part")
    ap.add_argument("--no-lm", action="store_true", help="only facts and templates")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import torch
    from chat_fixtures import make_fixture
    from common import machine

    from backend.chat.facts import PerceptionOutput, build_fact_sheet
    from backend.chat.router import SYSTEM_FREE, answer_question
    from backend.runtimes import cpu_flags

    res: dict = {"machine": {"cpus": os.cpu_count(), "cpu": machine()["cpu"], "cpu_flags_bf16_amx": sorted(
                             cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"}),
                             "python": platform.python_version(), "torch": torch.__version__,
                             "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                             "load_avg_at_start": os.getloadavg()},
                 "repeats": args.repeats, "max_tokens": args.max_tokens, "busy_processes": args.busy}
    fx = make_fixture(Path(tempfile.mkdtemp()) / "fx")
    outs = [PerceptionOutput(fx["landcover"]), PerceptionOutput(fx["detections"])]
    times = []
    for _ in range(max(5, args.repeats)):
        t = time.perf_counter()
        sheet = build_fact_sheet(fx["raster"], outs)
        times.append(time.perf_counter() - t)
    res["facts"] = {"build_s_median": statistics.median(times), "facts": len(sheet.facts),
                    "words_full": len(sheet.to_text().split()), "words_compact": len(sheet.to_prompt_text().split())}
    times = []
    for _ in range(20):
        t = time.perf_counter()
        answer_question("How many ships are there?", sheet)
        times.append(time.perf_counter() - t)
    res["template_answer_s_median"] = statistics.median(times)
    res["rss_mb_before_lm"] = rss_mb()
    if args.no_lm:
        print(json.dumps(res, indent=1))
        return 0

    from backend.chat.lm import BuiltinBackend, _LlamaCppLM, _to_dtype, cpu_has_native_bf16, smollm2_gguf_path

    def messages(full: bool = False, question: str = QUESTION) -> list[dict[str, str]]:
        facts = sheet.to_text() if full else sheet.to_prompt_text()
        return [{"role": "system", "content": SYSTEM_FREE.format(facts=facts)}, {"role": "user", "content": question}]

    def measure(lm, dtype: str, nt: int, cold) -> dict:
        """Medians of --repeats runs of one configuration; ``cold()`` drops any reusable prompt cache."""
        cold()
        lm.generate(messages(), max_tokens=4)  # warm-up (oneDNN primitive cache, allocator)
        cfg: dict = {"dtype": dtype, "threads": nt, "decode_threads": getattr(lm, "decode_threads", nt), "fixed": [],
                     "answer": [], "follow_up": []}
        for _ in range(args.repeats):
            cold()
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            lm.generate(messages(), max_tokens=args.max_tokens, ignore_eos=True)
            e2e = time.perf_counter() - t0
            s = lm.last_stats
            cfg["fixed"].append({"load1": load, "ttft_s": s["prefill_s"], "new_tokens": s["new_tokens"],
                                 "decode_tok_s": (s["new_tokens"] - 1) / (s["total_s"] - s["prefill_s"]),
                                 "e2e_s": e2e})
            cold()
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            a = answer_question(QUESTION, sheet, backend=lm, mode="free", max_tokens=args.max_tokens,
                                on_token=lambda _p: None)
            e2e = time.perf_counter() - t0
            # first_token: from the call to the first streamed character (router timings)
            cfg["answer"].append({"load1": load, "ttft_s": a.timings_s.get("first_token"), "e2e_s": e2e,
                                  "new_tokens": lm.last_stats["new_tokens"], "mode": a.mode,
                                  "verified_ok": a.verification["ok"], "raw": a.raw_lm_text})
            # a second question about the same sheet right after the first (an engine that keeps the
            # prompt's KV cache reads only the new question)
            t0 = time.perf_counter()
            lm.generate(messages(question=COMPARE_QUESTIONS[1]), max_tokens=args.max_tokens, ignore_eos=True)
            cfg["follow_up"].append({"e2e_s": time.perf_counter() - t0, "ttft_s": lm.last_stats["prefill_s"],
                                     "reused_tokens": lm.last_stats.get("reused_tokens", 0)})
        # prefill only, full vs compact sheet, interleaved (what the compact prompt saves)
        pre: dict[str, list[float]] = {"full": [], "compact": []}
        for _ in range(args.repeats):
            for kind in ("full", "compact"):
                cold()
                lm.generate(messages(kind == "full"), max_tokens=1, ignore_eos=True)
                pre[kind].append(lm.last_stats["prefill_s"])
        cfg["median"] = {
            "fixed_ttft_s": med([x["ttft_s"] for x in cfg["fixed"]]),
            "fixed_decode_tok_s": med([x["decode_tok_s"] for x in cfg["fixed"]]),
            "fixed_e2e_s": med([x["e2e_s"] for x in cfg["fixed"]]),
            "answer_ttft_s": med([x["ttft_s"] for x in cfg["answer"]]),
            "answer_e2e_s": med([x["e2e_s"] for x in cfg["answer"]]),
            "answer_tokens": med([x["new_tokens"] for x in cfg["answer"]]),
            "follow_up_60_tok_e2e_s": med([x["e2e_s"] for x in cfg["follow_up"]]),
            "follow_up_ttft_s": med([x["ttft_s"] for x in cfg["follow_up"]]),
            "prefill_full_sheet_s": med(pre["full"]), "prefill_compact_sheet_s": med(pre["compact"]),
            "load1": med([x["load1"] for x in cfg["fixed"] + cfg["answer"]]),
            "load1_max": max(x["load1"] for x in cfg["fixed"] + cfg["answer"])}
        print(json.dumps({"dtype": dtype, "threads": nt, **cfg["median"]}), flush=True)
        return cfg

    res["builtin"] = {"gguf_mb": smollm2_gguf_path().stat().st_size / 2**20, "configs": [], "greedy": {},
                      "cpu_has_native_bf16": cpu_has_native_bf16()}
    busy = start_busy(args.busy)
    try:
        if "llamacpp" in args.engines:
            import llama_cpp

            res["builtin"]["llama_cpp_python"] = llama_cpp.__version__
            for nt in args.threads:
                rss0 = rss_mb()
                t = time.perf_counter()
                lm = _LlamaCppLM(smollm2_gguf_path(), nt)
                res["builtin"].setdefault("llamacpp_load_s", time.perf_counter() - t)
                res["builtin"].setdefault("llamacpp_rss_mb_added", rss_mb() - rss0)
                res["builtin"].setdefault("prompt_tokens_compact_llamacpp", len(lm.prompt_tokens(messages())))
                res["builtin"]["configs"].append(measure(lm, "llama.cpp Q4_1", nt, lm.llm.reset))
                res["builtin"]["greedy"]["llama.cpp Q4_1"] = {
                    q: lm.generate(messages(question=q), max_tokens=args.max_tokens) for q in COMPARE_QUESTIONS}
                del lm
        if "torch" in args.engines:
            import transformers

            os.environ["RSFM_CHAT_DTYPE"] = "fp32"  # load in fp32; the loop below casts to bf16 when asked
            t = time.perf_counter()
            lm = BuiltinBackend.load("torch")
            tok = lm.tokenizer
            res["builtin"].update({
                "load_s": time.perf_counter() - t, "rss_mb_after_load": rss_mb(),
                "transformers": transformers.__version__,
                "fact_sheet_tokens_full": len(tok(sheet.to_text())["input_ids"]),
                "fact_sheet_tokens_compact": len(tok(sheet.to_prompt_text())["input_ids"]),
                "prompt_tokens_full": int(lm.prompt_ids(messages(True)).shape[1]),
                "prompt_tokens_compact": int(lm.prompt_ids(messages()).shape[1])})
            base = lm.model  # fp32/bf16 switch in place; int8 is a quantised copy (it cannot be converted back)
            for dtype in args.dtypes:
                lm.model = _to_dtype(copy.deepcopy(base), "int8") if dtype == "int8" else base.to(
                    torch.bfloat16 if dtype == "bf16" else torch.float32)
                lm.dtype = dtype
                for nt in args.threads:
                    os.environ["RSFM_CHAT_THREADS"] = str(nt)
                    res["builtin"]["configs"].append(measure(lm, dtype, nt, lambda: None))
                os.environ["RSFM_CHAT_THREADS"] = str(max(args.threads))
                res["builtin"]["greedy"][dtype] = {q: lm.generate(messages(question=q), max_tokens=args.max_tokens)
                                                   for q in COMPARE_QUESTIONS}
    finally:
        stop_busy(busy)
    res["builtin"]["peak_rss_mb"] = peak_rss_mb()
    res["machine"]["load_avg_at_end"] = os.getloadavg()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res["builtin"]["greedy"], indent=1))
    print(markdown_table(res))
    return 0


def markdown_table(res: dict) -> str:
    """The per-configuration medians as a Markdown table (for docs/bench/chat.md)."""
    rows = ["| engine / dtype | threads | fixed 60 tok: time to first token | decode tok/s | end to end | real answer: "
            "tokens | time to first token | end to end | follow-up question, 60 tok | prefill, full / compact sheet "
            "| load avg (1 min), median / max |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in res["builtin"]["configs"]:
        m = c["median"]
        dec = c.get("decode_threads", c["threads"])
        thr = f"{c['threads']} (decode {dec})" if dec != c["threads"] else str(c["threads"])
        rows.append(f"| {c['dtype']} | {thr} | {m['fixed_ttft_s']:.2f} s | {m['fixed_decode_tok_s']:.1f} | "
                    f"**{m['fixed_e2e_s']:.2f} s** | {m['answer_tokens']:.0f} | {m['answer_ttft_s']:.2f} s | "
                    f"{m['answer_e2e_s']:.2f} s | {m.get('follow_up_60_tok_e2e_s') or float('nan'):.2f} s | "
                    f"{m.get('prefill_full_sheet_s') or float('nan'):.2f} / "
                    f"{m.get('prefill_compact_sheet_s') or float('nan'):.2f} s | {m['load1']:.1f} / {m['load1_max']:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
