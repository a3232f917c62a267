"""``rsfm-train push`` (CLI, model card, refusals) and the backend's /api/v1/hub endpoints end to end."""

from __future__ import annotations

import http.client
import json
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import HfApi

from tests.hubserver import DEFAULT_TOKEN
from training.cli import main as train_cli
from training.hub import build_model_card, hub_license
from training.package import PackageConfig


def _meta(text: str) -> dict:
    assert text.startswith("---\n"), text[:80]
    return yaml.safe_load(text.split("---\n", 2)[1])


# ---------------------------------------------------------------------------------------------------------
# rsfm-train push
# ---------------------------------------------------------------------------------------------------------
def test_cli_push_to_branch_prints_commit_and_hides_token(hub, seg_package, tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(DEFAULT_TOKEN + "\n")
    rc = train_cli(["push", str(seg_package), "--repo-id", "rsfm/cli-push", "--revision", "dev",
                    "--token-file", str(token_file), "--endpoint", hub.url, "--no-xet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    commit = out.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", commit), out
    assert DEFAULT_TOKEN not in out + err
    assert f"hf://rsfm/cli-push@{commit}" in err
    api = HfApi(endpoint=hub.url, token=DEFAULT_TOKEN)
    branches = {b.name: b.target_commit for b in api.list_repo_refs("rsfm/cli-push").branches}
    assert branches["dev"] == commit and branches["main"] != commit  # main keeps only the initial commit
    files = {s.rfilename: s for s in api.model_info("rsfm/cli-push", revision="dev", files_metadata=True).siblings}
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert files["model.safetensors"].lfs is not None  # weights went through LFS, not inline
    # pushing the same package again is a no-op that reports the same commit
    rc = train_cli(["push", str(seg_package), "--repo-id", "rsfm/cli-push", "--revision", "dev",
                    "--token-file", str(token_file), "--endpoint", hub.url, "--no-xet"])
    assert rc == 0 and capsys.readouterr().out.strip() == commit


@pytest.mark.parametrize("damage, message", [
    ("unknown_key", "unknown keys"),
    ("bad_task", "task 'segmentation' is not one of"),
    ("no_weights", "there is no such file"),
    ("bad_weights", "not a readable safetensors file"),
    ("no_config", "no config.json"),
    ("wrong_tensors", "does not load"),
])
def test_cli_refuses_broken_packages(hub, seg_package, tmp_path, capsys, damage, message):
    pkg = tmp_path / "pkg"
    shutil.copytree(seg_package, pkg)
    cfg = json.loads((pkg / "config.json").read_text())
    if damage == "unknown_key":
        cfg["colour_map"] = {}
    elif damage == "bad_task":
        cfg["task"] = "segmentation"
    if damage in ("unknown_key", "bad_task"):
        (pkg / "config.json").write_text(json.dumps(cfg))
    elif damage == "no_weights":
        (pkg / "model.safetensors").unlink()
    elif damage == "bad_weights":
        (pkg / "model.safetensors").write_bytes(b"\x00" * 64)
    elif damage == "no_config":
        (pkg / "config.json").unlink()
    elif damage == "wrong_tensors":  # a valid safetensors file, but not these weights
        import numpy as np
        from safetensors.numpy import save_file

        save_file({"head.weight": np.zeros((3, 3), np.float32)}, str(pkg / "model.safetensors"))
    hub.clear_log()
    rc = train_cli(["push", str(pkg), "--repo-id", "rsfm/broken", "--token", DEFAULT_TOKEN,
                    "--endpoint", hub.url, "--no-xet"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert message in err and "refusing to push" in err, err
    assert DEFAULT_TOKEN not in err
    assert hub.requests == []  # refused before talking to the Hub


def test_cli_push_wrong_token_says_what_to_do(hub, seg_package, capsys):
    rc = train_cli(["push", str(seg_package), "--repo-id", "rsfm/x", "--token", "hf_wrong_token",
                    "--endpoint", hub.url, "--no-xet"])
    err = capsys.readouterr().err
    assert rc == 1 and "401" in err and "HF_TOKEN" in err and "hf_wrong_token" not in err
    rc = train_cli(["push", str(seg_package), "--repo-id", "someone-else/x", "--token", DEFAULT_TOKEN,
                    "--endpoint", hub.url, "--no-xet"])
    err = capsys.readouterr().err
    assert rc == 1 and "403" in err and "write" in err


def test_cli_dry_run_prints_card(seg_package, capsys):
    assert train_cli(["push", str(seg_package), "--repo-id", "rsfm/x", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    meta = _meta(out)
    assert meta["library_name"] == "rsfm" and "rsfm-semantic-segmentation" in meta["tags"]
    assert set(json.loads(err)["files"]) == {"config.json", "model.safetensors", "README.md"}


def test_model_card_metadata(seg_package):
    config = PackageConfig.load(seg_package)
    config.licence = "Proprietary (ACME Corp.)"
    card = build_model_card(config, "---\ntags:\n- buildings\nlicense: Apache-2.0\n---\n# My model\n\nBody.\n")
    meta = _meta(card)
    assert meta["license"] == "apache-2.0"  # the card's own licence, normalised to the Hub's id
    assert meta["tags"][:3] == ["buildings", "rsfm", "rsfm-semantic-segmentation"]
    assert meta["pipeline_tag"] == "image-segmentation" and meta["metrics"] == ["miou", "oa"]
    assert card.rstrip().endswith("Body.")
    assert hub_license("Proprietary (ACME Corp.)") == ("other", "proprietary-acme-corp.")
    assert hub_license("CC-BY-4.0") == ("cc-by-4.0", None)
    no_card = _meta(build_model_card(config, None))
    assert no_card["license"] == "other" and no_card["license_name"] == "proprietary-acme-corp."


# ---------------------------------------------------------------------------------------------------------
# backend HTTP API
# ---------------------------------------------------------------------------------------------------------
class _Client:
    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Authorization": f"Bearer {self.token}",
                                                      "Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        conn.close()
        return resp.status, payload

    def wait(self, job_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, job = self.request("GET", f"/api/v1/jobs/{job_id}")
            assert status == 200, job
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture
def backend(hub, tmp_path):
    from backend.server import App, serve_in_thread
    from backend.settings import Settings

    settings = Settings.resolve({"threads": 1, "device": "cpu"}, env={})
    token = secrets.token_urlsafe(24)
    app = App(settings, token)
    server, _ = serve_in_thread(app, "127.0.0.1", 0)
    host, port = server.server_address[:2]
    yield _Client(host, port, token)
    server.shutdown()
    server.server_close()
    app.jobs.shutdown()


def test_backend_lists_installs_and_runs_a_hub_model(backend, hub, pushed, tmp_path):
    import make_fixtures as mf

    status, body = backend.request("GET", "/api/v1/hub/models?task=semantic_segmentation")
    assert status == 200, body
    assert body["source"] == "hub" and body["endpoint"] == hub.url
    listed = {m["repo_id"]: m for m in body["models"]}
    assert listed["rsfm/seg-fixture"]["sha"] == pushed.commit

    status, job = backend.request("POST", "/api/v1/hub/install", {"repo_id": "rsfm/seg-fixture", "revision": "main"})
    assert status == 202 and job["task"] == "hub_install", job
    job = backend.wait(job["id"])
    assert job["state"] == "succeeded", job
    pinned = f"hf://rsfm/seg-fixture@{pushed.commit}"
    assert job["result"]["stats"]["commit"] == pushed.commit and job["result"]["model"]["id"] == pinned
    status, body = backend.request("GET", "/api/v1/models")
    assert pinned in {m["id"] for m in body["models"]}
    status, body = backend.request("GET", "/api/v1/hub/models?cached=1")
    assert status == 200 and [m["id"] for m in body["models"]] == [pinned] and body["source"] == "cache"
    status, body = backend.request("POST", "/api/v1/hub/verify", {"model": pinned})
    assert status == 200 and "model.safetensors" in body["checked"], body

    raster = mf.write_fixture_raster(tmp_path / "in.tif")
    status, job = backend.request("POST", "/api/v1/jobs", {
        "task": "semantic_segmentation", "model": pinned, "inputs": {"raster": str(raster)},
        "output_dir": str(tmp_path / "out")})
    assert status == 202, job
    job = backend.wait(job["id"])
    assert job["state"] == "succeeded", job
    assert any(Path(o["path"]).is_file() for o in job["result"]["outputs"])


def test_backend_hub_errors(backend, hub, pushed):
    status, body = backend.request("POST", "/api/v1/hub/install", {"repo_id": "not a repo"})
    assert status == 400 and body["error"]["code"] == "invalid_hub_reference", body
    status, job = backend.request("POST", "/api/v1/hub/install", {"repo_id": "rsfm/does-not-exist"})
    assert status == 202
    job = backend.wait(job["id"])
    assert job["state"] == "failed" and job["error"]["code"] == "hub_repo_not_found", job
    assert "HF_TOKEN" in job["error"]["message"]
    status, body = backend.request("POST", "/api/v1/hub/verify", {"model": "hf://rsfm/seg-fixture@main"})
    assert status == 503 and body["error"]["code"] == "hub_offline_not_cached", body


def test_backend_offline_lists_the_cache(backend, hub, pushed, monkeypatch):
    status, job = backend.request("POST", "/api/v1/hub/install", {"repo_id": f"hf://{pushed.repo_id}@main"})
    assert backend.wait(job["id"])["state"] == "succeeded"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status, body = backend.request("GET", "/api/v1/hub/models")
    assert status == 200 and body["offline"] is True and body["source"] == "cache", body
    assert [m["repo_id"] for m in body["models"]] == [pushed.repo_id]
    hub.clear_log()  # installing a cached branch offline needs no Hub at all
    status, job = backend.request("POST", "/api/v1/hub/install", {"repo_id": pushed.repo_id})
    job = backend.wait(job["id"])
    assert job["state"] == "succeeded" and job["result"]["stats"]["commit"] == pushed.commit, job
    assert hub.requests == []
