"""rsfm:change - Detect changes between two images."""

from __future__ import annotations

from qgis.PyQt.QtCore import QT_TRANSLATE_NOOP

from .base import RsfmAlgorithm


class ChangeAlgorithm(RsfmAlgorithm):
    """Detect changes between two images with an RSFM model package."""

    TASK = "change_detection"
    ALG_NAME = "change"
    DISPLAY = QT_TRANSLATE_NOOP("RsfmProcessing", "Detect changes between two images")
    SHORT = QT_TRANSLATE_NOOP("RsfmProcessing", "Maps what changed between a before and an after image.")
    HELP = QT_TRANSLATE_NOOP(
        "RsfmProcessing",
        "Compares two co-registered images of the same place taken at different times and writes a change raster (1 = changed) in the before image's grid; optionally also change polygons (GeoPackage). Both images must cover the same area with the same bands."
    )
    PRIMARY_KIND = "raster"
    TWO_INPUTS = True
    HAS_VECTORIZE = True
