"""Icons by file path (no compiled Qt resources): the plugin zip carries them in ``qgis_rsfm/icons``;
a source checkout finds them in ``resources/icons``."""

from __future__ import annotations

from pathlib import Path

from qgis.PyQt.QtGui import QIcon

_HERE = Path(__file__).resolve().parent
_DIRS = (_HERE / "icons", _HERE.parent / "resources" / "icons")


def icon_path(name: str) -> str:
    """Absolute path of an icon file, or "" when it is missing."""
    for d in _DIRS:
        p = d / name
        if p.is_file():
            return str(p)
    return ""


def icon(name: str) -> QIcon:
    p = icon_path(name)
    return QIcon(p) if p else QIcon()
