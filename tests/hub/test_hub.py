"""Publish -> list -> fetch -> load -> run, offline reuse, integrity, resume and error mapping.

Everything runs against the loopback Hub in tests/hubserver through the real ``huggingface_hub`` client.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import yaml

from backend import hub as bh
from tests.hubserver import DEFAULT_TOKEN, READER_TOKEN, HubServer
from training.package import PackageConfig, load_package


def _meta(card: Path) -> dict:
    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n"), text[:80]
    return yaml.safe_load(text.split("---\n", 2)[1])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resolve_gets(hub: HubServer, filename: str) -> list[dict]:
    return [r for r in hub.requests if r["method"] == "GET" and r["path"].endswith("/" + filename)]


# ---------------------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, repo, rev", [
    ("hf://my-org/rsfm-seg@main", "my-org/rsfm-seg", "main"),
    ("hf://my-org/rsfm.seg_v2", "my-org/rsfm.seg_v2", None),
    ("my-org/m@" + "a" * 40, "my-org/m", "a" * 40),
    ("hf://org/m@refs/pr/1", "org/m", "refs/pr/1"),
])
def test_parse_model_ref(text, repo, rev):
    ref = bh.parse_model_ref(text)
    assert (ref.repo_id, ref.revision) == (repo, rev)
    assert ref.pinned == (rev == "a" * 40)
    assert bh.parse_model_ref(str(ref)) == ref


@pytest.mark.parametrize("bad", ["", "hf://", "hf://noslash", "hf://a/b/c", "hf://org/m@", "hf://org/../x",
                                 "hf://-org/m", "hf://org/m@a b"])
def test_parse_model_ref_rejects(bad):
    with pytest.raises(bh.HubReferenceError, match="hf://|ORG/NAME|revision"):
        bh.parse_model_ref(bad)


# ---------------------------------------------------------------------------------------------------------
# push -> list -> fetch -> load -> run
# ---------------------------------------------------------------------------------------------------------
def test_push_list_fetch_load_run(hub, pushed, tmp_path):
    import torch

    assert len(pushed.commit) == 40
    models = bh.list_rsfm_models(hub.url, task="semantic_segmentation")
    found = {m["repo_id"]: m for m in models}
    assert "rsfm/seg-fixture" in found
    m = found["rsfm/seg-fixture"]
    assert m["sha"] == pushed.commit and m["task"] == "semantic_segmentation"
    assert m["id"] == f"hf://rsfm/seg-fixture@{pushed.commit}"
    assert {"rsfm", "rsfm-semantic-segmentation"} <= set(m["tags"])
    assert m["license"] == "cc0-1.0"
    assert bh.list_rsfm_models(hub.url, task="object_detection") == []

    cache = tmp_path / "cache"
    path = bh.fetch_model("hf://rsfm/seg-fixture@main", cache_dir=cache)
    assert path.name == pushed.commit and path.is_relative_to(cache)
    # the weights arrived bit-identical, the card carries the Hub metadata
    assert _sha256(path / "model.safetensors") == _sha256(pushed.package / "model.safetensors")
    meta = _meta(path / "README.md")
    assert meta["license"] == "cc0-1.0" and meta["library_name"] == "rsfm"
    assert {"rsfm", "rsfm-semantic-segmentation"} <= set(meta["tags"])
    assert meta["metrics"] == ["miou", "oa"]
    results = meta["model-index"][0]["results"][0]
    assert {x["name"]: x["value"] for x in results["metrics"]} == {"mIoU": 0.42, "OA": 0.8}
    assert results["dataset"]["split"] == "fixture tiles"

    config, model = load_package(path)
    assert config.name == PackageConfig.load(pushed.package).name
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
    assert tuple(logits.shape) == (1, 3, 64, 64)
    _, ref_model = load_package(pushed.package)
    with torch.no_grad():
        assert torch.equal(logits, ref_model(x))

    # the branch ref is recorded, so the same revision works offline; a pinned commit needs no network
    hub.clear_log()
    assert bh.fetch_model("rsfm/seg-fixture", revision=pushed.commit, cache_dir=cache) == path
    assert hub.requests == []
    assert bh.fetch_model("rsfm/seg-fixture", revision="main", cache_dir=cache, local_files_only=True) == path
    assert hub.requests == []
    cached = bh.list_cached_models(cache)
    assert [(c["repo_id"], c["sha"], c["task"]) for c in cached] == [
        ("rsfm/seg-fixture", pushed.commit, "semantic_segmentation")]
    assert cached[0]["refs"] == ["main"]


def test_offline_env_flag_and_hub_down(pushed, seg_package, tmp_path, monkeypatch):
    """Fetch once from a Hub that is then stopped: HF_HUB_OFFLINE=1, a pinned commit and 'main' all work."""
    from training.hub import push_package

    server = HubServer(tmp_path / "root").start()
    commit = push_package(seg_package, "rsfm/offline", token=DEFAULT_TOKEN, endpoint=server.url)
    cache = tmp_path / "cache"
    path = bh.fetch_model("rsfm/offline", cache_dir=cache, endpoint=server.url)
    server.stop()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert bh.fetch_model("rsfm/offline", cache_dir=cache, endpoint=server.url) == path
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert bh.fetch_model(f"hf://rsfm/offline@{commit}", cache_dir=cache, endpoint=server.url) == path
    # a branch needs the Hub, which is down: the cached copy is used (with a warning in the log)
    assert bh.fetch_model("rsfm/offline@main", cache_dir=cache, endpoint=server.url) == path
    load_package(path)

    # nothing cached: offline -> HubOfflineError; hub down -> HubUnreachableError
    with pytest.raises(bh.HubOfflineError, match="HF_HUB_OFFLINE"):
        bh.fetch_model("rsfm/other", cache_dir=cache, endpoint=server.url, local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(bh.HubOfflineError, match="not in the cache"):
        bh.fetch_model("rsfm/other", cache_dir=cache, endpoint=server.url)
    with pytest.raises(bh.HubOfflineError):
        bh.list_rsfm_models(server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(bh.HubUnreachableError, match="cannot reach the Hub") as err:
        bh.fetch_model("rsfm/other", cache_dir=cache, endpoint=server.url)
    assert isinstance(err.value, ConnectionError) and err.value.http_status == 503


# ---------------------------------------------------------------------------------------------------------
# integrity and resume
# ---------------------------------------------------------------------------------------------------------
def test_corrupted_weights_are_refused_and_refetched(hub, pushed, tmp_path):
    cache = tmp_path / "cache"
    hub.corrupt(pushed.repo_id, "model.safetensors")
    try:
        with pytest.raises(bh.HubIntegrityError, match="model.safetensors.*corrupted.*sha256") as err:
            bh.fetch_model(pushed.repo_id, cache_dir=cache)
    finally:
        hub.corrupt(pushed.repo_id, "model.safetensors", enabled=False)
    assert isinstance(err.value, OSError) and err.value.code == "hub_checksum_mismatch"
    blobs = cache / "models--rsfm--seg-fixture" / "blobs"
    want = _sha256(pushed.package / "model.safetensors")
    assert not (blobs / want).exists() and not (blobs / f"{want}.incomplete").exists()
    path = bh.fetch_model(pushed.repo_id, cache_dir=cache)  # the retry downloads it again, correctly
    assert _sha256(path / "model.safetensors") == want


def test_corrupted_small_file_is_refused(hub, pushed, tmp_path):
    cache = tmp_path / "cache"
    hub.corrupt(pushed.repo_id, "config.json")
    try:
        with pytest.raises(bh.HubIntegrityError, match="config.json.*git-sha1"):
            bh.fetch_model(pushed.repo_id, cache_dir=cache)
    finally:
        hub.corrupt(pushed.repo_id, "config.json", enabled=False)
    snapshot = cache / "models--rsfm--seg-fixture" / "snapshots" / pushed.commit
    assert not (snapshot / "config.json").exists()  # removed: the next fetch gets it again
    with pytest.raises(bh.HubOfflineError):  # and the incomplete snapshot is not served offline
        bh.fetch_model(pushed.repo_id, cache_dir=cache, local_files_only=True)
    path = bh.fetch_model(pushed.repo_id, cache_dir=cache)
    assert PackageConfig.load(path).name == PackageConfig.load(pushed.package).name


def test_tampered_cache_is_detected_and_healed(hub, pushed, tmp_path):
    cache = tmp_path / "cache"
    path = bh.fetch_model(pushed.repo_id, cache_dir=cache)
    assert "model.safetensors" in bh.verify_snapshot(path, rehash=True)
    good = (path / "model.safetensors").read_bytes()

    def tamper() -> Path:
        blob = (path / "model.safetensors").resolve()
        data = bytearray(blob.read_bytes())
        data[100] ^= 0xFF
        blob.write_bytes(bytes(data))
        return blob

    blob = tamper()
    with pytest.raises(bh.HubIntegrityError):
        bh.verify_snapshot(path, rehash=True)
    assert not blob.exists()
    # online, a pinned commit whose cached copy is damaged is downloaded again
    bh.fetch_model(pushed.repo_id, cache_dir=cache)
    tamper()
    assert bh.fetch_model(pushed.repo_id, revision=pushed.commit, cache_dir=cache) == path
    assert (path / "model.safetensors").read_bytes() == good
    # offline it cannot heal: the damaged file is refused (and removed)
    tamper()
    with pytest.raises(bh.HubIntegrityError, match="corrupted"):
        bh.fetch_model(pushed.repo_id, revision=pushed.commit, cache_dir=cache, local_files_only=True)


def test_partial_incomplete_file_is_resumed(hub, pushed, tmp_path):
    cache = tmp_path / "cache"
    weights = (pushed.package / "model.safetensors").read_bytes()
    sha = hashlib.sha256(weights).hexdigest()
    blobs = cache / "models--rsfm--seg-fixture" / "blobs"
    blobs.mkdir(parents=True)
    half = len(weights) // 2
    (blobs / f"{sha}.incomplete").write_bytes(weights[:half])  # left by an interrupted download
    hub.clear_log()
    path = bh.fetch_model(pushed.repo_id, cache_dir=cache)
    assert (path / "model.safetensors").read_bytes() == weights
    gets = _resolve_gets(hub, "model.safetensors")
    assert [g["range"] for g in gets] == [f"bytes={half}-"]
    assert not (blobs / f"{sha}.incomplete").exists()


def test_dropped_connection_is_resumed(hub, pushed, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # bytes reach the file in DOWNLOAD_CHUNK_SIZE pieces; make them small so the part before the drop is kept
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    weights = (pushed.package / "model.safetensors").read_bytes()
    drop_at = len(weights) // 3
    hub.drop_connection(pushed.repo_id, "model.safetensors", after_bytes=drop_at)
    hub.clear_log()
    path = bh.fetch_model(pushed.repo_id, cache_dir=tmp_path / "cache")
    assert (path / "model.safetensors").read_bytes() == weights
    gets = _resolve_gets(hub, "model.safetensors")
    assert len(gets) == 2 and gets[0]["range"] is None
    resumed_at = int(gets[1]["range"].removeprefix("bytes=").removesuffix("-"))
    assert drop_at - 64 * 1024 <= resumed_at <= drop_at  # continued where the connection broke


def test_cancel_keeps_partial_file_and_next_fetch_resumes(hub, pushed, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # several progress steps for a small file
    cancel = threading.Event()
    seen: list[float] = []

    def progress(fraction: float, message: str) -> None:
        seen.append(fraction)
        if fraction >= 0.25:
            cancel.set()  # the user presses Cancel a quarter of the way through

    cache = tmp_path / "cache"
    with pytest.raises(bh.HubDownloadCancelled):
        bh.fetch_model(pushed.repo_id, cache_dir=cache, progress=progress, cancel=cancel)
    weights = (pushed.package / "model.safetensors").read_bytes()
    partial = cache / "models--rsfm--seg-fixture" / "blobs" / (hashlib.sha256(weights).hexdigest() + ".incomplete")
    kept = partial.stat().st_size
    assert 0.2 * len(weights) < kept < 0.3 * len(weights)
    hub.clear_log()
    seen.clear()
    path = bh.fetch_model(pushed.repo_id, cache_dir=cache, progress=lambda f, m: seen.append(f))
    assert (path / "model.safetensors").read_bytes() == weights
    assert _resolve_gets(hub, "model.safetensors")[0]["range"] == f"bytes={kept}-"
    assert seen[-1] == 1.0 and seen == sorted(seen)


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------
def test_error_mapping(hub, pushed, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(bh.HubAuthError, match="rejected the Hub token.*HF_TOKEN") as err:
        bh.fetch_model(pushed.repo_id, cache_dir=cache, token="hf_not_a_valid_token")  # noqa: S106
    assert "hf_not_a_valid_token" not in str(err.value)
    with pytest.raises(bh.HubRepoNotFoundError, match="no model repo rsfm/missing") as err:
        bh.fetch_model("rsfm/missing", cache_dir=cache)
    assert isinstance(err.value, LookupError) and err.value.http_status == 404
    with pytest.raises(bh.HubRevisionNotFoundError, match="no revision 'nope'"):
        bh.fetch_model(pushed.repo_id, revision="nope", cache_dir=cache)
    with pytest.raises(bh.HubRevisionNotFoundError):
        bh.fetch_model(pushed.repo_id, revision="0" * 40, cache_dir=cache)
    with pytest.raises(bh.HubAuthError):
        bh.list_rsfm_models(hub.url, token="hf_not_a_valid_token")  # noqa: S106


def test_gated_and_private_repos(hub, seg_package, tmp_path):
    from training.hub import push_package

    push_package(seg_package, "rsfm/gated", token=DEFAULT_TOKEN, endpoint=hub.url)
    push_package(seg_package, "rsfm/private", token=DEFAULT_TOKEN, endpoint=hub.url, private=True)
    hub.set_gated("rsfm/gated", "manual")
    cache = tmp_path / "cache"
    with pytest.raises(bh.HubGatedRepoError, match="gated.*request access") as err:
        bh.fetch_model("rsfm/gated", cache_dir=cache, token=READER_TOKEN)
    assert err.value.http_status == 403
    with pytest.raises(bh.HubGatedRepoError):
        bh.fetch_model("rsfm/gated", cache_dir=cache)  # anonymous
    # the owner's token and a user granted access can download it
    assert (bh.fetch_model("rsfm/gated", cache_dir=cache, token=DEFAULT_TOKEN) / "config.json").is_file()
    hub.set_gated("rsfm/gated", "manual", approved=["reader"])
    assert (bh.fetch_model("rsfm/gated", cache_dir=tmp_path / "c2", token=READER_TOKEN) / "config.json").is_file()
    # a private repo is invisible to others (listing and fetch), visible to its owner
    with pytest.raises(bh.HubRepoNotFoundError, match="private"):
        bh.fetch_model("rsfm/private", cache_dir=cache, token=READER_TOKEN)
    assert "rsfm/private" not in {m["repo_id"] for m in bh.list_rsfm_models(hub.url, token=READER_TOKEN)}
    owner_view = {m["repo_id"]: m for m in bh.list_rsfm_models(hub.url, token=DEFAULT_TOKEN)}
    assert owner_view["rsfm/private"]["private"] is True


_SILENT_SOCKETS = []  # kept open for the session: the abandoned listing call stays blocked, quietly


def test_listing_gives_up_after_its_deadline():
    """A Hub that accepts connections but never answers (a black-holing firewall) is reported in time."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
    _SILENT_SOCKETS.append(silent)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    with pytest.raises(bh.HubUnreachableError, match="did not answer"):
        bh.list_rsfm_models(url, timeout_s=0.5)


def test_proxy_from_environment_is_used(hub, pushed, tmp_path):
    """HTTP_PROXY is honoured: the endpoint's host does not even resolve, the proxy (the loopback Hub,
    which serves absolute-form proxy requests) is what the client talks to."""
    import os

    from huggingface_hub.utils import close_session

    saved = {k: os.environ.get(k) for k in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")}
    try:
        for k in saved:
            os.environ.pop(k, None)
        os.environ["HTTP_PROXY"] = hub.url
        close_session()  # the shared HTTP client reads proxy settings when it is created
        hub.clear_log()
        path = bh.fetch_model(pushed.repo_id, endpoint="http://hub-behind-a-proxy.invalid",
                              cache_dir=tmp_path / "cache")
        assert (path / "config.json").is_file()
        assert any(r["path"].endswith("/model.safetensors") for r in hub.requests)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
        close_session()
