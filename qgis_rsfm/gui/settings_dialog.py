"""Settings dialog: backend environment (with "Create backend venv"), device, model folders, Hub access,
output folder, and backend start/stop."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication
from qgis.gui import QgsFileWidget, QgsPasswordLineEdit
from qgis.PyQt.QtCore import QCoreApplication, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from .. import service
from ..icons import icon
from ..launcher import venv_python
from ..settings import DEVICES, RsfmSettings
from ..tasks.venv_task import CreateVenvTask


def tr(text: str) -> str:
    return QCoreApplication.translate("RsfmSettings", text)


class SettingsDialog(QDialog):
    """Edits :class:`RsfmSettings`; emits ``settings_saved`` after OK."""

    settings_saved = pyqtSignal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("RSFM settings"))
        self.setWindowIcon(icon("rsfm.svg"))
        self.resize(640, 620)
        self.settings = RsfmSettings.load()
        self.venv_task: CreateVenvTask | None = None
        s = self.settings
        lay = QVBoxLayout(self)

        env = QGroupBox(tr("Backend environment (its own Python with PyTorch; QGIS never loads torch)"))
        ef = QFormLayout(env)
        self.python_edit = QgsFileWidget()
        self.python_edit.setFilePath(s.backend_python)
        self.python_edit.lineEdit().setPlaceholderText(s.resolved_python() or tr("not set – create a venv below"))
        ef.addRow(tr("Backend Python"), self.python_edit)
        self.venv_edit = QgsFileWidget()
        self.venv_edit.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.venv_edit.setFilePath(s.venv_dir)
        self.venv_edit.lineEdit().setPlaceholderText(str(s.resolved_venv_dir()))
        ef.addRow(tr("Venv folder"), self.venv_edit)
        self.package_edit = QLineEdit(s.backend_package)
        self.package_edit.setToolTip(tr("What pip installs: 'rsfm[backend]', or the path of an RSFM source "
                                        "folder followed by [backend]"))
        ef.addRow(tr("Backend package"), self.package_edit)
        vrow = QHBoxLayout()
        self.venv_button = QPushButton(QgsApplication.getThemeIcon("/mActionNewFolder.svg"),
                                       tr("Create backend venv"))
        self.venv_button.clicked.connect(self.create_venv)
        self.venv_progress = QProgressBar()
        self.venv_progress.setRange(0, 100)
        vrow.addWidget(self.venv_button)
        vrow.addWidget(self.venv_progress, 1)
        ef.addRow(vrow)
        self.venv_log = QPlainTextEdit()
        self.venv_log.setReadOnly(True)
        self.venv_log.setMaximumHeight(90)
        self.venv_log.setPlaceholderText(tr("pip output appears here"))
        ef.addRow(self.venv_log)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setCurrentText(s.device)
        ef.addRow(tr("Device"), self.device_combo)
        lay.addWidget(env)

        models = QGroupBox(tr("Models"))
        mf = QFormLayout(models)
        self.dirs_list = QListWidget()
        self.dirs_list.addItems(s.model_dirs)
        self.dirs_list.setMaximumHeight(70)
        drow = QHBoxLayout()
        add = QPushButton(QgsApplication.getThemeIcon("/symbologyAdd.svg"), tr("Add folder…"))
        rem = QPushButton(QgsApplication.getThemeIcon("/symbologyRemove.svg"), tr("Remove"))
        add.clicked.connect(self._add_dir)
        rem.clicked.connect(lambda: [self.dirs_list.takeItem(self.dirs_list.row(i))
                                     for i in self.dirs_list.selectedItems()])
        drow.addWidget(add)
        drow.addWidget(rem)
        drow.addStretch(1)
        mf.addRow(tr("Model folders"), self.dirs_list)
        mf.addRow("", drow)
        self.hf_endpoint = QLineEdit(s.hf_endpoint)
        self.hf_endpoint.setPlaceholderText("https://huggingface.co")
        mf.addRow(tr("Hugging Face endpoint"), self.hf_endpoint)
        self.hf_token = QgsPasswordLineEdit()
        self.hf_token.setText(s.hf_token)
        self.hf_token.setToolTip(tr("Only needed for gated or private model repositories"))
        mf.addRow(tr("Hugging Face token"), self.hf_token)
        self.token_note = QLabel(tr(s.token_storage_note))
        self.token_note.setWordWrap(True)
        self.token_note.setStyleSheet("color:#555")
        mf.addRow("", self.token_note)
        lay.addWidget(models)

        out = QGroupBox(tr("Results and backend"))
        of = QFormLayout(out)
        self.output_edit = QgsFileWidget()
        self.output_edit.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.output_edit.setFilePath(s.output_dir)
        self.output_edit.lineEdit().setPlaceholderText(str(s.resolved_output_dir()))
        of.addRow(tr("Output folder"), self.output_edit)
        self.stop_check = QCheckBox(tr("Stop the backend when QGIS closes (if this QGIS started it)"))
        self.stop_check.setChecked(s.stop_backend_on_exit)
        of.addRow(self.stop_check)
        brow = QHBoxLayout()
        restart = QPushButton(QgsApplication.getThemeIcon("/mActionRefresh.svg"), tr("Restart backend"))
        restart.clicked.connect(self.restart_backend)
        stop = QPushButton(QgsApplication.getThemeIcon("/mActionStop.svg"), tr("Stop backend"))
        stop.clicked.connect(self.stop_backend)
        self.backend_label = QLabel()
        brow.addWidget(restart)
        brow.addWidget(stop)
        brow.addWidget(self.backend_label, 1)
        of.addRow(brow)
        lay.addWidget(out)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def _add_dir(self) -> None:
        d = QFileDialog.getExistingDirectory(self, tr("Folder with model packages"))
        if d:
            self.dirs_list.addItem(d)

    def collect(self) -> RsfmSettings:
        """The settings as edited (not yet saved)."""
        return RsfmSettings(
            backend_python=self.python_edit.filePath().strip(),
            venv_dir=self.venv_edit.filePath().strip(),
            backend_package=self.package_edit.text().strip() or "rsfm[backend]",
            device=self.device_combo.currentText(),
            model_dirs=[self.dirs_list.item(i).text() for i in range(self.dirs_list.count())],
            hf_endpoint=self.hf_endpoint.text().strip(),
            hf_token=self.hf_token.text().strip(),
            output_dir=self.output_edit.filePath().strip(),
            stop_backend_on_exit=self.stop_check.isChecked(),
        )

    def accept(self) -> None:
        new = self.collect()
        changed = new != self.settings
        new.save()
        self.settings = new
        self.token_note.setText(tr(new.token_storage_note))
        if changed:
            service.launcher().stop()  # the next use starts it with the new settings
        self.settings_saved.emit()
        super().accept()

    # -- backend control ------------------------------------------------------------------------------
    def restart_backend(self) -> None:
        self.collect().save()
        service.launcher().stop()
        self.backend_label.setText(tr("Restarting…"))
        self.settings_saved.emit()

    def stop_backend(self) -> None:
        lau = service.launcher()
        owned = lau.owned
        lau.stop()
        self.backend_label.setText(tr("Stopped.") if owned else
                                   tr("This QGIS did not start the backend; it is left running."))

    # -- venv -----------------------------------------------------------------------------------------
    def create_venv(self) -> CreateVenvTask:
        s = self.collect()
        venv_dir = str(s.resolved_venv_dir())
        self.venv_task = CreateVenvTask(venv_dir, s.backend_package)
        self.venv_task.progressChanged.connect(lambda p: self.venv_progress.setValue(int(p)))
        self.venv_task.taskCompleted.connect(self._venv_done)
        self.venv_task.taskTerminated.connect(self._venv_done)
        self.venv_button.setEnabled(False)
        self.venv_log.setPlainText(tr("Creating {folder} and installing {package} …").format(folder=venv_dir, package=s.backend_package))
        QgsApplication.taskManager().addTask(self.venv_task)
        return self.venv_task

    def _venv_done(self) -> None:
        t = self.venv_task
        self.venv_button.setEnabled(True)
        if t is None:
            return
        self.venv_log.setPlainText("\n".join(t.log[-200:]) + "\n\n" + t.message)
        if t.ok:
            self.venv_progress.setValue(100)
            py = str(venv_python(t.venv_dir))
            if Path(py).is_file() and not self.python_edit.filePath().strip():
                self.python_edit.lineEdit().setPlaceholderText(py)
