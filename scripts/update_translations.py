#!/usr/bin/env python3
"""Regenerate the plugin's translation sources (``qgis_rsfm/i18n/rsfm_<lang>.ts``) from the code and compile
them to ``.qm`` (what QGIS loads). No Makefile needed:

    python3 scripts/update_translations.py            # update every rsfm_*.ts, compile every .qm
    python3 scripts/update_translations.py --add fr   # also start rsfm_fr.ts (then translate it in Qt Linguist)
    python3 scripts/update_translations.py --check    # exit 1 if a .ts lacks or has extra messages

Needs ``pylupdate5`` (Debian/Ubuntu: ``apt-get install pyqt5-dev-tools``) and ``lrelease``
(``apt-get install qttools5-dev-tools``). The compiled .qm files are committed, so running the plugin or its
tests needs neither.

How the strings are found: pylupdate5 extracts ``tr("...")``, ``self.tr("...")``, ``QCoreApplication.translate
("Context", "...")`` and ``QT_TR_NOOP("...")``/``QT_TRANSLATE_NOOP("Context", "...")``. It files bare ``tr()``
and ``QT_TR_NOOP()`` calls under ``@default`` and ``self.tr()`` under the class name, but the plugin's helpers
translate under a fixed context (``def tr(text): return QCoreApplication.translate("RsfmDock", text)`` at module
level, or a ``tr`` method in a class or its base). This script puts every message under the context the code
really looks up, found with ``ast``, then merges the existing translations in (by context and source text;
a source text moved to another context keeps its translation) and keeps messages the code no longer has as
``vanished`` so no translator work is lost.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "qgis_rsfm"
I18N = PLUGIN / "i18n"
PREFIX = "rsfm_"  # rsfm_de.ts -> rsfm_de.qm; plugin.py loads rsfm_<locale>.qm


# -- where each tr() looks up ------------------------------------------------------------------------------
def _translate_context(fn: ast.FunctionDef) -> str | None:
    """The literal context of ``QCoreApplication.translate("Ctx", ...)`` inside a ``tr`` helper, if any."""
    for node in ast.walk(fn):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "translate"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            return node.args[0].value
    return None


@dataclass
class ModuleContexts:
    """The tr() contexts one module uses: its module-level helper and its classes' ``tr`` methods."""

    module: str | None = None
    classes: dict[str, str | None] = field(default_factory=dict)  # class -> own tr context (None: none)
    bases: dict[str, list[str]] = field(default_factory=dict)  # class -> base class names


def scan_contexts(path: Path) -> ModuleContexts:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = ModuleContexts()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "tr":
            out.module = _translate_context(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            own = next((_translate_context(f) for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "tr"),
                       None)
            out.classes[node.name] = own
            out.bases[node.name] = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute)
                                    else "" for b in node.bases]
    return out


class ContextResolver:
    """Maps pylupdate5's (file, context) to the context the running code asks the translator for."""

    def __init__(self, files: list[Path]) -> None:
        self.by_file = {f.resolve(): scan_contexts(f) for f in files}
        self.class_tr: dict[str, str | None] = {}
        self.class_bases: dict[str, list[str]] = {}
        for mc in self.by_file.values():
            self.class_tr.update(mc.classes)
            self.class_bases.update(mc.bases)

    def class_context(self, cls: str, seen: frozenset = frozenset()) -> str | None:
        """The context of the `tr` method class `cls` defines or inherits (None: it uses QObject.tr)."""
        if cls in seen or cls not in self.class_tr:
            return None
        if self.class_tr[cls]:
            return self.class_tr[cls]
        for b in self.class_bases.get(cls, []):
            ctx = self.class_context(b, seen | {cls})
            if ctx:
                return ctx
        return None

    def resolve(self, file: Path, context: str, line: str) -> str:
        mc = self.by_file.get(file.resolve())
        if mc is None:
            raise SystemExit(f"pylupdate5 reported {file}, which is not a plugin module")
        if context == "@default":
            if mc.module is None:
                raise SystemExit(f"{file}:{line}: tr()/QT_TR_NOOP() outside a class, but the module has no "
                                 "'def tr(text): return QCoreApplication.translate(\"Context\", text)' helper; "
                                 "add one so the string has a context")
            return mc.module
        # self.tr() in class `context`: its own/inherited tr method's context, else Qt's default (class name)
        return self.class_context(context) or context


# -- .ts files ---------------------------------------------------------------------------------------------
@dataclass
class Message:
    context: str
    source: str
    comment: str = ""
    locations: list[tuple[str, str]] = field(default_factory=list)  # (filename relative to i18n/, line)
    translation: str = ""
    kind: str = "unfinished"  # "" (finished), "unfinished", "vanished"

    @property
    def key(self) -> tuple[str, str, str]:
        return self.context, self.source, self.comment


def read_ts(path: Path) -> tuple[str | None, list[Message]]:
    root = ET.parse(path).getroot()  # noqa: S314 - our own .ts files, not untrusted input
    msgs = []
    for ctx in root.iter("context"):
        cname = ctx.findtext("name", "")
        for m in ctx.iter("message"):
            t = m.find("translation")
            msgs.append(Message(
                context=cname, source=m.findtext("source", ""), comment=m.findtext("comment", "") or "",
                locations=[(loc.get("filename", ""), loc.get("line", "")) for loc in m.iter("location")],
                translation=(t.text or "") if t is not None else "",
                kind=(t.get("type", "") if t is not None else "unfinished")))
    return root.get("language"), msgs


