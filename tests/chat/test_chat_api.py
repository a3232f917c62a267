"""Chat over the real backend HTTP server on loopback (template answers; the builtin LM test is slow)."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request

import pytest
from chat_fixtures import DET_CLASSES

from backend.server import App, serve_in_thread
from backend.settings import Settings


@pytest.fixture(scope="module")
def server():
    token = secrets.token_hex(16)
    app = App(Settings.resolve({}, env={}), token)
    srv, _ = serve_in_thread(app)
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield url, token, app
    srv.shutdown()
    app.jobs.shutdown()


def call(server, method, path, body=None, timeout=120):
    url, token, _ = server
    req = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body is not None
                                 else None, headers={"Authorization": f"Bearer {token}",
                                                     "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def body(fx, question, **kw):
    return {"raster": fx["raster"], "question": question,
            "outputs": [{"path": fx["landcover"], "task": "semantic_segmentation"},
                        {"path": fx["detections"], "task": "object_detection", "layer": "detections",
                         "classes": DET_CLASSES}], **kw}


def test_routes_are_registered(server):
    status, doc = call(server, "GET", "/api/v1/openapi.json")
    assert status == 200
    paths = doc["paths"]
    assert "/api/v1/chat" in paths and "/api/v1/chat/jobs/{job_id}" in paths
    assert "backend.chat.routes" in call(server, "GET", "/api/v1/health")[1]["routes"]


def test_chat_round_trip_template(server, chat_fixture):
    status, out = call(server, "POST", "/api/v1/chat", body(chat_fixture, "How many ships are there?"))
    assert status == 200, out
    a = out["answer"]
    assert "3 ship" in a["text"] and a["verification"]["ok"] and a["mode"] == "template"
    assert {o["id"] for o in a["objects"]} == {"O1", "O2", "O4"} and a["crs"] == "EPSG:32640"
    assert out["fact_text"].startswith("[F1]") and out["facts"]["facts"][0]["id"] == "F1"


def test_chat_job_streams_and_finishes(server, chat_fixture):
    status, job = call(server, "POST", "/api/v1/chat/jobs", body(chat_fixture, "Where are the vehicles?"))
    assert status == 202 and job["state"] in ("queued", "perception", "generating", "succeeded")
    text = ""
    for _ in range(200):
        _, j = call(server, "GET", f"/api/v1/chat/jobs/{job['id']}?since={len(text)}")
        text += j["text"]
        if j["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    assert j["state"] == "succeeded", j
    assert text.strip() == j["answer"]["text"] and "O3" in text


def test_chat_facts_endpoint(server, chat_fixture):
    status, out = call(server, "POST", "/api/v1/chat/facts", {k: v for k, v in body(chat_fixture, "").items()
                                                                if k != "question"})
    assert status == 200 and "[F1]" in out["fact_text"]


def test_chat_about_change_against_a_second_image(server, chat_fixture):
    fx = chat_fixture
    req = {"raster": fx["raster"], "question": "What changed?", "compare_with": fx["raster_later"],
           "outputs": [{"path": fx["change"], "task": "change_detection"},
                       {"path": fx["change_polygons"], "task": "change_detection", "layer": "changes"}]}
    status, out = call(server, "POST", "/api/v1/chat", req)
    assert status == 200, out
    a = out["answer"]
    assert a["intent"] == "change" and a["verification"]["ok"] and a["text"].startswith("6% of the area changed")
    assert [o["id"] for o in a["objects"]] == ["C1", "C2"] and a["objects"][0]["geometry"]["type"] == "Polygon"
    assert "the later image raster_later.tif" in out["fact_text"]
    # the same map read as the earlier image's comparison
    status, out = call(server, "POST", "/api/v1/chat/facts", {**req, "compare_order": "earlier"})
    assert status == 200 and "the earlier image raster_later.tif" in out["fact_text"]


def test_chat_about_selected_polygons(server, chat_fixture):
    """aoi: a FeatureCollection of selected polygons (raster CRS) restricts the facts to their inside."""
    west = [[500000, 2799800], [500080, 2799800], [500080, 2800000], [500000, 2800000], [500000, 2799800]]
    aoi = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"fid": 7}, "geometry": {"type": "Polygon", "coordinates": [west]}}]}
    status, out = call(server, "POST", "/api/v1/chat", body(chat_fixture, "How many ships are there?", aoi=aoi))
    assert status == 200, out
    assert out["answer"]["text"].startswith("There are 2 ship detections")  # the ship at x = 500090 is outside
    assert "only inside the selected polygons, 0.016 km²" in out["fact_text"]
    # with an extent too, the facts count inside both: the northern half of the polygon has 1 ship
    north = [500000, 2799900, 500400, 2800000]
    status, out = call(server, "POST", "/api/v1/chat", body(chat_fixture, "How many ships are there?", aoi=aoi,
                                                           bbox=north))
    assert status == 200 and out["answer"]["text"].startswith("There is 1 ship detection"), out


@pytest.mark.parametrize("bad,code,status", [
    ({"question": "x"}, "bad_request", 400),
    ({"raster": "RASTER", "question": "x", "aoi": {"type": "Point", "coordinates": [0, 0]}}, "invalid_aoi", 400),
    ({"raster": "RASTER", "question": "x", "bbox": [5, 5, 6, 6],
      "aoi": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}, "invalid_aoi", 400),
    ({"raster": "RASTER", "question": "x", "compare_with": "RASTER"}, "bad_request", 400),
    ({"raster": "RASTER", "question": "x", "compare_with": "relative.tif"}, "bad_request", 400),
    ({"raster": "RASTER", "question": "x", "compare_with": "/tmp/b.tif", "compare_order": "tomorrow"},
     "bad_request", 400),
    ({"raster": "RASTER", "question": "x", "models": {"change_detection": "m"}}, "bad_request", 400),
    ({"raster": "/nope/missing.tif", "question": "How many ships?"}, "bad_chat_input", 400),
    ({"raster": "RASTER", "question": "x", "mode": "poetry"}, "bad_request", 400),
    ({"raster": "RASTER", "question": "x", "backend": "gpt-9"}, "bad_request", 400),
    ({"raster": "RASTER", "question": "x", "jobs": ["deadbeef"]}, "job_not_found", 404),
])
def test_errors_have_the_error_shape(server, chat_fixture, bad, code, status):
    bad = {k: (chat_fixture["raster"] if v == "RASTER" else v) for k, v in bad.items()}
    st, out = call(server, "POST", "/api/v1/chat", bad)
    assert st == status and out["error"]["code"] == code and out["error"]["message"]


def test_unknown_chat_job(server):
    st, out = call(server, "GET", "/api/v1/chat/jobs/nope")
    assert st == 404 and out["error"]["code"] == "job_not_found"


@pytest.mark.slow
def test_chat_round_trip_builtin_lm(server, chat_fixture):
    """SmolLM2-135M through the API: loads the GGUF (~20-40 s here), answers, and the verifier guards it."""
    status, out = call(server, "POST", "/api/v1/chat", body(chat_fixture, "Describe this image.",
                                                             backend="builtin", max_tokens=48),
                       timeout=900)  # loading the GGUF takes 20-120 s on a busy 2-core machine
    assert status == 200, out
    a = out["answer"]
    assert a["mode"] in ("free", "fallback") and a["raw_lm_text"]
    assert a["text"].strip()
    # whatever the LM wrote, what survives verification cites only real facts
    ids = {f["id"] for f in out["facts"]["facts"]}
    assert set(a["cited"]) <= ids
    assert out["backend"]["name"] == "builtin"


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    """A backend serving the fixture model packages (real architectures, seeded random weights)."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures"))
    from make_fixtures import build_fixture_package, write_fixture_raster

    root = tmp_path_factory.mktemp("chatmodels")
    seg = build_fixture_package("semantic_segmentation", root / "models" / "seg")
    det = build_fixture_package("object_detection", root / "models" / "det")
    build_fixture_package("change_detection", root / "models" / "change")
    raster = write_fixture_raster(root / "rgb.tif")
    write_fixture_raster(root / "rgb_later.tif", seed=7)
    token = secrets.token_hex(16)
    app = App(Settings.resolve({"models_dir": [str(root / "models")]}, env={}), token)
    srv, _ = serve_in_thread(app)
    yield (f"http://127.0.0.1:{srv.server_address[1]}", token, app), str(raster), root, seg, det
    srv.shutdown()
    app.jobs.shutdown()


