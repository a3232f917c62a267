"""QGIS 4 / Qt6 readiness and translatability of the plugin, checked on the source with ``ast``.

Every module of ``qgis_rsfm/`` must

* import Qt only through ``qgis.PyQt`` (never ``PyQt5``/``PyQt6``/``PySide*``/bare ``sip``),
* use scoped enums (``Qt.AlignmentFlag.AlignLeft``, ``QMessageBox.StandardButton.Yes``,
  ``QgsTask.Flag.CanCancel``): Qt6/PyQt6 removed the unscoped aliases,
* call ``exec()``, never ``exec_()`` (removed in PyQt6), and use no class Qt6 dropped (``QRegExp``,
  ``QDesktopWidget`` …) nor ``QVariant.Type`` outside a ``Qgis.QGIS_VERSION_INT`` branch,
* keep ``tr("...")`` out of f-strings (pylupdate5 does not look inside them, so the text never reaches the
  ``.ts``),
* pass user-visible text to widgets (``setText``, ``setToolTip``, ``QLabel``, ``QPushButton``, ``addAction``,
  ``QMessageBox`` …) through ``tr()``/``self.tr()``, and give ``tr()`` a literal (an f-string inside ``tr()``
  never matches a translation: use ``tr("… {n} …").format(n=…)``).

The enum rule is a syntax heuristic (``QtClass.Member`` with a capitalised member, not followed by another
attribute); in QGIS's Python it is cross-checked against the real classes: every leaf it accepts must not be an
enum value, and every scoped ``Class.Enum.Member`` in the plugin must exist in this QGIS. The text rule is
best-effort; the few deliberate exceptions are in ``ALLOWED_LITERALS`` with the reason.

The rules need no QGIS; they live with the plugin tests because they are about the plugin.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "qgis_rsfm"

FORBIDDEN_MODULES = ("PyQt5", "PyQt6", "PySide2", "PySide6", "sip")
# Qt5 classes Qt6 dropped (QGIS 4 runs on Qt6), with what to use instead.
QT6_REMOVED = {
    "QRegExp": "QRegularExpression", "QDesktopWidget": "QScreen (QGuiApplication.screens())",
    "QTextCodec": "bytes.decode/str.encode", "QMatrix": "QTransform", "QGLWidget": "QOpenGLWidget",
    "QSound": "QSoundEffect", "QStringRef": "str",
}
QT_CLASS = re.compile(r"^(Qt|Qgis|Q[A-Z][A-Za-z0-9]*|Qgs[A-Z][A-Za-z0-9]*)$")
CONSTANT = re.compile(r"^[A-Z][A-Z0-9]*_[A-Z0-9_]*$")  # Qgis.QGIS_VERSION, QgsProcessing.TEMPORARY_OUTPUT
TR_NAMES = {"tr", "translate"}
# Calls whose string arguments the user reads (methods or constructors).
VISIBLE_CALLS = {
    "setText", "setToolTip", "setWindowTitle", "setPlaceholderText", "setStatusTip", "setWhatsThis", "setTitle",
    "setSpecialValueText", "setLabelText", "setTabText", "setTabToolTip", "addAction", "addTab", "insertTab",
    "addRow", "addItems", "setHeaderLabels", "pushMessage", "pushInfo", "pushWarning", "pushCritical",
    "pushSuccess", "QLabel", "QPushButton", "QCheckBox", "QRadioButton", "QGroupBox", "QgsCollapsibleGroupBox",
    "QAction", "QMessageBox", "information", "warning", "critical", "question", "about", "getText", "getItem",
    "getSaveFileName", "getOpenFileName", "getExistingDirectory", "addItem",
    "_set_status", "_set_health",  # the plugin's own status-line helpers
}
# (module relative to qgis_rsfm/, exact literal) -> why it stays untranslated. "*" matches any module.
ALLOWED_LITERALS: dict[tuple[str, str], str] = {
    ("*", "RSFM"): "the product name (message-bar title and toolbar name)",
    ("gui/settings_dialog.py", "https://huggingface.co"): "a URL (placeholder of the hub endpoint field)",
    ("chat_panel.py", "rsfm-chat.md"): "a default file name",
}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.detail}"


def _visible(text: str) -> bool:
    """True when a literal holds words a user reads (HTML tags, entities and {placeholders} removed)."""
    text = re.sub(r"<[^>]*>|&[a-z]+;|\{[^}]*\}|%\w", " ", text)
    return re.search(r"[A-Za-z]{2,}", text) is not None


def _literal_texts(node: ast.AST) -> list[str]:
    """User-readable literal pieces in an argument: strings, f-string parts, concatenations, lists."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):  # the template, with {} where values go (so tags stay whole)
        return ["".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return _literal_texts(node.left) + _literal_texts(node.right)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [t for e in node.elts for t in _literal_texts(e)]
    if isinstance(node, ast.IfExp):
        return _literal_texts(node.body) + _literal_texts(node.orelse)
    return []


def _in_version_gate(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """True inside a function that branches on ``Qgis.QGIS_VERSION_INT`` (a Qt5/Qt6 compatibility shim)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return any(isinstance(n, ast.Attribute) and n.attr == "QGIS_VERSION_INT" for n in ast.walk(node))
    return False


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def check_source(source: str, path: str = "<sample>") -> list[Violation]:
    """All rule violations in one module's source."""
    tree = ast.parse(source, filename=path)
    out: list[Violation] = []
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    for node in ast.walk(tree):
        # 1. imports only through qgis.PyQt
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in FORBIDDEN_MODULES:
                    out.append(Violation(path, node.lineno, "import", f"import {a.name}: use qgis.PyQt"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                out.append(Violation(path, node.lineno, "import", f"from {node.module}: use qgis.PyQt"))
        # 2. unscoped enums: Class.Member as the whole expression (not Class.Enum.Member, not a call)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            parent = parents.get(node)
            if (QT_CLASS.match(node.value.id) and node.attr[:1].isupper() and not CONSTANT.match(node.attr)
                    and not isinstance(parent, ast.Attribute)
                    and not (isinstance(parent, ast.Call) and parent.func is node)):
                out.append(Violation(path, node.lineno, "enum",
                                     f"{node.value.id}.{node.attr} is unscoped: write "
                                     f"{node.value.id}.<EnumName>.{node.attr} (Qt6 removed the short form)"))
        # 2b. tr("literal") inside an f-string: pylupdate5 does not look inside f-strings, so the text never
        # reaches the .ts (the lookup at run time works, but there is nothing to translate)
        if isinstance(node, ast.JoinedStr):
            for part in node.values:
                for sub in ast.walk(part):
                    if (isinstance(sub, ast.Call) and _call_name(sub) in TR_NAMES and sub.args
                            and isinstance(sub.args[-1], ast.Constant)):
                        out.append(Violation(path, sub.lineno, "tr-in-fstring",
                                             f"tr({sub.args[-1].value!r}) inside an f-string is invisible to "
                                             "pylupdate5: assign it to a variable first"))
        # 2c. Qt5-only API
        if isinstance(node, ast.Name) and node.id in QT6_REMOVED:
            out.append(Violation(path, node.lineno, "qt6-removed",
                                 f"{node.id} is gone in Qt6: use {QT6_REMOVED[node.id]}"))
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "QVariant"
                and node.attr[:1].isupper() and not _in_version_gate(node, parents)):
            out.append(Violation(path, node.lineno, "qt6-removed",
                                 f"QVariant.{node.attr}: Qt6 has no QVariant.Type; use QMetaType.Type on QGIS >= "
                                 "3.38 (branch on Qgis.QGIS_VERSION_INT)"))
        # 3. exec_()
        if isinstance(node, ast.Attribute) and node.attr == "exec_":
            out.append(Violation(path, node.lineno, "exec_", "exec_() is gone in Qt6: call exec()"))
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        # 4. tr() needs a literal: an f-string is formatted before the lookup and never matches
        if name in TR_NAMES and node.args:
            text_arg = node.args[-1] if name == "translate" else node.args[0]
            if not (isinstance(text_arg, ast.Constant) and isinstance(text_arg.value, str)):
                if isinstance(text_arg, (ast.JoinedStr, ast.BinOp)):
                    out.append(Violation(path, node.lineno, "tr-literal",
                                         f"{name}() of a formatted string cannot be translated: use "
                                         f"{name}(\"... {{name}} ...\").format(name=...)"))
        # 5. user-visible literals without tr()
        if name in VISIBLE_CALLS:
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for text in _literal_texts(arg):
                    if not _visible(text):
                        continue
                    if ("*", text) in ALLOWED_LITERALS or (path, text) in ALLOWED_LITERALS:
                        continue
                    out.append(Violation(path, node.lineno, "untranslated",
                                         f"{name}({text[:50]!r}...) shows text without tr()"))
    return out


def plugin_modules() -> list[Path]:
    return sorted(p for p in PLUGIN.rglob("*.py") if "__pycache__" not in p.parts)


def test_plugin_follows_the_conventions():
    violations = []
    for p in plugin_modules():
        violations += check_source(p.read_text(encoding="utf-8"), p.relative_to(PLUGIN).as_posix())
    assert not violations, "\n".join(map(str, violations))


BAD_SAMPLE = '''
from PyQt5.QtWidgets import QMessageBox, QLabel
import PyQt6.QtCore
from qgis.PyQt.QtCore import Qt
from qgis.core import QgsTask

def f(self, dlg, box):
    lab = QLabel("Backend stopped")
    lab.setAlignment(Qt.AlignLeft)
    lab.setToolTip(f"Model {self.name} is loaded")
    if QMessageBox.question(None, self.tr("Title"), self.tr("Sure?")) == QMessageBox.Yes:
        dlg.exec_()
    task = QgsTask("x", QgsTask.CanCancel)
    box.addItems(["Whole layer", "Visible extent"])
    self.button.setText(self.tr(f"Run {self.n} jobs"))
    self.button.setText("Run " + str(self.n))
    lab.setText(f"<b>{tr('Name')}</b>")
    rx = QRegExp("a+")
    field = QgsField("name", QVariant.Type.String)
'''

GOOD_SAMPLE = '''
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QLabel, QMessageBox
from qgis.core import QgsRasterFileWriter, QgsTask

def f(self, dlg, box, n):
    lab = QLabel(self.tr("Backend stopped"))
    lab.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    lab.setToolTip(tr("Model {name} is loaded").format(name=self.name))
    if QMessageBox.question(None, self.tr("Title"), self.tr("Sure?")) == QMessageBox.StandardButton.Yes:
        dlg.exec()
    task = QgsTask("x", QgsTask.Flag.CanCancel)
    err = QgsRasterFileWriter.WriterError(0)
    box.addItems([tr("Whole layer"), tr("Visible extent")])
    name = tr("Name")
    lab.setText(f"<b>{name}</b><br>{n}")
    lab.setText("●")
    self.pushMessage("RSFM", self.tr("Done"))


def field_type():
    if Qgis.QGIS_VERSION_INT >= 33800:
        return QMetaType.Type.QString
    return QVariant.Type.String
'''


def test_rules_catch_every_kind_of_mistake_in_a_bad_sample():
    found = check_source(BAD_SAMPLE)
    by_rule: dict[str, list[Violation]] = {}
    for v in found:
        by_rule.setdefault(v.rule, []).append(v)
    assert [v.line for v in by_rule["import"]] == [2, 3]
    assert sorted(v.detail.split(" ")[0] for v in by_rule["enum"]) == sorted(
        ["Qt.AlignLeft", "QgsTask.CanCancel", "QMessageBox.Yes"])
    assert [v.line for v in by_rule["exec_"]] == [12]
    assert [v.line for v in by_rule["tr-literal"]] == [15]
    assert [v.line for v in by_rule["tr-in-fstring"]] == [17]
    assert sorted(v.line for v in by_rule["qt6-removed"]) == [18, 19]
    untranslated = sorted(v.line for v in by_rule["untranslated"])
    assert untranslated == [8, 10, 14, 14, 16], untranslated  # QLabel, f-string tooltip, 2 list items, "Run " + n


def test_rules_accept_the_correct_forms():
    assert check_source(GOOD_SAMPLE) == []


def test_allow_list_entries_are_still_used():
    """An allow-list entry nobody needs any more hides future mistakes: remove it."""
    texts = set()
    for p in plugin_modules():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.add(node.value)
    assert {t for _, t in ALLOWED_LITERALS} <= texts


# -- cross-check against the real classes (QGIS's Python only) -------------------------------------------
def _qt_names(tree: ast.Module) -> dict[str, str]:
    """Name -> module for ``from qgis[.PyQt].X import Name`` imports."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qgis."):
            for a in node.names:
                names[a.asname or a.name] = node.module
    return names


def _is_enum_value(obj) -> bool:
    """An enum member (an instance of its enum type, an int subclass), not an enum type or a plain constant."""
    return isinstance(obj, int) and type(obj) not in (int, bool)


def test_enum_value_detection_on_real_classes():
    pytest.importorskip("qgis.core")
    from qgis.core import Qgis, QgsTask
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QMessageBox

    assert _is_enum_value(getattr(Qt, "AlignLeft")) and _is_enum_value(getattr(QgsTask, "CanCancel"))  # noqa: B009
    assert _is_enum_value(getattr(QMessageBox, "Yes"))  # noqa: B009 - the unscoped spelling on purpose
    assert _is_enum_value(Qt.AlignmentFlag.AlignLeft)
    assert not _is_enum_value(Qt.AlignmentFlag) and not _is_enum_value(Qgis.QGIS_VERSION_INT)


def test_enum_accesses_resolve_in_this_qgis():
    """Each ``Class.Enum.Member`` the plugin writes exists here, and no accepted ``Class.Member`` leaf is an
    enum value (which would mean the syntax rule missed an unscoped enum)."""
    pytest.importorskip("qgis.core")
    problems = []
    for p in plugin_modules():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        names = _qt_names(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and isinstance(node.value.value, ast.Name) and node.value.value.id in names):
                continue
            cls_name, enum_name, member = node.value.value.id, node.value.attr, node.attr
            if not (enum_name[:1].isupper() and member[:1].isupper()):
                continue
            cls = getattr(importlib.import_module(names[cls_name]), cls_name)
            enum = getattr(cls, enum_name, None)
            where = f"{p.relative_to(PLUGIN)}:{node.lineno} {cls_name}.{enum_name}.{member}"
            if enum is None or not hasattr(enum, member):
                problems.append(f"{where} does not exist in this QGIS")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names
                    and node.attr[:1].isupper()):
                cls = getattr(importlib.import_module(names[node.value.id]), node.value.id)
                obj = getattr(cls, node.attr, None)
                if _is_enum_value(obj):
                    problems.append(f"{p.relative_to(PLUGIN)}:{node.lineno} {node.value.id}.{node.attr} is an "
                                    "unscoped enum value")
    assert not problems, "\n".join(problems)