def write_ts(path: Path, language: str | None, msgs: list[Message]) -> None:
    root = ET.Element("TS", {"version": "2.1", **({"language": language} if language else {})})
    by_ctx: dict[str, list[Message]] = {}
    for m in msgs:
        by_ctx.setdefault(m.context, []).append(m)
    for cname in sorted(by_ctx):
        c = ET.SubElement(root, "context")
        ET.SubElement(c, "name").text = cname
        for m in sorted(by_ctx[cname], key=lambda m: (m.kind == "vanished", m.locations[:1], m.source)):
            e = ET.SubElement(c, "message")
            for fname, line in m.locations:
                ET.SubElement(e, "location", {"filename": fname, "line": line})
            ET.SubElement(e, "source").text = m.source
            if m.comment:
                ET.SubElement(e, "comment").text = m.comment
            t = ET.SubElement(e, "translation", {"type": m.kind} if m.kind else {})
            t.text = m.translation
    ET.indent(root, space="    ")
    text = ET.tostring(root, encoding="unicode")
    path.write_text('<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE TS>\n' + text + "\n", encoding="utf-8")


def extract(files: list[Path], tool: str) -> list[Message]:
    """Run pylupdate5 on the plugin and return its messages under their real contexts."""
    resolver = ContextResolver(files)
    merged: dict[tuple[str, str, str], Message] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # One file per run: pylupdate5 keeps a single location for a text repeated within a context, and two
        # modules' bare tr() calls share "@default", so a joint run would lose the second module's context.
        for src_file in files:
            raw = Path(tmp) / "raw.ts"
            raw.unlink(missing_ok=True)
            proc = subprocess.run([tool, str(src_file), "-ts", str(raw)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{tool} failed on {src_file}:\n{proc.stdout}\n{proc.stderr}")
            if not raw.is_file():
                continue  # nothing to translate in this module
            _, raw_msgs = read_ts(raw)
            rel = Path(_relpath(src_file, I18N)).as_posix()
            for m in raw_msgs:
                for _fname, line in m.locations:
                    ctx = resolver.resolve(src_file, m.context, line)
                    key = (ctx, m.source, m.comment)
                    if key not in merged:
                        merged[key] = Message(ctx, m.source, m.comment)
                    merged[key].locations.append((rel, line))
    return list(merged.values())


def _relpath(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def merge(fresh: list[Message], old: list[Message]) -> list[Message]:
    """Fresh messages with the old translations; old messages the code no longer has become 'vanished'."""
    old_by_key = {m.key: m for m in old}
    old_by_source: dict[str, Message] = {}
    for m in old:
        if m.translation and m.kind != "vanished":
            old_by_source.setdefault(m.source, m)
    out = []
    for m in fresh:
        prev = old_by_key.get(m.key)
        if prev is not None and prev.translation:
            m.translation, m.kind = prev.translation, ("" if prev.kind in ("", "vanished") else prev.kind)
        elif m.source in old_by_source:  # same text moved to another context: reuse, flag for review
            m.translation, m.kind = old_by_source[m.source].translation, "unfinished"
        out.append(m)
    fresh_keys = {m.key for m in fresh}
    for m in old:
        if m.key not in fresh_keys and m.translation:
            out.append(Message(m.context, m.source, m.comment, [], m.translation, "vanished"))
    return out


def plugin_files() -> list[Path]:
    return sorted(p for p in PLUGIN.rglob("*.py") if "__pycache__" not in p.parts)


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found; install it with: apt-get install {package}")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--add", action="append", default=[], metavar="LANG",
                    help="start a new translation, e.g. --add fr (creates i18n/rsfm_fr.ts)")
    ap.add_argument("--check", action="store_true", help="only report whether the .ts files are up to date")
    args = ap.parse_args(argv)
    I18N.mkdir(exist_ok=True)
    fresh = extract(plugin_files(), _tool("pylupdate5", "pyqt5-dev-tools"))
    ts_files = sorted(I18N.glob(f"{PREFIX}*.ts")) + [I18N / f"{PREFIX}{lang}.ts" for lang in args.add]
    if not ts_files:
        raise SystemExit(f"no {I18N}/{PREFIX}*.ts yet; start one with --add LANG")
    stale = []
    for ts in dict.fromkeys(ts_files):
        language, old = read_ts(ts) if ts.is_file() else (ts.stem[len(PREFIX):], [])
        msgs = merge([Message(m.context, m.source, m.comment, list(m.locations)) for m in fresh], old)
        if args.check:  # the same messages (line numbers may drift: that alone needs no update)
            live = {m.key for m in msgs if m.kind != "vanished"}
            if live != {m.key for m in old if m.kind != "vanished"}:
                stale.append(ts.name)
            continue
        write_ts(ts, language, msgs)
        n_done = sum(1 for m in msgs if m.kind == "" and m.translation)
        n_live = sum(1 for m in msgs if m.kind != "vanished")
        print(f"{ts.relative_to(REPO)}: {n_live} messages, {n_done} translated")
    if args.check:
        if stale:
            print("out of date: " + ", ".join(stale) + "; run: python3 scripts/update_translations.py")
            return 1
        print("translations are up to date")
        return 0
    lrelease = _tool("lrelease", "qttools5-dev-tools")
    for ts in sorted(I18N.glob(f"{PREFIX}*.ts")):
        proc = subprocess.run([lrelease, "-silent", str(ts), "-qm", str(ts.with_suffix(".qm"))],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"lrelease failed on {ts}:\n{proc.stdout}\n{proc.stderr}")
        print(f"{ts.with_suffix('.qm').relative_to(REPO)} compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
