"""A Hugging Face Hub-compatible HTTP server on loopback, for tests and benchmarks.

It implements the part of the Hub HTTP API that ``huggingface_hub`` (2.x, read from its source) calls for
``create_repo``, ``create_branch``, ``upload_folder`` / ``create_commit`` (``/api/validate-yaml``,
``preupload``, the LFS batch API with the ``basic`` transfer, the NDJSON ``commit``), ``model_info`` /
``repo_info`` (siblings with blob and LFS metadata), ``list_models`` (search / tag filter / author, Link
pagination), ``list_repo_tree``, ``get_paths_info``, ``list_repo_refs``, ``list_repo_commits``,
``whoami`` and ``hf_hub_download`` / ``snapshot_download`` (``/resolve`` with ``ETag``, ``X-Repo-Commit``,
``X-Linked-Etag``, ``X-Linked-Size``, ``HEAD`` and ``Range``).

Errors use the Hub's format: a JSON body ``{"error": message}`` plus the ``X-Error-Code``
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``) and ``X-Error-Message`` headers
that ``huggingface_hub.utils.hf_raise_for_status`` turns into typed exceptions. A wrong token gets 401
"Invalid credentials in Authorization header", as on the Hub.

Not implemented (the client does not need them here): Xet storage (upload with ``HF_HUB_DISABLE_XET=1``,
see docs/HUB.md), pull requests, tags, multipart LFS uploads, datasets and spaces.

Fault injection for tests: :meth:`HubServer.corrupt` serves a file with flipped bytes (same length, so only
a checksum can tell), :meth:`HubServer.drop_connection` closes the socket part-way through a file, and
:attr:`HubServer.requests` logs every request (to prove that a cached, pinned download made no call).

State (repos, commits, branches) is kept in ``root_dir/state.json`` and file contents in
``root_dir/blobs/<sha256>``, so a server restarted on the same folder serves the same repos.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

DEFAULT_TOKEN = "hf_rsfm_loopback_write_token"  # user "rsfm-user", member of org "rsfm"
READER_TOKEN = "hf_rsfm_loopback_reader_token"  # user "reader", no organisation
DEFAULT_USERS: dict[str, tuple[str, list[str]]] = {
    DEFAULT_TOKEN: ("rsfm-user", ["rsfm"]),
    READER_TOKEN: ("reader", []),
}
# Files stored through LFS, as in the Hub's default .gitattributes (plus anything >= 10 MB or binary).
LFS_SUFFIXES = (".safetensors", ".onnx", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".npz", ".npy", ".pkl",
                ".tif", ".tiff", ".zip", ".gz", ".tar", ".msgpack", ".gguf")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
# Licence ids the Hub accepts in model-card metadata (a subset of its list; "other" + license_name for the rest).
KNOWN_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
    "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "cc0-1.0", "cc-by-2.0", "cc-by-2.5",
    "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0",
    "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "agpl-3.0", "afl-3.0",
    "artistic-2.0", "ecl-2.0", "epl-1.0", "epl-2.0", "eupl-1.1", "mpl-2.0", "odbl", "odc-by", "pddl",
    "unlicense", "wtfpl", "zlib", "isc", "ms-pl", "postgresql", "osl-3.0", "bsl-1.0", "llama2", "llama3",
    "gemma", "unknown", "other",
})
PAGE_SIZE = 100  # list endpoints page with a Link header beyond this many entries


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's own id


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def parse_front_matter(text: str) -> dict[str, Any] | None:
    """The YAML block between the leading ``---`` lines of a model card, or None if there is none.

    Raises:
        yaml.YAMLError: the block is not valid YAML.
    """
    m = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not m:
        return None
    data = yaml.safe_load(m.group(1))
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------------------
@dataclass
class FileEntry:
    sha256: str
    size: int
    lfs: bool
    blob_id: str  # git oid: of the content (regular) or of the LFS pointer


@dataclass
class Commit:
    id: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Repo:
    id: str
    private: bool = False
    gated: bool | str = False  # False, "auto" or "manual"
    approved: list[str] = field(default_factory=list)  # users granted access to a gated repo
    created_at: str = field(default_factory=_now)
    downloads: int = 0
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.id.split("/", 1)[0]


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}  # more fields of the JSON error body


class _Drop(Exception):
    """Raised after a deliberate mid-body connection drop."""


# ---------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------
class HubServer:
    """A loopback Hub. Use as a context manager or call :meth:`start` / :meth:`stop`.

    Args:
        root_dir: folder for ``state.json`` and ``blobs/`` (created; reused if it holds a previous state).
        users: ``{token: (username, [organisations])}``; defaults to :data:`DEFAULT_USERS`.
        port: TCP port on 127.0.0.1; 0 picks a free one.
        page_size: entries per page of ``/api/models`` and ``/tree`` before a ``Link: rel="next"``.
    """

    def __init__(self, root_dir: str | os.PathLike, *, users: dict[str, tuple[str, list[str]]] | None = None,
                 port: int = 0, page_size: int = PAGE_SIZE) -> None:
        self.root = Path(root_dir)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.page_size = page_size
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict[str, Any]] = []
        self._corrupt: set[tuple[str, str]] = set()
        self._drops: dict[tuple[str, str], list[int]] = {}  # (repo, path) -> [after_bytes, times_left]
        self._uploads: dict[str, tuple[str, int]] = {}  # upload id -> (sha256, size)
        self._secret = secrets.token_bytes(16)
        self._load()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.hub = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection (so pooled keep-alive sockets fail too)."""
        if self._thread is not None:  # shutdown() waits for serve_forever(), which only runs once started
            self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_all()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test switches -----------------------------------------------------------------------------------
    def corrupt(self, repo_id: str, path: str, enabled: bool = True) -> None:
        """Serve ``path`` of ``repo_id`` with flipped bytes (same length) until switched off."""
        with self.lock:
            (self._corrupt.add if enabled else self._corrupt.discard)((repo_id, path))

    def drop_connection(self, repo_id: str, path: str, after_bytes: int, times: int = 1) -> None:
        """Close the connection after ``after_bytes`` bytes of ``path`` for the next ``times`` downloads."""
        with self.lock:
            self._drops[(repo_id, path)] = [after_bytes, times]

    def set_gated(self, repo_id: str, gated: bool | str = "manual", approved: list[str] | None = None) -> None:
        with self.lock:
            repo = self.repos[repo_id]
            repo.gated = gated
            repo.approved = list(approved or [])
            self._save()

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()

    # -- persistence ---------------------------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.root / "state.json"

    def _load(self) -> None:
        p = self._state_path()
        if not p.is_file():
            return
        data = json.loads(p.read_text(encoding="utf-8"))
        for rid, r in data["repos"].items():
            commits = {cid: Commit(**{**c, "files": {k: FileEntry(**f) for k, f in c["files"].items()}})
                       for cid, c in r.pop("commits").items()}
            self.repos[rid] = Repo(**r, commits=commits)

    def _save(self) -> None:
        data = {"repos": {rid: asdict(r) for rid, r in self.repos.items()}}
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".state.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, self._state_path())

    # -- blobs -----------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256

    def store_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=self.blob_dir, prefix=".in.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return sha

    def signature(self, sha256: str) -> str:
        return hmac.new(self._secret, sha256.encode(), "sha256").hexdigest()[:32]

    # -- users and access ----------------------------------------------------------------------------------
    def namespaces(self, user: str | None) -> set[str]:
        if user is None:
            return set()
        for name, orgs in self.users.values():
            if name == user:
                return {name, *orgs}
        return set()

    def get_repo(self, repo_id: str, user: str | None) -> Repo:
        """The repo if ``user`` may see it; else the Hub's RepoNotFound (401 anonymous, 404 otherwise)."""
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and repo.namespace not in self.namespaces(user)):
            raise HttpError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def check_write(self, repo_namespace: str, user: str | None) -> None:
        if user is None:
            raise HttpError(401, "You must be authenticated to write to the Hub: pass a token")
        if repo_namespace not in self.namespaces(user):
            raise HttpError(403, f"You don't have the rights to write to the namespace {repo_namespace}")

    def check_gate(self, repo: Repo, user: str | None) -> None:
        if not repo.gated or repo.namespace in self.namespaces(user) or (user and user in repo.approved):
            return
        if user is None:
            raise HttpError(401, f"Access to model {repo.id} is restricted. You must have access to it and be "
                            "authenticated to access it. Please log in.", "GatedRepo")
        raise HttpError(403, f"Access to model {repo.id} is restricted and you are not in the authorized list. "
                        f"Visit the repo page to ask for access.", "GatedRepo")

    def resolve(self, repo: Repo, revision: str) -> Commit:
        rev = unquote(revision)
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if re.fullmatch(r"[0-9a-f]{40}", rev) and rev in repo.commits:
            return repo.commits[rev]
        raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # -- repo operations ---------------------------------------------------------------------------------
    def create_repo(self, repo_id: str, user: str | None, private: bool, base_url: str) -> Repo:
        with self.lock:
            self.check_write(repo_id.split("/")[0], user)
            if repo_id in self.repos:  # the Hub's 409 carries the url; create_repo(exist_ok=True) reads it
                raise HttpError(409, "You already created this model repo",
                                headers={"X-Error-Message": "You already created this model repo"},
                                extra={"url": f"{base_url}/{repo_id}"})
            repo = Repo(id=repo_id, private=private)
            self.repos[repo_id] = repo
            self._commit(repo, "main", None, "initial commit", "", user or "",
                         {".gitattributes": self._regular(GITATTRIBUTES.encode())})
            self._save()
            return repo

    def _regular(self, data: bytes) -> FileEntry:
        return FileEntry(sha256=self.store_bytes(data), size=len(data), lfs=False, blob_id=git_blob_sha1(data))

    def _commit(self, repo: Repo, branch: str, parent: str | None, title: str, message: str, author: str,
                files: dict[str, FileEntry]) -> Commit:
        listing = json.dumps({k: v.blob_id for k, v in sorted(files.items())})
        cid = hashlib.sha1(f"{parent}\n{listing}\n{title}\n{time.time_ns()}\n{len(repo.commits)}".encode()  # noqa: S324
                           ).hexdigest()
        commit = Commit(id=cid, parent=parent, title=title, message=message, author=author, date=_now(),
                        files=files)
        repo.commits[cid] = commit
        repo.branches[branch] = cid
        return commit

    def apply_commit(self, repo: Repo, branch: str, user: str | None, lines: list[dict]) -> Commit:
        with self.lock:
            self.check_write(repo.namespace, user)
            if branch not in repo.branches:
                raise HttpError(404, f"Invalid rev id: {branch} (commits go to a branch; create it first)",
                                "RevisionNotFound")
            head = repo.branches[branch]
            if not lines or lines[0].get("key") != "header":
                raise HttpError(400, "the first NDJSON line must be the commit header")
            header = lines[0]["value"]
            parent = header.get("parentCommit")
            if parent and parent != head:
                raise HttpError(412, f"A commit has happened since {parent}; the branch is at {head}")
            files = dict(repo.commits[head].files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = value.get("path", "")
                if key == "deletedFolder":
                    path = path.rstrip("/")  # the client sends folders as "name/"
                if key in ("file", "lfsFile", "deletedFile", "deletedFolder"):
                    _check_repo_path(path)
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HttpError(400, f"unsupported encoding {value.get('encoding')!r} for {path}")
                    files[path] = self._regular(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    sha, size = value.get("oid", ""), value.get("size")
                    blob = self.blob_path(sha)
                    if not blob.is_file():
                        raise HttpError(422, f"LFS object {sha} for {path} was never uploaded")
                    real = blob.stat().st_size
                    if size is not None and int(size) != real:
                        raise HttpError(422, f"LFS object {sha} has size {real}, commit says {size}")
                    files[path] = FileEntry(sha256=sha, size=real, lfs=True,
                                            blob_id=git_blob_sha1(lfs_pointer(sha, real)))
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                else:
                    raise HttpError(400, f"unknown commit operation {key!r}")
            commit = self._commit(repo, branch, head, header.get("summary") or "update",
                                  header.get("description") or "", user or "", files)
            self._save()
            return commit

    # -- derived metadata ---------------------------------------------------------------------------------
    def card_data(self, commit: Commit) -> dict[str, Any] | None:
        entry = commit.files.get("README.md")
        if entry is None:
            return None
        try:
            return parse_front_matter(self.blob_path(entry.sha256).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            return None

    def model_json(self, repo: Repo, commit: Commit, *, blobs: bool) -> dict[str, Any]:
        card = self.card_data(commit) or {}
        tags = [str(t) for t in (card.get("tags") or [])]
        extra = [card.get("library_name"), card.get("pipeline_tag")]
        if any(p.endswith(".safetensors") for p in commit.files):
            extra.append("safetensors")
        if card.get("license"):
            extra.append(f"license:{card['license']}")
        for t in extra:
            if t and str(t) not in tags:
                tags.append(str(t))
        siblings = []
        for path, f in sorted(commit.files.items()):
            s: dict[str, Any] = {"rfilename": path}
            if blobs:
                s.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    s["lfs"] = {"size": f.size, "sha256": f.sha256,
                                "pointerSize": len(lfs_pointer(f.sha256, f.size))}
            siblings.append(s)
        out: dict[str, Any] = {
            "_id": hashlib.md5(repo.id.encode()).hexdigest()[:24],  # noqa: S324 - an id, not security
            "id": repo.id, "modelId": repo.id, "author": repo.namespace, "sha": commit.id,
            "lastModified": commit.date, "createdAt": repo.created_at, "private": repo.private,
            "gated": repo.gated, "disabled": False, "downloads": repo.downloads, "likes": 0,
            "tags": tags, "library_name": card.get("library_name"), "pipeline_tag": card.get("pipeline_tag"),
            "siblings": siblings, "spaces": [],
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if card:
            out["cardData"] = card
        return out


def _check_repo_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise HttpError(400, f"invalid path in repo: {path!r}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: HubServer

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self._open_lock:
            socks, self._open = list(self._open), set()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


# ---------------------------------------------------------------------------------------------------------
# HTTP handler
# ---------------------------------------------------------------------------------------------------------
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, re.Pattern, str]] = [(m, re.compile("^" + p + "$"), h) for m, p, h in [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/repos/delete", "delete_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/models", "list_models"),
    ("GET", rf"/api/models/{_REPO}", "model_info"),
    ("GET", rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)", "model_info"),
    ("PUT", rf"/api/models/{_REPO}/settings", "settings"),
    ("GET", rf"/api/models/{_REPO}/refs", "refs"),
    ("GET", rf"/api/models/{_REPO}/commits/(?P<rev>[^/]+)", "commits"),
    ("POST", rf"/api/models/{_REPO}/branch/(?P<rev>[^/]+)", "create_branch"),
    ("DELETE", rf"/api/models/{_REPO}/branch/(?P<rev>[^/]+)", "delete_branch"),
    ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?", "tree"),
    ("POST", rf"/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/_lfs/upload/(?P<upload>[0-9a-f]+)", "lfs_upload"),
    ("POST", r"/_lfs/verify/(?P<upload>[0-9a-f]+)", "lfs_verify"),
    ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rsfm-loopback-hub/1"
    timeout = 30  # idle keep-alive connections end after this many seconds
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean; HubServer.requests is the log

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        self._status = 0
        self._body_read = False
        entry = {"method": self.command, "path": unquote(url.path), "query": url.query,
                 "range": self.headers.get("Range"), "auth": "Authorization" in self.headers}
        try:
            try:
                for method, rx, name in _ROUTES:
                    m = rx.match(url.path)
                    if m and method == self.command:
                        self.user = self._auth()
                        getattr(self, "h_" + name)(**{k: v for k, v in m.groupdict().items()})
                        break
                else:
                    raise HttpError(404, f"no such endpoint on this test hub: {self.command} {url.path}")
            except HttpError as exc:
                self._discard_body()
                self._send_error(exc)
        except _Drop:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            entry["status"] = self._status
            with self.hub.lock:
                self.hub.requests.append(entry)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch  # noqa: N815

    # -- plumbing ----------------------------------------------------------------------------------------
    def _auth(self) -> str | None:
        header = self.headers.get("Authorization")
        if not header:
            return None
        token = header.split(" ", 1)[1].strip() if " " in header else header
        if token not in self.hub.users:
            raise HttpError(401, "Invalid credentials in Authorization header",
                            headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        return self.hub.users[token][0]

    def _body_chunks(self) -> Iterator[bytes]:
        self._body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def _body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body() or b"null")
        except json.JSONDecodeError as exc:
            raise HttpError(400, f"request body is not JSON: {exc}") from None

    def _discard_body(self) -> None:
        if not getattr(self, "_body_read", False) and self.command in ("POST", "PUT"):
            try:
                for _ in self._body_chunks():
                    pass
            except (OSError, ValueError):
                self.close_connection = True

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _send_error(self, exc: HttpError) -> None:
        headers = dict(exc.headers)
        if exc.code:
            headers["X-Error-Code"] = exc.code
            headers.setdefault("X-Error-Message", exc.message)
        self._json({"error": exc.message, **exc.extra}, exc.status, headers)

    def _base(self) -> str:
        return f"http://{self.headers.get('Host') or '127.0.0.1'}"

    def _paged(self, items: list[Any]) -> None:
        start = int(self.query.get("cursor", ["0"])[0] or 0)
        limit = self.query.get("limit", [None])[0]
        size = min(int(limit), 1000) if limit else self.hub.page_size  # the client stops after `limit` itself
        page = items[start:start + size]
        headers = {}
        if start + size < len(items):
            q = {k: v for k, v in self.query.items() if k != "cursor"}
            qs = "&".join(f"{quote(k)}={quote(x)}" for k, vs in q.items() for x in vs)
            nxt = f"{self._base()}{urlsplit(self.path).path}?{qs}{'&' if qs else ''}cursor={start + size}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers=headers)

    def _repo(self, repo: str) -> Repo:
        return self.hub.get_repo(unquote(repo), self.user)

    # -- endpoints -----------------------------------------------------------------------------------------
    def h_whoami(self) -> None:
        if self.user is None:
            raise HttpError(401, "Invalid username or password.")
        orgs = sorted(self.hub.namespaces(self.user) - {self.user})
        self._json({"type": "user", "name": self.user, "orgs": [{"name": o} for o in orgs],
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def h_create_repo(self) -> None:
        body = self._json_body() or {}
        if body.get("type", "model") not in (None, "model"):
            raise HttpError(400, "this test hub only hosts model repos")
        name, org = body.get("name"), body.get("organization") or self.user
        if not name or not re.fullmatch(r"[\w.-]{1,96}", name) or not org:
            raise HttpError(400, f"invalid repo name {name!r}")
        private = body.get("visibility") == "private" if "visibility" in body else bool(body.get("private"))
        repo = self.hub.create_repo(f"{org}/{name}", self.user, private, self._base())
        self._json({"url": f"{self._base()}/{repo.id}", "name": repo.id, "id": repo.id})

    def h_delete_repo(self) -> None:
        body = self._json_body() or {}
        rid = f"{body.get('organization') or self.user}/{body.get('name')}"
        with self.hub.lock:
            self.hub.check_write(rid.split("/")[0], self.user)
            if rid not in self.hub.repos:
                raise HttpError(404, "Repository not found", "RepoNotFound")
            del self.hub.repos[rid]
            self.hub._save()
        self._json({})

    def h_validate_yaml(self) -> None:
        body = self._json_body() or {}
        errors = []
        try:
            meta = parse_front_matter(body.get("content") or "") or {}
        except yaml.YAMLError as exc:
            meta, errors = {}, [{"message": f"YAML front matter is invalid: {exc}"}]
        lic = meta.get("license")
        if lic is not None and (not isinstance(lic, str) or lic not in KNOWN_LICENSES):
            errors.append({"message": f'"license" must be one of the Hub licence ids or "other", got {lic!r}'})
        if "tags" in meta and not (isinstance(meta["tags"], list) and all(isinstance(t, str) for t in meta["tags"])):
            errors.append({"message": '"tags" must be a list of strings'})
        if errors:
            self._json({"errors": errors}, 400)
        else:
            self._json({"warnings": []})

    def h_list_models(self) -> None:
        q = self.query
        search = (q.get("search", [""])[0] or "").lower()
        author = q.get("author", [None])[0]
        filters = [f for v in q.get("filter", []) for f in v.split(",") if f]
        out = []
        with self.hub.lock:
            for repo in self.hub.repos.values():
                if repo.private and repo.namespace not in self.hub.namespaces(self.user):
                    continue
                info = self.hub.model_json(repo, repo.commits[repo.branches["main"]], blobs=False)
                if search and search not in repo.id.lower():
                    continue
                if author and repo.namespace != author:
                    continue
                if any(f not in info["tags"] and f != info["library_name"] for f in filters):
                    continue
                if not q.get("cardData") and not q.get("full"):
                    info.pop("cardData", None)
                out.append(info)
        sort = q.get("sort", [None])[0]
        if sort in ("downloads", "lastModified", "createdAt", "likes"):
            out.sort(key=lambda d: d.get(sort) or 0, reverse=True)
        self._paged(out)

    def h_model_info(self, repo: str, rev: str | None = None) -> None:
        with self.hub.lock:
            r = self._repo(repo)
            commit = self.hub.resolve(r, rev or "main")
            data = self.hub.model_json(r, commit, blobs=bool(self.query.get("blobs")))
        self._json(data)

    def h_settings(self, repo: str) -> None:
        body = self._json_body() or {}
        with self.hub.lock:
            r = self._repo(repo)
            self.hub.check_write(r.namespace, self.user)
            if "private" in body:
                r.private = bool(body["private"])
            if "gated" in body:
                r.gated = body["gated"]
            self.hub._save()
        self._json({})

    def h_refs(self, repo: str) -> None:
        with self.hub.lock:
            r = self._repo(repo)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in r.branches.items()]
        self._json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def h_commits(self, repo: str, rev: str) -> None:
        with self.hub.lock:
            r = self._repo(repo)
            c: Commit | None = self.hub.resolve(r, rev)
            out = []
            while c is not None:
                out.append({"id": c.id, "title": c.title, "message": c.message, "date": c.date,
                            "authors": [{"user": c.author}]})
                c = r.commits.get(c.parent) if c.parent else None
        self._paged(out)

    def h_create_branch(self, repo: str, rev: str) -> None:
        body = self._json_body() or {}
        with self.hub.lock:
            r = self._repo(repo)
            self.hub.check_write(r.namespace, self.user)
            branch = unquote(rev)
            if branch in r.branches:
                raise HttpError(409, f"Reference {branch} already exists")
            start = self.hub.resolve(r, body.get("startingPoint") or "main")
            r.branches[branch] = start.id
            self.hub._save()
        self._json({})

    def h_delete_branch(self, repo: str, rev: str) -> None:
        with self.hub.lock:
            r = self._repo(repo)
            self.hub.check_write(r.namespace, self.user)
            if r.branches.pop(unquote(rev), None) is None:
                raise HttpError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
            self.hub._save()
        self._json({})

    def _entry_json(self, path: str, f: FileEntry) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": path}
        if f.lfs:
            d["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f.sha256, f.size))}
        return d

    def h_tree(self, repo: str, rev: str, path: str | None = None) -> None:
        recursive = (self.query.get("recursive", ["false"])[0] or "").lower() in ("1", "true")
        base = unquote(path or "").strip("/")
        with self.hub.lock:
            r = self._repo(repo)
            commit = self.hub.resolve(r, rev)
            prefix = base + "/" if base else ""
            entries: dict[str, dict[str, Any]] = {}
            for p, f in sorted(commit.files.items()):
                if not p.startswith(prefix):
                    continue
                rest = p[len(prefix):].split("/")
                for i in range(1, len(rest)):  # the folders on the way
                    d = prefix + "/".join(rest[:i])
                    if (recursive or i == 1) and d not in entries:
                        entries[d] = {"type": "directory", "oid": git_blob_sha1(d.encode()), "size": 0, "path": d}
                if recursive or len(rest) == 1:
                    entries[p] = self._entry_json(p, f)
            if base and not entries:
                raise HttpError(404, f"{base} does not exist at {rev}", "EntryNotFound",
                                {"X-Repo-Commit": commit.id})
        self._paged(list(entries.values()))

    def h_paths_info(self, repo: str, rev: str) -> None:
        raw = self._body().decode()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = (json.loads(raw or "{}")).get("paths", [])
        else:
            paths = parse_qs(raw).get("paths", [])
        with self.hub.lock:
            r = self._repo(repo)
            commit = self.hub.resolve(r, rev)
            out = []
            for p in paths:
                p = p.strip("/")
                if p in commit.files:
                    out.append(self._entry_json(p, commit.files[p]))
                elif any(k.startswith(p + "/") for k in commit.files):
                    out.append({"type": "directory", "oid": git_blob_sha1(p.encode()), "size": 0, "path": p})
        self._json(out)

    def h_preupload(self, repo: str, rev: str) -> None:
        body = self._json_body() or {}
        with self.hub.lock:
            r = self._repo(repo)
            self.hub.check_write(r.namespace, self.user)
            commit = self.hub.resolve(r, rev)
            files = []
            for f in body.get("files", []):
                path, size = f["path"], int(f.get("size") or 0)
                sample = base64.b64decode(f.get("sample") or "")
                lfs = path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample
                remote = commit.files.get(path)
                oid = None
                if remote is not None:  # the client skips a file whose local oid equals this one
                    oid = remote.sha256 if lfs else git_blob_sha1(self.hub.blob_path(remote.sha256).read_bytes())
                files.append({"path": path, "uploadMode": "lfs" if lfs else "regular",
                              "shouldIgnore": False, "oid": oid})
        self._json({"files": files, "commitOid": commit.id})

    def h_commit(self, repo: str, rev: str) -> None:
        if self.query.get("create_pr"):
            self._discard_body()
            raise HttpError(400, "pull requests are not supported by this test hub")
        raw = self._body()
        try:
            lines = [json.loads(x) for x in raw.splitlines() if x.strip()]
        except json.JSONDecodeError as exc:
            raise HttpError(400, f"commit payload is not NDJSON: {exc}") from None
        r = self._repo(repo)
        commit = self.hub.apply_commit(r, unquote(rev), self.user, lines)
        self._json({"success": True, "commitOid": commit.id, "commitUrl": f"{self._base()}/{r.id}/commit/{commit.id}",
                    "commitMessage": commit.title, "hookOutput": "", "pullRequestUrl": None})

    def h_lfs_batch(self, repo: str) -> None:
        body = self._json_body() or {}
        r = self._repo(repo)
        self.hub.check_write(r.namespace, self.user)
        if body.get("operation") != "upload":
            raise HttpError(400, "this test hub's LFS batch API handles uploads only; download with /resolve")
        if "basic" not in (body.get("transfers") or ["basic"]):
            raise HttpError(400, "this test hub supports the 'basic' LFS transfer only")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not self.hub.blob_path(oid).is_file():
                upload_id = secrets.token_hex(16)
                with self.hub.lock:
                    self.hub._uploads[upload_id] = (oid, size)
                item["actions"] = {
                    "upload": {"href": f"{self._base()}/_lfs/upload/{upload_id}", "expires_in": 3600},
                    "verify": {"href": f"{self._base()}/_lfs/verify/{upload_id}", "header": {}},
                }
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def h_lfs_upload(self, upload: str) -> None:
        with self.hub.lock:
            target = self.hub._uploads.get(upload)
        if target is None:
            raise HttpError(403, "unknown or expired upload URL")
        oid, size = target
        h, n = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.hub.blob_dir, prefix=".up.")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self._body_chunks():
                    h.update(chunk)
                    n += len(chunk)
                    f.write(chunk)
            if h.hexdigest() != oid or n != size:
                raise HttpError(400, f"uploaded content has sha256 {h.hexdigest()} and {n} bytes; "
                                f"the batch request announced {oid} and {size}")
            os.replace(tmp, self.hub.blob_path(oid))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._send(200, b"", content_type="text/plain")

    def h_lfs_verify(self, upload: str) -> None:
        body = self._json_body() or {}
        with self.hub.lock:
            target = self.hub._uploads.pop(upload, None)
        blob = self.hub.blob_path(body.get("oid", ""))
        if target is None or target[0] != body.get("oid") or not blob.is_file() or blob.stat().st_size != body.get("size"):
            raise HttpError(422, f"LFS object {body.get('oid')} is not stored (or has another size)")
        self._json({})

    def h_resolve(self, repo: str, rev: str, path: str) -> None:
        filename = unquote(path)
        with self.hub.lock:
            r = self._repo(repo)
            commit = self.hub.resolve(r, rev)
            entry = commit.files.get(filename)
            if entry is None:
                raise HttpError(404, f"Entry not found: {filename}", "EntryNotFound",
                                {"X-Repo-Commit": commit.id})
            self.hub.check_gate(r, self.user)
            if self.command == "GET" and filename == "config.json":
                r.downloads += 1
            corrupt = (r.id, filename) in self.hub._corrupt
            drop = self.hub._drops.get((r.id, filename)) if self.command == "GET" else None
            drop_after = None
            if drop and drop[1] > 0:
                drop_after = drop[0]
                drop[1] -= 1
        etag = entry.sha256 if entry.lfs else entry.blob_id
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": commit.id, "Accept-Ranges": "bytes",
                   "Content-Disposition": f'inline; filename="{filename.rsplit("/", 1)[-1]}"'}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        self._serve_blob(entry, headers, corrupt=corrupt, drop_after=drop_after)

    def _serve_blob(self, entry: FileEntry, headers: dict[str, str], *, corrupt: bool,
                    drop_after: int | None) -> None:
        size = entry.size
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        status = 200
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise HttpError(416, f"unsupported Range {rng!r}", headers={"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                raise HttpError(416, f"Range {rng!r} is outside the file ({size} bytes)",
                                headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        with open(self.hub.blob_path(entry.sha256), "rb") as f:
            f.seek(start)
            pos = start
            while pos <= end:
                chunk = f.read(min(1 << 16, end - pos + 1))
                if not chunk:
                    break
                if corrupt:  # flip every 97th byte of the file: same length, different content
                    b = bytearray(chunk)
                    for i in range((-pos) % 97, len(b), 97):
                        b[i] ^= 0xFF
                    chunk = bytes(b)
                if drop_after is not None and pos + len(chunk) > drop_after:
                    self.wfile.write(chunk[: max(0, drop_after - pos)])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    raise _Drop()
                self.wfile.write(chunk)
                pos += len(chunk)


def start_hub_server(root_dir: str | os.PathLike, **kwargs: Any) -> tuple[str, Callable[[], None]]:
    """Start a loopback Hub on 127.0.0.1 serving (and storing into) ``root_dir``.

    Returns:
        ``(url, stop)``: the endpoint to put in ``HF_ENDPOINT`` and a function that stops the server.
        Keyword arguments go to :class:`HubServer` (``users``, ``port``, ``page_size``); use
        :class:`HubServer` directly for the fault-injection switches.
    """
    hub = HubServer(root_dir, **kwargs).start()
    return hub.url, hub.stop
