"""Render the demo result over its input with PyQGIS (run with QGIS's Python, headless).

Usage: QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/render_demo.py demo-output

Reads ``demo-output/demo.json`` (written by scripts/demo.py), loads the input raster, the land-cover GeoTIFF
with the style the backend wrote (semi-transparent) and the class polygons' outlines, and writes
``demo-output/demo_map.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def main(out_dir: str) -> int:
    out = Path(out_dir)
    summary = json.loads((out / "demo.json").read_text())
    layers: list = []
    source = job = settings = None
    try:
        source = QgsRasterLayer(summary["input"], "input")
        if not source.isValid():
            print(f"cannot open {summary['input']} in QGIS", file=sys.stderr)
            return 1
        for output in summary["outputs"]:
            if output["kind"] == "raster":
                lyr = QgsRasterLayer(output["path"], output.get("name", "result"))
                if output.get("style"):
                    lyr.loadNamedStyle(output["style"])
                lyr.renderer().setOpacity(0.55)
            else:
                uri = output["path"] + (f"|layername={output['layer']}" if output.get("layer") else "")
                lyr = QgsVectorLayer(uri, output.get("name", "polygons"), "ogr")
                symbol = lyr.renderer().symbol() if hasattr(lyr.renderer(), "symbol") else None
                if symbol is not None:  # outlines only: the raster carries the colours
                    symbol.setColor(QColor(0, 0, 0, 0))
                    symbol.symbolLayer(0).setStrokeColor(QColor(20, 20, 20, 160))
                    symbol.symbolLayer(0).setStrokeWidth(0.1)
            if not lyr.isValid():
                print(f"QGIS cannot open output {output['path']}", file=sys.stderr)
                return 1
            layers.append(lyr)
        settings = QgsMapSettings()
        settings.setLayers(list(reversed(layers)) + [source])  # first = top
        settings.setDestinationCrs(source.crs())
        settings.setExtent(source.extent())
        width = 1000
        height = int(width * source.height() / max(source.width(), 1))
        settings.setOutputSize(QSize(width, height))
        settings.setBackgroundColor(QColor(255, 255, 255))
        job = QgsMapRendererParallelJob(settings)
        job.start()
        job.waitForFinished()
        png = out / "demo_map.png"
        job.renderedImage().save(str(png), "PNG")
        print(f"rendered with QGIS {Qgis.QGIS_VERSION}: {png}")
        return 0
    finally:
        # layers must die before the providers are unloaded, or QGIS crashes on exit
        layers.clear()
        source = job = settings = None  # noqa: F841


if __name__ == "__main__":
    # The application must outlive every layer and be torn down at module level, or PyQGIS crashes on exit.
    _APP = QgsApplication([], False)
    _APP.initQgis()
    code = main(sys.argv[1] if len(sys.argv) > 1 else "demo-output")
    _APP.exitQgis()
    raise SystemExit(code)
