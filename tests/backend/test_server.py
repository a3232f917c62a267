"""The HTTP layer on a real loopback server: token, error shape, health, OpenAPI, models."""

from __future__ import annotations

import http.client
import socket
from urllib.parse import quote

import pytest
from conftest import assert_error

from backend import routing
from backend.server import App, make_server
from backend.settings import Settings

ENDPOINTS = [("GET", "/api/v1/health"), ("GET", "/api/v1/openapi.json"), ("GET", "/api/v1/models"),
             ("GET", "/api/v1/models/x"), ("POST", "/api/v1/models/x/check"), ("POST", "/api/v1/jobs"),
             ("GET", "/api/v1/jobs"), ("GET", "/api/v1/jobs/abc"), ("POST", "/api/v1/jobs/abc/cancel")]


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_every_endpoint_needs_the_token(api, method, path):
    assert_error(*api.request(method, path, {}, token=None), 401, "unauthorized")
    assert_error(*api.request(method, path, {}, token="not-the-token-at-all"), 401, "unauthorized")
    assert_error(*api.request(method, path, {}, token=api.token + "x"), 401, "unauthorized")


def test_bearer_scheme_required(api):
    status, body = api.request("GET", "/api/v1/health", token=None, headers={"Authorization": api.token})
    assert_error(status, body, 401, "unauthorized")


def test_health(api):
    status, body = api.get("/api/v1/health")
    assert status == 200
    assert body["status"] == "ok" and body["api_version"] == 1
    assert body["device"] == "cpu"
    assert "torch" in body["runtimes"]
    assert body["jobs"] == {"queued": 0, "running": 0} or set(body["jobs"]) == {"queued", "running"}
    assert "token" not in str(body["settings"]).lower()


def test_openapi_documents_every_route(api):
    status, doc = api.get("/api/v1/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    for r in routing.ROUTES:
        assert r.method.lower() in doc["paths"][r.pattern], r.pattern
        assert doc["paths"][r.pattern][r.method.lower()]["summary"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "requestBody" in doc["paths"]["/api/v1/jobs"]["post"]


def test_models_list_and_get(api, fx):
    status, body = api.get("/api/v1/models")
    assert status == 200
    ids = [m["id"] for m in body["models"]]
    assert fx["seg_id"] in ids
    info = next(m for m in body["models"] if m["id"] == fx["seg_id"])
    assert info["source"] == "local"
    assert info["config"]["task"] == "semantic_segmentation"
    assert info["config"]["architecture"] == "upernet_segmenter"
    assert info["card"].startswith("---")
    assert info["revision"].startswith("sha256:")
    status, one = api.get(f"/api/v1/models/{fx['seg_id']}")
    assert status == 200 and one["id"] == fx["seg_id"]


def test_unknown_model_404(api):
    err = assert_error(*api.get("/api/v1/models/no-such-model"), 404, "model_not_found")
    assert "known models" in err["message"]


def test_hub_id_is_url_decoded(api):
    # hf:// ids carry '/', so clients URL-encode them; a malformed one is refused by the registry.
    status, body = api.get("/api/v1/models/" + quote("hf://only-one-part", safe=""))
    try:
        import backend.hub  # noqa: F401
    except ImportError:  # without the hub module the registry refuses the id itself
        assert_error(status, body, 404, "model_not_found")
    else:
        err = assert_error(status, body, 400, "invalid_hub_reference")
        assert "only-one-part" in err["message"]


def test_unknown_path_and_method(api):
    assert_error(*api.get("/api/v1/nope"), 404, "not_found")
    assert_error(*api.request("DELETE", "/api/v1/jobs"), 405, "method_not_allowed")


def test_bad_json(api):
    assert_error(*api.request("POST", "/api/v1/jobs", raw=b"{not json"), 400, "invalid_json")


def test_body_too_large(api):
    big = b"[" + b"0," * (api.app.settings.max_body_bytes // 2) + b"0]"
    assert_error(*api.request("POST", "/api/v1/jobs", raw=big), 413, "payload_too_large")


def test_non_loopback_host_header_refused(api):
    status, body = api.request("GET", "/api/v1/health", headers={"Host": "evil.example.com"})
    assert_error(status, body, 403, "bad_host")


def test_check_endpoint(api, fx):
    status, body = api.post(f"/api/v1/models/{fx['seg_id']}/check", {"raster": str(fx["rgb"])})
    assert status == 200 and body == {"ok": True, "problems": [], "codes": [], "warnings": []}
    status, body = api.post(f"/api/v1/models/{fx['seg_id']}/check", {"raster": str(fx["one_band"])})
    assert status == 200 and body["ok"] is False
    assert body["codes"] == ["band_count_mismatch"]
    assert "expects 3" in body["problems"][0]
    status, body = api.post(f"/api/v1/models/{fx['seg_id']}/check", {"raster": str(fx["no_crs"])})
    assert body["codes"] == ["missing_crs"]
    status, body = api.post(f"/api/v1/models/{fx['seg_id']}/check", {"raster": str(fx["slightly_coarse"])})
    assert body["ok"] is True and "outside the model's range" in body["warnings"][0]
    assert_error(*api.post(f"/api/v1/models/{fx['seg_id']}/check", {"nope": 1}), 400, "bad_request")


def test_refuses_to_bind_other_hosts():
    app = App(Settings.resolve({}, env={}), "x" * 32)
    try:
        with pytest.raises(ValueError, match="loopback"):
            make_server(app, "0.0.0.0", 0)
        ip = socket.gethostbyname(socket.gethostname())
        if not ip.startswith("127."):
            with pytest.raises(ValueError, match="loopback"):
                make_server(app, ip, 0)
    finally:
        app.jobs.shutdown()


def test_short_token_refused():
    with pytest.raises(ValueError, match="16"):
        App(Settings.resolve({}, env={}), "short")


def test_keep_alive_connection_serves_several_requests(api):
    conn = http.client.HTTPConnection(api.host, api.port, timeout=30)
    for _ in range(3):
        conn.request("GET", "/api/v1/health", headers={"Authorization": f"Bearer {api.token}"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    conn.close()
