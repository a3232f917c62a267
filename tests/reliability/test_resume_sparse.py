"""Resume of sparse tasks (detection, rotated detection, instances, scenes) from their batch journal, in-process.

A job "dies" mid-run the way a SIGKILL leaves it: its task runner is stopped by an exception nothing catches
and no clean-up runs, so the journal and the temp files stay. The job is then run again under the same id
(as ``POST /jobs/{id}/resume`` does): it must skip the journalled batches and write exactly the GeoPackage of
an uninterrupted run. The models are deterministic synthetic functions of the pixels, so the comparison is
exact. (tests/reliability/test_resume.py kills a real backend subprocess running a real fixture model.)
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyogrio
import pytest
from rel_helpers import mf
from scipy import ndimage

from backend.engine import RasterSource, n_sparse_tiles, tile_batches
from backend.jobs import Job, JobContext
from backend.models import ModelRegistry
from backend.outputs import (
    BatchJournal,
    BlockJournal,
    OutputSet,
    pack_geometries,
    provenance,
    unpack_geometries,
)
from backend.settings import Settings
from backend.tasks import TASK_RUNNERS, RunContext, build_spec, run_spec
from training.package import PackageConfig

LAYERS = {"object_detection": "detections", "rotated_detection": "rotated_detections",
          "instance_segmentation": "instances", "scene_classification": "scenes"}
DET = [{"name": "ship", "color": "#1F78B4"}, {"name": "vehicle", "color": "#FF7F00"}]
SCENES = [{"name": n, "color": "#112233"} for n in ("red", "green", "blue")]
# bright rectangles (row0, col0, row1, col1), several across tile borders (tiles 32 px, stride 24)
BOXES = [(3, 3, 9, 9), (10, 40, 15, 47), (20, 20, 29, 28), (40, 60, 46, 66), (70, 80, 76, 96),
         (14, 28, 20, 33), (50, 21, 56, 31), (83, 3, 89, 8), (44, 44, 53, 52)]
JOB_ID = "5e" * 16


class Killed(BaseException):
    """Stands for the process dying: no ``except Exception`` catches it, no clean-up runs."""


def _package(root: Path, task: str) -> str:
    name = f"synthetic-{task.replace('_', '-')}"
    cfg = PackageConfig(name=name, task=task, architecture="synthetic",
                        classes=SCENES if task in ("scene_classification", "semantic_segmentation") else DET,
                        bands=["r", "g", "b"], mean=[0.0] * 3, std=[1.0] * 3, gsd_m=1.0, gsd_range_m=(0.5, 2.0),
                        tile_size_px=32, tile_overlap_px=8, batch_size=2, score_threshold=0.3)
    cfg.save(root / name)
    return name


def _raster(path: Path) -> Path:
    data = np.full((3, 90, 100), 10, dtype=np.uint8)
    for i, (r0, c0, r1, c1) in enumerate(BOXES):
        data[0, r0:r1, c0:c1] = 250
        data[1, r0:r1, c0:c1] = 200 if i % 2 else 0
        data[2, r0:r1, c0:c1] = 20 * i  # scores differ per object
    return mf.write_fixture_raster(path, width=100, height=90, data=data)


def _blobs(img: np.ndarray):
    lab, _ = ndimage.label(img[0] > 128)
    for i, sl in enumerate(ndimage.find_objects(lab)):
        yield sl, lab == i + 1, int(img[1][sl].mean() > 100), 0.4 + float(img[2][sl].mean()) / 500


def model_for(task: str):
    """A deterministic model: every blob twice (the copy shifted by 1 px, lower score: NMS drops it)."""
    def det(x: np.ndarray):
        out = []
        for img in x:
            boxes, rboxes, labels, scores, masks = [], [], [], [], []
            for sl, m, cls, score in _blobs(img):
                for shift, ds in ((0, 0.0), (1, 0.05)):
                    y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start + shift, sl[1].stop + shift
                    boxes.append([x0, y0, x1, y1])
                    rboxes.append([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, 0.1 * cls + 0.2])
                    labels.append(cls)
                    scores.append(score - ds)
                    masks.append(np.roll(m, shift, axis=1).astype(np.float32))
            pred = {"scores": np.asarray(scores, np.float32), "labels": np.asarray(labels, np.int64)}
            if task == "rotated_detection":
                pred["boxes_cxcywha"] = np.asarray(rboxes, np.float32).reshape(-1, 5)
            else:
                pred["boxes_xyxy"] = np.asarray(boxes, np.float32).reshape(-1, 4)
            if task == "instance_segmentation":
                pred["masks"] = np.asarray(masks, np.float32).reshape(-1, *img.shape[1:])
            out.append(pred)
        return out

    def scene(x: np.ndarray):
        return x.mean(axis=(2, 3)) / 50.0  # B x 3 logits: the dominant band wins

    def seg(x: np.ndarray):
        return x / 50.0  # B x 3 x H x W class scores: the dominant band wins, pixel by pixel

    return {"scene_classification": scene, "semantic_segmentation": seg}.get(task, det)


class Counting:
    """Wraps a model: counts its calls and raises :class:`Killed` on call ``kill_at`` (1-based)."""

    def __init__(self, model, kill_at: int | None = None) -> None:
        self.model, self.kill_at, self.calls = model, kill_at, 0

    def __call__(self, *args):
        self.calls += 1
        if self.kill_at is not None and self.calls >= self.kill_at:
            raise Killed
        return self.model(*args)


@pytest.fixture
def env(tmp_path):
    models = tmp_path / "m"
    # journal_interval_s 0: one journal unit per batch
    app = SimpleNamespace(models=ModelRegistry([models], include_bundled=False),
                          settings=Settings.resolve({"block_size_px": 40, "journal_interval_s": 0}, env={}),
                          device="cpu")
    return SimpleNamespace(app=app, models=models, raster=_raster(tmp_path / "blobs.tif"), tmp=tmp_path)


def _body(env, task: str, out: Path, **options) -> dict:
    return {"task": task, "model": _package(env.models, task), "inputs": {"raster": str(env.raster)},
            "output_dir": str(out), "options": {"output_name": "r", **options}}


def _die_mid_job(env, body: dict, kill_at: int) -> None:
    """Run the task until the model's call ``kill_at`` and stop it like a SIGKILL would (no abort)."""
    spec = build_spec(env.app, body)
    job = Job(task=spec.task, model=spec.entry.id, runner=lambda c: {}, id=JOB_ID)
    out = OutputSet(spec.output_dir, spec.base_name, JOB_ID)
    prov = provenance(spec.entry.id, spec.entry.revision, spec.effective_parameters(), spec.plan.path, "t0")
    with RasterSource(spec.plan, spec.config.mean, spec.config.std) as source:
        rc = RunContext(spec, Counting(model_for(spec.task), kill_at), source, out, JobContext(job), prov,
                        env.app.settings)
        with pytest.raises(Killed):
            TASK_RUNNERS[spec.task](rc)


