"""Model browser: every installed model's card (task, classes, bands, GSD, licence, metrics) and how well
it fits a chosen layer, next to the RSFM models on the configured Hugging Face Hub endpoint (repos tagged
``rsfm``), which can be installed with a progress bar and Cancel (a QgsTask polling the backend's
``hub_install`` job)."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from qgis.core import QgsApplication, QgsMapLayerProxyModel, QgsRasterLayer
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtCore import QCoreApplication, Qt, pyqtSignal, pyqtSlot
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
)

from ..client import ModelInfo, RsfmClient
from ..fitness import check_fitness
from ..icons import icon
from ..layers import layer_facts
from ..tasks.call_task import CallTask
from ..tasks.job_task import Canceled, Failed, JobOutcome, JobSpec, RsfmJobTask, Success
from .task_page import TASK_DEFS, task_label

HUB_ROLE = Qt.ItemDataRole.UserRole + 1  # the Hub listing entry (dict) of a not-installed model


def tr(text: str) -> str:
    return QCoreApplication.translate("RsfmModelBrowser", text)


TASK_ICONS = {t.task: t.icon for t in TASK_DEFS}
_TASK_DEF = {t.task: t for t in TASK_DEFS}


def task_name(task: str, default: str) -> str:
    """The task's name in the user's language (looked up at call time, after the plugin's translator is in)."""
    return task_label(_TASK_DEF[task]) if task in _TASK_DEF else default


def model_card_html(model: ModelInfo, problems: list[str] | None = None, warnings: list[str] | None = None) -> str:
    """The model card as HTML for the browser (the package README follows the facts table)."""
    c = model.config
    e = html.escape
    rows = [
        (tr("Task"), task_name(model.task, model.task)),
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
        fits = tr("Fits the chosen layer.")
        out.append(f"<p style='color:#1b7f3b'>✓ {fits}</p>")
    out.append("<table cellspacing='0' cellpadding='3'>")
    out += [f"<tr><td><b>{e(k)}</b></td><td>{e(str(v))}</td></tr>" for k, v in rows]
    out.append("</table>")
    classes = c.get("classes", [])
    if classes:
        heading = tr("Classes ({n})").format(n=len(classes))
        out.append(f"<h3>{heading}</h3><table cellspacing='0' cellpadding='2'>")
        for i, cl in enumerate(classes):
            col = e(str(cl.get("color", "#888888")))
            out.append(f"<tr><td>{i}</td><td bgcolor='{col}' width='18'>&nbsp;</td><td>{e(str(cl.get('name')))}"
                       "</td></tr>")
        out.append("</table>")
    metrics = c.get("metrics") or {}
    if metrics:
        heading = tr("Metrics (held-back data)")
        out.append(f"<h3>{heading}</h3><table cellspacing='0' cellpadding='2'>")
        for k, v in metrics.items():
            val = f"{v:.3f}" if isinstance(v, float) else str(v)
            out.append(f"<tr><td><b>{e(str(k))}</b></td><td>{e(val)}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


def hub_card_html(entry: dict[str, Any], endpoint: str) -> str:
    """What the Hub listing says about a model that is not installed yet."""
    e = html.escape
    rows = [
        (tr("Task"), task_name(entry.get("task") or "", entry.get("task") or tr("unknown (no rsfm-<task> tag)"))),
        (tr("Repository"), entry.get("repo_id", "")),
        (tr("Revision"), (entry.get("sha") or "")[:12]),
        (tr("Licence"), entry.get("license") or tr("not stated")),
        (tr("Downloads"), entry.get("downloads", 0)),
        (tr("Last modified"), entry.get("last_modified") or ""),
        (tr("Hub"), endpoint),
    ]
    note = tr("On the Hub, not installed yet. Install it to see its full card (classes, bands, pixel size) "
              "and to use it.")
    out = [f"<h2>{e(entry.get('repo_id', ''))}</h2>", f"<p style='color:#555'>{note}</p>",
           "<table cellspacing='0' cellpadding='3'>"]
    out += [f"<tr><td><b>{e(k)}</b></td><td>{e(str(v))}</td></tr>" for k, v in rows]
    out.append("</table>")
    tags = [t for t in entry.get("tags", []) if not t.startswith(("region:", "arxiv:"))]
    if tags:
        label = tr("Tags")
        out.append(f"<p><b>{label}</b>: {e(', '.join(tags))}</p>")
    return "\n".join(out)


def _gsd_text(c: dict) -> str:
    g = c.get("gsd_m")
    rng = c.get("gsd_range_m")
    if g is None:
        return "?"
    return f"{g:g} m/px" + (f" (works at {rng[0]:g}–{rng[1]:g} m)" if rng else "")


class ModelBrowserDialog(QDialog):
    """Lists installed models and the RSFM models on the Hub, filtered by task and by fitness for a layer;
    shows the card of the selected one and installs Hub models.

    Args:
        models: the installed models (``GET /models``).
        iface: the QGIS interface (unused in tests).
        client_factory: returns a client for a live backend; None hides the Hub part.

    Signals:
        refresh_requested: the user asked to reload the installed models.
        model_installed(str): a Hub model was installed; its pinned id ``hf://ORG/NAME@commit``.
    """

    refresh_requested = pyqtSignal()
    model_installed = pyqtSignal(str)

    def __init__(self, models: list[ModelInfo], iface=None, parent=None,
                 client_factory: Callable[[], RsfmClient] | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("RSFM model browser"))
        self.setWindowIcon(icon("models.svg"))
        self.resize(860, 580)
        self.models = list(models)
        self.client_factory = client_factory
        self.hub_models: list[dict[str, Any]] = []
        self.hub_endpoint = ""
        self.hub_task: CallTask | None = None
        self.install_task: RsfmJobTask | None = None
        self.last_install: JobOutcome | None = None
        lay = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel(tr("Task")))
        self.task_combo = QComboBox()
        self.task_combo.addItem(tr("All tasks"), "")
        for t in TASK_DEFS:
            self.task_combo.addItem(icon(t.icon), task_label(t), t.task)
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

        hub_row = QHBoxLayout()
        self.hub_label = QLabel(tr("Hub: not searched yet."))
        self.hub_label.setWordWrap(True)
        hub_row.addWidget(self.hub_label, 1)
        self.hub_button = QPushButton(icon("models.svg"), tr("Search the Hub"))
        self.install_button = QPushButton(QgsApplication.getThemeIcon("/mActionAdd.svg"), tr("Install"))
        self.install_cancel = QPushButton(QgsApplication.getThemeIcon("/mTaskCancel.svg"), tr("Cancel"))
        self.install_button.setEnabled(False)
        self.install_cancel.setEnabled(False)
        for b in (self.hub_button, self.install_button, self.install_cancel):
            hub_row.addWidget(b)
        lay.addLayout(hub_row)
        self.install_progress = QProgressBar()
        self.install_progress.setRange(0, 100)
        self.install_progress.setValue(0)
        lay.addWidget(self.install_progress)
        for w in (self.hub_label, self.hub_button, self.install_button, self.install_cancel):
            w.setVisible(client_factory is not None)
        self.install_progress.setVisible(False)  # shown from the first install on

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.reload_button = buttons.addButton(tr("Reload from backend"), QDialogButtonBox.ButtonRole.ActionRole)
        self.reload_button.clicked.connect(self.refresh_requested.emit)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.task_combo.currentIndexChanged.connect(self.populate)
        self.layer_box.layerChanged.connect(self.populate)
        self.fit_only.toggled.connect(self.populate)
        self.list.currentItemChanged.connect(self.show_current)
        self.hub_button.clicked.connect(self.search_hub)
        self.install_button.clicked.connect(self.install_current)
        self.install_cancel.clicked.connect(self.cancel_install)
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

    def _installed_ids(self) -> set[str]:
        return {m.id for m in self.models}

    def populate(self) -> None:
        task = self.task_combo.currentData()
        current = self.list.currentItem()
        keep = current.data(Qt.ItemDataRole.UserRole) if current is not None else None
        self.list.blockSignals(True)
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
            item.setToolTip(tr("Installed · {task}").format(task=task_name(m.task, m.task)))
            self.list.addItem(item)
        installed = self._installed_ids()
        for h in self.hub_models:
            if (task and h.get("task") != task) or h.get("id") in installed:
                continue  # an installed Hub model is listed above with its full card
            item = QListWidgetItem(icon(TASK_ICONS.get(h.get("task") or "", "rsfm.svg")),
                                   f"☁ {h.get('repo_id')}")
            item.setData(Qt.ItemDataRole.UserRole, h.get("id"))
            item.setData(HUB_ROLE, h)
            item.setToolTip(tr("On the Hub, not installed · {task}").format(task=task_name(h.get("task") or "", "?")))
            self.list.addItem(item)
        self.list.blockSignals(False)
        if self.list.count():
            row = next((i for i in range(self.list.count())
                        if self.list.item(i).data(Qt.ItemDataRole.UserRole) == keep), 0)
            self.list.setCurrentRow(row)
            self.show_current(self.list.currentItem())
        else:
            hint = tr("No model matches. Add model folders in RSFM Settings, search the Hub, or untick "
                      "'{option}'.").format(option=tr("Only models that fit"))
            self.card.setHtml(f"<p>{hint}</p>")
            self.install_button.setEnabled(False)

    def hub_entry(self, item: QListWidgetItem | None) -> dict[str, Any] | None:
        return item.data(HUB_ROLE) if item is not None else None

    def show_current(self, item, _previous=None) -> None:
        if item is None:
            return
        entry = self.hub_entry(item)
        self.install_button.setEnabled(entry is not None and self.install_task is None)
        if entry is not None:
            self.card.setHtml(hub_card_html(entry, self.hub_endpoint))
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

    # -- Hub ------------------------------------------------------------------------------------------
    def search_hub(self) -> CallTask | None:
        """List the RSFM models on the backend's Hub endpoint on a worker thread (the Hub may be slow)."""
        if self.client_factory is None or self.hub_task is not None:
            return None
        factory = self.client_factory
        self.hub_button.setEnabled(False)
        self.hub_label.setText(tr("Hub: searching…"))
        self.hub_task = CallTask(tr("RSFM: list Hub models"), lambda: factory().hub_models(),
                                 on_done=self._hub_listed)
        QgsApplication.taskManager().addTask(self.hub_task)
        return self.hub_task

    def _hub_listed(self, answer, error: str | None) -> None:
        self.hub_task = None
        self.hub_button.setEnabled(True)
        if error:
            self.hub_label.setStyleSheet("color:#b00020")
            self.hub_label.setText(tr("Hub: could not list models – {error}").format(error=error))
            return
        self.hub_label.setStyleSheet("")
        self.hub_endpoint = str(answer.get("endpoint", ""))
        self.hub_models = [m for m in answer["models"] if isinstance(m, dict) and m.get("repo_id")]
        n_new = sum(1 for m in self.hub_models if m.get("id") not in self._installed_ids())
        where = tr("cache only (offline)") if answer.get("source") == "cache" else self.hub_endpoint
        self.hub_label.setText(tr("Hub ({where}): {n} RSFM models, {n_new} not installed.").format(
            where=where, n=len(self.hub_models), n_new=n_new))
        self.populate()

    def install_current(self) -> RsfmJobTask | None:
        """Install the selected Hub model as a QgsTask (progress bar, Cancel); None if nothing to install."""
        entry = self.hub_entry(self.list.currentItem())
        if entry is None or self.client_factory is None or self.install_task is not None:
            return None
        sha = entry.get("sha") or None
        spec = JobSpec(request={"repo_id": entry["repo_id"], "revision": sha},
                       submit=lambda c, r: c.hub_install(r["repo_id"], r.get("revision")),
                       source_name=entry["repo_id"])
        self.install_task = RsfmJobTask(tr("RSFM: install {repo}").format(repo=entry["repo_id"]), spec, self.client_factory,
                                        on_finished=self._installed)
        self.install_task.progressChanged.connect(self._install_progress)  # queued: emitted on a worker
        self.install_progress.setValue(0)
        self.install_progress.setVisible(True)
        self.install_button.setEnabled(False)
        self.install_cancel.setEnabled(True)
        self.hub_label.setStyleSheet("")
        self.hub_label.setText(tr("Installing {repo}…").format(repo=entry["repo_id"]))
        QgsApplication.taskManager().addTask(self.install_task)
        return self.install_task

    @pyqtSlot(float)
    def _install_progress(self, percent: float) -> None:
        self.install_progress.setValue(int(percent))

    def cancel_install(self) -> None:
        if self.install_task is not None:
            self.hub_label.setText(tr("Cancelling the download…"))
            self.install_task.cancel()

    def _installed(self, outcome: JobOutcome) -> None:
        name = self.install_task.spec.source_name if self.install_task is not None else ""
        self.install_task = None
        self.last_install = outcome
        self.install_cancel.setEnabled(False)
        if isinstance(outcome, Success):
            stats = (outcome.job.result or {}).get("stats", {})
            model_id = str(stats.get("id") or (outcome.job.result or {}).get("model", {}).get("id", ""))
            self.install_progress.setValue(100)
            self.hub_label.setStyleSheet("color:#1b7f3b")
            self.hub_label.setText(tr("Installed {name}; it is now in the task pages' model lists.").format(name=name))
            self.model_installed.emit(model_id)
        elif isinstance(outcome, Canceled):
            self.install_progress.setValue(0)
            self.hub_label.setStyleSheet("")
            self.hub_label.setText(tr("Cancelled; {name} was not installed.").format(name=name))
        elif isinstance(outcome, Failed):
            self.hub_label.setStyleSheet("color:#b00020")
            self.hub_label.setText(tr("Could not install {name}: {error}").format(name=name, error=outcome.message))
        self.show_current(self.list.currentItem())


def _markdown_to_html(md: str) -> str:
    from qgis.PyQt.QtGui import QTextDocument

    doc = QTextDocument()
    if hasattr(doc, "setMarkdown"):
        doc.setMarkdown(md)
        return doc.toHtml()
    return "<pre>" + html.escape(md) + "</pre>"
