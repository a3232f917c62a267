"""The RSFM Processing provider: every dock action as an algorithm (batch, model builder, qgis_process)."""
