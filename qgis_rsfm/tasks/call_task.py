"""Run a plain function on a worker thread as a ``QgsTask`` and hand its result to the main thread.

Used for slow backend calls the GUI must not wait for (starting the backend, listing models, self-test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qgis.core import QgsTask

from ..client import RsfmClientError


class CallTask(QgsTask):
    """``fn()`` on a worker thread; ``on_done(result, error_message)`` on the main thread.

    ``error_message`` is None on success; exceptions become plain-words messages, never escape.
    """

    def __init__(self, description: str, fn: Callable[[], Any],
                 on_done: Callable[[Any, str | None], None] | None = None) -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.fn = fn
        self.on_done = on_done
        self.result: Any = None
        self.error: str | None = None

    def run(self) -> bool:
        try:
            self.result = self.fn()
        except RsfmClientError as exc:
            self.error = exc.message
        except Exception as exc:  # noqa: BLE001 - never raise into QGIS's task manager
            self.error = str(exc) or type(exc).__name__
        return self.error is None

    def finished(self, result: bool) -> None:
        if not result and self.error is None:
            self.error = "cancelled"
        if self.on_done is not None:
            self.on_done(self.result, self.error)
