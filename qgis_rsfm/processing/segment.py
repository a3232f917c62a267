"""rsfm:segment - Segment raster (land cover)."""

from __future__ import annotations

from qgis.PyQt.QtCore import QT_TRANSLATE_NOOP

from .base import RsfmAlgorithm


class SegmentAlgorithm(RsfmAlgorithm):
    """Segment raster (land cover) with an RSFM model package."""

    TASK = "semantic_segmentation"
    ALG_NAME = "segment"
    DISPLAY = QT_TRANSLATE_NOOP("RsfmProcessing", "Segment raster (land cover)")
    SHORT = QT_TRANSLATE_NOOP("RsfmProcessing", "Labels every pixel of a raster with a land-cover class.")
    HELP = QT_TRANSLATE_NOOP(
        "RsfmProcessing",
        "Runs a semantic segmentation model over the raster in overlapping tiles and writes a class raster (GeoTIFF with the class colours) in the input's CRS and grid. Optionally also writes the classes as polygons (GeoPackage)."
    )
    PRIMARY_KIND = "raster"
    HAS_VECTORIZE = True
