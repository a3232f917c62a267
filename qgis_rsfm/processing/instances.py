"""rsfm:instances - Segment object instances."""

from __future__ import annotations

from .base import RsfmAlgorithm


class InstancesAlgorithm(RsfmAlgorithm):
    """Segment object instances with an RSFM model package."""

    TASK = "instance_segmentation"
    ALG_NAME = "instances"
    DISPLAY = "Segment object instances"
    SHORT = "Outlines individual objects as polygons."
    HELP = (
        "Runs an instance segmentation model over the raster in tiles and writes one outline polygon per object (GeoPackage) with class, score and provenance fields; objects cut by tile borders are merged."
    )
    PRIMARY_KIND = "vector"
    HAS_THRESHOLD = True