def _run(env, body: dict, job_id: str | None = None) -> tuple[Job, dict, Counting]:
    spec = build_spec(env.app, body)
    job = Job(task=spec.task, model=spec.entry.id, runner=lambda c: {})
    if job_id:
        job.id = job_id
    model = Counting(model_for(spec.task))
    return job, run_spec(env.app, spec, JobContext(job), model=model), model


def _features(path: str, layer: str) -> tuple[list[bytes], dict[str, list]]:
    """WKB per feature, and every attribute column except the run's timestamp."""
    meta = pyogrio.read_info(path, layer=layer)
    _, _, geoms, fields = pyogrio.raw.read(path, layer=layer)
    cols = {n: list(f) for n, f in zip(meta["fields"], fields, strict=True) if n != "created"}
    return [bytes(g) for g in geoms], cols


@pytest.mark.parametrize("task", list(LAYERS))
def test_killed_sparse_job_resumes_from_journal_and_equals_clean_run(env, task):
    out, clean = env.tmp / "out", env.tmp / "clean"
    body = _body(env, task, out)
    _die_mid_job(env, body, kill_at=4)  # 3 of 8 batches done and journalled
    journal = out / f".r.{JOB_ID[:12]}.tmp.journal"
    assert sorted(p.name for p in journal.glob("b*.npz")) == ["b0.npz", "b1.npz", "b2.npz"]

    job, result, model = _run(env, body, job_id=JOB_ID)
    spec = build_spec(env.app, body)
    batches = tile_batches(int(spec.plan.window.height), int(spec.plan.window.width), spec.params)
    total = n_sparse_tiles(spec.plan, spec.params)
    assert (len(batches), total) == (8, 16)
    assert model.calls == len(batches) - 3  # the journalled batches were not run again
    assert f"resumed: 6 of {total} tiles were already done" in job.warnings, job.warnings

    ref_job, ref, _ = _run(env, _body(env, task, clean))
    assert not any(w.startswith("resumed") for w in ref_job.warnings)
    layer = LAYERS[task]
    got, want = _features(result["outputs"][0]["path"], layer), _features(ref["outputs"][0]["path"], layer)
    assert got == want  # same geometries (byte for byte), same attributes, same order
    assert len(got[0]) > 0
    if task != "scene_classification":
        assert result["stats"]["before_nms"] > result["stats"]["detections"]  # the merge had work to do
    assert result["stats"] == ref["stats"]
    # committed: final names only, the journal and the temp files are gone
    assert sorted(p.name for p in out.iterdir()) == ["r.gpkg", "r.qml"]


