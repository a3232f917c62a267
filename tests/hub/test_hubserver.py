"""The loopback Hub itself, driven by the real huggingface_hub client (the parts fetch/push do not cover)."""

from __future__ import annotations

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError

from tests.hubserver import DEFAULT_TOKEN, HubServer, start_hub_server

CARD = "---\nlicense: mit\nlibrary_name: rsfm\ntags:\n- rsfm\n- rsfm-{task}\n---\n# {name}\n"


def _make(api: HfApi, name: str, task: str = "scene-classification") -> str:
    repo = f"rsfm/{name}"
    api.create_repo(repo)
    api.create_commit(repo, commit_message="add", operations=[
        CommitOperationAdd("README.md", CARD.format(task=task, name=name).encode()),
        CommitOperationAdd("weights/model.safetensors", b"\x01\x02" * 5000),
        CommitOperationAdd("notes/a/b.txt", b"deep file\n"),
    ])
    return repo


def test_listing_filters_and_pagination(tmp_path):
    with HubServer(tmp_path / "root", page_size=2) as hub:
        api = HfApi(endpoint=hub.url, token=DEFAULT_TOKEN)
        for i in range(3):
            _make(api, f"m{i}")
        _make(api, "seg", task="semantic-segmentation")
        api.create_repo("rsfm/untagged")
        hub.clear_log()
        ids = sorted(m.id for m in api.list_models(filter="rsfm"))
        assert ids == ["rsfm/m0", "rsfm/m1", "rsfm/m2", "rsfm/seg"]
        assert len([r for r in hub.requests if r["path"] == "/api/models"]) == 2  # followed the Link header
        assert len(list(api.list_models(filter="rsfm", limit=3))) == 3
        assert [m.id for m in api.list_models(filter=["rsfm", "rsfm-semantic-segmentation"])] == ["rsfm/seg"]
        assert sorted(m.id for m in api.list_models(search="M1")) == ["rsfm/m1"]
        assert list(api.list_models(author="someone-else")) == []
        info = next(iter(api.list_models(filter="rsfm-semantic-segmentation", cardData=True)))
        assert info.card_data["license"] == "mit" and "license:mit" in info.tags


def test_tree_paths_info_commits_and_delete(tmp_path):
    with HubServer(tmp_path / "root") as hub:
        api = HfApi(endpoint=hub.url, token=DEFAULT_TOKEN)
        repo = _make(api, "tree")
        top = {e.path for e in api.list_repo_tree(repo)}
        assert top == {".gitattributes", "README.md", "weights", "notes"}
        deep = {e.path for e in api.list_repo_tree(repo, recursive=True)}
        assert {"notes/a", "notes/a/b.txt", "weights/model.safetensors"} <= deep
        infos = {e.path: e for e in api.get_paths_info(repo, ["weights/model.safetensors", "notes", "missing"])}
        assert set(infos) == {"weights/model.safetensors", "notes"}
        assert infos["weights/model.safetensors"].lfs.size == 10000
        first = api.model_info(repo).sha
        api.create_commit(repo, commit_message="rm", operations=[CommitOperationDelete("notes/")])
        assert "notes/a/b.txt" not in {s.rfilename for s in api.model_info(repo).siblings}
        commits = api.list_repo_commits(repo)
        assert [c.title for c in commits] == ["rm", "add", "initial commit"] and commits[1].commit_id == first
        # the old commit is still downloadable; the deleted file is gone from main
        old = hf_hub_download(repo, "notes/a/b.txt", revision=first, endpoint=hub.url, cache_dir=tmp_path / "c")
        assert open(old, "rb").read() == b"deep file\n"
        with pytest.raises(RemoteEntryNotFoundError):
            hf_hub_download(repo, "notes/a/b.txt", endpoint=hub.url, cache_dir=tmp_path / "c2")
        # a commit based on an outdated parent is refused (412), as on the Hub
        with pytest.raises(HfHubHTTPError) as err:
            api.create_commit(repo, commit_message="late", parent_commit=first,
                              operations=[CommitOperationAdd("x.txt", b"x")])
        assert err.value.response.status_code == 412


def test_state_survives_a_restart(tmp_path):
    url, stop = start_hub_server(tmp_path / "root")
    api = HfApi(endpoint=url, token=DEFAULT_TOKEN)
    repo = _make(api, "persist")
    sha = api.model_info(repo).sha
    stop()
    url2, stop2 = start_hub_server(tmp_path / "root")
    try:
        api2 = HfApi(endpoint=url2, token=DEFAULT_TOKEN)
        assert api2.model_info(repo).sha == sha
        path = hf_hub_download(repo, "weights/model.safetensors", endpoint=url2, cache_dir=tmp_path / "c")
        assert open(path, "rb").read() == b"\x01\x02" * 5000
        with pytest.raises(RepositoryNotFoundError):
            api2.model_info("rsfm/never-created")
    finally:
        stop2()
