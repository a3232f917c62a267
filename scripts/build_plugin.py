#!/usr/bin/env python3
"""Build the QGIS plugin zip (``make plugin``): one root folder ``qgis_rsfm/`` holding the plugin code,
``metadata.txt``, the icons from ``resources/icons`` (as ``qgis_rsfm/icons``), the .qml templates from
``resources/styles`` (as ``qgis_rsfm/styles``), the compiled translations ``qgis_rsfm/i18n/*.qm`` and the
licence. No caches, tests or dev files (the ``.ts`` translation sources stay out: QGIS loads the ``.qm``).

    python scripts/build_plugin.py [--out dist]

Standard library only; prints the zip's path.
"""

from __future__ import annotations

import argparse
import configparser
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "qgis_rsfm"
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "tests", "test"}
EXCLUDE_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp", ".log", ".ts"}


def plugin_version(metadata: Path) -> str:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(metadata, encoding="utf-8")
    return cp["general"]["version"]


def files_to_pack(repo: Path = REPO) -> list[tuple[Path, str]]:
    """(source file, path inside the zip) pairs.

    Raises:
        SystemExit: the two metadata.txt copies differ, or a translation source has no compiled .qm.
    """
    root_md, inner_md = repo / "metadata.txt", repo / PLUGIN / "metadata.txt"
    if not inner_md.is_file() or root_md.read_bytes() != inner_md.read_bytes():
        raise SystemExit(f"{inner_md} must be an identical copy of {root_md}; run: cp metadata.txt {PLUGIN}/")
    uncompiled = [ts.name for ts in sorted((repo / PLUGIN / "i18n").glob("*.ts")) if not ts.with_suffix(".qm").is_file()]
    if uncompiled:
        raise SystemExit(f"{', '.join(uncompiled)} not compiled (the zip would ship without that language); run: "
                         "python3 scripts/update_translations.py")
    out: list[tuple[Path, str]] = []
    for p in sorted((repo / PLUGIN).rglob("*")):
        rel = p.relative_to(repo)
        if p.is_dir() or any(part in EXCLUDE_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if p.suffix in EXCLUDE_SUFFIXES:
            continue
        out.append((p, rel.as_posix()))
    for src_dir, dest in ((repo / "resources" / "icons", "icons"), (repo / "resources" / "styles", "styles")):
        if src_dir.is_dir():
            for p in sorted(src_dir.iterdir()):
                if p.is_file() and not p.name.startswith("."):
                    out.append((p, f"{PLUGIN}/{dest}/{p.name}"))
    for name in ("LICENSE", "LICENSE.txt", "LICENCE"):
        if (repo / name).is_file():
            out.append((repo / name, f"{PLUGIN}/LICENSE"))
            break
    return out


def build(out_dir: Path, repo: Path = REPO) -> Path:
    files = files_to_pack(repo)
    out_dir.mkdir(parents=True, exist_ok=True)
    zpath = out_dir / f"{PLUGIN}-{plugin_version(repo / 'metadata.txt')}.zip"
    tmp = zpath.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for src, arc in files:
            info = zipfile.ZipInfo.from_file(src, arc)
            info.external_attr = 0o644 << 16  # plain readable files; upload checks flag odd permissions
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, src.read_bytes())
    tmp.replace(zpath)
    return zpath


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "dist"), help="folder for the zip (default: dist/)")
    args = ap.parse_args(argv)
    print(build(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
