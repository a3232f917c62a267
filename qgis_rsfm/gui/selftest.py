"""Self-test (backend up, device, tiny model run, CRS round-trip) and a diagnostics report users can paste
into an issue. The checks are plain functions; the dialog runs them as a QgsTask."""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QVBoxLayout,
)

from ..client import ModelInfo, RsfmClient, RsfmClientError
from ..icons import icon
from ..tasks.call_task import CallTask

SELFTEST_EPSG = 32633  # a projected CRS (UTM 33N) so the round-trip checks metres, not degrees


def tr(text: str) -> str:
    return QCoreApplication.translate("RsfmSelfTest", text)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class SelfTestResult:
    checks: list[Check]
    health: dict | None
    models: list[ModelInfo]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def write_test_raster(path: str, bands: int, gsd_m: float, size_px: int = 64, epsg: int = SELFTEST_EPSG) -> tuple:
    """A small georeferenced test raster (uint8 gradient + noise); returns its geotransform."""
    import numpy as np
    from osgeo import gdal, osr

    drv = gdal.GetDriverByName("GTiff")
    ds = drv.Create(path, size_px, size_px, bands, gdal.GDT_Byte)
    gt = (500000.0, gsd_m, 0.0, 5000000.0, 0.0, -gsd_m)
    ds.SetGeoTransform(gt)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size_px, 0:size_px]
    for b in range(bands):
        arr = ((xx * (b + 1) + yy * 2) % 256 + rng.integers(0, 20, (size_px, size_px))).clip(0, 255)
        ds.GetRasterBand(b + 1).WriteArray(arr.astype("uint8"))
    ds.FlushCache()
    ds = None
    return gt


def _same_crs_and_grid(src: str, out: str) -> tuple[bool, str]:
    from osgeo import gdal, osr

    a = gdal.Open(src)
    sa = osr.SpatialReference(wkt=a.GetProjection())
    b = gdal.OpenEx(out)
    if b is None:
        return False, f"cannot open output {out}"
    if b.RasterCount > 0:
        sb = osr.SpatialReference(wkt=b.GetProjection())
        same_grid = all(abs(x - y) < 1e-6 for x, y in zip(a.GetGeoTransform(), b.GetGeoTransform(), strict=True))
        ok = bool(sa.IsSame(sb)) and same_grid and (a.RasterXSize, a.RasterYSize) == (b.RasterXSize, b.RasterYSize)
        return ok, (f"output CRS {sb.GetAuthorityCode(None)}, grid "
                    f"{'identical' if same_grid else 'DIFFERENT'} to the input")
    lyr = b.GetLayer(0)
    sb = lyr.GetSpatialRef() if lyr is not None else None
    ok = sb is not None and bool(sa.IsSame(sb))
    if lyr is not None and lyr.GetFeatureCount() > 0:
        ext = lyr.GetExtent()  # (minx, maxx, miny, maxy)
        gt = a.GetGeoTransform()
        inside = (gt[0] - 1 <= ext[0] and ext[1] <= gt[0] + gt[1] * a.RasterXSize + 1)
        ok = ok and inside
    return ok, f"vector output CRS {sb.GetAuthorityCode(None) if sb else 'missing'}"


def run_self_test(client_factory: Callable[[], RsfmClient], work_dir: str | None = None,
                  timeout_s: float = 120.0) -> SelfTestResult:
    """Run every check; never raises (each failure becomes a failed :class:`Check`)."""
    checks: list[Check] = []
    health: dict | None = None
    models: list[ModelInfo] = []
    try:
        client = client_factory()
        t0 = time.monotonic()
        health = client.health()
        checks.append(Check(tr("Backend answers"), True, f"{client.base_url}, version {health.get('version')}, "
                            f"{1000 * (time.monotonic() - t0):.0f} ms"))
    except Exception as exc:  # noqa: BLE001 - report, don't raise
        checks.append(Check(tr("Backend answers"), False, getattr(exc, "message", str(exc))))
        return SelfTestResult(checks, None, [])
    checks.append(Check(tr("Device"), True, f"{health.get('device')} (runtimes: "
                        f"{', '.join(map(str, health.get('runtimes', [])))})"))
    try:
        models = client.models()
        checks.append(Check(tr("Models installed"), bool(models),
                            f"{len(models)}: " + ", ".join(m.id for m in models[:8]) if models else
                            tr("none; add a model folder in Settings")))
    except RsfmClientError as exc:
        checks.append(Check(tr("Models installed"), False, exc.message))
    order = ["semantic_segmentation", "change_detection", "object_detection", "rotated_detection",
             "instance_segmentation", "scene_classification"]
    candidates = sorted(models, key=lambda m: order.index(m.task) if m.task in order else 99)
    if not candidates:
        checks.append(Check(tr("Tiny model run"), False, tr("skipped: no model installed")))
        return SelfTestResult(checks, health, models)
    model = candidates[0]
    work = Path(work_dir or tempfile.mkdtemp(prefix="rsfm_selftest_"))
    work.mkdir(parents=True, exist_ok=True)
    src = str(work / "selftest_input.tif")
    size = max(64, min(int(model.config.get("tile_size_px", 64)), 128))
    write_test_raster(src, max(1, len(model.bands)), float(model.gsd_m or 1.0), size_px=size)
    inputs = {"raster": src}
    if model.task == "change_detection":
        after = str(work / "selftest_after.tif")
        write_test_raster(after, max(1, len(model.bands)), float(model.gsd_m or 1.0), size_px=size)
        inputs["raster_after"] = after
    try:
        t0 = time.monotonic()
        job = client.submit({"task": model.task, "model": model.id, "inputs": inputs,
                             "output_dir": str(work / "out"), "options": {}})
        job = client.wait(job.id, timeout_s=timeout_s)
        ok = job.state == "succeeded" and bool(job.outputs)
        checks.append(Check(tr("Tiny model run"), ok,
                            f"{model.id} on {size}x{size} px: {job.state} in {time.monotonic() - t0:.1f} s"
                            + (f" – {job.error_message}" if job.error_message else "")))
        if ok:
            same, detail = _same_crs_and_grid(src, job.outputs[0].path)
            checks.append(Check(tr("CRS round-trip"), same, f"EPSG:{SELFTEST_EPSG} in, {detail}"))
    except RsfmClientError as exc:
        checks.append(Check(tr("Tiny model run"), False, exc.message))
    return SelfTestResult(checks, health, models)


