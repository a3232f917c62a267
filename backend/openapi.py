"""The OpenAPI 3 document, generated from the route table so no endpoint can exist undocumented."""

from __future__ import annotations

import re
from typing import Any

from backend import API_VERSION, __version__, routing

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string", "description": "snake_case error code"},
        "message": {"type": "string", "description": "what went wrong and how to fix it"},
        "details": {"type": "object"}}}},
}


def build_openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in routing.ROUTES:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": re.sub(r"\W+", "_", f"{r.method.lower()}_{r.pattern}").strip("_"),
            "responses": {
                "200" if r.method == "GET" else "default": {
                    "description": "success",
                    "content": {"application/json": {"schema": r.response_schema or {"type": "object"}}}},
                "4XX": {"description": "bad request, token, not found, state, size, incompatible raster",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "5XX": {"description": "internal error",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        }
        params = re.findall(r"\{(\w+)\}", r.pattern)
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                for p in params]
        if r.request_schema is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": r.request_schema}}}
        paths.setdefault(r.pattern, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "RSFM backend", "version": __version__,
                 "description": f"RSFM model server, API version {API_VERSION}. JSON over HTTP on 127.0.0.1; "
                                "every request needs Authorization: Bearer <token>."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {"Error": ERROR_SCHEMA}},
        "paths": paths,
    }
