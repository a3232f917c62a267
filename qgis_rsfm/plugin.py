"""Wires the plugin's pieces into QGIS: Processing provider, dock, menu and toolbar actions."""

from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication, Qt
from qgis.PyQt.QtWidgets import QAction

from .icons import icon
from .processing.provider import RsfmProvider


class RsfmPlugin:
    """The object QGIS holds for the plugin (``classFactory`` returns it)."""

    MENU = "&RSFM"

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: RsfmProvider | None = None
        self.dock = None
        self.actions: list[QAction] = []
        self.toolbar = None

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("RsfmPlugin", text)

    # -- Processing (also what qgis_process loads) ------------------------------------------------------
    def initProcessing(self) -> None:  # noqa: N802
        if self.provider is None:
            self.provider = RsfmProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    # -- GUI ------------------------------------------------------------------------------------------
    def initGui(self) -> None:  # noqa: N802
        from .gui.dock import RsfmDock

        self.initProcessing()
        self.dock = RsfmDock(self.iface, self.iface.mainWindow())
        self.dock.setObjectName("RsfmDock")
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()

        self.toolbar = self.iface.addToolBar(self.tr("RSFM"))
        self.toolbar.setObjectName("RsfmToolbar")
        toggle = self.dock.toggleViewAction()
        toggle.setIcon(icon("rsfm.svg"))
        toggle.setText(self.tr("RSFM panel"))
        self._add(toggle, toolbar=True)
        self._add(self._action("models.svg", self.tr("Model browser…"), self.dock.open_model_browser))
        self._add(self._action("", self.tr("Settings…"), self.dock.open_settings,
                               QgsApplication.getThemeIcon("/mActionOptions.svg")))
        self._add(self._action("", self.tr("Self-test and diagnostics…"), self.dock.open_self_test,
                               QgsApplication.getThemeIcon("/mActionHelpContents.svg")))

    def _action(self, icon_name: str, text: str, slot, qicon=None) -> QAction:
        a = QAction(qicon if qicon is not None else icon(icon_name), text, self.iface.mainWindow())
        a.triggered.connect(slot)
        return a

    def _add(self, action: QAction, toolbar: bool = False) -> None:
        self.iface.addPluginToRasterMenu(self.MENU, action)
        if toolbar and self.toolbar is not None:
            self.toolbar.addAction(action)
        self.actions.append(action)

    def unload(self) -> None:
        for a in self.actions:
            self.iface.removePluginRasterMenu(self.MENU, a)
        self.actions = []
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        from . import service

        service.shutdown()