@pytest.mark.slow
def test_chat_runs_models_through_the_job_queue(model_server):
    server, raster, root, seg, det = model_server
    _, models = call(server, "GET", "/api/v1/models")
    ids = {m["config"]["task"]: m["id"] for m in models["models"]}
    req = {"raster": raster, "question": "What is in this image?", "output_dir": str(root / "out"),
           "models": {"semantic_segmentation": ids["semantic_segmentation"],
                      "object_detection": ids["object_detection"]}}
    status, out = call(server, "POST", "/api/v1/chat", req, timeout=600)
    assert status == 200, out
    _, jobs = call(server, "GET", "/api/v1/jobs")
    jobs["jobs"] = [j for j in jobs["jobs"] if j["task"] != "change_detection"]  # the change test's, if it ran first
    assert sorted(j["task"] for j in jobs["jobs"]) == ["object_detection", "semantic_segmentation"]
    assert all(j["state"] == "succeeded" for j in jobs["jobs"])
    facts = out["facts"]["facts"]
    shares = [f["data"]["share_pct"] for f in facts if f["kind"] == "landcover"]
    assert shares and sum(shares) == pytest.approx(100.0, abs=0.01)
    # the detector's classes are known (from the package) even when it found nothing of a class
    from make_fixtures import ARCHITECTURES

    det_names = {c["name"].replace("_", " ") for c in ARCHITECTURES["object_detection"][2]}
    assert det_names <= set(out["facts"]["known_classes"])
    assert out["answer"]["verification"]["ok"]
    # a follow-up question reuses the outputs: no new jobs
    n_jobs = len(call(server, "GET", "/api/v1/jobs")[1]["jobs"])
    status, out2 = call(server, "POST", "/api/v1/chat", {**req, "question": "How many objects are there?"})
    assert status == 200 and len(call(server, "GET", "/api/v1/jobs")[1]["jobs"]) == n_jobs


