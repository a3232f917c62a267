"""rsfm:instances - Segment object instances."""

from __future__ import annotations

from qgis.PyQt.QtCore import QT_TRANSLATE_NOOP

from .base import RsfmAlgorithm


class InstancesAlgorithm(RsfmAlgorithm):
    """Segment object instances with an RSFM model package."""

    TASK = "instance_segmentation"
    ALG_NAME = "instances"
    DISPLAY = QT_TRANSLATE_NOOP("RsfmProcessing", "Segment object instances")
    SHORT = QT_TRANSLATE_NOOP("RsfmProcessing", "Outlines individual objects as polygons.")
    HELP = QT_TRANSLATE_NOOP(
        "RsfmProcessing",
        "Runs an instance segmentation model over the raster in tiles and writes one outline polygon per object (GeoPackage) with class, score and provenance fields; objects cut by tile borders are merged."
    )
    PRIMARY_KIND = "vector"
    HAS_THRESHOLD = True
