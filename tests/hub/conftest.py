"""Fixtures for the Hub tests: a loopback Hub (tests.hubserver), an isolated HF cache, a pushed package.

Nothing here reaches the internet: ``HF_ENDPOINT`` points at the loopback server, ``HF_HOME`` at a temporary
folder (so no real token or cache is touched) and uploads use plain LFS (``HF_HUB_DISABLE_XET``: the
loopback Hub has no Xet storage).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for p in (REPO_ROOT, REPO_ROOT / "tests" / "fixtures"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from tests.hubserver import DEFAULT_TOKEN, READER_TOKEN, HubServer  # noqa: E402

__all__ = ["DEFAULT_TOKEN", "READER_TOKEN"]


@pytest.fixture(autouse=True)
def _isolated_hf_env(request, tmp_path, monkeypatch):
    """Per-test HF environment: own HF_HOME, no token, online, no Xet (the loopback Hub speaks plain LFS).

    ``HF_ENDPOINT`` is the module's loopback Hub when the test uses ``hub``, else a closed loopback port, so
    a test that forgets its endpoint fails fast instead of trying huggingface.co.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    endpoint = request.getfixturevalue("hub").url if "hub" in request.fixturenames else "http://127.0.0.1:9"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)  # never send a token found on disk


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One loopback Hub per test module."""
    server = HubServer(tmp_path_factory.mktemp("hubroot")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seg_package(tmp_path_factory) -> Path:
    """The seeded segmentation fixture package (real upernet_segmenter), with held-back metrics added."""
    import make_fixtures as mf

    from training.package import PackageConfig

    out = mf.build_fixture_package("semantic_segmentation", tmp_path_factory.mktemp("pkg") / "seg")
    cfg = PackageConfig.load(out)
    cfg.metrics = {"mIoU": 0.42, "OA": 0.8, "split": "fixture tiles"}
    cfg.save(out)
    return out


@dataclass
class Pushed:
    repo_id: str
    commit: str
    package: Path


@pytest.fixture(scope="module")
def pushed(hub, seg_package) -> Pushed:
    """The fixture package pushed to ``rsfm/seg-fixture`` on the module's loopback Hub."""
    from huggingface_hub import constants

    from training.hub import push_package

    old = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = True  # module-scoped: the autouse monkeypatch is not active yet
    try:
        commit = push_package(seg_package, "rsfm/seg-fixture", token=DEFAULT_TOKEN, endpoint=hub.url)
    finally:
        constants.HF_HUB_DISABLE_XET = old
    return Pushed("rsfm/seg-fixture", commit, seg_package)
