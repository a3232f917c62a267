"""Shared helpers for the benchmarks: machine facts, child-process peak RSS, real-tile mosaics, matmul peak,
FLOP counting, the fixture/default model package, and Markdown tables.

Nothing here is timed by the unit tests; the benchmarks import it (``sys.path`` gets ``benchmarks/``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RSFM_DATA", "/work/shared/data"))
# Where generated rasters and packages go (ignored by git: build them again, never commit them).
SCRATCH = Path(os.environ.get("RSFM_BENCH_TMP", "/tmp/rsfm-bench"))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))


# -- machine -------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """Facts to print next to every figure: CPUs, 1-minute load average, CPU model."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "load1": round(os.getloadavg()[0], 2), "cpu": cpu,
            "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def machine_line() -> str:
    m = machine()
    return f"{m['time_utc']}, {m['cpu']}, nproc {m['nproc']}, load average (1 min) {m['load1']}"


# -- child processes -----------------------------------------------------------------------------------

def run_child(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout_s: float = 1800,
              mem_limit_mib: int | None = None) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process and return its last stdout JSON line plus its peak RSS.

    Peak RSS comes from ``os.wait4`` (``ru_maxrss`` of exactly that child, in MiB), so the parent's own
    memory never counts. ``mem_limit_mib`` caps the child's address space (RLIMIT_AS) so a naive run that
    would need more memory than the shared machine has fails with MemoryError instead of calling the OOM
    killer on other people's work. On failure the dict has ``error`` (last stderr line) instead of results.
    """
    import resource

    def limit() -> None:
        if mem_limit_mib:
            b = mem_limit_mib * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (b, b))

    import tempfile
    import threading

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(list(cmd), stdout=fo, stderr=fe, text=True, env={**os.environ, **(env or {})},
                                preexec_fn=limit)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)  # reap it ourselves: ru is exactly this child's usage
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    res: dict[str, Any] = {"wall_process_s": round(time.perf_counter() - t0, 2), "returncode": proc.returncode,
                           "child_peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in err.strip().splitlines() if ln.strip()]
        res["error"] = tail[-1][:200] if tail else f"exit code {proc.returncode}"
        return res
    res.update(json.loads(lines[-1]))
    return res


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (``ru_maxrss``), MiB."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


# -- rasters -------------------------------------------------------------------------------------------

def real_tiles(size: int = 512, limit: int = 64) -> list[np.ndarray]:
    """Real RGB tiles ``3 x size x size`` uint8 cut from the Dubai segmentation images (centre crops).

    Raises:
        FileNotFoundError: the dataset is missing; set RSFM_DATA to the folder holding ``dubai_seg``.
    """
    import rasterio

    files = sorted((DATA / "dubai_seg").glob("*/images/*.jpg"))
    if not files:
        raise FileNotFoundError(f"no Dubai images under {DATA / 'dubai_seg'}; set RSFM_DATA to the data folder")
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    tiles = []
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain JPEGs: pixels are all we need
            with rasterio.open(f) as src:
                a = src.read([1, 2, 3])
        _, h, w = a.shape
        for r in range(0, h - size + 1, size):
            for c in range(0, w - size + 1, size):
                tiles.append(a[:, r: r + size, c: c + size])
                if len(tiles) >= limit:
                    return tiles
        if h < size or w < size:  # small image: pad by reflection to a full tile
            tiles.append(np.pad(a, ((0, 0), (0, max(0, size - h)), (0, max(0, size - w))), mode="reflect")
                         [:, :size, :size])
    return tiles[:limit]


def build_mosaic(path: Path, side: int, *, tile: int = 512, gsd_m: float = 1.0) -> Path:
    """Write a ``side x side`` georeferenced RGB GeoTIFF mosaicked from real Dubai tiles, block by block.

    The tiles repeat in a shuffled order (fixed seed); the writer holds one tile at a time. CRS EPSG:32640
    (UTM 40N, Dubai), ``gsd_m`` metres per pixel, tiled 256 x 256, deflate. Reuses an existing file.
    """
    import rasterio
    from rasterio.windows import Window

    if path.is_file():
        with rasterio.open(path) as src:
            if src.width == side and src.height == side:
                return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tiles = real_tiles(tile)
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
                       crs="EPSG:32640", transform=rasterio.transform.from_origin(500_000.0, 2_800_000.0, gsd_m, gsd_m),
                       tiled=True, blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER") as dst:
        for r in range(0, side, tile):
            for c in range(0, side, tile):
                h, w = min(tile, side - r), min(tile, side - c)
                dst.write(tiles[int(rng.integers(len(tiles)))][:, :h, :w], window=Window(c, r, w, h))
    tmp.replace(path)
    return path


# -- model packages ------------------------------------------------------------------------------------

def default_package(task: str, workdir: Path, *, onnx: bool = True, tile_size_px: int = 256,
                    tile_overlap_px: int = 32, batch_size: int = 4) -> tuple[Path, str]:
    """The bundled default package for ``task`` if ``resources/models`` has one, else a fixture package.

    Returns ``(models_dir, description)``; the model id inside is ``bench-<task>`` for fixtures, or the
    bundled package's name. Fixture: real architecture (efficientnet_lite0 backbone) with seeded weights.
    """
    from training.package import load_package  # noqa: F401  (import check: the training package is installed)

    bundled = ROOT / "resources" / "models"
    # RSFM_BENCH_FIXTURE=1 forces the fixture (tests; comparing with older figures)
    candidates = [] if os.environ.get("RSFM_BENCH_FIXTURE") == "1" else sorted(bundled.glob("*/config.json"))
    for cfg_path in candidates:
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError):
            continue
        if cfg.get("task") == task:
            return bundled, f"bundled {cfg.get('name')} ({cfg.get('architecture')})"
    from make_fixtures import ARCHITECTURES, build_fixture_package

    out = workdir / "models" / task
    pkg = out / task
    if not pkg.is_dir():
        build_fixture_package(task, pkg, name=f"bench-{task.replace('_', '-')}", tile_size_px=tile_size_px,
                              tile_overlap_px=tile_overlap_px, batch_size=batch_size,
                              onnx=onnx and task in ("semantic_segmentation", "change_detection",
                                                     "scene_classification"))
    arch, kwargs, _ = ARCHITECTURES[task]
    return out, f"fixture {arch} on {kwargs.get('backbone')} (seeded random weights)"


def make_app(models_dir: Path, *, threads: int, block_size_px: int = 2048, runtime: str = "torch"):
    """An in-process stand-in for the server's app object, built like ``bench_memory.child`` does."""
    from types import SimpleNamespace

    from backend.models import ModelRegistry
    from backend.runtimes import RuntimeCache
    from backend.settings import Settings, configure_gdal

    settings = Settings.resolve({"block_size_px": block_size_px, "threads": threads, "runtime": runtime}, env={})
    configure_gdal(settings.gdal_cache_mb)
    return SimpleNamespace(models=ModelRegistry([models_dir], include_bundled=False), settings=settings,
                           device="cpu", runtimes=RuntimeCache())


