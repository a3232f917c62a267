"""Shared shape of the RSFM algorithms (STYLE.md section 10).

Each algorithm file sets the task, its ids and help; this base declares the common parameters, checks the
model against the layer, submits the job to the backend, polls it together with
``feedback.isCanceled()`` (cancel reaches the backend), and returns ``{OUTPUT: path}``.
"""

from __future__ import annotations

import tempfile
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputFolder,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication

from ..client import Job, ModelInfo, RsfmClient, RsfmClientError
from ..fitness import check_fitness
from ..icons import icon
from ..layers import InputError, features_aoi, layer_facts, prepare_input, to_layer_crs

_KEEP_ALIVE: list[QgsProcessingLayerPostProcessorInterface] = []  # Processing holds them by raw pointer


class _StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Applies the backend's .qml to an output once Processing has loaded it into the project."""

    def __init__(self, style: str | None, provenance: str) -> None:
        super().__init__()
        self.style = style
        self.provenance = provenance

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802 - QGIS API
        if self.style:
            layer.loadNamedStyle(self.style)
            layer.triggerRepaint()
        md = layer.metadata()
        md.setAbstract(self.provenance)
        layer.setMetadata(md)


class RsfmAlgorithm(QgsProcessingAlgorithm):
    """Base for one task. Subclasses set ``TASK``, ``ALG_NAME``, ``DISPLAY``, ``HELP``, ``PRIMARY_KIND``."""

    INPUT = "INPUT"
    INPUT_AFTER = "INPUT_AFTER"
    MODEL = "MODEL"
    EXTENT = "EXTENT"
    AOI = "AOI"
    CLASSIFY_PER = "CLASSIFY_PER"
    BANDS = "BANDS"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    SCORE_THRESHOLD = "SCORE_THRESHOLD"
    VECTORIZE = "VECTORIZE"
    ALLOW_GSD_MISMATCH = "ALLOW_GSD_MISMATCH"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    OUTPUT = "OUTPUT"
    JOB_ID = "JOB_ID"

    TASK = ""
    ALG_NAME = ""
    DISPLAY = ""
    SHORT = ""
    HELP = ""
    PRIMARY_KIND = "raster"  # which output is OUTPUT
    TWO_INPUTS = False
    HAS_THRESHOLD = False
    HAS_VECTORIZE = False
    HAS_CLASSIFY_PER = False  # scene classification: per tile grid or per polygon of AOI

    # -- identity -------------------------------------------------------------------------------------
    def tr(self, text: str) -> str:
        return QCoreApplication.translate("RsfmProcessing", text)

    def createInstance(self):  # noqa: N802
        return type(self)()

    def name(self) -> str:
        return self.ALG_NAME

    def displayName(self) -> str:  # noqa: N802
        return self.tr(self.DISPLAY)

    def group(self) -> str:
        return self.tr("Remote-sensing models")

    def groupId(self) -> str:  # noqa: N802
        return "models"

    def shortDescription(self) -> str:  # noqa: N802
        return self.tr(self.SHORT)

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(self.HELP) + "\n\n" + self.tr(
            "The model runs in the RSFM backend (started automatically). Leave Model empty to use the first "
            "installed model for this task that fits the layer.")

    def tags(self) -> list[str]:
        return [t for t in ("rsfm", "deep learning", "remote sensing", "mtp", *self.TASK.split("_")) if t]

    def icon(self):
        return icon("rsfm.svg")

    # -- parameters -----------------------------------------------------------------------------------
    def initAlgorithm(self, config: dict | None = None) -> None:  # noqa: N802
        label = self.tr("Before image") if self.TWO_INPUTS else self.tr("Input raster")
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, label))
        if self.TWO_INPUTS:
            self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT_AFTER, self.tr("After image")))
        self.addParameter(QgsProcessingParameterString(
            self.MODEL, self.tr("Model id (empty: first fitting model)"), defaultValue="", optional=True))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Area to process"), optional=True))
        # Processing convention: a feature source; "Selected features only" limits it to the selection. The
        # polygons' shapes (not their bounding box) limit the job (options.aoi, sent in the raster's CRS).
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AOI, self.tr("Limit to polygons (only their inside is processed)"),
            [QgsProcessing.SourceType.TypeVectorPolygon], optional=True))
        if self.HAS_CLASSIFY_PER:
            self.addParameter(QgsProcessingParameterEnum(
                self.CLASSIFY_PER, self.tr("Classify"),
                [self.tr("Per tile (grid)"), self.tr("Per polygon of 'Limit to polygons'")], defaultValue=0))
        if self.HAS_THRESHOLD:
            self.addParameter(QgsProcessingParameterNumber(
                self.SCORE_THRESHOLD, self.tr("Score threshold (empty: model default)"),
                QgsProcessingParameterNumber.Type.Double, optional=True, minValue=0.0, maxValue=1.0))
        if self.HAS_VECTORIZE:
            self.addParameter(QgsProcessingParameterBoolean(
                self.VECTORIZE, self.tr("Also write polygons (GeoPackage)"), defaultValue=False))
        advanced = [
            QgsProcessingParameterString(self.BANDS, self.tr("Bands to use, e.g. 1,2,3 (empty: first N)"),
                                         optional=True),
            QgsProcessingParameterNumber(self.TILE_SIZE, self.tr("Tile size [px] (empty: model default)"),
                                         QgsProcessingParameterNumber.Type.Integer, optional=True, minValue=16),
            QgsProcessingParameterNumber(self.OVERLAP, self.tr("Tile overlap [px] (empty: model default)"),
                                         QgsProcessingParameterNumber.Type.Integer, optional=True, minValue=0),
            QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Batch size (empty: model default)"),
                                         QgsProcessingParameterNumber.Type.Integer, optional=True, minValue=1),
            QgsProcessingParameterBoolean(self.ALLOW_GSD_MISMATCH,
                                          self.tr("Run even if the pixel size is far from the model's"),
                                          defaultValue=False),
        ]
        for p in advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
            self.addParameter(p)
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.OUTPUT_FOLDER, self.tr("Output folder"), optional=True, createByDefault=True))
        self.addOutput(QgsProcessingOutputString(self.OUTPUT, self.tr("Main output file")))
        self.addOutput(QgsProcessingOutputString(self.JOB_ID, self.tr("Backend job id")))
        self.addOutput(QgsProcessingOutputFolder("OUTPUT_DIR", self.tr("Folder with all outputs")))

    # -- helpers --------------------------------------------------------------------------------------
    def _client(self) -> RsfmClient:
        from ..service import LauncherError, get_client

        try:
            return get_client()
        except LauncherError as exc:
            raise QgsProcessingException(str(exc)) from None
        except RsfmClientError as exc:
            raise QgsProcessingException(exc.message) from None

    def _raster(self, parameters: dict, key: str, context: QgsProcessingContext) -> QgsRasterLayer:
        layer = self.parameterAsRasterLayer(parameters, key, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, key))
        return layer

    def _choose_model(self, client: RsfmClient, model_id: str, layer: QgsRasterLayer,
                      allow_gsd: bool) -> ModelInfo:
        models = client.models(task=self.TASK)
        if model_id:
            for m in models:
                if m.id == model_id or m.name == model_id:
                    return m
            others = ", ".join(m.id for m in models) or "none installed"
            raise QgsProcessingException(self.tr(
                "No {task} model called '{model}'. Available: {others}.").format(
                task=self.TASK.replace("_", " "), model=model_id, others=others))
        if not models:
            raise QgsProcessingException(self.tr(
                "No {task} model is installed in the backend; add a model package folder in RSFM Settings > "
                "Model folders, or download one in the model browser.").format(task=self.TASK.replace("_", " ")))
        facts = layer_facts(layer)
        for m in models:
            if check_fitness(m.config, facts, allow_gsd).ok:
                return m
        return models[0]  # the fitness check below explains why it does not fit

    def _int_or_none(self, parameters: dict, key: str, context: QgsProcessingContext) -> int | None:
        if parameters.get(key) is None or parameters.get(key) == "":
            return None  # zero is a value; only "not given" means model default
        return self.parameterAsInt(parameters, key, context)

    # -- run ------------------------------------------------------------------------------------------
    def processAlgorithm(self, parameters: dict, context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        layer = self._raster(parameters, self.INPUT, context)
        after = self._raster(parameters, self.INPUT_AFTER, context) if self.TWO_INPUTS else None
        allow_gsd = self.parameterAsBoolean(parameters, self.ALLOW_GSD_MISMATCH, context)
        client = self._client()
        try:
            model = self._choose_model(client, self.parameterAsString(parameters, self.MODEL, context).strip(),
                                       layer, allow_gsd)
            feedback.pushInfo(self.tr("Model: {model}").format(model=model.id))
            for lyr in [layer] + ([after] if after is not None else []):
                fit = check_fitness(model.config, layer_facts(lyr), allow_gsd)
                for w in fit.warnings:
                    feedback.pushWarning(w)
                if not fit.ok:
                    raise QgsProcessingException(" ".join(p[0].upper() + p[1:] + "." for p in fit.problems))
            area = area_after = None
            if parameters.get(self.EXTENT) is not None:
                area = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
                if area.isNull() or area.isEmpty():
                    area = None
                elif after is not None:  # the after image may use another CRS; the backend warps it
                    area_after = self.parameterAsExtent(parameters, self.EXTENT, context, after.crs())
            aoi = self._aoi(parameters, context, layer)
            if aoi is not None:
                aoi, aoi_rect = aoi
                area = aoi_rect if area is None else area.intersect(aoi_rect)
                if after is not None:
                    area_after = to_layer_crs(area, layer.crs(), after)
            per_polygon = self.HAS_CLASSIFY_PER and self.parameterAsEnum(parameters, self.CLASSIFY_PER, context) == 1
            if per_polygon and aoi is None:
                raise QgsProcessingException(self.tr(
                    "Classifying per polygon needs polygons: choose a polygon layer in 'Limit to polygons' (tick "
                    "'Selected features only' to classify only the selected ones)."))
            out_dir = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context) or tempfile.mkdtemp(
                prefix="rsfm_")
            try:
                prepared = prepare_input(layer, area, model.gsd_m)
                prepared_after = prepare_input(after, area_after, model.gsd_m) if after is not None else None
            except InputError as exc:
                raise QgsProcessingException(str(exc)) from None
            request = self._request(parameters, context, model, prepared, prepared_after, out_dir)
            if aoi is not None:
                request["options"]["aoi"] = aoi
            if per_polygon:
                request["options"]["classify_per"] = "polygon"
            for p in [prepared] + ([prepared_after] if prepared_after else []):
                check = client.check(model.id, p.path)
                for w in check.warnings:
                    feedback.pushWarning(w)
                if not check.ok and not (allow_gsd and all("GSD" in x or "pixel" in x for x in check.problems)):
                    raise QgsProcessingException(" ".join(check.problems))
            job = client.submit(request)
            feedback.pushInfo(self.tr("Backend job {job} submitted").format(job=job.id))

            def update(j: Job) -> None:
                feedback.setProgress(100.0 * j.progress)
                if j.message:
                    feedback.setProgressText(j.message)

            final = client.wait(job.id, poll_s=0.25, on_update=update, is_cancelled=feedback.isCanceled)
        except RsfmClientError as exc:
            if exc.code == "rasters_do_not_overlap" and after is not None:
                raise QgsProcessingException(self.tr(
                    "The before image '{before}' and the after image '{after}' do not overlap, so there is "
                    "nothing to compare. Choose two images of the same place (they may use different CRSs)."
                ).format(before=layer.name(), after=after.name())) from None
            raise QgsProcessingException(exc.message) from None
        for w in final.warnings:
            feedback.pushWarning(w)
        if final.state == "cancelled":
            raise QgsProcessingException(self.tr("The run was cancelled; no output was written."))
        if final.state != "succeeded":
            raise QgsProcessingException(self.tr("The backend job failed: {error}").format(error=final.error_message))
        outputs = final.outputs
        if not outputs:
            raise QgsProcessingException(self.tr("The backend finished but wrote no output; see its log."))
        primary = next((o for o in outputs if o.kind == self.PRIMARY_KIND), outputs[0])
        self._load_on_completion(final, outputs, layer.name(), context)
        stats = (final.result or {}).get("stats")
        if stats:
            feedback.pushInfo(self.tr("Statistics: {stats}").format(stats=stats))
        return {self.OUTPUT: primary.path, self.JOB_ID: final.id, "OUTPUT_DIR": out_dir}

    def _aoi(self, parameters: dict, context: QgsProcessingContext, layer: QgsRasterLayer):
        """``(aoi FeatureCollection, its bounding box)`` in the raster layer's CRS, or None without polygons."""
        if parameters.get(self.AOI) in (None, ""):
            return None
        source = self.parameterAsSource(parameters, self.AOI, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.AOI))
        try:
            return features_aoi(source.getFeatures(), source.sourceCrs(), layer, source.sourceName())
        except InputError as exc:
            raise QgsProcessingException(str(exc)[:1].upper() + str(exc)[1:]) from None

    def _request(self, parameters, context, model: ModelInfo, prepared, prepared_after, out_dir: str) -> dict:
        options: dict[str, Any] = {}
        for key, opt in ((self.TILE_SIZE, "tile_size_px"), (self.OVERLAP, "tile_overlap_px"),
                         (self.BATCH_SIZE, "batch_size")):
            v = self._int_or_none(parameters, key, context)
            if v is not None:
                options[opt] = v
        bands_text = self.parameterAsString(parameters, self.BANDS, context).strip()
        if bands_text:
            try:
                options["bands"] = [int(b) for b in bands_text.replace(" ", "").split(",") if b]
            except ValueError:
                raise QgsProcessingException(self.tr(
                    "Bands must be numbers separated by commas, e.g. 1,2,3 (got '{bands}')."
                ).format(bands=bands_text)) from None
        elif prepared.bands:
            options["bands"] = prepared.bands
        if self.HAS_THRESHOLD and parameters.get(self.SCORE_THRESHOLD) not in (None, ""):
            options["score_threshold"] = self.parameterAsDouble(parameters, self.SCORE_THRESHOLD, context)
        if self.HAS_VECTORIZE:
            options["vectorize"] = self.parameterAsBoolean(parameters, self.VECTORIZE, context)
        if self.parameterAsBoolean(parameters, self.ALLOW_GSD_MISMATCH, context):
            options["allow_gsd_mismatch"] = True
        if prepared.bbox is not None:
            options["bbox"] = prepared.bbox
        inputs = {"raster": prepared.path}
        if prepared_after is not None:
            inputs["raster_after"] = prepared_after.path
        return {"task": self.TASK, "model": model.id, "inputs": inputs, "output_dir": out_dir, "options": options}

    def _load_on_completion(self, job: Job, outputs, source_name: str, context: QgsProcessingContext) -> None:
        from ..layers import provenance_text

        prov = provenance_text(job, source_name)
        for o in outputs:
            uri = o.path + (f"|layername={o.layer}" if o.kind == "vector" and o.layer else "")
            details = QgsProcessingContext.LayerDetails(o.name or job.task, context.project(), self.OUTPUT)
            details.layerTypeHint = (QgsProcessingUtils.LayerHint.Vector if o.kind == "vector" else
                                     QgsProcessingUtils.LayerHint.Raster)
            pp = _StylePostProcessor(o.style, prov)
            _KEEP_ALIVE.append(pp)
            details.setPostProcessor(pp)
            context.addLayerToLoadOnCompletion(uri, details)

