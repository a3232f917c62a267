"""`make demo`: start the backend, segment a bundled real GeoTIFF with the bundled land-cover model.

Goes through exactly the path the QGIS plugin uses (its launcher and HTTP client, the backend's job API and
tiled engine), then prints what it wrote and leaves ``demo.json`` for ``scripts/render_demo.py``.

Usage: .venv/bin/python scripts/demo.py [--out demo-output] [--raster PATH] [--model ID]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qgis_rsfm.client import RsfmClientError  # noqa: E402 - needs the repo on sys.path
from qgis_rsfm.launcher import BackendConfig, BackendLauncher, LauncherError  # noqa: E402

DEFAULT_RASTER = REPO / "resources" / "samples" / "naip_2020_rgb.tif"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo-output", help="folder for the results (created)")
    ap.add_argument("--raster", default=str(DEFAULT_RASTER), help="input GeoTIFF (default: bundled NAIP sample)")
    ap.add_argument("--model", default=None, help="model id (default: the bundled land-cover model)")
    ap.add_argument("--models-dir", action="append", default=[], help="extra folder of model packages")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    raster = Path(args.raster).resolve()
    launcher = BackendLauncher(tempfile.mkdtemp(prefix="rsfm-demo-"))
    print(f"starting the backend ({sys.executable}) ...", flush=True)
    try:
        client = launcher.ensure_running(BackendConfig(python=sys.executable, device="cpu", model_dirs=args.models_dir))
    except LauncherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        health = client.health()
        print(f"backend {health.get('version')} up at {launcher.state.url} on {health.get('device')}")
        models = [m for m in client.models(task="semantic_segmentation")]
        if args.model:
            model = client.model(args.model)
        else:
            bundled = [m for m in models if m.source == "bundled"] or models
            if not bundled:
                print("error: no semantic segmentation model is installed", file=sys.stderr)
                return 1
            model = bundled[0]
        print(f"model: {model.id} ({', '.join(model.class_names)})")
        job = client.submit({
            "task": "semantic_segmentation",
            "model": model.id,
            "inputs": {"raster": str(raster)},
            "output_dir": str(out),
            "options": {"output_name": "landcover", "allow_gsd_mismatch": True},
        })
        t0 = time.monotonic()
        last = [-1]

        def show(j) -> None:
            pct = int(j.progress * 100)
            if pct // 10 != last[0]:
                last[0] = pct // 10
                print(f"  {j.state:9s} {pct:3d}%  {j.message}", flush=True)

        job = client.wait(job.id, on_update=show)
        if job.state != "succeeded":
            print(f"error: job {job.state}: {job.error_message}", file=sys.stderr)
            return 1
        for w in job.warnings:
            print(f"warning: {w}")
        print(f"done in {time.monotonic() - t0:.1f} s; wrote:")
        outputs = [o.__dict__ for o in job.outputs]
        for o in outputs:
            print(f"  {o['kind']:6s} {o['path']}" + (f"  (layer {o['layer']})" if o.get("layer") else ""))
        stats = (job.result or {}).get("stats", {})
        if stats:
            print("stats:", json.dumps(stats, indent=None)[:600])
        (out / "demo.json").write_text(json.dumps({"input": str(raster), "model": model.id, "outputs": outputs},
                                                  indent=2))
        return 0
    except RsfmClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        launcher.stop()


if __name__ == "__main__":
    raise SystemExit(main())
