"""Does a model fit a layer? Plain-words problems (block the run) and warnings (let it run).

No QGIS import: the facts about a layer come in a :class:`LayerFacts`, filled by ``layers.py``. The
backend repeats the check on the real file (``POST /models/{id}/check``); doing it here as well lets the
dock filter the model list and explain a mismatch before anything is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GSD_REFUSE_FACTOR = 4.0  # contract: beyond 4x outside the range the backend refuses


@dataclass
class LayerFacts:
    """What matters about a raster layer for a model.

    Attributes:
        name: layer name (for messages).
        band_count: bands the model would receive (4 for a rendered RGBA web layer).
        gsd_m: ground sample distance in metres per pixel (None when unknown).
        has_crs: the layer has a valid CRS.
        crs_units: ``metres``, ``degrees``, ... (``QgsUnitTypes.toString`` of the map units).
        is_file: the layer is a file GDAL can read directly (else it is rendered to a GeoTIFF).
    """

    name: str
    band_count: int
    gsd_m: float | None
    has_crs: bool = True
    crs_units: str = "meters"
    is_file: bool = True


@dataclass
class Fitness:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_fitness(config: dict[str, Any], facts: LayerFacts, allow_gsd_mismatch: bool = False) -> Fitness:
    """Compare a model's ``config.json`` with a layer.

    Args:
        config: the model package's config (``bands``, ``gsd_m``, ``gsd_range_m``, ``name``).
        facts: the layer.
        allow_gsd_mismatch: turn the "GSD far out of range" problem into a warning.
    """
    fit = Fitness()
    name = config.get("name", "the model")
    bands = list(config.get("bands", []))
    need = len(bands)
    have = facts.band_count
    if not facts.has_crs:
        fit.problems.append(
            f"layer '{facts.name}' has no coordinate reference system, so results cannot be placed on the "
            "map; assign one (Layer Properties > Source > Assign CRS) or georeference the raster first")
    if need and have < need:
        fit.problems.append(
            f"model '{name}' needs {need} bands ({', '.join(bands)}) but layer '{facts.name}' has {have}; "
            f"choose a {need}-band layer or a model made for {have}-band imagery")
    elif need and have > need:
        fit.warnings.append(
            f"layer '{facts.name}' has {have} bands; the model uses the first {need} "
            f"({', '.join(bands)}) unless you pick bands in the advanced options")
    if facts.has_crs and facts.crs_units and facts.crs_units.lower().startswith("deg"):
        fit.warnings.append(
            f"layer '{facts.name}' is in geographic degrees; pixel size is estimated from the latitude. "
            "A projected CRS (e.g. UTM) gives exact areas")
    gsd = config.get("gsd_m")
    rng = config.get("gsd_range_m") or ([gsd, gsd] if gsd else None)
    if facts.gsd_m and rng and facts.is_file:
        lo, hi = float(rng[0]), float(rng[1])
        g = float(facts.gsd_m)
        if g < lo / GSD_REFUSE_FACTOR or g > hi * GSD_REFUSE_FACTOR:
            msg = (f"layer '{facts.name}' has {g:.3g} m pixels but model '{name}' works at {lo:.3g}-{hi:.3g} m; "
                   "resample the layer (Raster > Projections > Warp) or choose a model for this resolution")
            (fit.warnings if allow_gsd_mismatch else fit.problems).append(
                msg + (" (running anyway because the GSD check is off)" if allow_gsd_mismatch else
                       ", or allow the mismatch in the advanced options"))
        elif g < lo or g > hi:
            fit.warnings.append(f"layer '{facts.name}' has {g:.3g} m pixels, outside the model's "
                                f"{lo:.3g}-{hi:.3g} m; results may be poorer")
    return fit
