"""RSFM backend: the model server the QGIS plugin talks to over loopback HTTP."""

__version__ = "0.1.0"
API_VERSION = 1
