"""The plugin speaks the user's QGIS language: with the locale set to German the dock shows German labels,
unloading removes the translator again, the compiled .qm matches its .ts, every tr() string in the code is in
the .ts, and translations keep their {placeholders}. scripts/update_translations.py merges without losing
translator work."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
I18N = REPO / "qgis_rsfm" / "i18n"
sys.path.insert(0, str(REPO / "scripts"))

import update_translations as ut  # noqa: E402

DE_TS = I18N / "rsfm_de.ts"
# The dock's main labels, buttons and task names: these must be properly translated, not just listed.
DOCK_MAIN = {
    ("RsfmDock", "Tasks"): "Aufgaben",
    ("RsfmDock", "Model browser"): "Modellbrowser",
    ("RsfmDock", "Settings"): "Einstellungen",
    ("RsfmDock", "Backend: not started"): "Backend: nicht gestartet",
    ("RsfmTaskPage", "Run"): "Ausführen",
    ("RsfmTaskPage", "Cancel"): "Abbrechen",
    ("RsfmTaskPage", "Raster layer"): "Rasterlayer",
    ("RsfmTaskPage", "Model"): "Modell",
    ("RsfmTaskPage", "Output folder"): "Ausgabeordner",
    ("RsfmTaskPage", "Land-cover segmentation"): "Landbedeckungs-Segmentierung",
    ("RsfmTaskPage", "Scene classification"): "Szenenklassifizierung",
    ("RsfmTaskPage", "Object detection"): "Objekterkennung",
    ("RsfmTaskPage", "Rotated-box detection"): "Erkennung mit gedrehten Rahmen",
    ("RsfmTaskPage", "Instance segmentation"): "Instanzsegmentierung",
    ("RsfmTaskPage", "Change detection"): "Änderungserkennung",
    ("RsfmPlugin", "Settings…"): "Einstellungen…",
}


def _live(msgs):
    return [m for m in msgs if m.kind != "vanished"]


@pytest.fixture
def locale_de(qgis_app):
    """The QGIS user locale set to German for one test, restored afterwards."""
    from qgis.core import QgsSettings

    s = QgsSettings()
    before = s.value("locale/userLocale", None)
    s.setValue("locale/userLocale", "de_DE")
    yield "de_DE"
    if before is None:
        s.remove("locale/userLocale")
    else:
        s.setValue("locale/userLocale", before)


def test_german_locale_shows_the_dock_in_german_and_unload_restores_english(locale_de, iface):
    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import QCoreApplication

    import qgis_rsfm

    plugin = qgis_rsfm.classFactory(iface)
    assert plugin.translator is not None, "no translator installed for de_DE (is i18n/rsfm_de.qm missing?)"
    plugin.initGui()
    try:
        dock = plugin.dock
        page = dock.pages["semantic_segmentation"]
        assert page.run_button.text() == "Ausführen"
        assert page.cancel_button.text() == "Abbrechen"
        assert page.status_label.text() == "Bereit."
        assert dock.tabs.tabText(0) == "Aufgaben"
        assert dock.windowTitle() == "RSFM – Fernerkundungsmodelle"
        names = [dock.task_combo.itemText(i) for i in range(dock.task_combo.count())]
        assert names == ["Landbedeckungs-Segmentierung", "Szenenklassifizierung", "Objekterkennung",
                         "Erkennung mit gedrehten Rahmen", "Instanzsegmentierung", "Änderungserkennung"]
        assert any("Landbedeckungs-Segmentierung" in lab.text()  # the page's heading
                   for lab in page.findChildren(type(page.status_label)))
        titles = [a.text() for a in iface.raster_menu_actions(plugin.MENU)]
        assert "Einstellungen…" in titles and "Modellbrowser…" in titles
        # Processing too (its strings are marked with QT_TRANSLATE_NOOP in the algorithm classes)
        alg = QgsApplication.processingRegistry().algorithmById("rsfm:segment")
        assert alg.displayName() == "Raster segmentieren (Landbedeckung)"
        assert alg.group() == "Fernerkundungsmodelle"
    finally:
        plugin.unload()
    assert plugin.translator is None
    assert QCoreApplication.translate("RsfmTaskPage", "Run") == "Run", "unload left the German translator in"


def test_locale_variants_fall_back_to_the_language_and_unknown_ones_to_english(qgis_app):
    from qgis_rsfm.plugin import install_translator, translation_file

    assert translation_file("de_CH") == I18N / "rsfm_de.qm"
    assert translation_file("de") == I18N / "rsfm_de.qm"
    assert translation_file("xx_YY") is None
    assert install_translator("xx") is None


def test_compiled_qm_matches_the_ts(qgis_app):
    from qgis.PyQt.QtCore import QCoreApplication, QTranslator

    t = QTranslator()
    assert t.load(str(DE_TS.with_suffix(".qm"))), "rsfm_de.qm missing or unreadable"
    _, msgs = ut.read_ts(DE_TS)
    done = [m for m in _live(msgs) if m.kind == "" and m.translation]
    assert len(done) >= 150
    # looked up the way the plugin does (QCoreApplication.translate passes UTF-8; QTranslator.translate in
    # PyQt5 only takes ASCII)
    QCoreApplication.installTranslator(t)
    try:
        stale = [(m.context, m.source) for m in done
                 if QCoreApplication.translate(m.context, m.source) != m.translation]
    finally:
        QCoreApplication.removeTranslator(t)
    assert not stale, f"rsfm_de.qm is older than rsfm_de.ts; run scripts/update_translations.py: {stale[:5]}"


def test_dock_main_strings_are_properly_translated():
    _, msgs = ut.read_ts(DE_TS)
    have = {(m.context, m.source): m for m in _live(msgs)}
    for key, german in DOCK_MAIN.items():
        assert key in have, f"{key} not in rsfm_de.ts"
        assert have[key].kind == "" and have[key].translation == german, (key, have[key].translation)


def test_translations_keep_their_placeholders():
    _, msgs = ut.read_ts(DE_TS)
    bad = []
    for m in _live(msgs):
        if m.translation and sorted(re.findall(r"\{[^}]*\}", m.source)) != sorted(
                re.findall(r"\{[^}]*\}", m.translation)):
            bad.append((m.source, m.translation))
    assert not bad, bad


def _code_strings() -> set[tuple[str, str]]:
    """(context, text) of every literal tr()/translate()/QT_TR_NOOP() in the plugin, with the context the
    running code looks up (the same resolution as update_translations.py, independently walked here)."""
    files = ut.plugin_files()
    resolver = ut.ContextResolver(files)
    found = set()
    for f in files:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        module_ctx = ut.scan_contexts(f).module

        def visit(node, cls=None):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    visit(child, child.name)
                    continue
                if isinstance(child, ast.Call) and child.args:
                    fn = child.func
                    name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                    text = child.args[-1] if name == "translate" else child.args[0]
                    if isinstance(text, ast.Constant) and isinstance(text.value, str):
                        if name in ("tr", "QT_TR_NOOP") and isinstance(fn, ast.Name):
                            found.add((module_ctx, text.value))
                        elif name == "tr" and isinstance(fn, ast.Attribute) and cls:
                            found.add((resolver.class_context(cls) or cls, text.value))
                        elif name == "translate" and isinstance(child.args[0], ast.Constant) and len(child.args) > 1:
                            found.add((child.args[0].value, text.value))
                visit(child, cls)

        visit(tree)
    return found


def test_every_tr_string_in_the_code_is_in_the_ts():
    _, msgs = ut.read_ts(DE_TS)
    in_ts = {(m.context, m.source) for m in _live(msgs)}
    code = _code_strings()
    assert len(code) >= 150
    missing = sorted(code - in_ts)
    assert not missing, ("strings in the code but not in rsfm_de.ts; run python3 scripts/update_translations.py "
                         f"and translate them: {missing[:10]}")


def test_pylupdate_extraction_agrees_with_the_ts():
    """The script end to end (pylupdate5 + context mapping) finds exactly the .ts's messages."""
    if shutil.which("pylupdate5") is None:
        pytest.skip("pylupdate5 not installed (apt-get install pyqt5-dev-tools)")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "update_translations.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_merge_keeps_translator_work(tmp_path):
    Message = ut.Message
    old = [Message("A", "Run", translation="Ausführen", kind=""),
           Message("A", "Gone", translation="Weg", kind=""),
           Message("A", "Moved", translation="Verschoben", kind="")]
    fresh = [Message("A", "Run", locations=[("../x.py", "1")]), Message("B", "Moved"), Message("A", "New")]
    merged = {(m.context, m.source): m for m in ut.merge(fresh, old)}
    assert (merged[("A", "Run")].translation, merged[("A", "Run")].kind) == ("Ausführen", "")
    assert (merged[("B", "Moved")].translation, merged[("B", "Moved")].kind) == ("Verschoben", "unfinished")
    assert (merged[("A", "New")].translation, merged[("A", "New")].kind) == ("", "unfinished")
    assert merged[("A", "Gone")].kind == "vanished" and merged[("A", "Gone")].translation == "Weg"
    ts = tmp_path / "rsfm_xx.ts"
    ut.write_ts(ts, "xx", list(merged.values()))
    lang, back = ut.read_ts(ts)
    assert lang == "xx" and {(m.context, m.source, m.translation, m.kind) for m in back} == {
        (m.context, m.source, m.translation, m.kind) for m in merged.values()}
