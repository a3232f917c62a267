"""rsfm:detect_rotated - Detect objects (rotated boxes)."""

from __future__ import annotations

from qgis.PyQt.QtCore import QT_TRANSLATE_NOOP

from .base import RsfmAlgorithm


class DetectRotatedAlgorithm(RsfmAlgorithm):
    """Detect objects (rotated boxes) with an RSFM model package."""

    TASK = "rotated_detection"
    ALG_NAME = "detect_rotated"
    DISPLAY = QT_TRANSLATE_NOOP("RsfmProcessing", "Detect objects (rotated boxes)")
    SHORT = QT_TRANSLATE_NOOP("RsfmProcessing", "Detects objects with oriented boxes and writes them as polygons.")
    HELP = QT_TRANSLATE_NOOP(
        "RsfmProcessing",
        "Runs a rotated-box detector (ships, planes, vehicles at any heading) over the raster in tiles and writes each object as a rotated rectangle (GeoPackage) with class, score, angle, length and width fields."
    )
    PRIMARY_KIND = "vector"
    HAS_THRESHOLD = True