def test_journal_of_other_options_is_discarded(env):
    out = env.tmp / "out"
    _die_mid_job(env, _body(env, "object_detection", out), kill_at=5)
    # another score threshold: the journalled detections do not apply, every batch runs again
    job, _, model = _run(env, _body(env, "object_detection", out, score_threshold=0.6), job_id=JOB_ID)
    assert model.calls == 8
    assert not any(w.startswith("resumed") for w in job.warnings), job.warnings
    assert sorted(p.name for p in out.iterdir()) == ["r.gpkg", "r.qml"]


def test_crash_after_the_last_batch_skips_all_inference(env, monkeypatch):
    """Killed while merging/writing: the final unit was flushed, so the resumed job runs no batch at all."""
    out = env.tmp / "out"
    body = _body(env, "object_detection", out)
    spec = build_spec(env.app, body)
    job = Job(task=spec.task, model=spec.entry.id, runner=lambda c: {}, id=JOB_ID)
    rc_out = OutputSet(spec.output_dir, spec.base_name, JOB_ID)
    prov = provenance(spec.entry.id, spec.entry.revision, spec.effective_parameters(), spec.plan.path, "t0")

    def die_on_merge(*_a, **_k):
        raise Killed

    import backend.tasks as tasks

    with monkeypatch.context() as mp:
        mp.setattr(tasks, "nms_polygons", die_on_merge)
        with RasterSource(spec.plan, spec.config.mean, spec.config.std) as source:
            rc = RunContext(spec, model_for(spec.task), source, rc_out, JobContext(job), prov, env.app.settings)
            with pytest.raises(Killed):
                TASK_RUNNERS[spec.task](rc)
    job, result, model = _run(env, body, job_id=JOB_ID)
    assert model.calls == 0
    assert "resumed: 16 of 16 tiles were already done" in job.warnings
    assert result["stats"]["detections"] == len(BOXES)


