"""Run one real job per bundled default model through the backend's job path (``build_spec`` + ``run_spec``).

The samples are held-back images (AID test numbers, a LEVIR-CD ``test_`` pair, an NWPU VHR-10 test image),
written as GeoTIFFs at the package's GSD in EPSG:32633 (an arbitrary placement: none of these sets is
georeferenced). Prints one JSON line per job: model, outputs (layers and feature counts), stats, warnings.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python scripts/train_defaults/backend_check.py OUT_DIR [MODEL_ID ...]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin

DATA = Path("/work/shared/data")
SAMPLES = {
    # model id: (task, before image, after image or None)
    "rsfm-scene-aid-efflite0": ("scene_classification", DATA / "aid/Airport/airport_250.jpg", None),
    "rsfm-levir-change-efflite0": ("change_detection", DATA / "levir_cd/A/test_2_0000_0000.png",
                                   DATA / "levir_cd/B/test_2_0000_0000.png"),
    "rsfm-rotated-nwpu-efflite0": ("rotated_detection", DATA / "nwpu_vhr10/images/480.jpg", None),
    "rsfm-instances-nwpu-efflite0": ("instance_segmentation", DATA / "nwpu_vhr10/images/480.jpg", None),
}


def to_geotiff(src: Path, dst: Path, gsd_m: float) -> Path:
    """Write ``src`` (RGB image) as a 3-band uint8 GeoTIFF, EPSG:32633, ``gsd_m`` pixels."""
    rgb = np.asarray(Image.open(src).convert("RGB")).transpose(2, 0, 1)
    with rasterio.open(dst, "w", driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000.0, 5000000.0, gsd_m, gsd_m)) as ds:
        ds.write(rgb)
    return dst


def main(argv: list[str]) -> int:
    from backend.jobs import Job, JobContext
    from backend.models import BUNDLED_DIR, ModelRegistry
    from backend.runtimes import RuntimeCache
    from backend.settings import Settings
    from backend.tasks import build_spec, run_spec

    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    reg = ModelRegistry([], include_bundled=True)
    listed = {e.id: e.config.task for e in reg.list()}
    print(json.dumps({"bundled_dir": str(BUNDLED_DIR), "listed": listed}))
    app = SimpleNamespace(models=reg, device="cpu", settings=Settings.resolve({"threads": 1}, env={}),
                          runtimes=RuntimeCache())
    for mid in argv[1:] or list(SAMPLES):
        if mid not in listed:
            print(json.dumps({"model": mid, "skipped": "not in resources/models"}))
            continue
        task, before, after = SAMPLES[mid]
        gsd = reg.get(mid).config.gsd_m
        inputs = {"raster": str(to_geotiff(before, out / f"{mid}_before.tif", gsd))}
        if after is not None:
            inputs["raster_after"] = str(to_geotiff(after, out / f"{mid}_after.tif", gsd))
        spec = build_spec(app, {"task": task, "model": mid, "inputs": inputs, "output_dir": str(out / mid),
                                "options": {}})
        result = run_spec(app, spec, JobContext(Job(task=task, model=mid, runner=lambda c: {})))
        summary = {"model": mid, "task": task, "runtime": spec.runtime, "warnings": spec.warnings,
                   "outputs": [], "stats": result.get("stats")}
        for o in result["outputs"]:
            p = Path(o["path"])
            item = {"path": str(p), "exists": p.is_file()}
            if p.suffix == ".gpkg":
                import pyogrio
                from pyogrio.raw import read

                for layer, _geom in pyogrio.list_layers(p):
                    meta, _fids, _geoms, fields = read(p, layer=layer)
                    cols = list(meta["fields"])
                    names = fields[cols.index("class_name")].tolist() if "class_name" in cols else []
                    item[layer] = {"features": len(_geoms), "columns": cols[:10],
                                   "classes": {n: names.count(n) for n in sorted(set(names))}}
                item["qml"] = p.with_suffix(".qml").is_file()
            summary["outputs"].append(item)
        print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
