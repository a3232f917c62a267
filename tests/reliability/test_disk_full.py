"""A really full disk: the backend runs in a private mount namespace whose output folder is a tiny tmpfs.

``unshare -m`` (as root) or ``unshare -rm`` (a user namespace, for other users where the kernel allows it)
gives the backend subprocess its own mounts; a ``tmpfs`` of a few dozen KiB mounted over the job's
``output_dir`` fills up while the outputs are written, so GDAL/SQLite/numpy see a real ``ENOSPC`` (the
RLIMIT_FSIZE tests in test_bad_inputs.py give ``EFBIG``). The mount is private: it is gone with the backend and
never visible outside, so the test looks into the folder through ``/proc/<pid>/root``.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rel_helpers import SEG, mf, start_backend

from backend.errors import OutputWriteError
from backend.tasks import _as_write_error

SCENE = "scene_classification"
# mounts a tmpfs of size $1 on folder $2 (and $3 on $4, ... up to "--"), then becomes the backend: the same pid,
# so /proc/<pid>/root shows its mounts
MOUNT_AND_EXEC = ('while [ "$1" != "--" ]; do mount -t tmpfs -o "size=$1,mode=0755" tmpfs "$2" || exit 1; '
                  'shift 2; done; shift; exec "$@"')


def _unshare_prefix(probe_dir: Path) -> tuple[list[str] | None, str]:
    """The first ``unshare`` variant that may mount a tmpfs here, or None and why neither can."""
    if shutil.which("unshare") is None:
        return None, "the unshare command (util-linux) is not installed"
    probe_dir.mkdir(parents=True, exist_ok=True)
    variants = ([["unshare", "-m"]] if os.geteuid() == 0 else []) + [["unshare", "-rm"]]
    why = []
    for v in variants:
        r = subprocess.run([*v, "sh", "-c", MOUNT_AND_EXEC, "sh", "16k", str(probe_dir), "--", "true"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            return v, ""
        why.append(f"{' '.join(v)}: {r.stderr.strip() or r.returncode}")
    return None, "no private mount namespace with a tmpfs is permitted here (" + "; ".join(why) + ")"


def _inside(pid: int, path: Path) -> Path:
    """``path`` as the process ``pid`` sees it (through its mount namespace)."""
    return Path(f"/proc/{pid}/root") / path.relative_to("/")


@pytest.fixture(scope="module")
def dfx(tmp_path_factory) -> dict:
    """Segmentation and scene fixture packages, and a noise raster (noise compresses badly: its 512 px class
    raster, polygons and scene cells are far bigger than the tmpfs)."""
    d = tmp_path_factory.mktemp("diskfull")
    for task in (SEG, SCENE):
        mf.build_fixture_package(task, d / "models" / task)
    return {"models": d / "models", "rgb": mf.write_fixture_raster(d / "rgb.tif"),
            "noise": mf.write_fixture_raster(d / "noise.tif", width=512, height=512, data=np.random.default_rng(0)
                                             .integers(0, 255, (3, 512, 512), dtype=np.uint8))}


def _job(task: str, raster: Path, out: Path, name: str, **options) -> dict:
    return {"task": task, "model": mf.fixture_name(task), "inputs": {"raster": str(raster)}, "output_dir": str(out),
            "options": {"output_name": name, **options}}


# (task, tmpfs size): segmentation at 8k holds the job record and little more, at 48k fills up in the GeoTIFF
# (GDAL), at 320k in the GeoPackage (SQLite); scene classification at 8k hits ENOSPC in its batch journal
# (Python's own write, so the errno itself is reported)
CASES = [(SEG, "8k"), (SEG, "48k"), (SEG, "320k"), (SCENE, "8k")]


@pytest.mark.slow
def test_real_full_filesystem_fails_cleanly_and_backend_stays_healthy(dfx, tmp_path):
    wrap, why = _unshare_prefix(tmp_path / "probe")
    if wrap is None:
        pytest.skip(why + "; test_bad_inputs.py's RLIMIT_FSIZE test still covers the write-error path")
    mounts = []
    for i, (_, size) in enumerate(CASES):
        (tmp_path / f"full{i}").mkdir()
        mounts += [size, str(tmp_path / f"full{i}")]
    be = start_backend(tmp_path, secrets.token_urlsafe(24), models=dfx["models"], log_level="WARNING",
                       extra_env={"RSFM_RUNTIME": "torch", "RSFM_BLOCK_SIZE_PX": "128"},
                       wrap=[*wrap, "sh", "-c", MOUNT_AND_EXEC, "sh", *mounts, "--"])
    try:
        for i, (task, size) in enumerate(CASES):
            out = tmp_path / f"full{i}"
            seen = _inside(be.proc.pid, out)
            status, job = be.call("POST", "/api/v1/jobs", _job(task, dfx["noise"], out, "lc"))
            assert status == 202, (task, size, job)
            job = be.wait(job["id"])
            assert job["state"] == "failed", (task, size, job)
            err = job["error"]
            assert err["code"] == "output_write_failed", (task, size, err)  # HTTP 507 in docs/CONTRACTS.md
            assert str(out) in err["message"], err  # names the folder ...
            assert "disk may be full" in err["message"] and "free some space" in err["message"], err  # ... the fix
            if task == SCENE:
                assert "No space left on device" in err["message"], err
            # nothing half-written: no output, no temp file, no journal, no job record
            assert sorted(p.name for p in seen.iterdir()) == [], (task, size)

            status, health = be.call("GET", "/api/v1/health")
            assert status == 200, health
            # the backend is fine: the next job succeeds; and the space came back: where a small job fits the
            # tmpfs, it succeeds there
            target = out if size != "8k" else tmp_path / "roomy"
            status, job2 = be.call("POST", "/api/v1/jobs", _job(SEG, dfx["rgb"], target, f"ok{i}", vectorize=False))
            assert status == 202, job2
            job2 = be.wait(job2["id"])
            assert job2["state"] == "succeeded", job2
            assert {f"ok{i}.qml", f"ok{i}.tif"} <= {p.name for p in _inside(be.proc.pid, target).iterdir()}
    finally:
        be.stop()
    for i in range(len(CASES)):
        assert list((tmp_path / f"full{i}").iterdir()) == []  # the tmpfs was private to the backend's namespace


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
def test_disk_full_errnos_map_to_one_clear_error(tmp_path, err):
    exc = _as_write_error(OSError(err, os.strerror(err), str(tmp_path / "x.tif")), tmp_path)
    assert isinstance(exc, OutputWriteError) and exc.code == "output_write_failed" and exc.http_status == 507
    msg = exc.message
    assert msg.startswith(f"writing the outputs to {tmp_path} failed (")
    assert msg.endswith("the disk may be full or a file size limit reached. Nothing was kept: free some space (or "
                        "choose another output_dir) and submit the job again")


def test_gdal_and_sqlite_disk_full_texts_map_too(tmp_path):
    from rasterio.errors import RasterioIOError

    for exc in (RasterioIOError("TIFFAppendToStrip:Write error at scanline 0"),
                OSError("sqlite3_exec(COMMIT) failed: database or disk is full")):
        assert isinstance(_as_write_error(exc, tmp_path), OutputWriteError), exc
    assert _as_write_error(OSError(errno.ENOENT, "No such file"), tmp_path) is None  # not a disk-full error
    assert _as_write_error(ValueError("no space left"), tmp_path) is None  # not an I/O error at all
