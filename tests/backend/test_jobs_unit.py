"""JobManager and error classes without HTTP: queue bound, states, crash reporting, history."""

from __future__ import annotations

import threading

import pytest

from backend.errors import (
    IncompatibleRasterError,
    JobNotFoundError,
    JobStateError,
    ModelNotFoundError,
    QueueFullError,
    RsfmError,
)
from backend.jobs import Job, JobManager


def _blocking(gate: threading.Event, started: threading.Event | None = None):
    def run(ctx):
        if started is not None:
            started.set()
        while not gate.wait(0.01):
            ctx.check_cancel()
        return {"outputs": [], "stats": {}}
    return run


def test_queue_is_bounded():
    gate, started = threading.Event(), threading.Event()
    jm = JobManager(workers=1, queue_size=1)
    try:
        running = jm.submit(Job(task="t", model="m", runner=_blocking(gate, started)))
        assert started.wait(10)
        queued = jm.submit(Job(task="t", model="m", runner=_blocking(gate)))
        with pytest.raises(QueueFullError) as ei:
            jm.submit(Job(task="t", model="m", runner=_blocking(gate)))
        assert ei.value.http_status == 503 and "cancel" in ei.value.message
        assert jm.counts() == {"queued": 1, "running": 1}
        gate.set()
        assert running.done_event.wait(10) and queued.done_event.wait(10)
        assert running.state == queued.state == "succeeded"
    finally:
        gate.set()
        jm.shutdown()


def test_running_job_cancel_and_state_errors():
    gate, started = threading.Event(), threading.Event()
    jm = JobManager(workers=1, queue_size=4)
    try:
        job = jm.submit(Job(task="t", model="m", runner=_blocking(gate, started)))
        assert started.wait(10)
        jm.cancel(job.id)
        assert job.done_event.wait(10)
        assert job.state == "cancelled" and job.error is None and job.result is None
        with pytest.raises(JobStateError):
            jm.cancel(job.id)
        with pytest.raises(JobNotFoundError):
            jm.get("nope")
    finally:
        gate.set()
        jm.shutdown()


def test_crash_becomes_readable_internal_error():
    def boom(ctx):
        raise ZeroDivisionError("division by zero in a post-processor")

    def typed(ctx):
        raise IncompatibleRasterError("raster has 4 bands; pick 3", code="band_count_mismatch",
                                      expected_bands=3, got_bands=4)

    jm = JobManager(workers=1, queue_size=4)
    try:
        a = jm.submit(Job(task="t", model="m", runner=boom))
        b = jm.submit(Job(task="t", model="m", runner=typed))
        assert a.done_event.wait(10) and b.done_event.wait(10)
        assert a.state == "failed" and a.error["code"] == "internal_error"
        assert "ZeroDivisionError" in a.error["message"] and "bug" in a.error["message"]
        assert b.state == "failed" and b.error == {"code": "band_count_mismatch", "message": "raster has 4 bands; pick 3",
                                                    "details": {"expected_bands": 3, "got_bands": 4}}
        # the worker survived both failures
        c = jm.submit(Job(task="t", model="m", runner=lambda ctx: {"outputs": []}))
        assert c.done_event.wait(10) and c.state == "succeeded"
    finally:
        jm.shutdown()


def test_history_is_trimmed():
    jm = JobManager(workers=1, queue_size=50, history=3)
    try:
        jobs = [jm.submit(Job(task="t", model="m", runner=lambda ctx: {})) for _ in range(6)]
        for j in jobs:
            assert j.done_event.wait(10)
        jm.submit(Job(task="t", model="m", runner=lambda ctx: {})).done_event.wait(10)
        assert len(jm.list()) <= 4
    finally:
        jm.shutdown()


def test_progress_reporting_and_warnings():
    seen = []

    def run(ctx):
        for i in range(3):
            ctx.progress((i + 1) / 3, f"tile {i + 1}/3")
            seen.append(ctx.job.to_dict()["progress"])
        ctx.warn("careful")
        ctx.warn("careful")
        return {"outputs": []}

    jm = JobManager()
    try:
        j = jm.submit(Job(task="t", model="m", runner=run))
        assert j.done_event.wait(10)
        assert seen == [pytest.approx(1 / 3, abs=1e-4), pytest.approx(2 / 3, abs=1e-4), 1.0]
        assert j.warnings == ["careful"]
    finally:
        jm.shutdown()


def test_error_classes_keep_builtin_bases():
    assert issubclass(ModelNotFoundError, LookupError) and issubclass(ModelNotFoundError, RsfmError)
    assert issubclass(IncompatibleRasterError, ValueError)
    e = IncompatibleRasterError("x", expected_bands=3, got_bands=1)
    assert (e.expected_bands, e.got_bands, e.http_status, e.code) == (3, 1, 422, "incompatible_raster")
    assert e.to_dict() == {"error": {"code": "incompatible_raster", "message": "x",
                                     "details": {"expected_bands": 3, "got_bands": 1}}}
