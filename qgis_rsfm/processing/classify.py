"""rsfm:classify - Classify scenes."""

from __future__ import annotations

from qgis.PyQt.QtCore import QT_TRANSLATE_NOOP

from .base import RsfmAlgorithm


class ClassifyAlgorithm(RsfmAlgorithm):
    """Classify scenes with an RSFM model package."""

    TASK = "scene_classification"
    ALG_NAME = "classify"
    DISPLAY = QT_TRANSLATE_NOOP("RsfmProcessing", "Classify scenes")
    SHORT = QT_TRANSLATE_NOOP("RsfmProcessing", "Classifies each tile of a raster into a scene class.")
    HELP = QT_TRANSLATE_NOOP(
        "RsfmProcessing",
        "Cuts the raster into model-sized tiles and gives each tile a scene class (e.g. airport, forest, residential) with a score. The output is a polygon grid (GeoPackage) with class and score fields. With 'Classify: per polygon', each polygon of 'Limit to polygons' gets one class instead (probabilities averaged over the tiles covering it, weighted by their overlap), written with the polygon's geometry and its feature id (source_fid)."
    )
    PRIMARY_KIND = "vector"
    HAS_CLASSIFY_PER = True

