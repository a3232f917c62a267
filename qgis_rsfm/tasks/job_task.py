"""One backend job as a ``QgsTask``: submit, poll progress, cancel, typed outcome.

``run()`` executes on a worker thread and never raises: it stores a :class:`Success`, :class:`Failed` or
:class:`Canceled` in ``self.outcome``. ``finished()`` runs on the main thread and hands the outcome to
the callback, which is where layers are created.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qgis.core import QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..client import BackendUnreachableError, Job, RsfmClient, RsfmClientError

# The backend's warning on a resumed dense job (docs/CONTRACTS.md, "resume").
_RESUMED = re.compile(r"resumed: (\d+) of (\d+) blocks were already done")

LOG_TAG = "RSFM"


@dataclass
class Success:
    job: Job
    request: dict[str, Any]


@dataclass
class Failed:
    message: str
    code: str = "failed"
    job: Job | None = None


@dataclass
class Canceled:
    job: Job | None = None


JobOutcome = Success | Failed | Canceled


@dataclass
class JobSpec:
    """What to run: a contract JobRequest, plus work to do first on the worker thread.

    Attributes:
        request: the JobRequest (``inputs``/``options`` may be filled by ``prepare``).
        prepare: called on the worker thread before submitting (e.g. render a web layer); may edit
            ``request`` in place and raise with a plain-words message.
        source_name: layer name, for provenance.
        extra: anything the caller wants back in ``finished`` (e.g. the after layer's name).
        submit: starts the backend job (default ``client.submit(request)``, i.e. ``POST /jobs``); a Hub
            install passes ``client.hub_install`` here and is then polled and cancelled the same way.
        resumable: when the backend dies during the job, restart it (once) and ``POST /jobs/{id}/resume``
            the job. Only ``POST /jobs`` jobs can be resumed, so this is ignored when ``submit`` is given.
    """

    request: dict[str, Any]
    prepare: Callable[[dict[str, Any]], None] | None = None
    source_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    submit: Callable[[RsfmClient, dict[str, Any]], Job] | None = None
    resumable: bool = True


class RsfmJobTask(QgsTask):
    """Runs one backend job.

    Args:
        description: shown in the QGIS task manager.
        spec: what to run.
        client_factory: returns a client for a live backend (starts one if needed).
        on_finished: called on the main thread with the outcome.
        on_progress: called on the worker thread with the polled job (keep it light).
        poll_s: seconds between progress polls.
        max_restarts: how many backend crashes during one job are survived by restarting the backend and
            resuming the job (a further crash fails the task with ``backend_unreachable``).

    Signals:
        status_changed(str): a plain-words status line (e.g. "backend restarted, resuming from block 3 of
            16"); emitted on the worker thread, so connect it queued. Also kept in ``status_message``.
    """

    status_changed = pyqtSignal(str)

    def __init__(self, description: str, spec: JobSpec, client_factory: Callable[[], RsfmClient],
                 on_finished: Callable[[JobOutcome], None] | None = None,
                 on_progress: Callable[[Job], None] | None = None, poll_s: float = 0.25,
                 max_restarts: int = 1) -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.spec = spec
        self.client_factory = client_factory
        self.on_finished = on_finished
        self.on_progress = on_progress
        self.poll_s = poll_s
        self.max_restarts = max_restarts
        self.restarts = 0  # backend restarts survived so far
        self.status_message = ""
        self.job_id: str | None = None
        self.outcome: JobOutcome = Failed("the task did not run")

    def run(self) -> bool:  # worker thread
        try:
            self.outcome = self._run()
        except RsfmClientError as exc:
            self.outcome = Failed(exc.message, exc.code)
        except Exception as exc:  # noqa: BLE001 - run() must never raise into QGIS
            self.outcome = Failed(f"{type(exc).__name__}: {exc}", "internal")
        if isinstance(self.outcome, Failed):
            QgsMessageLog.logMessage(f"{self.description()}: {self.outcome.message}", LOG_TAG)
        return isinstance(self.outcome, Success)

    def _run(self) -> JobOutcome:
        client = self.client_factory()
        if self.isCanceled():
            return Canceled()
        if self.spec.prepare is not None:
            self.spec.prepare(self.spec.request)
        if self.isCanceled():
            return Canceled()
        job = (self.spec.submit(client, self.spec.request) if self.spec.submit is not None
               else client.submit(self.spec.request))
        self.job_id = job.id

        resumed_note: list[bool] = [False]  # the "resuming from block N" line was shown (after a restart)

        def update(j: Job) -> None:
            self.setProgress(max(0.0, min(100.0, 100.0 * j.progress)))
            if self.restarts and not resumed_note[0]:
                m = next((_RESUMED.search(w) for w in j.warnings if _RESUMED.search(w)), None)
                if m is not None:
                    resumed_note[0] = True
                    done, total = int(m.group(1)), int(m.group(2))
                    self._status(f"backend restarted, resuming from block {done + 1} of {total} "
                                 f"({done} already done)")
            if self.on_progress is not None:
                self.on_progress(j)

        slow_answers = 0
        while True:
            try:
                final = client.wait(job.id, poll_s=self.poll_s, on_update=update, is_cancelled=self.isCanceled)
                break
            except BackendUnreachableError:
                if self.isCanceled():
                    return Canceled()
                if slow_answers < 5 and client.is_alive(timeout_s=10.0):
                    slow_answers += 1
                    continue  # a slow answer, not a dead backend: keep polling the same one
                if not self._can_resume() or self.restarts >= self.max_restarts:
                    raise
            # The backend is gone: restart it through the launcher and resume the job from its journal.
            self.restarts += 1
            resumed_note[0] = False
            self._status("the backend stopped; restarting it to resume the job")
            client = self.client_factory()
            if self.isCanceled():
                return Canceled()
            client.resume(job.id, self.spec.request.get("output_dir"))
            self._status("backend restarted, resuming the job")

        if final.state == "succeeded":
            return Success(final, self.spec.request)
        if final.state == "cancelled":
            return Canceled(final)
        err = final.error or {}
        return Failed(final.error_message or f"job ended in state {final.state}", str(err.get("code", "failed")),
                      final)

    def _can_resume(self) -> bool:
        return self.spec.resumable and self.spec.submit is None and self.job_id is not None

    def _status(self, text: str) -> None:
        self.status_message = text
        QgsMessageLog.logMessage(f"{self.description()}: {text}", LOG_TAG)
        self.status_changed.emit(text)

    def finished(self, result: bool) -> None:  # main thread
        if not result and not isinstance(self.outcome, (Failed, Canceled)):
            self.outcome = Canceled()
        if self.isCanceled() and not isinstance(self.outcome, Success):
            self.outcome = Canceled(getattr(self.outcome, "job", None))
        if self.on_finished is not None:
            self.on_finished(self.outcome)
