"""rsfm:detect - Detect objects (boxes)."""

from __future__ import annotations

from qgis.PyQt.QtCore import QT_TRANSLATE_NOOP

from .base import RsfmAlgorithm


class DetectAlgorithm(RsfmAlgorithm):
    """Detect objects (boxes) with an RSFM model package."""

    TASK = "object_detection"
    ALG_NAME = "detect"
    DISPLAY = QT_TRANSLATE_NOOP("RsfmProcessing", "Detect objects (boxes)")
    SHORT = QT_TRANSLATE_NOOP("RsfmProcessing", "Detects objects and writes their boxes as polygons.")
    HELP = QT_TRANSLATE_NOOP(
        "RsfmProcessing",
        "Runs an object detector over the raster in overlapping tiles, merges duplicates across tile borders (NMS) and writes one polygon per object (GeoPackage) with class, score and provenance fields."
    )
    PRIMARY_KIND = "vector"
    HAS_THRESHOLD = True