def test_batch_journal_units_follow_the_clock(tmp_path):
    """Units hold the batches finished within ``interval_s``; records come back whole, in batch order."""
    now = [0.0]
    bj = BatchJournal(BlockJournal(tmp_path / ".j", {"f": 1}), interval_s=2.5, n_batches=10, clock=lambda: now[0])
    recs = {}
    for i in range(7):
        now[0] += 1.0
        recs[i] = {"v": np.arange(i, dtype=np.float64), "k": np.full((i % 3, 2), i, np.int64)}
        bj.add(i, recs[i])
    # a unit is written once 2.5 s have passed since the last one: after batches 2 and 5; 6 is pending
    assert sorted(p.name for p in (tmp_path / ".j").glob("b*.npz")) == ["b0.npz", "b3.npz"]
    again = BatchJournal(BlockJournal(tmp_path / ".j", {"f": 1}), interval_s=2.5, n_batches=10)
    assert again.resumed == [0, 1, 2, 3, 4, 5]
    for i, rec in again.records():
        assert np.array_equal(rec["v"], recs[i]["v"]) and np.array_equal(rec["k"], recs[i]["k"])
        assert rec["k"].shape == (i % 3, 2)
    bj.flush()
    assert BatchJournal(BlockJournal(tmp_path / ".j", {"f": 1}), 2.5, n_batches=10).resumed == list(range(7))
    # batches beyond the job's grid are ignored; another fingerprint starts from scratch
    assert BatchJournal(BlockJournal(tmp_path / ".j", {"f": 1}), 2.5, n_batches=4).resumed == [0, 1, 2, 3]
    assert BatchJournal(BlockJournal(tmp_path / ".j", {"f": 2}), 2.5, n_batches=10).resumed == []


def test_damaged_unit_is_computed_again(tmp_path):
    bj = BatchJournal(BlockJournal(tmp_path / ".j", {"f": 1}), interval_s=0, n_batches=3)
    for i in range(3):
        bj.add(i, {"v": np.full(2, i)})
    (tmp_path / ".j" / "b1.npz").write_bytes(b"not a zip")
    assert BatchJournal(BlockJournal(tmp_path / ".j", {"f": 1}), 0, n_batches=3).resumed == [0, 2]


def test_geometries_round_trip_exactly():
    import shapely

    geoms = [shapely.box(0.1, 0.2, 3.3, 4.7), shapely.Polygon([(0, 0), (1e-9, 5), (7.25, 1 / 3)]),
             shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(2, 2, 3, 3)])]
    data, lengths = pack_geometries(geoms)
    back = unpack_geometries(data, lengths)
    assert [g.wkb for g in back] == [g.wkb for g in geoms]
    assert unpack_geometries(*pack_geometries([])) == []


def test_failed_sparse_job_leaves_no_journal(env):
    """A job that fails for good (here: a broken model) removes its journal with its temp files."""
    out = env.tmp / "out"
    body = _body(env, "rotated_detection", out)
    spec = build_spec(env.app, body)
    job = Job(task=spec.task, model=spec.entry.id, runner=lambda c: {})
    calls = []

    def broken(x):
        calls.append(1)
        if len(calls) == 4:
            return [{"scores": [0.9]}] * len(x)  # no boxes: the post-processor refuses it
        return model_for("rotated_detection")(x)

    with pytest.raises(KeyError):
        run_spec(env.app, spec, JobContext(job), model=broken)
    assert len(calls) == 4
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("task", ["object_detection", "scene_classification"])
def test_resume_with_an_aoi(env, task):
    """With an aoi only the tiles overlapping it are batched: the journal indexes those batches."""
    x0, y0 = mf.FIXTURE_ORIGIN
    # an L-shaped polygon over the left and bottom of the raster (pixel rows/cols -> CRS metres)
    ring = [(c + x0, y0 - r) for c, r in ((0, 0), (40, 0), (40, 50), (100, 50), (100, 90), (0, 90), (0, 0))]
    aoi = {"type": "Polygon", "coordinates": [ring]}
    out, clean = env.tmp / "out", env.tmp / "clean"
    body = _body(env, task, out, aoi=aoi)
    _die_mid_job(env, body, kill_at=3)
    job, result, model = _run(env, body, job_id=JOB_ID)
    ref_job, ref, ref_model = _run(env, _body(env, task, clean, aoi=aoi))
    assert model.calls == ref_model.calls - 2 and ref_model.calls < 8  # fewer batches than without the aoi
    assert any(w.startswith("resumed: 4 of ") for w in job.warnings), job.warnings
    layer = LAYERS[task]
    got, want = _features(result["outputs"][0]["path"], layer), _features(ref["outputs"][0]["path"], layer)
    assert got == want and len(got[0]) > 0
    assert result["stats"] == ref["stats"]