def diagnostics_report(result: SelfTestResult | None, log_tail: str = "") -> str:
    """Plain-text report for bug reports: versions, settings (token redacted), checks, backend log."""
    from ..settings import RsfmSettings

    try:
        meta = (Path(__file__).resolve().parent.parent / "metadata.txt").read_text(encoding="utf-8")
        version = next((ln.split("=", 1)[1] for ln in meta.splitlines() if ln.startswith("version=")), "?")
    except OSError:
        version = "?"
    s = RsfmSettings.load()
    settings = {k: v for k, v in vars(s).items() if k != "hf_token"}
    settings["hf_token"] = "set" if s.hf_token else "not set"
    settings["resolved_python"] = s.resolved_python()
    lines = [
        "RSFM diagnostics",
        f"plugin {version} · QGIS {Qgis.QGIS_VERSION} · Python {sys.version.split()[0]} · "
        f"{platform.platform()}",
        "settings: " + json.dumps(settings, default=str),
    ]
    if result is not None:
        lines.append("health: " + json.dumps(result.health, default=str))
        lines += [f"[{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in result.checks]
    if log_tail:
        lines += ["--- backend log (last lines) ---", log_tail]
    return "\n".join(lines)


class SelfTestDialog(QDialog):
    """Runs the self-test in the background and shows the copyable report."""

    def __init__(self, client_factory: Callable[[], RsfmClient], parent=None, autorun: bool = True) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("RSFM self-test and diagnostics"))
        self.setWindowIcon(icon("rsfm.svg"))
        self.resize(720, 460)
        self.client_factory = client_factory
        self.result: SelfTestResult | None = None
        lay = QVBoxLayout(self)
        self.summary = QLabel(tr("Running checks…"))
        lay.addWidget(self.summary)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        lay.addWidget(self.progress)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        lay.addWidget(self.text, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = buttons.addButton(tr("Copy report"), QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy_report)
        self.rerun_button = buttons.addButton(tr("Run again"), QDialogButtonBox.ButtonRole.ActionRole)
        self.rerun_button.clicked.connect(self.start)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.task: CallTask | None = None
        if autorun:
            self.start()

    def start(self) -> CallTask:
        self.rerun_button.setEnabled(False)
        self.progress.setRange(0, 0)
        self.summary.setText(tr("Running checks…"))
        self.task = CallTask(tr("RSFM self-test"), lambda: run_self_test(self.client_factory), self._done)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _done(self, result: SelfTestResult | None, error: str | None) -> None:
        from .. import service

        self.result = result
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.rerun_button.setEnabled(True)
        if result is None:
            msg = tr("Self-test could not run: {error}").format(error=error)
            self.summary.setText(f"<span style='color:#b00020'>{msg}</span>")
        else:
            passed = sum(c.ok for c in result.checks)
            colour = "#1b7f3b" if result.ok else "#b00020"
            msg = tr("{passed}/{total} checks passed").format(passed=passed, total=len(result.checks))
            self.summary.setText(f"<b style='color:{colour}'>{msg}</b>")
        self.text.setPlainText(diagnostics_report(result, service.launcher().log_tail(30)))

    def copy_report(self) -> None:
        QApplication.clipboard().setText(self.text.toPlainText())
