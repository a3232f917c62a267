"""A QgisInterface for tests built from real QGIS widgets (no mocks): a main window with a real
QgsMapCanvas, QgsMessageBar, menus, toolbars and dock areas. It implements the calls the plugin makes."""

from __future__ import annotations

from qgis.core import QgsProject
from qgis.gui import QgsLayerTreeMapCanvasBridge, QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtWidgets import QMainWindow, QMenu, QToolBar, QVBoxLayout, QWidget


class QgisTestInterface:
    """The subset of ``qgis.gui.QgisInterface`` used by the RSFM plugin, on real objects."""

    def __init__(self) -> None:
        self._main = QMainWindow()
        self._main.resize(1200, 800)
        central = QWidget()
        lay = QVBoxLayout(central)
        self._bar = QgsMessageBar()
        self._canvas = QgsMapCanvas()
        self._canvas.resize(800, 600)
        lay.addWidget(self._bar)
        lay.addWidget(self._canvas, 1)
        self._main.setCentralWidget(central)
        self._bridge = QgsLayerTreeMapCanvasBridge(QgsProject.instance().layerTreeRoot(), self._canvas)
        self._raster_menu = self._main.menuBar().addMenu("&Raster")
        self._plugin_menus: dict[str, QMenu] = {}
        self.toolbars: list[QToolBar] = []
        self.docks: list = []

    def mainWindow(self):  # noqa: N802 - QGIS API
        return self._main

    def mapCanvas(self):  # noqa: N802
        return self._canvas

    def messageBar(self):  # noqa: N802
        return self._bar

    def activeLayer(self):  # noqa: N802
        return self._canvas.currentLayer()

    def addDockWidget(self, area, dock):  # noqa: N802
        self._main.addDockWidget(area, dock)
        self.docks.append(dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self._main.removeDockWidget(dock)
        if dock in self.docks:
            self.docks.remove(dock)

    def addToolBar(self, name):  # noqa: N802
        tb = self._main.addToolBar(name)
        self.toolbars.append(tb)
        return tb

    def addPluginToRasterMenu(self, name, action):  # noqa: N802
        menu = self._plugin_menus.get(name)
        if menu is None:
            menu = self._raster_menu.addMenu(name)
            self._plugin_menus[name] = menu
        menu.addAction(action)

    def removePluginRasterMenu(self, name, action):  # noqa: N802
        menu = self._plugin_menus.get(name)
        if menu is not None:
            menu.removeAction(action)
            if not menu.actions():
                self._raster_menu.removeAction(menu.menuAction())
                del self._plugin_menus[name]

    def raster_menu_actions(self, name) -> list:
        menu = self._plugin_menus.get(name)
        return list(menu.actions()) if menu is not None else []
