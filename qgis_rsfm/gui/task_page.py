"""One page of the dock per task: layer(s), area, model (filtered to what fits), options, run/cancel."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
)
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QT_TR_NOOP, QCoreApplication, Qt, pyqtSignal, pyqtSlot
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..client import ModelInfo
from ..fitness import check_fitness
from ..icons import icon
from ..layers import (
    InputError,
    layer_facts,
    load_job_outputs,
    prepare_input,
    selected_features_aoi,
    to_layer_crs,
)
from ..tasks.job_task import Canceled, Failed, JobOutcome, JobSpec, RsfmJobTask, Success


@dataclass(frozen=True)
class TaskDef:
    """How the dock presents one task."""

    task: str
    label: str
    icon: str
    blurb: str
    threshold: bool = False
    vectorize: bool = False
    two_inputs: bool = False


TASK_DEFS: tuple[TaskDef, ...] = (
    TaskDef("semantic_segmentation", QT_TR_NOOP("Land-cover segmentation"), "segment.svg",
            QT_TR_NOOP("Label every pixel with a land-cover class; writes a coloured class raster "
                       "(and polygons if asked)."), vectorize=True),
    TaskDef("scene_classification", QT_TR_NOOP("Scene classification"), "classify.svg",
            QT_TR_NOOP("Give each tile of the image a scene class (airport, forest, residential, ...) "
                       "with a score.")),
    TaskDef("object_detection", QT_TR_NOOP("Object detection"), "detect.svg",
            QT_TR_NOOP("Find objects and draw their boxes as polygons with class and score."),
            threshold=True),
    TaskDef("rotated_detection", QT_TR_NOOP("Rotated-box detection"), "detect_rotated.svg",
            QT_TR_NOOP("Find ships, planes and vehicles at any heading; boxes keep their angle, length "
                       "and width."),
            threshold=True),
    TaskDef("instance_segmentation", QT_TR_NOOP("Instance segmentation"), "instances.svg",
            QT_TR_NOOP("Outline each object (building, vehicle, ...) as its own polygon."), threshold=True),
    TaskDef("change_detection", QT_TR_NOOP("Change detection"), "change.svg",
            QT_TR_NOOP("Compare a before and an after image of the same place and map what changed."),
            vectorize=True, two_inputs=True),
)

AREA_WHOLE, AREA_VISIBLE, AREA_SELECTED = 0, 1, 2
PER_TILE, PER_POLYGON = 0, 1  # scene classification: a tile grid, or one class per selected polygon


def plain_failure(outcome: Failed, spec: JobSpec | None) -> str:
    """The failure as the user should read it: backend codes that name file paths get the layer names."""
    before = spec.source_name if spec else ""
    after = (spec.extra or {}).get("after_name", "") if spec else ""
    if outcome.code == "rasters_do_not_overlap":
        return tr("The before image '{before}' and the after image '{after}' do not overlap, so there is "
                  "nothing to compare. Choose two images of the same place (they may use different CRSs)."
                  ).format(before=before, after=after)
    if outcome.code == "backend_unreachable":
        return tr("The RSFM backend stopped while the job was running (it may have crashed or been closed), "
                  "so the job was lost. Run again: the backend is restarted automatically. If this repeats, "
                  "see Settings > Self-test for the backend log.")
    return outcome.message


def tr(text: str) -> str:
    return QCoreApplication.translate("RsfmTaskPage", text)


def task_label(tdef: TaskDef) -> str:
    """The task's name in the user's language (``TASK_DEFS`` hold the English source, marked for lupdate)."""
    return tr(tdef.label)


class TaskPage(QWidget):
    """The form for one task.

    Signals:
        job_finished(str): a plain-words summary after each run.
    """

    job_finished = pyqtSignal(str)

    def __init__(self, tdef: TaskDef, iface, client_factory, output_dir_fn, parent=None) -> None:
        super().__init__(parent)
        self.tdef = tdef
        self.iface = iface
        self.client_factory = client_factory
        self.output_dir_fn = output_dir_fn
        self.models: list[ModelInfo] = []
        self.task: RsfmJobTask | None = None
        self.last_outcome: JobOutcome | None = None
        self.last_layers: list = []
        self._build()

    # -- layout ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        head = QHBoxLayout()
        ic = QLabel()
        ic.setPixmap(icon(self.tdef.icon).pixmap(32, 32))
        head.addWidget(ic)
        blurb = QLabel(f"<b>{task_label(self.tdef)}</b><br>{tr(self.tdef.blurb)}")
        blurb.setWordWrap(True)
        head.addWidget(blurb, 1)
        lay.addLayout(head)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.layer_box = QgsMapLayerComboBox()
        self.layer_box.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        form.addRow(tr("Before image") if self.tdef.two_inputs else tr("Raster layer"), self.layer_box)
        self.after_box = None
        if self.tdef.two_inputs:
            self.after_box = QgsMapLayerComboBox()
            self.after_box.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
            form.addRow(tr("After image"), self.after_box)
            self.after_box.layerChanged.connect(self.refresh_models)
        self.area_box = QComboBox()
        self.area_box.addItems([tr("Whole layer"), tr("Visible map extent"), tr("Selected polygons")])
        # Selected polygons go to the backend as options.aoi (their shapes, in the raster's CRS): only their
        # inside is processed, and tiles outside them are not run.
        self.area_box.setToolTip(tr("Selected polygons: only the inside of the selected features is processed; "
                                    "outside them the result is empty (nodata)."))
        form.addRow(tr("Area"), self.area_box)
        self.mask_box = QgsMapLayerComboBox()
        self.mask_box.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.mask_label = QLabel(tr("Polygon layer"))
        form.addRow(self.mask_label, self.mask_box)
        self.per_box = None
        if self.tdef.task == "scene_classification":
            self.per_box = QComboBox()
            self.per_box.addItems([tr("Per tile (grid)"), tr("Per selected polygon")])
            self.per_box.setToolTip(tr("Per selected polygon: each selected polygon gets one scene class, from "
                                       "the model's probabilities averaged over the tiles covering it."))
            form.addRow(tr("Classify"), self.per_box)
            self.per_box.currentIndexChanged.connect(self._per_changed)
        self.area_box.currentIndexChanged.connect(self._area_changed)
        self.model_box = QComboBox()
        self.model_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_box.setMinimumContentsLength(18)
        form.addRow(tr("Model"), self.model_box)
        self.show_all = QCheckBox(tr("Also list models that do not fit this layer"))
        form.addRow("", self.show_all)
        lay.addLayout(form)
        self.fit_label = QLabel()
        self.fit_label.setWordWrap(True)
        self.fit_label.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.fit_label)

        adv = QgsCollapsibleGroupBox(tr("Advanced options"))
        adv.setCollapsed(True)
        af = QFormLayout(adv)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 8192)
        self.tile_spin.setSpecialValueText(tr("model default"))
        self.tile_spin.setSuffix(" px")
        af.addRow(tr("Tile size"), self.tile_spin)
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(-1, 4096)
        self.overlap_spin.setValue(-1)
        self.overlap_spin.setSpecialValueText(tr("model default"))
        self.overlap_spin.setSuffix(" px")
        af.addRow(tr("Tile overlap"), self.overlap_spin)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 256)
        self.batch_spin.setSpecialValueText(tr("model default"))
        af.addRow(tr("Batch size"), self.batch_spin)
        self.threshold_spin = None
        if self.tdef.threshold:
            self.threshold_spin = QDoubleSpinBox()
            self.threshold_spin.setRange(-0.01, 1.0)
            self.threshold_spin.setSingleStep(0.05)
            self.threshold_spin.setValue(-0.01)
            self.threshold_spin.setSpecialValueText(tr("model default"))
            af.addRow(tr("Score threshold"), self.threshold_spin)
        self.vectorize_check = None
        if self.tdef.vectorize:
            self.vectorize_check = QCheckBox(tr("Also write polygons (GeoPackage)"))
            af.addRow("", self.vectorize_check)
        self.gsd_check = QCheckBox(tr("Run even if the pixel size is far from the model's"))
        af.addRow("", self.gsd_check)
        lay.addWidget(adv)

        out = QFormLayout()
        self.out_widget = QgsFileWidget()
        self.out_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.out_widget.lineEdit().setPlaceholderText(tr("default output folder (Settings)"))
        out.addRow(tr("Output folder"), self.out_widget)
        lay.addLayout(out)

        row = QHBoxLayout()
        self.run_button = QPushButton(QgsApplication.getThemeIcon("/mActionStart.svg"), tr("Run"))
        self.cancel_button = QPushButton(QgsApplication.getThemeIcon("/mTaskCancel.svg"), tr("Cancel"))
        self.cancel_button.setEnabled(False)
        row.addWidget(self.run_button, 1)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        lay.addWidget(self.progress)
        self.status_label = QLabel(tr("Ready."))
        self.status_label.setWordWrap(True)
        lay.addWidget(self.status_label)
        lay.addStretch(1)

        self.layer_box.layerChanged.connect(self.refresh_models)
        self.show_all.toggled.connect(self.refresh_models)
        self.model_box.currentIndexChanged.connect(self._show_fitness)
        self.gsd_check.toggled.connect(self.refresh_models)
        self.run_button.clicked.connect(self.run_job)
        self.cancel_button.clicked.connect(self.cancel_job)
        self._area_changed()

    def _area_changed(self) -> None:
        sel = self.area_box.currentIndex() == AREA_SELECTED
        self.mask_box.setVisible(sel)
        self.mask_label.setVisible(sel)
        if not sel and self.per_box is not None and self.per_box.currentIndex() == PER_POLYGON:
            self.per_box.setCurrentIndex(PER_TILE)  # per-polygon classes need selected polygons

    def _per_changed(self) -> None:
        if self.per_box is not None and self.per_box.currentIndex() == PER_POLYGON:
            self.area_box.setCurrentIndex(AREA_SELECTED)

    # -- models ---------------------------------------------------------------------------------------
    def set_models(self, models: list[ModelInfo]) -> None:
        self.models = [m for m in models if m.task == self.tdef.task]
        self.refresh_models()

    def _layers(self) -> list[QgsRasterLayer]:
        out = [self.layer_box.currentLayer()]
        if self.after_box is not None:
            out.append(self.after_box.currentLayer())
        return [lyr for lyr in out if isinstance(lyr, QgsRasterLayer)]

    def _fitness(self, model: ModelInfo):
        problems, warnings = [], []
        for lyr in self._layers():
            fit = check_fitness(model.config, layer_facts(lyr), self.gsd_check.isChecked())
            problems += fit.problems
            warnings += fit.warnings
        return problems, warnings

    def refresh_models(self) -> None:
        """Fill the model list: fitting models first and enabled; others only with "show all"."""
        current = self.model_box.currentData()
        self.model_box.blockSignals(True)
        self.model_box.clear()
        rows = []
        for m in self.models:
            problems, warnings = self._fitness(m)
            rows.append((bool(problems), bool(warnings), m, problems))
        rows.sort(key=lambda r: (r[0], r[1], r[2].name))
        for bad, warn, m, _problems in rows:
            if bad and not self.show_all.isChecked():
                continue
            mark = "✗ " if bad else ("⚠ " if warn else "")
            self.model_box.addItem(icon(self.tdef.icon), f"{mark}{m.name}", m.id)
        hidden = sum(1 for r in rows if r[0]) if not self.show_all.isChecked() else 0
        if current is not None:
            i = self.model_box.findData(current)
            if i >= 0:
                self.model_box.setCurrentIndex(i)
        self.model_box.blockSignals(False)
        self._hidden_count = hidden
        self._show_fitness()

    def current_model(self) -> ModelInfo | None:
        mid = self.model_box.currentData()
        return next((m for m in self.models if m.id == mid), None)

    def _show_fitness(self) -> None:
        m = self.current_model()
        if m is None:
            if not self.models:
                txt = tr("No model for this task is installed. Open the model browser or add a model "
                         "folder in Settings.")
            elif not self._layers():
                txt = tr("Add a raster layer to the project to run this task.")
            else:
                txt = tr("None of the {n} installed models fits this layer; tick "
                         "'Also list models that do not fit' to see why.").format(n=len(self.models))
            self.fit_label.setText(f"<span style='color:#a15c00'>{txt}</span>")
            self.run_button.setEnabled(False)
            return
        problems, warnings = self._fitness(m)
        gsd = m.config.get("gsd_m")
        parts = [f"<span style='color:#555'>{len(m.class_names)} classes · {len(m.bands)} bands "
                 f"({', '.join(m.bands)}) · {gsd:g} m/px · {m.config.get('licence', '?')}</span>"
                 if gsd else ""]
        parts += [f"<span style='color:#b00020'>✗ {p}</span>" for p in problems]
        parts += [f"<span style='color:#a15c00'>⚠ {w}</span>" for w in warnings]
        if not problems and not warnings and self._layers():
            fits = tr("fits the layer")
            parts.append(f"<span style='color:#1b7f3b'>✓ {fits}</span>")
        self.fit_label.setText("<br>".join(p for p in parts if p))
        self.run_button.setEnabled(not problems and self.task is None and bool(self._layers()))

    # -- run ------------------------------------------------------------------------------------------
    def _area(self, layer: QgsRasterLayer):
        """``(rectangle in the layer's CRS or None, aoi FeatureCollection in the layer's CRS or None)``."""
        idx = self.area_box.currentIndex()
        if idx == AREA_VISIBLE:
            canvas = self.iface.mapCanvas()
            return to_layer_crs(canvas.extent(), canvas.mapSettings().destinationCrs(), layer), None
        if idx == AREA_SELECTED:
            mask = self.mask_box.currentLayer()
            if mask is None:
                raise InputError(tr("choose the polygon layer whose selected features define the area"))
            aoi, rect = selected_features_aoi(mask, layer)
            return rect, aoi
        return None, None

    def build_spec(self, out_dir: str) -> JobSpec:
        """Collect the form into a JobSpec (validated; raises InputError in plain words)."""
        layers = self._layers()
        if not layers or (self.tdef.two_inputs and len(layers) < 2):
            raise InputError(tr("choose the input raster layer(s) first"))
        model = self.current_model()
        if model is None:
            raise InputError(tr("choose a model first"))
        problems, _ = self._fitness(model)
        if problems:
            raise InputError(problems[0])
        area, aoi = self._area(layers[0])
        layer_objs = list(layers)
        options: dict[str, Any] = {}
        if self.per_box is not None and self.per_box.currentIndex() == PER_POLYGON:
            if aoi is None:
                raise InputError(tr("classifying per polygon needs Area: Selected polygons; select the polygons "
                                    "to classify"))
            options["classify_per"] = "polygon"
        if self.tile_spin.value() > 0:
            options["tile_size_px"] = self.tile_spin.value()
        if self.overlap_spin.value() >= 0:
            options["tile_overlap_px"] = self.overlap_spin.value()
        if self.batch_spin.value() > 0:
            options["batch_size"] = self.batch_spin.value()
        if self.threshold_spin is not None and self.threshold_spin.value() >= 0:
            options["score_threshold"] = round(self.threshold_spin.value(), 4)
        if self.vectorize_check is not None:
            options["vectorize"] = self.vectorize_check.isChecked()
        if self.gsd_check.isChecked():
            options["allow_gsd_mismatch"] = True
        request: dict[str, Any] = {"task": self.tdef.task, "model": model.id, "inputs": {},
                                   "output_dir": out_dir, "options": options}
        gsd = model.gsd_m

        def prepare(req: dict[str, Any]) -> None:  # worker thread: web layers may take a while to render
            first = prepare_input(layer_objs[0], area, gsd, tmp_dir=out_dir)
            req["inputs"]["raster"] = first.path
            if first.bbox is not None:
                req["options"]["bbox"] = first.bbox
            if aoi is not None:  # in the layer's CRS, which a rendered copy keeps too
                req["options"]["aoi"] = aoi
            if first.bands and "bands" not in req["options"]:
                req["options"]["bands"] = first.bands
            if len(layer_objs) > 1:
                # The area is in the before layer's CRS; the after layer may use another CRS (the backend
                # warps it onto the before grid), so the area is reprojected before clipping to it.
                after_area = to_layer_crs(area, layer_objs[0].crs(), layer_objs[1]) if area is not None else None
                req["inputs"]["raster_after"] = prepare_input(layer_objs[1], after_area, gsd, tmp_dir=out_dir).path

        extra = {"after_name": layers[1].name()} if len(layers) > 1 else {}
        return JobSpec(request=request, prepare=prepare, source_name=layers[0].name(), extra=extra)

    def run_job(self) -> RsfmJobTask | None:
        """Start the job as a QgsTask; returns it (None when the form is not valid)."""
        if self.task is not None:
            return None
        base = self.out_widget.filePath().strip() or str(self.output_dir_fn())
        out_dir = str(Path(base) / f"{self.tdef.task}_{time.strftime('%Y%m%d_%H%M%S')}")
        try:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            spec = self.build_spec(out_dir)
        except (InputError, OSError) as exc:
            self._set_status(str(exc), error=True)
            return None
        title = tr("RSFM: {task} on {layer}").format(task=task_label(self.tdef), layer=spec.source_name)
        self.task = RsfmJobTask(title, spec,
                                self.client_factory, on_finished=self._finished)
        self.task.progressChanged.connect(self._task_progress)  # queued: emitted on the worker thread
        self.task.status_changed.connect(self._set_status)  # e.g. "backend restarted, resuming from block N"
        self.progress.setValue(0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._set_status(tr("Running… (you can keep working; see also the task manager)"))
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    @pyqtSlot(float)
    def _task_progress(self, percent: float) -> None:
        self.progress.setValue(int(percent))

    def cancel_job(self) -> None:
        if self.task is not None:
            self._set_status(tr("Cancelling after the current tile…"))
            self.task.cancel()

    def _finished(self, outcome: JobOutcome) -> None:
        spec = self.task.spec if self.task is not None else None
        self.task = None
        self.last_outcome = outcome
        self.last_layers = []
        self.cancel_button.setEnabled(False)
        bar = self.iface.messageBar() if self.iface is not None else None
        if isinstance(outcome, Success):
            try:
                self.last_layers = load_job_outputs(outcome.job, spec.source_name if spec else "",
                                                    outcome.request, QgsProject.instance(), group_name="RSFM results")
            except InputError as exc:
                self._set_status(str(exc), error=True)
            else:
                self.progress.setValue(100)
                n = len(self.last_layers)
                msg = (tr("Done: 1 layer added to 'RSFM results'.") if n == 1 else
                       tr("Done: {n} layers added to 'RSFM results'.").format(n=n))
                for w in outcome.job.warnings:
                    msg += "\n⚠ " + w[:1].upper() + w[1:]
                self._set_status(msg)
                if bar is not None:
                    bar.pushMessage("RSFM", msg, Qgis.MessageLevel.Success, 5)
        elif isinstance(outcome, Canceled):
            self.progress.setValue(0)
            self._set_status(tr("Cancelled; nothing was added."))
        elif isinstance(outcome, Failed):
            message = plain_failure(outcome, spec)
            self._set_status(message, error=True)
            if bar is not None:
                bar.pushMessage("RSFM", message, Qgis.MessageLevel.Critical, 10)
        self._show_fitness()
        self.job_finished.emit(self.status_label.text())

    def _set_status(self, text: str, error: bool = False) -> None:
        self.status_label.setStyleSheet("color:#b00020" if error else "")
        self.status_label.setText(text[:1].upper() + text[1:] if text else text)

