"""Unit tests of the benchmark helpers (benchmarks/common.py, run_all.summary); nothing here is timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
import run_all  # noqa: E402


def test_md_table_formats_rows_and_floats() -> None:
    t = common.md_table(["a", "b"], [[1, 0.123456], ["x", 12345.6]])
    assert t.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.123 |", "| x | 12346 |"]


def test_command_line_drops_out_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # the figures' environment, not this test's
    cmd = common.command_line("bench_naive.py", ["--base", "512", "--out", "docs/x.md", "--threads", "1"])
    assert cmd == ".venv/bin/python benchmarks/bench_naive.py --base 512 --threads 1"
    assert "--out" not in common.command_line("b.py", ["--out=docs/x.md"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert common.command_line("b.py", []).startswith("OMP_NUM_THREADS=1 .venv/bin/python")


def test_run_child_reports_json_and_its_own_peak_rss() -> None:
    code = ("import json, numpy as np; a = np.ones(300 * 2**20 // 8); "
            "print('noise'); print(json.dumps({'sum': float(a[:10].sum())}))")
    r = common.run_child([sys.executable, "-c", code])
    assert r["returncode"] == 0 and r["sum"] == 10.0
    assert r["child_peak_rss_mib"] >= 300  # the 300 MiB array, measured from the child's own rusage


def test_run_child_failure_and_memory_cap() -> None:
    r = common.run_child([sys.executable, "-c", "raise SystemExit('boom: broken input')"])
    assert r["returncode"] == 1 and "boom" in r["error"]
    capped = common.run_child([sys.executable, "-c", "import numpy as np; np.ones(2**31 // 8) + 1"],
                              mem_limit_mib=512)
    assert capped["returncode"] != 0 and "MemoryError" in capped["error"]


def test_build_mosaic_tiles_real_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rasterio

    imgs = tmp_path / "data" / "dubai_seg" / "Tile 1" / "images"
    imgs.mkdir(parents=True)
    rng = np.random.default_rng(1)
    sources = []
    for i in range(2):
        a = rng.integers(0, 255, (3, 40, 40), dtype=np.uint8)
        sources.append(a)
        # GDAL opens by content, so a GeoTIFF named .jpg stands in for the dataset's JPEGs
        with rasterio.open(imgs / f"image_part_{i}.jpg", "w", driver="GTiff", width=40, height=40, count=3,
                           dtype="uint8") as dst:
            dst.write(a)
    monkeypatch.setattr(common, "DATA", tmp_path / "data")
    out = common.build_mosaic(tmp_path / "m.tif", 50, tile=20)
    with rasterio.open(out) as src:
        assert (src.width, src.height, src.count) == (50, 50, 3)
        assert src.crs.to_epsg() == 32640 and src.transform.a == 1.0
        m = src.read()
    crops = [s[:, r:r + 20, c:c + 20] for s in sources for r in (0, 20) for c in (0, 20)]
    # every full 20 px cell of the mosaic is one of the real crops
    for r in (0, 20):
        for c in (0, 20):
            assert any(np.array_equal(m[:, r:r + 20, c:c + 20], k) for k in crops)


def test_forward_flops_counts_a_convolution() -> None:
    import torch

    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert common.forward_flops(conv, torch.zeros(1, 3, 16, 16)) == 2 * 3 * 8 * 9 * 16 * 16


def test_summary_reads_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = {"load1": 3.0}
    (tmp_path / "runtimes.json").write_text(json.dumps({"machine": m, "met": True, "results": [
        {"threads": 1, "ratio": 2.0, "torch_s": 0.2, "onnx_s": 0.1}]}))
    (tmp_path / "naive.json").write_text(json.dumps({"machine": m, "met": False, "engine_peak_ratio": 1.2,
                                                     "scales": [1, 16], "results": []}))
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    rows = run_all.summary()
    assert any("1 thr: 2.00x" in r and "**met**" in r for r in rows)
    assert any("1.200" in r and "**NOT met**" in r for r in rows)


def _fake_dubai(root: Path, n: int = 4, side: int = 256) -> Path:
    """A stand-in for /work/shared/data/dubai_seg: ``n`` random RGB images (GeoTIFF content, .jpg names)."""
    import rasterio

    imgs = root / "dubai_seg" / "Tile 1" / "images"
    imgs.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(n):
        with rasterio.open(imgs / f"image_part_{i}.jpg", "w", driver="GTiff", width=side, height=side, count=3,
                           dtype="uint8") as dst:
            dst.write(rng.integers(0, 255, (3, side, side), dtype=np.uint8))
    return root


def test_bench_runtimes_writes_section_with_parity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench_runtimes

    monkeypatch.setattr(common, "DATA", _fake_dubai(tmp_path / "data", side=64))
    monkeypatch.setenv("RSFM_BENCH_FIXTURE", "1")  # the fixture package, whatever resources/models holds
    out = tmp_path / "runtimes.md"
    assert bench_runtimes.main(["--rounds", "1", "--threads", "1", "--batch", "2", "--tile", "64",
                                "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    (r,) = data["results"]
    assert r["max_abs_diff"] < 1e-3 and r["argmax_agree"] == 1.0  # onnx graph computes what torch computes
    assert r["cl_max_abs_diff"] < 1e-3
    text = out.read_text()
    assert "Command: `" in text and "bench_runtimes.py --rounds 1" in text and "nproc" in text