# -- compute -------------------------------------------------------------------------------------------

def matmul_peak_flops(threads: int, n: int = 1024, seconds: float = 2.0, dtype: str = "float32") -> float:
    """Measured matmul throughput (FLOP/s) of ``torch.mm`` on ``n x n`` matrices, best of runs.

    This is the practical "matmul limit" the segmentation throughput is compared with (2 n^3 FLOP each).
    ``dtype="bfloat16"`` gives the bf16 limit (AMX / AVX512-BF16 on CPUs that have them).
    """
    import torch

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    torch.mm(a, b)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def forward_flops(model, x) -> int:
    """FLOPs of one forward pass (``torch.utils.flop_counter``: 2 per multiply-add, conv/matmul only)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


# -- reporting -----------------------------------------------------------------------------------------

def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats are printed with 3 significant digits."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(path: Path | None, title: str, command: str, body: str, data: dict | None = None) -> str:
    """Format a report section (title, machine line, exact command, body) and write it to ``path``.

    ``data`` (plain numbers) also goes to ``path`` with the suffix ``.json``, for ``run_all`` to summarise.
    """
    text = f"## {title}\n\nMachine: {machine_line()}.\n\nCommand: `{command}`\n\n{body.strip()}\n"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if data is not None:
            payload = {"machine": machine(), "command": command, **data}
            path.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    return text


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command that reproduces this run, for the report (drops ``--out`` and its value).

    ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` are part of the command when set: they change the figures.
    """
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        if a.startswith("--out="):
            continue
        args.append(a)
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ]
    return " ".join([*env, ".venv/bin/python", f"benchmarks/{script}", *args])
