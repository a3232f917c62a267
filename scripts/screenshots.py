#!/usr/bin/env python3
"""Screenshots of the plugin in a real QGIS window (under Xvfb) for docs/screenshots/.

    python3 scripts/screenshots.py [--out docs/screenshots]

Run from a shell, it builds the fixture models (in the backend venv), then starts the real QGIS desktop
under ``xvfb-run`` with a throw-away profile and runs this same file inside it (``qgis --code``). Inside
QGIS it loads the plugin, opens a sample raster, starts the backend, runs a land-cover segmentation with
the dock, and saves one PNG per task page plus the model browser, settings and self-test dialogs.
Models: every package in resources/models (bundled) plus the test fixtures (random weights; their
results show the plumbing, not accuracy).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Inside ``qgis --code`` there is no __file__; the launcher passes the repository in the environment.
REPO = Path(os.environ["RSFM_SHOTS_REPO"]) if os.environ.get("RSFM_SHOTS_REPO") else \
    Path(__file__).resolve().parent.parent
SAMPLE_AFTER = REPO / "resources" / "samples" / "naip_2020_rgb.tif"
SAMPLE_BEFORE = REPO / "resources" / "samples" / "naip_2009_rgb.tif"
SCREEN = "1600x1000x24"


# -- outside QGIS ----------------------------------------------------------------------------------------
def launch(out_dir: Path) -> int:
    venv_py = os.environ.get("RSFM_BACKEND_PYTHON") or str(REPO / ".venv" / "bin" / "python")
    work = Path(tempfile.mkdtemp(prefix="rsfm_shots_"))
    models_dir = ""
    # All fixtures at once; if a model still in development breaks that, the segmenter alone is enough.
    for tasks in ([], ["--tasks", "semantic_segmentation"]):
        fx = subprocess.run([venv_py, str(REPO / "tests" / "fixtures" / "make_fixtures.py"), str(work / "fixtures"),
                             *tasks], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if fx.returncode == 0:
            models_dir = str(Path(next(iter(json.loads(fx.stdout)["models"].values()))).parent)
            break
    if not models_dir:
        raise SystemExit(f"cannot build fixture models:\n{fx.stderr[-2000:]}")
    # A loopback Hub (tests/qgis/hub_seed.py) with the segmentation fixture pushed to it, so the model
    # browser can show its Hub part without the internet.
    hub = subprocess.Popen([venv_py, str(REPO / "tests" / "qgis" / "hub_seed.py"), str(work / "hub"),
                            str(Path(models_dir) / "rsfm-fixture-semantic-segmentation"), "--no-slow"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1", HF_HOME=str(work / "hf_seed")))
    hub_line = hub.stdout.readline()
    hub_url = json.loads(hub_line)["url"] if hub_line else ""
    env = dict(os.environ, RSFM_BACKEND_PYTHON=venv_py, RSFM_STATE_DIR=str(work / "state"),
               RSFM_SHOTS_HUB=hub_url, HF_HOME=str(work / "hf_home"), HF_HUB_DISABLE_XET="1",
               RSFM_SHOTS_OUT=str(out_dir.resolve()), RSFM_SHOTS_MODELS=models_dir,
               RSFM_SHOTS_WORK=str(work), RSFM_SHOTS_REPO=str(REPO), QGIS_PLUGINPATH="")
    env.pop("QT_QPA_PLATFORM", None)
    # QGIS's embedded Python finds its standard library through PATH: a pyenv/conda python3 first on PATH
    # would make it load the wrong stdlib ("Couldn't load SIP module").
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if ".pyenv" not in p and "conda" not in p) or "/usr/bin:/bin"
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONPATH", None)
    qgis = shutil.which("qgis.bin") or shutil.which("qgis") or "qgis"
    cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN}", qgis, "--nologo", "--noversioncheck",
           "--profiles-path", str(work / "profiles"), "--code", str(REPO / "scripts" / "screenshots.py")]
    try:
        proc = subprocess.run(cmd, env=env, timeout=900)
    finally:
        hub.stdin.close()
        hub.wait(10)
        hub.stdout.close()
    log = work / "screenshots.log"
    print(log.read_text() if log.is_file() else "QGIS wrote no log: did it start?")
    shutil.rmtree(work, ignore_errors=True)
    done = sorted(p.name for p in out_dir.glob("*.png"))
    print("screenshots:", ", ".join(done) or "none")
    return proc.returncode if done else 1


# -- inside QGIS -----------------------------------------------------------------------------------------
def inside_qgis(iface) -> None:  # noqa: C901 - a linear script of GUI steps
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication

    sys.path.insert(0, str(REPO))
    out = Path(os.environ["RSFM_SHOTS_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    from qgis_rsfm.settings import RsfmSettings

    s = RsfmSettings.load()
    s.model_dirs = [os.environ["RSFM_SHOTS_MODELS"]]
    s.device = "cpu"
    s.output_dir = os.path.join(os.environ["RSFM_SHOTS_WORK"], "outputs")
    s.hf_endpoint = os.environ.get("RSFM_SHOTS_HUB", "")
    s.save()

    import qgis.utils

    qgis.utils.loadPlugin("qgis_rsfm")
    qgis.utils.startPlugin("qgis_rsfm")
    plugin = qgis.utils.plugins["qgis_rsfm"]
    dock = plugin.dock
    win = iface.mainWindow()
    # Xvfb has no window manager: place the window over the whole screen ourselves.
    win.setGeometry(QApplication.primaryScreen().geometry())
    win.show()
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QDockWidget

    for d in win.findChildren(QDockWidget):
        if d.objectName() in ("Browser", "Browser2", "ProcessingToolbox", "LayerStyling"):
            d.hide()
    before = QgsRasterLayer(str(SAMPLE_BEFORE), "NAIP 2009")
    after = QgsRasterLayer(str(SAMPLE_AFTER), "NAIP 2020")
    QgsProject.instance().addMapLayer(before)
    QgsProject.instance().addMapLayer(after)
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(after.crs())
    canvas.setExtent(after.extent())
    dock.show()
    dock.raise_()
    win.resizeDocks([dock], [470], Qt.Orientation.Horizontal)
    log = open(Path(os.environ["RSFM_SHOTS_WORK"]) / "screenshots.log", "w")  # noqa: SIM115 - closed in finish()

    def say(msg: str) -> None:
        log.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        log.flush()

    def prefer_trained(box) -> None:
        """Select the first bundled (trained) model in a page's model box instead of a random-weight fixture."""
        for i in range(box.count()):
            if "fixture" not in (box.itemData(i) or ""):
                box.setCurrentIndex(i)
                return

    def grab(name: str, widget=None) -> None:
        iface.messageBar().clearWidgets()
        QApplication.processEvents()
        screen = QApplication.primaryScreen()
        if widget is None:
            pix = screen.grabWindow(0).copy(win.frameGeometry())
        else:
            pix = screen.grabWindow(0).copy(widget.frameGeometry())
        pix.save(str(out / f"{name}.png"))
        say(f"saved {name}.png {pix.width()}x{pix.height()}")

    def canvas_idle() -> bool:
        return not canvas.isDrawing()

    def steps():
        t0 = time.monotonic()
        while dock.health is None and time.monotonic() - t0 < 240:
            yield 0.5
        say(f"backend: {dock.health_label.text()}")
        page = dock.pages["semantic_segmentation"]
        dock.task_combo.setCurrentIndex(dock.task_combo.findData("semantic_segmentation"))
        page.layer_box.setLayer(after)
        prefer_trained(page.model_box)
        model = page.current_model()
        say(f"segmentation model: {model.id if model else None}")
        if model is not None and "fixture" in model.id:
            # Bigger tiles than the fixture's 64 px: fewer forward passes, so the run stays short on a small
            # CPU. A trained model runs with its own defaults.
            page.tile_spin.setValue(256)
            page.overlap_spin.setValue(32)
        else:
            # One tile per forward pass: the bundled package's model.onnx (which the backend prefers) was
            # exported with a fixed batch of 1 at 16:17 UTC, so its default batch_size 4 fails in ONNX Runtime.
            page.batch_spin.setValue(1)
        task = page.run_job()
        say(f"segmentation started: {task is not None} {page.status_label.text()}")
        t0 = time.monotonic()
        while page.task is not None and time.monotonic() - t0 < 600:
            yield 0.5
        say(f"segmentation: {page.status_label.text()}")
        for lyr in page.last_layers:
            if isinstance(lyr, QgsRasterLayer):
                lyr.renderer().setOpacity(0.55)
                lyr.triggerRepaint()
        canvas.refresh()
        dock.poll_health()  # the health line still counts the finished job until the next poll
        yield 2.0
        while not canvas_idle():
            yield 0.3
        for tdef_task, layer_a, layer_b in (
            ("semantic_segmentation", after, None), ("scene_classification", after, None),
            ("object_detection", after, None), ("rotated_detection", after, None),
            ("instance_segmentation", after, None), ("change_detection", before, after),
        ):
            dock.task_combo.setCurrentIndex(dock.task_combo.findData(tdef_task))
            p = dock.pages[tdef_task]
            p.layer_box.setLayer(layer_a)
            if layer_b is not None and p.after_box is not None:
                p.after_box.setLayer(layer_b)
            prefer_trained(p.model_box)
            yield 0.8
            grab(f"dock_{tdef_task}")
        # the chat tab: two grounded questions about NAIP 2020, answered from the land-cover layer just made
        dock.tabs.setCurrentIndex(1)
        chat = dock.tabs.widget(1)
        chat.raster_combo.setLayer(after)
        landcover = next((lyr for lyr in page.last_layers if isinstance(lyr, QgsRasterLayer)), None)
        chat.landcover_combo.setLayer(landcover)
        for question in ("What share of the area is water?", "Where is the vegetation?"):
            n = len(chat._turns)
            chat.ask(question)
            t0 = time.monotonic()
            while len(chat._turns) == n and time.monotonic() - t0 < 120 and "#b00" not in chat.status.styleSheet():
                yield 0.3
            say(f"chat: {question} -> {chat._turns[-1]['answer']['text'] if len(chat._turns) > n else chat.status.text()}")
        yield 0.8
        grab("dock_chat")
        dock.tabs.setCurrentIndex(0)
        dock.task_combo.setCurrentIndex(0)
        dlg = dock.open_model_browser()
        dlg.layer_box.setLayer(after)
        dlg.task_combo.setCurrentIndex(dlg.task_combo.findData("semantic_segmentation"))
        for i in range(dlg.list.count()):  # show a trained model's card (metrics) when one is installed
            if "fixture" not in dlg.list.item(i).text():
                dlg.list.setCurrentRow(i)
                break
        dlg.resize(980, 640)
        dlg.move(win.frameGeometry().center() - dlg.rect().center())
        yield 1.0
        grab("model_browser", dlg)
        if os.environ.get("RSFM_SHOTS_HUB"):
            dlg.search_hub()
            t0 = time.monotonic()
            while dlg.hub_task is not None and time.monotonic() - t0 < 60:
                yield 0.5
            for i in range(dlg.list.count()):
                if dlg.list.item(i).text().startswith("☁"):
                    dlg.list.setCurrentRow(i)
                    break
            yield 1.0
            grab("model_browser_hub", dlg)
        dlg.close()
        sd = dock.open_settings()
        sd.move(win.frameGeometry().center() - sd.rect().center())
        yield 1.0
        grab("settings", sd)
        sd.close()
        st = dock.open_self_test()
        st.move(win.frameGeometry().center() - st.rect().center())
        t0 = time.monotonic()
        while st.result is None and time.monotonic() - t0 < 240:
            yield 0.5
        yield 0.5
        grab("self_test", st)
        st.close()

    gen = steps()

    def tick() -> None:
        try:
            delay = next(gen)
        except StopIteration:
            finish()
            return
        except Exception as exc:  # noqa: BLE001 - record and quit instead of hanging Xvfb
            import traceback

            say("FAILED: " + "".join(traceback.format_exception(exc)))
            finish()
            return
        QTimer.singleShot(int(delay * 1000), tick)

    def finish() -> None:
        say("done")
        log.close()
        try:
            plugin.unload()  # stops the backend this QGIS started
        finally:
            # No "save project?" prompt, no lingering window under Xvfb.
            QTimer.singleShot(500, lambda: os._exit(0))

    QTimer.singleShot(1500, tick)


def _iface():
    try:
        from qgis.utils import iface

        return iface
    except ImportError:
        return None


if __name__ == "__main__" and _iface() is None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    sys.exit(launch(Path(ap.parse_args().out)))
elif _iface() is not None:
    inside_qgis(_iface())