def _px_ring(c0: float, r0: float, c1: float, r1: float) -> list[tuple[float, float]]:
    """A rectangle of raster pixels (col, row) as a CRS ring (the fixture raster: 1 m pixels, north up)."""
    x0, y0 = mf.FIXTURE_ORIGIN
    return [(c + x0, y0 - r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))]


def test_classify_per_polygon_resumes_from_journal(env):
    """Scene classification per polygon journals each batch's tile probabilities and weights: a resumed job
    runs only the missing batches and writes exactly the uninterrupted run's polygons."""
    feats = [{"type": "Feature", "properties": {"fid": fid}, "geometry": {"type": "Polygon", "coordinates": [r]}}
             for fid, r in ((11, _px_ring(2, 2, 72, 62)),  # 70 x 60 px: a 3 x 3 tile grid
                            (12, _px_ring(80, 5, 90, 15)), (13, _px_ring(40, 70, 55, 85)),
                            (14, _px_ring(85, 60, 98, 88)))]
    aoi = {"type": "FeatureCollection", "features": feats}
    out, clean = env.tmp / "out", env.tmp / "clean"
    body = _body(env, "scene_classification", out, aoi=aoi, classify_per="polygon")
    _die_mid_job(env, body, kill_at=3)  # 2 batches done and journalled
    journal = out / f".r.{JOB_ID[:12]}.tmp.journal"
    assert sorted(p.name for p in journal.glob("b*.npz")) == ["b0.npz", "b1.npz"]

    job, result, model = _run(env, body, job_id=JOB_ID)
    ref_job, ref, ref_model = _run(env, _body(env, "scene_classification", clean, aoi=aoi,
                                              classify_per="polygon"))
    assert ref["stats"]["tiles"] == 12 and ref_model.calls == 6
    assert model.calls == ref_model.calls - 2  # the journalled batches were not run again
    assert "resumed: 4 of 12 tiles were already done" in job.warnings, job.warnings
    assert not any(w.startswith("resumed") for w in ref_job.warnings)
    got = _features(result["outputs"][0]["path"], "polygon_scenes")
    want = _features(ref["outputs"][0]["path"], "polygon_scenes")
    assert got == want  # same geometries, classes, scores and probabilities, in the same order
    assert got[1]["source_fid"] == [11, 12, 13, 14] and len(set(got[1]["score"])) == 4
    assert got[1]["tiles"] == [9, 1, 1, 1]
    assert result["stats"] == ref["stats"]
    assert sorted(p.name for p in out.iterdir()) == ["r.gpkg", "r.qml"]

    # one polygon moved by a pixel (same window, another aoi hash): the journal does not apply, all batches run
    _die_mid_job(env, body, kill_at=3)
    moved = {**feats[1], "geometry": {"type": "Polygon", "coordinates": [_px_ring(80, 6, 90, 16)]}}
    other = {"type": "FeatureCollection", "features": [feats[0], moved, *feats[2:]]}
    job, _, model = _run(env, _body(env, "scene_classification", out, aoi=other, classify_per="polygon"),
                         job_id=JOB_ID)
    assert not any(w.startswith("resumed") for w in job.warnings) and model.calls == 6


