"""Model browser: every installed model's card (task, classes, bands, GSD, licence, metrics) and how well
it fits a chosen layer."""

from __future__ import annotations

import html

from qgis.core import QgsMapLayerProxyModel, QgsRasterLayer
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtCore import QCoreApplication, Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
)

from ..client import ModelInfo
from ..fitness import check_fitness
from ..icons import icon
from ..layers import layer_facts
from .task_page import TASK_DEFS


def tr(text: str) -> str:
    return QCoreApplication.translate("RsfmModelBrowser", text)


TASK_ICONS = {t.task: t.icon for t in TASK_DEFS}
TASK_LABELS = {t.task: t.label for t in TASK_DEFS}


def model_card_html(model: ModelInfo, problems: list[str] | None = None, warnings: list[str] | None = None) -> str:
    """The model card as HTML for the browser (the package README follows the facts table)."""
    c = model.config
    e = html.escape
    rows = [
        (tr("Task"), TASK_LABELS.get(model.task, model.task)),
        (tr("Architecture"), c.get("architecture", "")),
        (tr("Bands"), f"{len(model.bands)}: {', '.join(model.bands)} ({c.get('input_dtype', '?')})"),
        (tr("Pixel size (GSD)"), _gsd_text(c)),
        (tr("Tile"), f"{c.get('tile_size_px', '?')} px, overlap {c.get('tile_overlap_px', '?')} px"),
        (tr("Licence"), c.get("licence", "unknown")),
        (tr("Training data"), c.get("training_data", "")),
        (tr("Source"), f"{model.source} – {model.path}"),
    ]
    out = [f"<h2>{e(model.name)}</h2>"]
    if c.get("description"):
        out.append(f"<p>{e(c['description'])}</p>")
    if problems or warnings:
        out.append("<p>")
        out += [f"<span style='color:#b00020'>✗ {e(p)}</span><br>" for p in problems or []]
        out += [f"<span style='color:#a15c00'>⚠ {e(w)}</span><br>" for w in warnings or []]
        out.append("</p>")
    elif problems is not None:
        out.append(f"<p style='color:#1b7f3b'>✓ {tr('Fits the chosen layer.')}</p>")
    out.append("<table cellspacing='0' cellpadding='3'>")
    out += [f"<tr><td><b>{e(k)}</b></td><td>{e(str(v))}</td></tr>" for k, v in rows]
    out.append("</table>")
    classes = c.get("classes", [])
    if classes:
        out.append(f"<h3>{tr('Classes')} ({len(classes)})</h3><table cellspacing='0' cellpadding='2'>")
        for i, cl in enumerate(classes):
            col = e(str(cl.get("color", "#888888")))
            out.append(f"<tr><td>{i}</td><td bgcolor='{col}' width='18'>&nbsp;</td><td>{e(str(cl.get('name')))}"
                       "</td></tr>")
        out.append("</table>")
    metrics = c.get("metrics") or {}
    if metrics:
        out.append(f"<h3>{tr('Metrics (held-back data)')}</h3><table cellspacing='0' cellpadding='2'>")
        for k, v in metrics.items():
            val = f"{v:.3f}" if isinstance(v, float) else str(v)
            out.append(f"<tr><td><b>{e(str(k))}</b></td><td>{e(val)}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


def _gsd_text(c: dict) -> str:
    g = c.get("gsd_m")
    rng = c.get("gsd_range_m")
    if g is None:
        return "?"
    return f"{g:g} m/px" + (f" (works at {rng[0]:g}–{rng[1]:g} m)" if rng else "")


class ModelBrowserDialog(QDialog):
    """Lists models, filtered by task and by fitness for a layer; shows the card of the selected one."""

    refresh_requested = pyqtSignal()

    def __init__(self, models: list[ModelInfo], iface=None, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("RSFM model browser"))
        self.setWindowIcon(icon("models.svg"))
        self.resize(860, 560)
        self.models = list(models)
        lay = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel(tr("Task")))
        self.task_combo = QComboBox()
        self.task_combo.addItem(tr("All tasks"), "")
        for t in TASK_DEFS:
            self.task_combo.addItem(icon(t.icon), tr(t.label), t.task)
        top.addWidget(self.task_combo)
        top.addWidget(QLabel(tr("Check against layer")))
        self.layer_box = QgsMapLayerComboBox()
        self.layer_box.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.layer_box.setAllowEmptyLayer(True)
        top.addWidget(self.layer_box, 1)
        self.fit_only = QCheckBox(tr("Only models that fit"))
        top.addWidget(self.fit_only)
        lay.addLayout(top)
        split = QSplitter(Qt.Orientation.Horizontal)
        self.list = QListWidget()
        self.card = QTextBrowser()
        self.card.setOpenExternalLinks(True)
        split.addWidget(self.list)
        split.addWidget(self.card)
        split.setSizes([260, 600])
        lay.addWidget(split, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.reload_button = buttons.addButton(tr("Reload from backend"), QDialogButtonBox.ButtonRole.ActionRole)
        self.reload_button.clicked.connect(self.refresh_requested.emit)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.task_combo.currentIndexChanged.connect(self.populate)
        self.layer_box.layerChanged.connect(self.populate)
        self.fit_only.toggled.connect(self.populate)
        self.list.currentItemChanged.connect(self.show_current)
        self.populate()

    def set_models(self, models: list[ModelInfo]) -> None:
        self.models = list(models)
        self.populate()

    def _fitness(self, m: ModelInfo):
        layer = self.layer_box.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            return None, None
        fit = check_fitness(m.config, layer_facts(layer))
        return fit.problems, fit.warnings

    def populate(self) -> None:
        task = self.task_combo.currentData()
        self.list.clear()
        for m in self.models:
            if task and m.task != task:
                continue
            problems, warnings = self._fitness(m)
            if self.fit_only.isChecked() and problems:
                continue
            mark = "" if problems is None else ("✗ " if problems else ("⚠ " if warnings else "✓ "))
            item = QListWidgetItem(icon(TASK_ICONS.get(m.task, "rsfm.svg")), f"{mark}{m.name}")
            item.setData(Qt.ItemDataRole.UserRole, m.id)
            item.setToolTip(TASK_LABELS.get(m.task, m.task))
            self.list.addItem(item)
        if self.list.count():
            self.list.setCurrentRow(0)
        else:
            self.card.setHtml(f"<p>{tr('No model matches. Add model folders in RSFM Settings, or untick')} "
                              f"'{tr('Only models that fit')}'.</p>")

    def show_current(self, item, _previous=None) -> None:
        if item is None:
            return
        mid = item.data(Qt.ItemDataRole.UserRole)
        m = next((x for x in self.models if x.id == mid), None)
        if m is None:
            return
        problems, warnings = self._fitness(m)
        text = model_card_html(m, problems, warnings)
        if m.card:
            card = m.card
            if card.startswith("---"):  # drop the Hub YAML header; the table above says the same
                end = card.find("\n---", 3)
                card = card[end + 4:] if end > 0 else card
            lines = card.strip().splitlines()
            if lines and lines[0].startswith("# "):  # the title is already the heading above
                card = "\n".join(lines[1:])
            text += "<hr>" + _markdown_to_html(card)
        self.card.setHtml(text)


def _markdown_to_html(md: str) -> str:
    from qgis.PyQt.QtGui import QTextDocument

    doc = QTextDocument()
    if hasattr(doc, "setMarkdown"):
        doc.setMarkdown(md)
        return doc.toHtml()
    return "<pre>" + html.escape(md) + "</pre>"
