"""A tiny route table: every endpoint is a function registered with :func:`route`.

Feature modules (jobs, models, hub, chat) register their endpoints here; the server dispatches through
:func:`match` and builds the OpenAPI document from the same table, so an endpoint cannot exist
undocumented.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]  # path parameters, e.g. {"job_id": "..."}
    query: dict[str, str]
    body: Any  # parsed JSON body, or None
    headers: dict[str, str]
    app: Any  # the running backend.server.App (jobs, models, settings)


@dataclass
class Route:
    method: str
    pattern: str  # "/api/v1/jobs/{job_id}"
    handler: Callable[[Request], Any]  # returns a dict (200) or (status, dict)
    summary: str
    request_schema: dict | None = None
    response_schema: dict | None = None
    regex: re.Pattern = field(init=False)

    def __post_init__(self) -> None:
        self.regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.pattern) + "$")


ROUTES: list[Route] = []


def route(method: str, pattern: str, summary: str, *, request_schema: dict | None = None,
          response_schema: dict | None = None):
    """Register the decorated handler for ``method pattern``."""

    def deco(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        ROUTES.append(Route(method.upper(), pattern, fn, summary, request_schema, response_schema))
        return fn

    return deco


def match(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """Find the route for a request: ``(route, path_params, path_exists)``.

    ``path_exists`` is True when the path matched under another method (answer 405, not 404).
    """
    path_exists = False
    for r in ROUTES:
        m = r.regex.match(path)
        if m:
            if r.method == method.upper():
                return r, m.groupdict(), True
            path_exists = True
    return None, {}, path_exists
