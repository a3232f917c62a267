"""The RSFM dock: backend health, one page per task, the chat panel, and entry points to the dialogs."""

from __future__ import annotations

import importlib
import threading

from qgis.core import QgsApplication
from qgis.gui import QgsDockWidget
from qgis.PyQt.QtCore import QCoreApplication, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QStackedWidget,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .. import service
from ..client import ModelInfo
from ..icons import icon
from ..settings import RsfmSettings
from ..tasks.call_task import CallTask
from .task_page import TASK_DEFS, TaskPage, task_label

HEALTH_INTERVAL_MS = 5000


def tr(text: str) -> str:
    return QCoreApplication.translate("RsfmDock", text)


def _tool_button(qicon, tip: str, slot) -> QToolButton:
    b = QToolButton()
    b.setIcon(qicon)
    b.setToolTip(tip)
    b.setAutoRaise(True)
    b.clicked.connect(slot)
    return b


class RsfmDock(QgsDockWidget):
    """Everything interactive of the plugin in one dock."""

    health_polled = pyqtSignal(object)  # emitted from the polling thread, delivered on the main thread

    def __init__(self, iface, parent=None, auto_start: bool = True) -> None:
        super().__init__(tr("RSFM – remote-sensing models"), parent)
        self.iface = iface
        self.models: list[ModelInfo] = []
        self.health: dict | None = None
        self._background: list[CallTask] = []  # keep Python references while tasks run
        self._dialogs: list = []
        root = QWidget()
        lay = QVBoxLayout(root)
        lay.setContentsMargins(4, 4, 4, 4)

        # health row
        hrow = QHBoxLayout()
        self.health_dot = QLabel("●")
        self.health_label = QLabel(tr("Backend: not started"))
        self.health_label.setWordWrap(True)
        hrow.addWidget(self.health_dot)
        hrow.addWidget(self.health_label, 1)
        self.start_button = _tool_button(QgsApplication.getThemeIcon("/mActionRefresh.svg"),
                                         tr("Start or reconnect the backend and reload the model list"),
                                         self.start_backend)
        hrow.addWidget(self.start_button)
        hrow.addWidget(_tool_button(icon("models.svg"), tr("Model browser"), self.open_model_browser))
        hrow.addWidget(_tool_button(QgsApplication.getThemeIcon("/mActionOptions.svg"), tr("Settings"),
                                    self.open_settings))
        hrow.addWidget(_tool_button(QgsApplication.getThemeIcon("/mActionHelpContents.svg"),
                                    tr("Self-test and diagnostics"), self.open_self_test))
        lay.addLayout(hrow)

        self.tabs = QTabWidget()
        lay.addWidget(self.tabs, 1)

        # tasks tab: a task picker over a stack of pages
        tasks = QWidget()
        tl = QVBoxLayout(tasks)
        tl.setContentsMargins(2, 4, 2, 2)
        self.task_combo = QComboBox()
        self.stack = QStackedWidget()
        self.pages: dict[str, TaskPage] = {}
        for tdef in TASK_DEFS:
            page = TaskPage(tdef, iface, self.client, self.output_dir)
            self.pages[tdef.task] = page
            self.stack.addWidget(page)
            self.task_combo.addItem(icon(tdef.icon), task_label(tdef), tdef.task)
        self.task_combo.currentIndexChanged.connect(self.stack.setCurrentIndex)
        tl.addWidget(self.task_combo)
        tl.addWidget(self.stack, 1)
        self.tabs.addTab(tasks, icon("rsfm.svg"), tr("Tasks"))
        self.tabs.addTab(self._chat_widget(), QgsApplication.getThemeIcon("/mActionFormAnnotation.svg"),
                         tr("Chat"))
        self.setWidget(root)

        self.timer = QTimer(self)
        self.timer.setInterval(HEALTH_INTERVAL_MS)
        self.timer.timeout.connect(self.poll_health)
        self.health_polled.connect(self._health_polled)
        self._polling = False
        self._set_health(None, tr("Backend: not started"))
        if auto_start:
            self.visibilityChanged.connect(self._on_visible)

    # -- pieces ---------------------------------------------------------------------------------------
    def _chat_widget(self) -> QWidget:
        """The chat panel from ``qgis_rsfm/chat_panel.py`` when present, else a marked placeholder."""
        package = __package__.rsplit(".", 1)[0]  # "qgis_rsfm" (or wherever the plugin is installed)
        try:
            mod = importlib.import_module(f"{package}.chat_panel")
            return mod.ChatPanel(client_factory=self.client, iface=self.iface, parent=self)
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.chat_panel":
                raise
        except Exception as exc:  # noqa: BLE001 - a broken chat panel must not take the dock down
            return self._placeholder(tr("The chat panel failed to load: {error}").format(error=exc))
        return self._placeholder(tr("CHAT PANEL PLACEHOLDER – the grounded chat about the selected raster "
                                    "(qgis_rsfm/chat_panel.py) is not installed in this build."))

    @staticmethod
    def _placeholder(text: str) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lab = QLabel(text)
        lab.setWordWrap(True)
        lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lab.setStyleSheet("color:#777; border:1px dashed #aaa; padding:12px")
        lay.addWidget(lab)
        return w

    def client(self):
        """Client for a live backend (starts one if needed); safe on worker threads."""
        return service.get_client()

    def output_dir(self):
        return RsfmSettings.load().resolved_output_dir()

    # -- backend --------------------------------------------------------------------------------------
    def _on_visible(self, visible: bool) -> None:
        if visible and self.health is None and not self._background:
            self.start_backend()
        if visible:
            self.timer.start()
        else:
            self.timer.stop()

    def _run_background(self, description: str, fn, on_done) -> CallTask:
        task = CallTask(description, fn, on_done=lambda r, e: (self._background.remove(task), on_done(r, e)))
        self._background.append(task)
        QgsApplication.taskManager().addTask(task)
        return task

    def start_backend(self) -> CallTask:
        """Start (or reconnect to) the backend and load the model list, without blocking the GUI."""
        self._set_health(None, tr("Backend: starting…"), busy=True)

        def work():
            c = self.client()
            return c.health(), c.models()

        return self._run_background(tr("RSFM: start backend"), work, self._started)

    def _started(self, result, error: str | None) -> None:
        if error:
            self._set_health(None, tr("Backend: not available – {error}").format(error=error))
            return
        health, models = result
        self.set_models(models)
        self._set_health(health)
        if self.isVisible():
            self.timer.start()

    def set_models(self, models: list[ModelInfo]) -> None:
        self.models = list(models)
        for page in self.pages.values():
            page.set_models(self.models)
        for d in self._dialogs:
            if hasattr(d, "set_models") and d.isVisible():  # an open model browser shows the new list too
                d.set_models(self.models)

    def poll_health(self) -> None:
        """Periodic check on a plain thread: a busy backend must never freeze the map window."""
        if self._polling:
            return
        self._polling = True

        def work() -> None:
            try:
                h = service.launcher().health()
            except Exception:  # noqa: BLE001 - a failed poll just reads as "down"
                h = None
            self.health_polled.emit(h)

        threading.Thread(target=work, name="rsfm-health", daemon=True).start()

    def _health_polled(self, h) -> None:
        self._polling = False
        if h is None and self.health is not None:
            self._set_health(None, tr("Backend: stopped – click ↻ to restart it"))
        elif h is not None:
            self._set_health(h)

    def _set_health(self, health: dict | None, text: str | None = None, busy: bool = False) -> None:
        self.health = health
        if health is not None:
            jobs = health.get("jobs", {})
            text = tr("Backend {version} on {device} · {n_models} models · jobs running {running}, "
                      "queued {queued}").format(version=health.get("version", ""), device=health.get("device", "?"),
                                                n_models=len(self.models), running=jobs.get("running", 0),
                                                queued=jobs.get("queued", 0))
            colour = "#1b7f3b"
        else:
            colour = "#c08000" if busy else "#b00020"
        self.health_dot.setStyleSheet(f"color:{colour}; font-size:16px")
        self.health_label.setText(text or "")

    # -- dialogs --------------------------------------------------------------------------------------
    def open_model_browser(self):
        from .model_browser import ModelBrowserDialog

        dlg = ModelBrowserDialog(self.models, self.iface, parent=self.iface.mainWindow() if self.iface else None,
                                 client_factory=self.client)
        dlg.refresh_requested.connect(self.start_backend)
        dlg.model_installed.connect(lambda _model_id: self.start_backend())  # new model -> every picker
        self._keep(dlg)
        dlg.show()
        return dlg

    def open_settings(self):
        from .settings_dialog import SettingsDialog

        dlg = SettingsDialog(parent=self.iface.mainWindow() if self.iface else None)
        dlg.settings_saved.connect(self.start_backend)
        self._keep(dlg)
        dlg.show()
        return dlg

    def open_self_test(self):
        from .selftest import SelfTestDialog

        dlg = SelfTestDialog(self.client, parent=self.iface.mainWindow() if self.iface else None)
        self._keep(dlg)
        dlg.show()
        return dlg

    def _keep(self, dlg) -> None:
        self._dialogs = [d for d in self._dialogs if d.isVisible()] + [dlg]

    def shutdown(self) -> None:
        """Stop timers and cancel running jobs (plugin unload)."""
        self.timer.stop()
        for task in list(self._background):
            task.on_done = None  # the dock is going away; the task may still finish later
            task.cancel()
        self._background = []
        for page in self.pages.values():
            page.cancel_job()
            if page.task is not None:
                page.task.on_finished = None
        for d in self._dialogs:
            d.close()