@pytest.mark.slow
def test_compare_with_runs_the_default_change_model(model_server):
    """compare_with alone: the backend runs its change model on the pair (as a job) and answers from the map."""
    server, raster, root, _, _ = model_server
    later = str(root / "rgb_later.tif")
    req = {"raster": raster, "question": "How much changed?", "compare_with": later,
           "output_dir": str(root / "out_change")}
    status, out = call(server, "POST", "/api/v1/chat", req, timeout=600)
    assert status == 200, out
    changes = [j for j in call(server, "GET", "/api/v1/jobs")[1]["jobs"] if j["task"] == "change_detection"]
    assert len(changes) == 1 and changes[0]["state"] == "succeeded"
    assert changes[0]["request"]["inputs"] == {"raster": raster, "raster_after": later}
    a = out["answer"]
    assert a["intent"] == "change" and a["verification"]["ok"] and a["cited"]
    share = next(f for f in out["facts"]["facts"] if f["kind"] == "change" and "share_pct" in f["data"])
    assert 0 <= share["data"]["share_pct"] <= 100 and "the later image rgb_later.tif" in share["text"]
    # the asked raster as the LATER image: the job runs the other way round, the facts say "earlier image"
    status, out = call(server, "POST", "/api/v1/chat", {**req, "compare_order": "earlier"}, timeout=600)
    assert status == 200, out
    changes = [j for j in call(server, "GET", "/api/v1/jobs")[1]["jobs"] if j["task"] == "change_detection"]
    assert len(changes) == 2 and {"raster": later, "raster_after": raster} in [j["request"]["inputs"] for j in changes]
    assert "the earlier image rgb_later.tif" in out["fact_text"]
