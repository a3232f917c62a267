"""Load test of the backend on loopback: several clients submitting jobs at once, fairness, and leaks.

Starts the real backend (``python -m backend serve``) as a subprocess with the fixture segmentation package,
then

1. **fairness**: ``--clients`` clients each submit ``--jobs-per-client`` jobs at the same time (the bounded
   queue holds them all) and poll them; reports each client's mean and last completion time;
2. **leaks**: ``--leak-jobs`` small jobs one after another from 3 clients, sampling the backend process's
   thread count, open file descriptors and RSS (from ``/proc/<pid>``) every 10 jobs.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_load.py --clients 4 --jobs-per-client 4 --leak-jobs 100

Writes ``docs/bench/load.md`` and ``docs/bench/load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
import make_fixtures as mf  # noqa: E402
from common import ROOT, SCRATCH, machine  # noqa: E402


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body=None):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def run_job(self, body: dict) -> dict:
        status, job = self.call("POST", "/api/v1/jobs", body)
        if status != 202:
            raise RuntimeError(f"submit failed: {status} {job}")
        while True:
            status, job = self.call("GET", f"/api/v1/jobs/{job['id']}")
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.02)


def proc_stats(pid: int) -> dict[str, int]:
    """Threads, open fds and RSS (KiB) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    vals = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            vals[key] = rest.split()[0]
    return {"threads": int(vals["Threads"]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "rss_kib": int(vals["VmRSS"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--jobs-per-client", type=int, default=4)
    ap.add_argument("--leak-jobs", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "load.md"))
    args = ap.parse_args(argv)

    work = SCRATCH / "load"
    models = work / "models"
    if not (models / "seg" / "config.json").is_file():
        mf.build_fixture_package("semantic_segmentation", models / "seg")
    big = mf.write_fixture_raster(work / "r256.tif", width=256, height=256)
    small = mf.write_fixture_raster(work / "r32.tif", width=32, height=32)
    token = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSFM_")}
    env.update(RSFM_TOKEN=token, RSFM_MODELS_PATH=str(models), RSFM_WORKERS=str(args.workers), RSFM_THREADS="1",
               RSFM_QUEUE_SIZE=str(max(16, args.clients * args.jobs_per_client)), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", "0", "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, env=env, cwd=str(ROOT))
    ready = json.loads(proc.stdout.readline())
    url = ready["url"]
    seg = mf.fixture_name("semantic_segmentation")
    try:
        c = Client(url, token)
        body = {"task": "semantic_segmentation", "model": seg, "inputs": {"raster": str(big)},
                "output_dir": str(work / "warm"), "options": {"vectorize": False}}
        c.run_job(body)  # warm-up: model load

        # 1. fairness: all clients at once
        t0 = time.perf_counter()
        barrier = threading.Barrier(args.clients)

        def client(i: int) -> list[float]:
            cl = Client(url, token)
            barrier.wait()
            ids = []
            for j in range(args.jobs_per_client):
                b = dict(body, output_dir=str(work / f"c{i}" / str(j)))
                status, job = cl.call("POST", "/api/v1/jobs", b)
                assert status == 202, job
                ids.append(job["id"])
            done = []
            for jid in ids:
                while True:
                    _, job = cl.call("GET", f"/api/v1/jobs/{jid}")
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        assert job["state"] == "succeeded", job
                        done.append(time.perf_counter() - t0)
                        break
                    time.sleep(0.02)
            return done

        with ThreadPoolExecutor(args.clients) as ex:
            per_client = list(ex.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
        n = args.clients * args.jobs_per_client
        fairness = [{"client": i, "mean_s": round(statistics.mean(d), 2), "last_s": round(max(d), 2)}
                    for i, d in enumerate(per_client)]

        # 2. leaks over many small jobs
        samples = [dict(jobs=0, **proc_stats(proc.pid))]
        small_body = {"task": "semantic_segmentation", "model": seg, "inputs": {"raster": str(small)},
                      "output_dir": str(work / "small")}
        done = 0
        with ThreadPoolExecutor(3) as ex:
            while done < args.leak_jobs:
                k = min(10, args.leak_jobs - done)
                states = list(ex.map(lambda i: Client(url, token).run_job(
                    dict(small_body, options={"vectorize": i % 2 == 0}))["state"], range(k)))
                assert states == ["succeeded"] * k, states
                done += k
                time.sleep(0.3)  # let the last handler threads end
                samples.append(dict(jobs=done, **proc_stats(proc.pid)))
    finally:
        proc.terminate()
        proc.wait(30)

    result = {"machine": machine(), "args": vars(args), "fairness": {"jobs": n, "wall_s": round(wall, 2),
              "jobs_per_s": round(n / wall, 2), "clients": fairness}, "leak_samples": samples}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    first, last = samples[0], samples[-1]
    after10 = samples[1] if len(samples) > 1 else first
    lines = [
        "# Backend load test", "",
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_load.py --clients {args.clients} "
        f"--jobs-per-client {args.jobs_per_client} --leak-jobs {args.leak_jobs} --workers {args.workers}`", "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['nproc']} CPUs, 1-min load "
        f"{result['machine']['load1']} (shared with other work: absolute times are noisy).", "",
        "Backend: the real `python -m backend serve` subprocess on 127.0.0.1, fixture segmentation package "
        f"(UPerNet, random weights), torch/auto runtime, {args.workers} workers x 1 thread.", "",
        f"## Fairness: {args.clients} clients x {args.jobs_per_client} jobs (256 x 256 px) submitted at once", "",
        f"{n} jobs in {wall:.1f} s ({n / wall:.2f} jobs/s). Completion time per client (s since the start):", "",
        "| client | mean | last |", "|---:|---:|---:|",
        *[f"| {f['client']} | {f['mean_s']} | {f['last_s']} |" for f in fairness], "",
        "Jobs run in submission (FIFO) order; clients that submit at the same moment interleave, so no client "
        "waits for all of another's jobs.", "",
        f"## Leaks: {args.leak_jobs} small jobs (32 x 32 px, every other one vectorised) from 3 clients", "",
        "Backend process, sampled every 10 jobs from /proc:", "",
        "| jobs done | threads | open fds | RSS (MiB) |", "|---:|---:|---:|---:|",
        *[f"| {s['jobs']} | {s['threads']} | {s['fds']} | {s['rss_kib'] / 1024:.1f} |" for s in samples], "",
        f"Threads {first['threads']} -> {last['threads']}, fds {first['fds']} -> {last['fds']}, RSS after 10 jobs "
        f"{after10['rss_kib'] / 1024:.1f} MiB -> {last['rss_kib'] / 1024:.1f} MiB after {last['jobs']}.", "",
        "A bounded version runs as a test: `tests/reliability/test_concurrency.py::"
        "test_many_small_jobs_leak_no_threads_or_files` (30 jobs, in-process, threading.active_count and "
        "/proc/self/fd).", "",
    ]
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
