"""Evaluate the chat's change facts on real labelled pairs (LEVIR-CD samples; issue #7, item 1).

For every pair of the chosen split the earlier image is the asked raster and the later one ``compare_with``.
Two systems go through the real HTTP API (``POST /api/v1/chat`` on a loopback server):

* ``gt_map``: the ground-truth change mask passed as the change output. This isolates the chat head: the stated
  share, area and region count must equal those of the mask exactly;
* ``model``: only ``compare_with``: the backend runs the bundled default change model on the pair as a job and
  answers from its map. This is what a user gets; its error against the truth is the change model's error.

Questions: "How much of the area changed?" (share and area) and "Where did it change?" (regions ``C1``..).
Per pair: truth (changed share, connected change regions, 4-connectivity), each system's stated share (parsed
from the answer text), its fact values, whether the verifier passed, and the regions returned for drawing.

LEVIR-CD PNGs carry no georeference and the backend refuses rasters without a CRS, so each image is written as a
GeoTIFF at LEVIR-CD's 0.5 m (EPSG:32633, arbitrary placement; the same placement for both images of a pair).

Usage::

    .venv/bin/python benchmarks/eval_chat_change.py --data ../shared/data/levir_cd --split test \\
        --out docs/results/chat_change.json
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.eval_chat import georeferenced_copy  # noqa: E402

LEVIR_GSD_M = 0.5
QUESTIONS = {"share": "How much of the area changed?", "where": "Where did it change?"}


def truth(label: Path) -> dict:
    """Changed share (%) and number of connected change regions (4-connectivity) of a LEVIR label PNG."""
    import rasterio
    from rasterio.features import shapes

    with rasterio.open(label) as src:
        mask = src.read(1) > 127
    regions = sum(1 for _ in shapes(mask.astype(np.uint8), mask=mask, connectivity=4))
    return {"share_pct": 100.0 * float(mask.mean()), "regions": regions, "pixels": int(mask.sum())}


def gt_change_map(label: Path, out: Path) -> tuple[Path, Path]:
    """The label as the two outputs a change job writes: the map (class 0 no change, 1 change; names in
    CLASS_<i>) and its polygons (layer ``changes``), vectorised by the backend's own writer."""
    from types import SimpleNamespace

    import rasterio

    from backend.outputs import VectorWriter, polygonize_class_raster

    src_tif = georeferenced_copy(label, out.with_name(out.stem + "_raw.tif"), res_m=LEVIR_GSD_M)
    with rasterio.open(src_tif) as src:
        profile, data = src.profile, (src.read(1) > 127).astype(np.uint8)
    with rasterio.open(out, "w", **{**profile, "count": 1, "nodata": 255}) as dst:
        dst.write(data, 1)
        dst.update_tags(1, CLASS_0="no change", CLASS_1="change")
    gpkg = out.with_suffix(".gpkg")
    classes = [SimpleNamespace(name="no change"), SimpleNamespace(name="change")]
    vw = VectorWriter(gpkg, "changes", profile["crs"].to_wkt(),
                      {"class_id": np.int32, "class_name": object, "area_m2": np.float64}, {"model": "ground truth"})
    polygonize_class_raster(out, vw, classes, profile["crs"].to_wkt(), max_pixels=1 << 30, keep=[1])
    vw.close()
    return out, gpkg


