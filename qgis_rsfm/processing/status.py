"""rsfm:status - backend state and installed models, a cheap first call before running a task."""

from __future__ import annotations

import json
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
)
from qgis.PyQt.QtCore import QCoreApplication

from ..client import TASKS, RsfmClientError
from ..icons import icon


class StatusAlgorithm(QgsProcessingAlgorithm):
    """Reports the backend (version, device) and the models it can run, optionally for one task."""

    TASK = "TASK"
    OUTPUT = "OUTPUT"
    MODEL_COUNT = "MODEL_COUNT"
    TASK_CHOICES = ("all", *TASKS)

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("RsfmProcessing", text)

    def createInstance(self):  # noqa: N802
        return StatusAlgorithm()

    def name(self) -> str:
        return "status"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Backend status and installed models")

    def group(self) -> str:
        return self.tr("Remote-sensing models")

    def groupId(self) -> str:  # noqa: N802
        return "models"

    def shortDescription(self) -> str:  # noqa: N802
        return self.tr("Reports the RSFM backend's state and the model ids each task can use.")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr("Starts the backend if needed, then lists every installed model with its task, bands "
                       "and pixel size. Use the ids it prints as the Model parameter of the other RSFM "
                       "algorithms. OUTPUT is the same information as JSON.")

    def tags(self) -> list[str]:
        return ["rsfm", "status", "models", "backend", "health"]

    def icon(self):
        return icon("models.svg")

    def initAlgorithm(self, config: dict | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterEnum(self.TASK, self.tr("Task"), options=list(self.TASK_CHOICES),
                                                     defaultValue=0))
        self.addOutput(QgsProcessingOutputString(self.OUTPUT, self.tr("Status as JSON")))
        self.addOutput(QgsProcessingOutputNumber(self.MODEL_COUNT, self.tr("Number of models listed")))

    def processAlgorithm(self, parameters, context, feedback) -> dict[str, Any]:  # noqa: N802
        from ..service import LauncherError, get_client

        task = self.TASK_CHOICES[self.parameterAsEnum(parameters, self.TASK, context)]
        try:
            client = get_client()
            health = client.health()
            models = client.models(task=None if task == "all" else task)
        except LauncherError as exc:
            raise QgsProcessingException(str(exc)) from None
        except RsfmClientError as exc:
            raise QgsProcessingException(exc.message) from None
        feedback.pushInfo(self.tr("Backend {version} at {url} on {device}").format(
            version=health.get("version"), url=client.base_url, device=health.get("device")))
        for m in models:
            feedback.pushInfo(self.tr("{id}  [{task}]  {bands} bands, {gsd} m/px, {classes} classes, licence "
                                      "{licence}").format(id=m.id, task=m.task, bands=len(m.bands),
                                                          gsd=f"{m.gsd_m:g}", classes=len(m.class_names),
                                                          licence=m.config.get("licence", "?")))
        if not models:
            feedback.pushWarning(self.tr("No model is installed for this task; add a model folder in RSFM "
                                         "Settings."))
        status = {"backend": {k: health.get(k) for k in ("version", "api_version", "device", "runtimes", "jobs")},
                  "models": [{"id": m.id, "task": m.task, "bands": m.bands, "gsd_m": m.gsd_m,
                              "classes": m.class_names} for m in models]}
        return {self.OUTPUT: json.dumps(status), self.MODEL_COUNT: len(models)}
