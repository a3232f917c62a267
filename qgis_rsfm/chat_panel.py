"""Chat panel: ask grounded questions about the selected raster layer (a self-contained QWidget).

Embedding (the dock does this)::

    from qgis_rsfm.chat_panel import ChatPanel
    panel = ChatPanel(client_factory, iface, parent=None)

* ``client_factory``: a callable returning a connected :class:`qgis_rsfm.client.RsfmClient` (it may start
  the backend, so it is called once, on a worker thread).
* ``iface``: the QGIS interface (``mapCanvas()`` is used for the visible extent and for zooming).

What it does:

* Raster layer (the question is about it) + "visible extent only" or "selected polygons of" a polygon layer
  (their shapes go to the backend as ``aoi``: facts count only inside them); optional perception sources: a land-cover
  raster layer and an objects vector layer already in the project (RSFM outputs with ``class_name`` /
  ``score``), and/or model ids the backend runs first.
* "Compare with": optionally a second file raster of the same place, taken later (default) or earlier than
  the selected raster. The request then carries ``compare_with`` / ``compare_order``; the backend runs a
  change-detection model and the chat can answer what changed, citing change regions ``C1``, ``C2``, ….
* LM: "Facts only" (template answers, no LM), "Built-in SmolLM2" or an OpenAI-compatible endpoint
  (base URL + model; the API key is read by the *backend* from its environment variable, never stored here).
* The answer appears incrementally (``POST /api/v1/chat/jobs`` then polling ``GET /chat/jobs/{id}?since=N``),
  then is replaced by the verified text. Citations ``[F12]``, object IDs ``O3`` and change IDs ``C2`` become
  links; cited objects and change regions go into a scratch memory layer "RSFM chat citations" (change
  regions have no score: NULL there); clicking a link zooms the canvas to it.
* Copy (clipboard) and Save (Markdown file) of the conversation.

Imports only qgis.PyQt, qgis.core, qgis.gui, qgis_rsfm.client and qgis_rsfm.layers (no torch).
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Callable
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsField,
    QgsGeometry,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsTask,
    QgsVectorLayer,
)
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtCore import QT_TRANSLATE_NOOP, QTimer, QUrl, QVariant, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from qgis_rsfm.client import RsfmClient, RsfmClientError
from qgis_rsfm.layers import selected_features_aoi

SCRATCH_LAYER_NAME = "RSFM chat citations"


def _field_types():
    """(text, real) field types for QgsField: QMetaType from QGIS 3.38 on (QGIS 4 / Qt6 has no QVariant.Type),
    QVariant.Type before (QGIS 3.22 only takes that)."""
    if Qgis.QGIS_VERSION_INT >= 33800:
        from qgis.PyQt.QtCore import QMetaType

        return QMetaType.Type.QString, QMetaType.Type.Double
    return QVariant.Type.String, QVariant.Type.Double
BACKENDS = [(QT_TRANSLATE_NOOP("ChatPanel", "Facts only (no language model)"), "template"),
            (QT_TRANSLATE_NOOP("ChatPanel", "Built-in SmolLM2-135M"), "builtin"),
            (QT_TRANSLATE_NOOP("ChatPanel", "OpenAI-compatible endpoint"), "openai")]
# which of the two images the "Compare with" layer is (the API's compare_order)
COMPARE_ORDERS = [(QT_TRANSLATE_NOOP("ChatPanel", "later image"), "later"),
                  (QT_TRANSLATE_NOOP("ChatPanel", "earlier image"), "earlier")]
MODES = ["auto", "template", "phrase", "free"]
POLL_MS = 150


def geojson_to_wkt(g: dict) -> str | None:
    """WKT of a GeoJSON Point / Polygon / MultiPolygon / LineString dict (None for anything else)."""
    def ring(r):
        return "(" + ", ".join(f"{x} {y}" for x, y, *_ in r) + ")"
    t, c = g.get("type"), g.get("coordinates")
    if t == "Point":
        return f"POINT ({c[0]} {c[1]})"
    if t == "LineString":
        return "LINESTRING " + ring(c)
    if t == "Polygon":
        return "POLYGON (" + ", ".join(ring(r) for r in c) + ")"
    if t == "MultiPolygon":
        return "MULTIPOLYGON (" + ", ".join("(" + ", ".join(ring(r) for r in p) + ")" for p in c) + ")"
    return None


def vector_source_path(layer: QgsVectorLayer) -> tuple[str, str | None]:
    """``(path, layer name)`` of an OGR vector layer source such as ``/a/b.gpkg|layername=detections``."""
    src = layer.source()
    path, _, rest = src.partition("|")
    m = re.search(r"layername=([^|]+)", rest)
    return path, (m.group(1) if m else None)


class ChatPanel(QWidget):
    """The chat widget. Signals ``answered(dict)`` after each verified answer (for tests and the dock)."""

    answered = pyqtSignal(dict)

    def __init__(self, client_factory: Callable[[], RsfmClient], iface: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.client_factory = client_factory
        self.iface = iface
        self._client: RsfmClient | None = None
        self._task: QgsTask | None = None
        self._job_id: str | None = None
        self._partial = ""
        self._history: list[dict[str, str]] = []
        self._turns: list[dict[str, Any]] = []  # {"question", "answer": ChatAnswer dict}
        self._objects: dict[str, dict] = {}  # "O3" / "F12" -> object with geometry + crs
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._poll_job)
        self._build_ui()

    # -- UI ------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.raster_combo = QgsMapLayerComboBox(self)
        self.raster_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        form.addRow(self.tr("Raster"), self.raster_combo)
        self.extent_check = QCheckBox(self.tr("Visible extent only"), self)
        form.addRow("", self.extent_check)
        # or only inside the selected polygons of a polygon layer (sent as 'aoi', in the raster's CRS)
        self.polygons_combo = QgsMapLayerComboBox(self)
        self.polygons_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.polygons_combo.setAllowEmptyLayer(True)
        self.polygons_combo.setLayer(None)
        self.polygons_combo.setToolTip(self.tr("Ask only about the area inside the selected polygons of this layer"))
        form.addRow(self.tr("Selected polygons of"), self.polygons_combo)
        self.landcover_combo = QgsMapLayerComboBox(self)
        self.landcover_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.landcover_combo.setAllowEmptyLayer(True)
        self.landcover_combo.setLayer(None)
        form.addRow(self.tr("Land cover"), self.landcover_combo)
        self.objects_combo = QgsMapLayerComboBox(self)
        self.objects_combo.setFilters(QgsMapLayerProxyModel.Filter.VectorLayer)
        self.objects_combo.setAllowEmptyLayer(True)
        self.objects_combo.setLayer(None)
        form.addRow(self.tr("Objects"), self.objects_combo)
        # A second image of the same place makes the backend run change detection; the order says which of the
        # two is the later one (the backend's default: the compare image is the later one).
        compare_row = QHBoxLayout()
        self.compare_combo = QgsMapLayerComboBox(self)
        self.compare_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.compare_combo.setAllowEmptyLayer(True)
        self.compare_combo.setLayer(None)
        self.compare_combo.setToolTip(self.tr("A second image of the same place; the backend runs a "
                                              "change-detection model and the chat can answer what changed"))
        self.compare_order_combo = QComboBox(self)
        for label, key in COMPARE_ORDERS:
            self.compare_order_combo.addItem(self.tr(label), key)
        self.compare_order_combo.setToolTip(self.tr("Whether the compare image was taken after (later) or before "
                                                    "(earlier) the selected raster"))
        compare_row.addWidget(self.compare_combo, 1)
        compare_row.addWidget(self.compare_order_combo)
        form.addRow(self.tr("Compare with"), compare_row)
        self.models_edit = QLineEdit(self)
        self.models_edit.setPlaceholderText(self.tr("optional: task=model-id, ... (run by the backend first)"))
        form.addRow(self.tr("Models"), self.models_edit)
        row = QHBoxLayout()
        self.backend_combo = QComboBox(self)
        for label, key in BACKENDS:
            self.backend_combo.addItem(self.tr(label), key)
        self.mode_combo = QComboBox(self)
        self.mode_combo.addItems(MODES)
        row.addWidget(self.backend_combo, 1)
        row.addWidget(self.mode_combo)
        form.addRow(self.tr("Answer with"), row)
        self.url_edit = QLineEdit("http://127.0.0.1:8080/v1", self)
        self.model_edit = QLineEdit("default", self)
        form.addRow(self.tr("Endpoint"), self.url_edit)
        form.addRow(self.tr("Endpoint model"), self.model_edit)
        lay.addLayout(form)
        self.transcript = QTextBrowser(self)
        self.transcript.setOpenLinks(False)
        self.transcript.anchorClicked.connect(self._on_link)
        lay.addWidget(self.transcript, 1)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        ask = QHBoxLayout()
        self.question_edit = QLineEdit(self)
        self.question_edit.setPlaceholderText(self.tr("e.g. How many ships are there? Where are they?"))
        self.question_edit.returnPressed.connect(self.ask)
        self.ask_button = QPushButton(self.tr("Ask"), self)
        self.ask_button.clicked.connect(self.ask)
        self.stop_button = QPushButton(self.tr("Stop"), self)
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        ask.addWidget(self.question_edit, 1)
        ask.addWidget(self.ask_button)
        ask.addWidget(self.stop_button)
        lay.addLayout(ask)
        tools = QHBoxLayout()
        self.copy_button = QPushButton(self.tr("Copy"), self)
        self.copy_button.clicked.connect(self.copy_conversation)
        self.save_button = QPushButton(self.tr("Save…"), self)
        self.save_button.clicked.connect(self._save_dialog)
        self.clear_button = QPushButton(self.tr("Clear"), self)
        self.clear_button.clicked.connect(self.clear)
        for b in (self.copy_button, self.save_button, self.clear_button):
            tools.addWidget(b)
        tools.addStretch(1)
        lay.addLayout(tools)
        self.backend_combo.currentIndexChanged.connect(self._sync_endpoint_fields)
        self._sync_endpoint_fields()

    def _sync_endpoint_fields(self) -> None:
        is_openai = self.backend_combo.currentData() == "openai"
        self.url_edit.setEnabled(is_openai)
        self.model_edit.setEnabled(is_openai)

    # -- request -------------------------------------------------------------------------------------
    def build_request(self, question: str) -> dict[str, Any]:
        """The ChatRequest for ``question`` from the current widgets.

        Raises:
            ValueError: no raster layer selected, the layer (or the compare layer) is not a local file, or
                the compare layer is the selected raster's file.
        """
        layer = self.raster_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            raise ValueError("select a raster layer to ask about")
        raster = layer.source().split("|")[0]
        if layer.providerType() != "gdal":
            raise ValueError(f"layer {layer.name()!r} is not a file raster; export it to GeoTIFF first")
        body: dict[str, Any] = {"raster": raster, "question": question, "history": self._history[-6:],
                                "mode": self.mode_combo.currentText()}
        if self.extent_check.isChecked() and self.iface is not None:
            canvas = self.iface.mapCanvas()
            tr = QgsCoordinateTransform(canvas.mapSettings().destinationCrs(), layer.crs(), QgsProject.instance())
            ext = tr.transformBoundingBox(canvas.extent()).intersect(layer.extent())
            if ext.isEmpty():
                raise ValueError("the visible extent does not overlap the raster; pan to it or untick "
                                 "'Visible extent only'")
            body["bbox"] = [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()]
        polygons = self.polygons_combo.currentLayer()
        if polygons is not None:
            if "bbox" in body:
                raise ValueError(self.tr("ask about the visible extent or the selected polygons, not both: untick "
                                         "'Visible extent only' or clear 'Selected polygons of'"))
            body["aoi"], _ = selected_features_aoi(polygons, layer)  # InputError (a ValueError) says what to do
        outputs = []
        lc = self.landcover_combo.currentLayer()
        if isinstance(lc, QgsRasterLayer):
            outputs.append({"path": lc.source().split("|")[0], "task": "semantic_segmentation"})
        ob = self.objects_combo.currentLayer()
        if isinstance(ob, QgsVectorLayer):
            path, lname = vector_source_path(ob)
            o = {"path": path, "task": "object_detection"}
            if lname:
                o["layer"] = lname
            outputs.append(o)
        if outputs:
            body["outputs"] = outputs
        models = {}
        for part in filter(None, (p.strip() for p in self.models_edit.text().split(","))):
            task, _, model = part.partition("=")
            if not model:
                raise ValueError(f"write models as task=model-id, got {part!r}")
            models[task.strip()] = model.strip()
        if models:
            body["models"] = models
        compare = self.compare_combo.currentLayer()
        if compare is not None:
            body["compare_with"] = self._compare_path(compare, raster)
            body["compare_order"] = self.compare_order_combo.currentData() or "later"
        key = self.backend_combo.currentData()
        if key == "openai":
            body["backend"] = {"name": "openai", "base_url": self.url_edit.text().strip(),
                               "model": self.model_edit.text().strip() or "default"}
        else:
            body["backend"] = key
        return body

    def _compare_path(self, layer: Any, raster: str) -> str:
        """The file path of compare ``layer``; it must be a GDAL file raster other than ``raster``'s file."""
        if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
            raise ValueError(self.tr("layer '{name}' is not a file raster; export it to GeoTIFF first to compare "
                                     "with it").format(name=layer.name()))
        path = layer.source().split("|")[0]
        # the backend compares by file, so the same file under another layer (or path spelling) is no change
        if os.path.normcase(os.path.realpath(path)) == os.path.normcase(os.path.realpath(raster)):
            raise ValueError(self.tr("layer '{name}' is the raster you ask about; choose a different image to "
                                     "compare with").format(name=layer.name()))
        return path

    def ask(self, question: str | None = None) -> None:
        """Send ``question`` (default: the text field) as a chat job; the answer streams in."""
        q = (question if isinstance(question, str) else self.question_edit.text()).strip()
        if not q or self._job_id is not None or self._task is not None:
            return
        try:
            body = self.build_request(q)
        except ValueError as e:
            self._set_status(str(e), error=True)
            return
        self.question_edit.clear()
        self._append_html(f"<p><b>You:</b> {html.escape(q)}</p>")
        self._pending_question = q
        self._partial = ""
        self.ask_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self._set_status(self.tr("asking…"))

        def start() -> dict:  # worker thread: may start the backend
            if self._client is None:
                self._client = self.client_factory()
            return self._client.request("POST", "/chat/jobs", body, timeout_s=60)

        self._task = QgsTask.fromFunction("RSFM chat", lambda task: start(), on_finished=self._started)
        QgsApplication.taskManager().addTask(self._task)

    def _started(self, exception: Exception | None, result: dict | None = None) -> None:
        self._task = None
        if exception is not None or result is None:
            msg = exception.message if isinstance(exception, RsfmClientError) else str(exception or "no answer")
            self._finish_error(msg)
            return
        self._job_id = result["id"]
        self._append_html('<p><b>RSFM:</b> <span id="partial"></span></p>')
        self._poll.start()

    def _poll_job(self) -> None:
        if self._job_id is None or self._client is None:
            self._poll.stop()
            return
        try:
            j = self._client.request("GET", f"/chat/jobs/{self._job_id}?since={len(self._partial)}", timeout_s=10)
        except RsfmClientError as e:
            self._finish_error(e.message)
            return
        if j.get("text"):
            self._partial += j["text"]
            self._show_partial(self._partial)
        if j["state"] in ("queued", "perception"):
            self._set_status(j.get("message") or j["state"])
        elif j["state"] == "generating":
            self._set_status(self.tr("writing…"))
        elif j["state"] == "succeeded":
            self._poll.stop()
            self._job_id = None
            self._show_answer(j["answer"])
        elif j["state"] in ("failed", "cancelled"):
            self._finish_error((j.get("error") or {}).get("message", j["state"]))

    def stop(self) -> None:
        """Cancel the running chat job (the backend stops generating at the next token)."""
        if self._job_id and self._client:
            try:
                self._client.request("POST", f"/chat/jobs/{self._job_id}/cancel", {})
            except RsfmClientError as e:
                self._set_status(e.message, error=True)

    # -- rendering -----------------------------------------------------------------------------------
    def _append_html(self, fragment: str) -> None:
        self._html = getattr(self, "_html", "") + fragment
        self.transcript.setHtml(self._html)
        self.transcript.verticalScrollBar().setValue(self.transcript.verticalScrollBar().maximum())

    def _show_partial(self, text: str) -> None:
        marker = '<span id="partial"></span>'
        base = self._html
        shown = base.replace(marker, f'<span style="color:#555">{html.escape(text)}</span>{marker}')
        self.transcript.setHtml(shown)

    def _linkify(self, text: str) -> str:
        out = html.escape(text)
        out = re.sub(r"\[(F\d+)\]", r'<a href="rsfm:\1">[\1]</a>', out)
        # object IDs O3 and change-region IDs C2 both point at cited geometries
        return re.sub(r"\b([OC]\d+)\b", r'<a href="rsfm:\1">\1</a>', out)

    def _show_answer(self, ans: dict) -> None:
        self.ask_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        body = self._linkify(ans["text"] or "(nothing the facts support)")
        note = ""
        ver = ans.get("verification") or {}
        if ver.get("problems"):
            note = (f'<br><small style="color:#a60">{len(ver["problems"])} unsupported statement(s) removed by '
                    "the verifier.</small>")
        self._html = self._html.replace('<span id="partial"></span>', body + note)
        self.transcript.setHtml(self._html)
        q = getattr(self, "_pending_question", "")
        self._history += [{"role": "user", "content": q}, {"role": "assistant", "content": ans["text"]}]
        self._turns.append({"question": q, "answer": ans})
        self._add_citations(ans)
        self._set_status(self.tr("{mode} answer · {seconds} s").format(
            mode=ans["mode"], seconds=f"{ans.get('timings_s', {}).get('total', 0):.1f}"))
        self.answered.emit(ans)

    def _finish_error(self, message: str) -> None:
        self._poll.stop()
        self._job_id = None
        self._task = None
        self.ask_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self._html = getattr(self, "_html", "").replace('<span id="partial"></span>', "")
        self._append_html(f'<p style="color:#b00">{html.escape(message)}</p>')
        self._set_status(message, error=True)

    def _set_status(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet("color:#b00" if error else "color:#555")
        self.status.setText(text)

    # -- citations layer and zoom ----------------------------------------------------------------------
    def scratch_layer(self, crs: QgsCoordinateReferenceSystem) -> QgsVectorLayer:
        """The memory layer for cited objects (created on first use, re-created when removed or CRS changes)."""
        for lyr in QgsProject.instance().mapLayersByName(SCRATCH_LAYER_NAME):
            if isinstance(lyr, QgsVectorLayer) and lyr.crs() == crs:
                return lyr
        lyr = QgsVectorLayer(f"Polygon?crs={crs.authid() or crs.toWkt()}", SCRATCH_LAYER_NAME, "memory")
        text, real = _field_types()
        lyr.dataProvider().addAttributes([QgsField("object_id", text), QgsField("fact", text),
                                          QgsField("class_name", text), QgsField("score", real),
                                          QgsField("question", text)])
        lyr.updateFields()
        QgsProject.instance().addMapLayer(lyr)
        return lyr

    def _add_citations(self, ans: dict) -> None:
        objs = ans.get("objects") or []
        crs_txt = ans.get("crs")
        if not objs or not crs_txt:
            return  # ungeoreferenced image: pixel boxes only, nothing to draw on the map
        crs = QgsCoordinateReferenceSystem(crs_txt)
        lyr = self.scratch_layer(crs)
        feats = []
        for o in objs:
            wkt = geojson_to_wkt(o.get("geometry") or {})
            if not wkt:
                continue
            geom = QgsGeometry.fromWkt(wkt)
            f = QgsFeature(lyr.fields())
            f.setGeometry(geom)
            # change regions (C1, …) have no score: leave the attribute NULL rather than invent one
            score = o.get("score")
            f.setAttributes([o["id"], o["fact"], o.get("class"), None if score is None else float(score),
                             self._turns[-1]["question"]])
            feats.append(f)
            self._objects[o["id"]] = {"geometry": geom, "crs": crs}
            self._objects[o["fact"]] = self._objects[o["id"]]
        lyr.dataProvider().addFeatures(feats)
        lyr.updateExtents()
        lyr.triggerRepaint()

    def _on_link(self, url: QUrl) -> None:
        self.zoom_to(url.toString().split(":", 1)[-1])

    def zoom_to(self, ref: str) -> bool:
        """Zoom the canvas to cited object ``O3``, change region ``C2`` or fact ``F12`` (if it has a geometry).
        True when done."""
        hit = self._objects.get(ref)
        if hit is None or self.iface is None:
            self._set_status(self.tr("{ref} has no map geometry to zoom to").format(ref=ref))
            return False
        canvas = self.iface.mapCanvas()
        tr = QgsCoordinateTransform(hit["crs"], canvas.mapSettings().destinationCrs(), QgsProject.instance())
        rect = tr.transformBoundingBox(hit["geometry"].boundingBox())
        rect = QgsRectangle(rect)
        rect.scale(3.0)  # some context around the object
        canvas.setExtent(rect)
        canvas.refresh()
        return True

    # -- conversation ----------------------------------------------------------------------------------
    def conversation_markdown(self) -> str:
        """The conversation as Markdown: questions, verified answers, cited facts."""
        lines = ["# RSFM chat", ""]
        for t in self._turns:
            a = t["answer"]
            lines += [f"**Q:** {t['question']}", "", f"**A:** {a['text']}", ""]
            if a.get("cited"):
                lines.append(f"_cited: {', '.join(a['cited'])}; mode {a['mode']}_")
                lines.append("")
        return "\n".join(lines)

    def copy_conversation(self) -> None:
        QApplication.clipboard().setText(self.conversation_markdown())
        self._set_status(self.tr("conversation copied"))

    def save_conversation(self, path: str) -> None:
        """Write the conversation (Markdown) and, beside it, the raw answers as JSON (``path + .json``)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.conversation_markdown())
        with open(path + ".json", "w", encoding="utf-8") as f:
            json.dump(self._turns, f, indent=1)
        self._set_status(self.tr("saved to {path}").format(path=path))

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, self.tr("Save conversation"), "rsfm-chat.md",
                                              self.tr("Markdown (*.md)"))
        if path:
            self.save_conversation(path)

    def clear(self) -> None:
        self._html = ""
        self.transcript.clear()
        self._history.clear()
        self._turns.clear()
        self._objects.clear()

    def busy(self) -> bool:
        return self._job_id is not None or self._task is not None