def stated_share(text: str) -> float | None:
    m = re.search(r"([\d.]+)% of (?:the area|it) changed", text)
    return float(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "levir_cd")
    ap.add_argument("--split", default="test", help="file-name prefix of LEVIR-CD's own split (test, val, train)")
    ap.add_argument("--models-dir", type=Path, default=REPO / "resources" / "models")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from backend.server import App, serve_in_thread
    from backend.settings import Settings

    names = sorted(p.name for p in (args.data / "label").glob(f"{args.split}_*.png"))
    if not names:
        raise SystemExit(f"no {args.split}_*.png labels under {args.data / 'label'}")
    token = secrets.token_hex(16)
    app = App(Settings.resolve({"models_dir": [str(args.models_dir)]}, env={}), token)
    srv, _ = serve_in_thread(app)
    url = f"http://127.0.0.1:{srv.server_address[1]}/api/v1/chat"

    def ask(body: dict) -> dict:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    rows = []
    work = Path(tempfile.mkdtemp(prefix="rsfm-chat-change-"))
    try:
        for name in names:
            stem = name[:-4]
            a = georeferenced_copy(args.data / "A" / name, work / f"{stem}_A.tif", res_m=LEVIR_GSD_M)
            b = georeferenced_copy(args.data / "B" / name, work / f"{stem}_B.tif", res_m=LEVIR_GSD_M)
            gt_map, gt_polygons = gt_change_map(args.data / "label" / name, work / f"{stem}_gt.tif")
            row = {"pair": stem, "truth": truth(args.data / "label" / name)}
            systems = {"gt_map": {"outputs": [{"path": str(gt_map), "task": "change_detection"},
                                              {"path": str(gt_polygons), "task": "change_detection"}]},
                       "model": {"output_dir": str(work / f"{stem}_out")}}
            for system, extra in systems.items():
                res = {}
                for key, q in QUESTIONS.items():
                    out = ask({"raster": str(a), "compare_with": str(b), "question": q, **extra})
                    ans, facts = out["answer"], out["facts"]["facts"]
                    share = next((f["data"] for f in facts if f["kind"] == "change" and "share_pct" in f["data"]
                                  and "class" not in f["data"]), {})
                    regions = next((f["data"]["regions"] for f in facts if "regions" in f["data"]), None)
                    res[key] = {"text": ans["text"], "intent": ans["intent"], "verified": ans["verification"]["ok"],
                                "cited": ans["cited"], "drawn": [o["id"] for o in ans["objects"]]}
                    res["fact_share_pct"] = share.get("share_pct")
                    res["fact_regions"] = regions
                res["stated_share_pct"] = stated_share(res["share"]["text"])
                row[system] = res
            rows.append(row)
            print(f"{stem}: truth {row['truth']['share_pct']:.2f}% / {row['truth']['regions']} regions; "
                  f"gt_map says {row['gt_map']['stated_share_pct']}% / {row['gt_map']['fact_regions']}; "
                  f"model says {row['model']['stated_share_pct']}% / {row['model']['fact_regions']}", flush=True)
    finally:
        srv.shutdown()
        app.jobs.shutdown()

    def summary(system: str) -> dict:
        sts = [r[system]["stated_share_pct"] for r in rows]
        errs = [abs(s - r["truth"]["share_pct"]) for s, r in zip(sts, rows, strict=True) if s is not None]
        answers = [r[system][k] for r in rows for k in QUESTIONS]
        return {
            "pairs": len(rows),
            "share_stated": sum(s is not None for s in sts),
            "share_mae_pp": statistics.mean(errs) if errs else None,
            "share_max_abs_err_pp": max(errs) if errs else None,
            "regions_exact": sum(r[system]["fact_regions"] == r["truth"]["regions"] for r in rows),
            "answers": len(answers),
            "routed_to_change": sum(x["intent"] == "change" for x in answers),
            "verified": sum(x["verified"] for x in answers),
            "where_answers_drawing_regions": sum(bool(r[system]["where"]["drawn"]) for r in rows
                                                 if r[system]["fact_regions"]),
        }

    result = {"command": " ".join(["benchmarks/eval_chat_change.py", *sys.argv[1:]]), "split": args.split,
              "gsd_m": LEVIR_GSD_M, "model": sorted(e.id for e in app.models.list()
                                                   if e.config.task == "change_detection")[0],
              "summary": {s: summary(s) for s in ("gt_map", "model")}, "pairs": rows}
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
