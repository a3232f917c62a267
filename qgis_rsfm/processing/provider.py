"""The ``rsfm`` Processing provider: one algorithm per task."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtCore import QCoreApplication

from ..icons import icon
from .change import ChangeAlgorithm
from .classify import ClassifyAlgorithm
from .detect import DetectAlgorithm
from .detect_rotated import DetectRotatedAlgorithm
from .instances import InstancesAlgorithm
from .segment import SegmentAlgorithm
from .status import StatusAlgorithm

ALGORITHMS = (SegmentAlgorithm, ClassifyAlgorithm, DetectAlgorithm, DetectRotatedAlgorithm,
              InstancesAlgorithm, ChangeAlgorithm, StatusAlgorithm)


class RsfmProvider(QgsProcessingProvider):
    """Registers the RSFM algorithms under the id ``rsfm``."""

    def id(self) -> str:
        return "rsfm"

    def name(self) -> str:
        return QCoreApplication.translate("RsfmProcessing", "RSFM remote-sensing models")

    def longName(self) -> str:  # noqa: N802
        return self.name()

    def icon(self):
        return icon("rsfm.svg")

    def loadAlgorithms(self) -> None:  # noqa: N802
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())
