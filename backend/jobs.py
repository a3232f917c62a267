"""Jobs: a bounded queue feeding a small pool of worker threads.

A :class:`Job` is created by ``POST /jobs`` after its request has been validated (so bad input is refused
with a 4xx answer before anything is queued). Workers call the job's ``runner`` with a :class:`JobContext`
that reports progress per tile and raises :class:`~backend.errors.JobCancelled` at the next tile once
``cancel`` was requested. States: queued -> running -> succeeded | failed | cancelled.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from backend.errors import JobCancelled, JobNotFoundError, JobStateError, QueueFullError, RsfmError

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINAL = (SUCCEEDED, FAILED, CANCELLED)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Job:
    task: str
    model: str
    runner: Callable[[JobContext], dict]  # does the work, returns the result dict
    request: dict = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = QUEUED
    progress: float = 0.0
    message: str = "queued"
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    warnings: list[str] = field(default_factory=list)
    error: dict | None = None
    result: dict | None = None
    on_final: Callable[[Job], None] | None = None  # runs once, just before the job enters a final state
    cancel_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to_dict(self) -> dict[str, Any]:
        with self.lock:
            return {"id": self.id, "task": self.task, "model": self.model, "state": self.state,
                    "progress": round(self.progress, 4), "message": self.message, "created": self.created,
                    "updated": self.updated, "warnings": list(self.warnings), "error": self.error,
                    "result": self.result, "request": self.request}

    def _finish(self, **kw: Any) -> None:
        """Enter a final state: the ``on_final`` hook first (clean-up is done when clients see the state)."""
        hook, self.on_final = self.on_final, None
        if hook is not None:
            try:
                hook(self)
            except Exception:  # noqa: BLE001 - clean-up trouble must not leave the job hanging
                log.warning("clean-up of job %s failed:\n%s", self.id, traceback.format_exc())
        self._set(**kw)
        self.done_event.set()

    def _set(self, **kw: Any) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, v)
            self.updated = _now()


class JobContext:
    """Handed to a runner: progress reporting, cancellation, warnings."""

    def __init__(self, job: Job) -> None:
        self.job = job

    @property
    def cancelled(self) -> bool:
        return self.job.cancel_event.is_set()

    def check_cancel(self) -> None:
        """Raise :class:`JobCancelled` if cancellation was requested; call between tiles."""
        if self.job.cancel_event.is_set():
            raise JobCancelled("the job was cancelled")

    def progress(self, fraction: float, message: str) -> None:
        """Report ``fraction`` in [0, 1] done and a short message; raises JobCancelled when cancelled."""
        self.job._set(progress=min(1.0, max(0.0, float(fraction))), message=message)
        self.check_cancel()

    def warn(self, message: str) -> None:
        with self.job.lock:
            if message not in self.job.warnings:
                self.job.warnings.append(message)


class JobManager:
    """Bounded queue + ``workers`` threads. ``submit`` raises QueueFullError when the queue is full."""

    def __init__(self, workers: int = 1, queue_size: int = 16, history: int = 200) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max(1, queue_size))
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._history = history
        self._threads = [threading.Thread(target=self._work, name=f"rsfm-job-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    # -- public -----------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFullError(f"{self._queue.maxsize} jobs are already waiting; wait for some to finish "
                                     "or cancel them, then submit again") from None
            self._jobs[job.id] = job
            self._trim()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r}; list the known jobs with GET /api/v1/jobs")
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job:
        """Request cancellation. A queued job is cancelled at once; a running one at its next tile."""
        job = self.get(job_id)
        with job.lock:
            state = job.state
        if state in FINAL:
            raise JobStateError(f"job {job_id} is already {state}; only queued or running jobs can be cancelled")
        job.cancel_event.set()
        if state == QUEUED:
            job._finish(state=CANCELLED, message="cancelled before it started")
        else:
            job._set(message="cancelling at the end of the current tile")
        return job

    def counts(self) -> dict[str, int]:
        jobs = self.list()
        return {"queued": sum(j.state == QUEUED for j in jobs), "running": sum(j.state == RUNNING for j in jobs)}

    def shutdown(self, timeout: float = 5.0) -> None:
        for job in self.list():
            if job.state not in FINAL:
                job.cancel_event.set()
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        for t in self._threads:
            t.join(timeout)

    # -- internals ----------------------------------------------------------------------------------
    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in FINAL]
        for j in finished[: max(0, len(finished) - self._history)]:
            self._jobs.pop(j.id, None)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancel_event.is_set():
                if job.state != CANCELLED:
                    job._finish(state=CANCELLED, message="cancelled before it started")
                job.done_event.set()
                continue
            job._set(state=RUNNING, message="starting")
            ctx = JobContext(job)
            final: dict[str, Any] = {"state": FAILED, "message": "interrupted"}
            try:
                result = job.runner(ctx)
            except JobCancelled:
                final = {"state": CANCELLED, "message": "cancelled; partial outputs removed"}
            except RsfmError as exc:
                final = {"state": FAILED, "error": exc.to_dict()["error"], "message": exc.message}
            except Exception as exc:  # noqa: BLE001 - a job must never kill its worker
                log.error("job %s crashed:\n%s", job.id, traceback.format_exc())
                final = {"state": FAILED, "message": str(exc), "error": {
                    "code": "internal_error",
                    "message": f"{type(exc).__name__}: {exc} (this is a bug in RSFM; the server log has the trace)"}}
            else:
                final = {"state": SUCCEEDED, "progress": 1.0, "message": "done", "result": result}
            finally:
                job._finish(**final)
