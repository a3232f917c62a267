"""rsfm:classify - Classify scenes."""

from __future__ import annotations

from .base import RsfmAlgorithm


class ClassifyAlgorithm(RsfmAlgorithm):
    """Classify scenes with an RSFM model package."""

    TASK = "scene_classification"
    ALG_NAME = "classify"
    DISPLAY = "Classify scenes"
    SHORT = "Classifies each tile of a raster into a scene class."
    HELP = (
        "Cuts the raster into model-sized tiles and gives each tile a scene class (e.g. airport, forest, residential) with a score. The output is a polygon grid (GeoPackage) with class and score fields."
    )
    PRIMARY_KIND = "vector"