def test_dense_journal_of_a_rewritten_raster_is_discarded(env):
    """The dense journal fingerprints the raster by path, size and modification time like the sparse one: a raster
    rewritten in place between the crash and the resume is computed afresh, not stitched to stale blocks."""
    import os

    import rasterio

    out, clean = env.tmp / "out", env.tmp / "clean"
    body = _body(env, "semantic_segmentation", out, vectorize=False)
    _die_mid_job(env, body, kill_at=8)
    journal = out / f".r.{JOB_ID[:12]}.tmp.journal"
    assert len(list(journal.glob("b*.npz"))) >= 2
    # same path, same size: other pixels (the bright boxes move), a later modification time
    data = np.roll(rasterio.open(env.raster).read(), (17, 23), axis=(1, 2))
    data[2, 30:60, 10:40] = 255  # and a blue square
    mtime = env.raster.stat().st_mtime_ns
    size = env.raster.stat().st_size
    mf.write_fixture_raster(env.raster, width=100, height=90, data=data)
    os.utime(env.raster, ns=(mtime + 2_000_000_000, mtime + 2_000_000_000))
    assert env.raster.stat().st_size == size  # (a deflate-free GeoTIFF: only the pixels differ)

    job, result, model = _run(env, body, job_id=JOB_ID)
    ref_job, ref, ref_model = _run(env, _body(env, "semantic_segmentation", clean, vectorize=False))
    assert not any(w.startswith("resumed") for w in job.warnings), job.warnings
    assert model.calls == ref_model.calls  # every block computed again
    with rasterio.open(result["outputs"][0]["path"]) as a, rasterio.open(ref["outputs"][0]["path"]) as b:
        got, want = a.read(1), b.read(1)
    assert np.array_equal(got, want) and (want[30:60, 10:40] == 2).all()
    assert result["stats"]["classes"] == ref["stats"]["classes"]


def test_dense_journal_of_the_same_raster_is_resumed(env):
    """The control: the raster unchanged, the resumed job copies the journalled blocks and runs fewer tiles."""
    import rasterio

    out, clean = env.tmp / "out", env.tmp / "clean"
    body = _body(env, "semantic_segmentation", out, vectorize=False)
    _die_mid_job(env, body, kill_at=8)
    n_blocks = len(list((out / f".r.{JOB_ID[:12]}.tmp.journal").glob("b*.npz")))
    job, result, model = _run(env, body, job_id=JOB_ID)
    _, ref, ref_model = _run(env, _body(env, "semantic_segmentation", clean, vectorize=False))
    assert any(w.startswith(f"resumed: {n_blocks} of ") for w in job.warnings), job.warnings
    assert model.calls < ref_model.calls
    with rasterio.open(result["outputs"][0]["path"]) as a, rasterio.open(ref["outputs"][0]["path"]) as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_journal_interval_setting():
    """``journal_interval_s``: default 3 s, ``RSFM_JOURNAL_INTERVAL_S`` < CLI; a negative or non-number is refused."""
    import argparse

    from backend.cli import _add_settings
    from backend.tasks import _journal_interval_s

    assert _journal_interval_s(Settings.resolve({}, env={})) == 3.0
    assert _journal_interval_s(Settings.resolve({}, env={"RSFM_JOURNAL_INTERVAL_S": "0.5"})) == 0.5
    assert _journal_interval_s(Settings.resolve({"journal_interval_s": 0.0},
                                                env={"RSFM_JOURNAL_INTERVAL_S": "7"})) == 0.0
    assert _journal_interval_s(SimpleNamespace()) == 3.0  # a settings object without it: the default
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(ValueError, match="journal_interval_s|JOURNAL_INTERVAL_S"):
            Settings.resolve({}, env={"RSFM_JOURNAL_INTERVAL_S": bad})
    parser = argparse.ArgumentParser()
    _add_settings(parser)  # the serve command's setting flags
    args = parser.parse_args(["--journal-interval-s", "1.5"])
    assert _journal_interval_s(Settings.resolve({"journal_interval_s": args.journal_interval_s}, env={})) == 1.5
