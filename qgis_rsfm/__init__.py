"""RSFM QGIS plugin. Only ``classFactory`` lives here; everything is imported lazily inside it, so
``import qgis_rsfm.client`` works in a plain Python without QGIS."""


def classFactory(iface):  # noqa: N802 - QGIS plugin entry point
    """Called by QGIS to create the plugin (``iface`` is the ``QgisInterface``)."""
    from .plugin import RsfmPlugin

    return RsfmPlugin(iface)
