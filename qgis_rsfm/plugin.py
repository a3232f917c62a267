"""Wires the plugin's pieces into QGIS: Processing provider, dock, menu and toolbar actions."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication, QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, Qt, QTranslator
from qgis.PyQt.QtWidgets import QAction

from .icons import icon
from .processing.provider import RsfmProvider

I18N_DIR = Path(__file__).resolve().parent / "i18n"


def user_locale() -> str:
    """The locale QGIS shows its own interface in (Settings > Options > General), e.g. ``de`` or ``de_CH``."""
    return str(QgsSettings().value("locale/userLocale", "") or QgsApplication.locale() or "")


def translation_file(locale: str) -> Path | None:
    """The compiled translation for ``locale``: ``i18n/rsfm_de_CH.qm``, else ``i18n/rsfm_de.qm``, else None."""
    for name in dict.fromkeys((locale, locale.split("_")[0])):
        path = I18N_DIR / f"rsfm_{name}.qm"
        if name and path.is_file():
            return path
    return None


def install_translator(locale: str | None = None) -> QTranslator | None:
    """Install the plugin's translation for the user's QGIS locale; returns the translator (keep a reference,
    and pass it to ``QCoreApplication.removeTranslator`` on unload) or None when there is none for it."""
    path = translation_file(user_locale() if locale is None else locale)
    if path is None:
        return None
    translator = QTranslator()
    if not translator.load(str(path)):
        return None  # a damaged .qm: English is better than failing to load the plugin
    QCoreApplication.installTranslator(translator)
    return translator


class RsfmPlugin:
    """The object QGIS holds for the plugin (``classFactory`` returns it)."""

    MENU = "&RSFM"

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: RsfmProvider | None = None
        self.dock = None
        self.actions: list[QAction] = []
        self.toolbar = None
        # Before any widget or Processing algorithm exists, so every label is looked up in the user's language.
        self.translator = install_translator()

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
        if self.translator is not None:
            QCoreApplication.removeTranslator(self.translator)
            self.translator = None
