"""Property-based fuzzing of the HTTP API against its own OpenAPI document (schemathesis).

Bounded: a few examples per operation, no deadline. Every answer must be JSON; no 5xx; every error in the
one error shape; successful answers must match the documented response schema.

The hub routes run against a loopback Hub (``tests.hubserver``, empty) through ``HF_ENDPOINT``, with an empty
``HF_HUB_CACHE`` and no token, so they never reach the internet; verifying a package that is not cached answers
the typed 503 ``hub_offline_not_cached`` (the only 5xx allowed, and only on hub routes). The chat
routes are fuzzed with ``backend`` forced to ``"template"`` so no language model is ever loaded; everything
else in the body is as generated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
import jsonschema_rs  # noqa: E402 - installed with schemathesis
from hypothesis import HealthCheck, given, settings  # noqa: E402

from backend.openapi import build_openapi  # noqa: E402
from backend.server import load_routes  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from tests.hubserver import HubServer  # noqa: E402

load_routes()
SCHEMA = schemathesis.openapi.from_dict(build_openapi())
OPERATIONS = sorted(r.ok().label for r in SCHEMA.get_all_operations())
# typed "the Hub cannot be reached" answers: expected on hub routes here, where the endpoint refuses connections
HUB_UNAVAILABLE = {"hub_unreachable", "hub_offline_not_cached"}
# the hub and chat schemas promise that a body they allow passes the handler's own validation
VALIDATION_CODES = {"bad_request", "invalid_hub_reference"}


def test_hub_and_chat_routes_are_fuzzed():
    assert any("/api/v1/hub/" in label for label in OPERATIONS)
    assert sum("/api/v1/chat" in label for label in OPERATIONS) >= 5


@pytest.fixture(scope="module", autouse=True)
def loopback_hub(tmp_path_factory):
    """An empty loopback Hub as HF_ENDPOINT, an empty cache, online, and no token from the environment/disk."""
    from huggingface_hub import constants

    server = HubServer(tmp_path_factory.mktemp("hubroot")).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", server.url)
        mp.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hub-cache")))
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.delenv(var, raising=False)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
        yield server
    server.stop()


def _send(case, rapi, seen: set[int]):
    """Send one generated case; check JSON, no 5xx (but the hub's typed 503s), the error shape. Returns the
    response and its parsed body."""
    if "/api/v1/chat" in case.path and isinstance(case.body, dict) and "backend" in case.body:
        case.body["backend"] = "template"  # never load (or contact) a language model here
    resp = case.call(base_url=f"http://{rapi.host}:{rapi.port}",
                     headers={"Authorization": f"Bearer {rapi.token}"}, timeout=30)
    seen.add(resp.status_code)
    if resp.status_code == 503 and "/api/v1/hub/" in case.path:
        assert resp.json()["error"]["code"] in HUB_UNAVAILABLE, resp.text[:500]
    else:
        assert resp.status_code < 500, (case.method, case.path, case.body, resp.text[:500])
    ctype = {k.lower(): v for k, v in resp.headers.items()}.get("content-type")
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    assert ctype and ctype.startswith("application/json"), (resp.headers, resp.text[:200])
    body = resp.json()
    if resp.status_code >= 400:
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
        assert body["error"]["code"].islower() and " " not in body["error"]["code"], body
    return resp, body


@pytest.mark.parametrize("label", OPERATIONS)
def test_api_fuzz(label, rapi):
    op = SCHEMA.find_operation_by_label(label)
    seen: set[int] = set()

    @given(case=op.as_strategy())
    @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case):
        resp, body = _send(case, rapi, seen)
        if resp.status_code >= 400:
            if any(p in case.path for p in ("/api/v1/hub/", "/api/v1/chat")):
                assert body["error"]["code"] not in VALIDATION_CODES, (case.method, case.path, case.body, body)
        else:
            case.validate_response(resp, checks=[schemathesis.checks.response_schema_conformance])

    run()
    assert seen - {401}, f"every request of {label} was refused as unauthenticated: the token was not sent"


NEGATIVE = sorted(label for label in OPERATIONS if label.startswith("POST /api/v1/hub/")
                  or label in ("POST /api/v1/chat", "POST /api/v1/chat/facts", "POST /api/v1/chat/jobs"))


@pytest.mark.parametrize("label", NEGATIVE)
def test_hub_and_chat_bodies_outside_the_schema_get_json_errors(label, rapi):
    """Bodies that break the documented schema (wrong types, missing fields, bad patterns): never a 5xx
    (apart from the hub's typed 503s), always JSON, errors in the one shape."""
    op = SCHEMA.find_operation_by_label(label)
    seen: set[int] = set()

    @given(case=op.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE))
    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case):
        _send(case, rapi, seen)

    run()
    assert any(400 <= s < 500 and s != 401 for s in seen), seen


def test_undocumented_methods_get_json_405(rapi):
    for method in ("TRACE", "OPTIONS", "BREW"):
        status, body = rapi.request(method, "/api/v1/health")
        assert status == 405, (method, body)
        assert body["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path,body", [
    ("/api/v1/chat", {"raster": "", "question": "How many ships?"}),
    ("/api/v1/chat", {"raster": "relative/in.tif", "question": "How many ships?"}),
    ("/api/v1/chat", {"raster": "/in\u0000.tif", "question": "How many ships?"}),
    ("/api/v1/chat/facts", {"raster": "/in.tif", "outputs": [{"path": "/det\u0000.gpkg"}]}),
    ("/api/v1/chat/jobs", {"raster": "/in.tif", "question": "x", "output_dir": "/tmp/a/../b"}),
    ("/api/v1/chat/jobs", {"raster": "/in.tif", "question": "x", "models": {"not_a_task": "m"}}),
    ("/api/v1/chat", {"raster": "/in.tif", "question": "x", "history": [{"role": "system", "content": "y"}]}),
    ("/api/v1/chat", {"raster": "/in.tif", "question": "x", "max_tokens": 0}),
    ("/api/v1/hub/install", {"repo_id": "org--x/name"}),
    ("/api/v1/hub/install", {"repo_id": "org/name", "revision": " "}),
    ("/api/v1/hub/verify", {"model": "hf://org/name@a..b"}),
])
def test_hub_and_chat_refuse_what_their_schema_refuses(path, body, rapi):
    """Each body breaks the documented schema, and the handler refuses it with a 400 in the error shape."""
    schema = build_openapi()["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert not jsonschema_rs.Draft4Validator(schema).is_valid(body), "the documented schema allows it"
    status, out = rapi.request("POST", path, body)  # ... and the handler refuses it too
    assert status == 400 and out["error"]["code"] in VALIDATION_CODES, (status, out)
