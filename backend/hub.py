"""Model packages from a Hugging Face Hub (or a private Hub mirror): fetch, pin, verify, list.

Everything goes through the ``huggingface_hub`` client and its standard cache (``HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``), so packages fetched here are shared with every other HF tool on the machine.

* :func:`fetch_model` — one package at a revision, as a local folder. A commit id already in the cache
  makes no network call; with ``HF_HUB_OFFLINE=1`` (read once per call) or ``local_files_only=True`` only
  the cache is used. Every file is checked against the hash the Hub reported for it (the LFS sha256, or
  the git blob id of small files); a file that does not match is deleted and :class:`HubIntegrityError`
  raised, so the next call downloads it again. LFS files (weights) are downloaded to
  ``blobs/<sha256>.incomplete`` first, so an interrupted or cancelled download resumes with an HTTP
  ``Range`` request instead of starting over.
* :func:`list_rsfm_models` — the RSFM packages on an endpoint (repos tagged ``rsfm``).
* :func:`list_cached_models` — the RSFM packages already in the cache (works offline).
* :func:`verify_snapshot` — re-hash a cached snapshot against the hashes in its blob names.
* :func:`parse_model_ref` — ``hf://ORG/NAME@REV`` -> :class:`ModelRef`.

Endpoint, token and proxies come from the usual places: the ``endpoint`` / ``token`` arguments, else
``HF_ENDPOINT`` and ``HF_TOKEN`` (or a ``huggingface-cli login``), and ``HTTPS_PROXY`` / ``NO_PROXY`` (read
by the HTTP client). Tokens are never logged or put into error messages.

Raises (all subclasses of :class:`backend.errors.RsfmError`, so the server maps them to JSON errors):
:class:`HubReferenceError`, :class:`HubRepoNotFoundError`, :class:`HubRevisionNotFoundError`,
:class:`HubGatedRepoError`, :class:`HubAuthError`, :class:`HubUnreachableError`, :class:`HubOfflineError`,
:class:`HubIntegrityError`, :class:`HubDownloadCancelled`, :class:`HubError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get, repo_folder_name
from huggingface_hub.utils import WeakFileLock, build_hf_headers

from backend import __version__
from backend.errors import (  # the Hub errors live with every other error; re-exported here for callers
    BadRequestError,
    HubAuthError,
    HubDownloadCancelled,
    HubError,
    HubGatedRepoError,
    HubIntegrityError,
    HubOfflineError,
    HubReferenceError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubUnreachableError,
    JobCancelled,
    RsfmError,
)

log = logging.getLogger(__name__)

HUB_PREFIX = "hf://"
RSFM_TAG = "rsfm"
LIBRARY_NAME = "rsfm"
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_PART_RE = re.compile(r"^[A-Za-z0-9](?:[\w.-]{0,94}[\w])?$")
ProgressFn = Callable[[float, str], None]


# --------------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """A package on the Hub: ``repo_id`` ("ORG/NAME") and an optional ``revision`` (branch or commit)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    @property
    def pinned(self) -> bool:
        """True when the revision is a full commit id (immutable; cache hits need no network)."""
        return self.revision is not None and bool(_COMMIT_RE.match(self.revision))


def _check_repo_id(repo_id: str, original: str) -> str:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART_RE.match(p) for p in parts) or ".." in repo_id or "--" in repo_id:
        raise HubReferenceError(
            f"{original!r} is not a Hub model id; use ORG/NAME (letters, digits, '-', '_', '.'), "
            f"e.g. hf://my-org/rsfm-landcover@main")
    return repo_id


def parse_model_ref(ref: str) -> ModelRef:
    """Parse ``hf://ORG/NAME@REV`` (``hf://`` and ``@REV`` optional) into a :class:`ModelRef`.

    Raises:
        HubReferenceError: malformed id or empty revision.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise HubReferenceError("empty model reference; use hf://ORG/NAME@REVISION")
    rest = ref.strip()
    if rest.startswith(HUB_PREFIX):
        rest = rest[len(HUB_PREFIX):]
    repo_id, sep, revision = rest.partition("@")
    if sep and (not revision or any(c.isspace() for c in revision) or ".." in revision):
        raise HubReferenceError(f"{ref!r} has an empty or invalid revision after '@'; give a branch or a "
                                "40-character commit id, or drop the '@'")
    return ModelRef(_check_repo_id(repo_id, ref), revision or None)


# --------------------------------------------------------------------------------------------------------
# Settings read per call
# --------------------------------------------------------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, or as huggingface_hub read it at import."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or constants.HF_HUB_OFFLINE


def default_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def default_cache_dir() -> Path:
    """``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default (read now, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _storage_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")


# --------------------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------------------
def _map_error(exc: BaseException, ref: ModelRef, endpoint: str) -> RsfmError:
    """Turn a huggingface_hub / httpx error into one of ours, with a message that says what to do."""
    name = str(ref)
    if isinstance(exc, RsfmError):
        return exc
    if isinstance(exc, GatedRepoError):  # before RepositoryNotFoundError: it is a subclass
        return HubGatedRepoError(
            f"{ref.repo_id} on {endpoint} is gated: open its page, request access, then use a token of the "
            "account that was granted access (HF_TOKEN or the token setting)")
    if isinstance(exc, RepositoryNotFoundError):
        return HubRepoNotFoundError(
            f"no model repo {ref.repo_id} on {endpoint}, or it is private and the token cannot see it: check "
            "the id (ORG/NAME) and HF_ENDPOINT, and for a private repo set HF_TOKEN to a token with read access")
    if isinstance(exc, RevisionNotFoundError):
        return HubRevisionNotFoundError(
            f"{ref.repo_id} on {endpoint} has no revision {ref.revision!r}: use an existing branch (e.g. main) "
            f"or a full commit id, as listed on the repo's page")
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubError(f"{name}: a file listed by the Hub is missing on {endpoint} ({exc.server_message or exc}); "
                        "the repo may be being updated, try again or pin another revision")
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        return HubOfflineError(
            f"{name} is not (completely) in the local cache and offline mode is on: unset HF_HUB_OFFLINE and "
            "connect once to download it, or copy the package folder and use it with --models-dir")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status == 401:
            return HubAuthError(
                f"{endpoint} rejected the Hub token (invalid or expired): create a new access token on the Hub "
                "and set HF_TOKEN (or the token setting); unset it for public models")
        if status == 403:
            return HubAuthError(f"{endpoint} refused access to {ref.repo_id} with this token: use a token with "
                                "read (or, to publish, write) permission on that repo")
        return HubError(f"{endpoint} answered {status} for {name}: {exc.server_message or exc}; try again later")
    if isinstance(exc, httpx2.ProxyError):
        return HubUnreachableError(f"the proxy refused the connection to {endpoint} ({exc}): check HTTPS_PROXY / "
                                   "NO_PROXY, or work offline with HF_HUB_OFFLINE=1 and a cached package")
    if isinstance(exc, (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError, ConnectionError)):
        return HubUnreachableError(
            f"cannot reach the Hub at {endpoint} ({type(exc).__name__}): check the network, HF_ENDPOINT and any "
            "proxy (HTTPS_PROXY), or work offline (HF_HUB_OFFLINE=1) with packages already in the cache")
    return HubError(f"{name}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------------------
# Progress and cancellation
# --------------------------------------------------------------------------------------------------------
class _Progress:
    """Counts downloaded bytes, reports a fraction, and raises when ``cancel`` is set."""

    def __init__(self, total_bytes: int, label: str, progress: ProgressFn | None,
                 cancel: threading.Event | None) -> None:
        self.total = max(1, total_bytes)
        self.done = 0
        self.label = label
        self.progress = progress
        self.cancel = cancel
        self.lock = threading.Lock()
        self._last = 0.0

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise HubDownloadCancelled(f"download of {self.label} cancelled; the next fetch resumes it")

    def add(self, n: float) -> None:
        with self.lock:
            self.done += int(n or 0)
            frac = min(1.0, self.done / self.total)
            # report every whole percent (and the end): often enough for a progress bar, cheap for the caller
            due = self.progress is not None and (frac - self._last >= 0.01 or (frac >= 1.0 > self._last))
            if due:
                self._last = frac
        if due:
            self.progress(frac, f"downloading {self.label}: {self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB")
        self.check()

    def bar_class(self, count: Callable[[dict], bool]) -> type:
        """A minimal tqdm stand-in for huggingface_hub's ``tqdm_class`` hooks; ``count(kwargs)`` picks bars."""
        tracker = self

        class _Bar:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.counts = count(kwargs)
                self.n = 0
                self.total = kwargs.get("total")
                self.format_dict: dict[str, Any] = {"rate": None}
                initial = kwargs.get("initial") or 0
                if initial:
                    self.update(initial)
                tracker.check()

            def update(self, n: float | None = 1) -> None:
                self.n += n or 0
                if self.counts:
                    tracker.add(n or 0)
                else:
                    tracker.check()

            def update_transfer(self, n: float | None = 1) -> None:
                tracker.check()

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def close(self) -> None:
                pass

            def refresh(self, *a: Any, **k: Any) -> None:
                pass

            def set_postfix_str(self, *a: Any, **k: Any) -> None:
                pass

            def set_description(self, *a: Any, **k: Any) -> None:
                pass

            set_description_str = set_description

        return _Bar


# --------------------------------------------------------------------------------------------------------
# Hashing and verification
# --------------------------------------------------------------------------------------------------------
def _file_hash(path: Path, kind: str) -> str:
    """``sha256`` of the content, or git's blob id (``sha1("blob <size>\\0" + content)``)."""
    if kind == "sha256":
        h = hashlib.sha256()
    else:
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected_kind(etag: str) -> str | None:
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        return "sha256"
    if re.fullmatch(r"[0-9a-f]{40}", etag):
        return "git-sha1"
    return None


_VERIFIED: dict[tuple[str, int, int], frozenset[str]] = {}  # (blob, size, mtime_ns) -> hashes it matched
_VERIFIED_LOCK = threading.Lock()


def verify_snapshot(snapshot: str | os.PathLike, expected: dict[str, str] | None = None, *,
                    rehash: bool = False) -> list[str]:
    """Re-hash every file of a cached snapshot against the hash the Hub reported for it.

    In the HF cache each snapshot file links to ``blobs/<etag>``, where the etag is the LFS sha256 (weights)
    or the git blob id (small files) the Hub sent when it was downloaded; ``expected`` (``{path: hash}``,
    from :meth:`HfApi.model_info`) adds a cross-check with the Hub's listing. Works offline; a blob already
    checked by this process (same size and mtime) is not hashed again unless ``rehash``. A file that does not match is
    deleted (link and blob) so that the next fetch downloads it again.

    Returns:
        The relative paths that were checked.

    Raises:
        HubIntegrityError: a file does not match; the message names it and both hashes.
    """
    root = Path(snapshot)
    checked = []
    for link in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = link.relative_to(root).as_posix()
        blob = link.resolve()
        wants = set()
        if blob != link and _expected_kind(blob.name):
            wants.add(blob.name)
        if expected and expected.get(rel) and _expected_kind(expected[rel]):
            wants.add(expected[rel])
        if not wants:  # a copied file (no symlinks) and no listing: nothing to compare with
            continue
        st = blob.stat()
        key = (str(blob), st.st_size, st.st_mtime_ns)
        with _VERIFIED_LOCK:
            done = frozenset() if rehash else _VERIFIED.get(key, frozenset())
        for want in sorted(wants - done):
            kind = _expected_kind(want)
            got = _file_hash(blob, kind)
            if got != want:
                for p in (link, blob):
                    p.unlink(missing_ok=True)
                raise HubIntegrityError(
                    f"{rel} in {root} is corrupted: its {kind} is {got} but the Hub reported {want}; the file "
                    "was deleted, fetch the model again to re-download it")
        with _VERIFIED_LOCK:
            _VERIFIED[key] = frozenset(wants | done)
        checked.append(rel)
    return checked


# --------------------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------------------
def _write_ref(storage: Path, revision: str, commit: str) -> None:
    """Record ``refs/<revision>`` -> commit (the HF cache layout), so offline lookups by branch work."""
    if revision == commit:
        return
    ref = storage / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if ref.is_file() and ref.read_text().strip() == commit:
        return
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)


def cached_snapshot(repo_id: str, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (branch or commit), without any network
    call and without verifying it; None if it is not (completely) cached."""
    ref = parse_model_ref(repo_id)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _cached_snapshot(ref, revision or ref.revision or constants.DEFAULT_REVISION, cache)


def _cached_snapshot(ref: ModelRef, revision: str, cache_dir: Path) -> Path | None:
    """The complete cached snapshot for ``revision`` without any network call, or None."""
    try:
        path = snapshot_download(ref.repo_id, revision=revision, cache_dir=str(cache_dir),
                                 local_files_only=True)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        return None
    p = Path(path)
    return p if (p / "config.json").is_file() else None


def _download_lfs_blob(*, ref: ModelRef, commit: str, filename: str, sha256: str, size: int, storage: Path,
                       cache_dir: Path, endpoint: str, token: str | bool | None, tracker: _Progress) -> None:
    """Download one LFS file into ``blobs/<sha256>``, resuming ``blobs/<sha256>.incomplete`` if present.

    The sha256 is checked before the file gets its final name; on mismatch the partial file is removed.
    """
    blob = storage / "blobs" / sha256
    if blob.is_file():
        tracker.add(size)
        return
    blob.parent.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(sha256 + ".incomplete")
    lock = cache_dir / ".locks" / storage.name / f"{sha256}.lock"  # the same lock hf_hub_download takes
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(str(lock)):
        if blob.is_file():
            tracker.add(size)
            return
        resume = partial.stat().st_size if partial.is_file() else 0
        if resume > size:  # not ours or from another version: start over
            partial.unlink()
            resume = 0
        if resume:
            log.info("resuming %s of %s at byte %d", filename, ref, resume)
            tracker.add(resume)
        url = hf_hub_url(ref.repo_id, filename, revision=commit, endpoint=endpoint)
        headers = build_hf_headers(token=token, library_name=LIBRARY_NAME, library_version=__version__)
        with open(partial, "ab") as f:
            http_get(url, f, resume_size=resume, headers=headers, expected_size=size, displayed_filename=filename,
                     tqdm_class=tracker.bar_class(lambda kw: True))  # type: ignore[arg-type]
        got = _file_hash(partial, "sha256")
        if got != sha256:
            partial.unlink()
            raise HubIntegrityError(
                f"{filename} of {ref} downloaded from {endpoint} is corrupted: sha256 {got}, the Hub reported "
                f"{sha256}; the download was deleted, try again (if it keeps failing, the mirror's copy is bad)")
        os.replace(partial, blob)
        st = blob.stat()
        with _VERIFIED_LOCK:  # just hashed: verify_snapshot need not read it again
            _VERIFIED[(str(blob.resolve()), st.st_size, st.st_mtime_ns)] = frozenset({sha256})


def fetch_model(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                local_files_only: bool | None = None, token: str | bool | None = None,
                endpoint: str | None = None, progress: ProgressFn | None = None,
                cancel: threading.Event | None = None) -> Path:
    """Download (or find in the cache) a model package and return its local folder.

    Args:
        repo_id: ``ORG/NAME``, or a full reference ``hf://ORG/NAME@REV``.
        revision: branch or 40-character commit id (overrides one in ``repo_id``); default ``main``.
        cache_dir: HF cache folder; default ``HF_HUB_CACHE`` / ``HF_HOME/hub`` / ``~/.cache/huggingface/hub``.
        local_files_only: only use the cache; None reads ``HF_HUB_OFFLINE`` (once, here).
        token: Hub token; None uses ``HF_TOKEN`` or the saved login, False sends none.
        endpoint: Hub URL; default ``HF_ENDPOINT`` or https://huggingface.co.
        progress: called as ``progress(fraction_0_to_1, message)`` while downloading (may raise to abort).
        cancel: when set, the download stops at the next chunk with :class:`HubDownloadCancelled`.

    Returns:
        The snapshot folder (``.../snapshots/<commit>``), holding ``config.json``, weights and the card.

    Raises:
        HubReferenceError, HubRepoNotFoundError, HubRevisionNotFoundError, HubGatedRepoError, HubAuthError,
        HubUnreachableError, HubOfflineError, HubIntegrityError, HubDownloadCancelled, HubError.
    """
    ref = parse_model_ref(repo_id)
    if revision:
        ref = parse_model_ref(f"{ref.repo_id}@{revision}")  # same checks as an id (no '..', no spaces)
    rev = ref.revision or constants.DEFAULT_REVISION
    ref = ModelRef(ref.repo_id, rev)
    offline = offline_mode() if local_files_only is None else bool(local_files_only)  # read once
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    tracker = _Progress(0, str(ref), progress, cancel)
    tracker.check()

    # 1. Cache first: offline, or a pinned commit (immutable, so a cache hit needs no network at all).
    if offline or ref.pinned:
        try:
            cached = _cached_snapshot(ref, rev, cache)
        except Exception as exc:  # noqa: BLE001 - e.g. IncompleteSnapshotError: an incomplete cached copy
            if offline:
                raise _map_error(exc, ref, endpoint) from None
            cached = None
        if cached is not None:
            try:
                verify_snapshot(cached)
            except HubIntegrityError as exc:
                if offline:
                    raise
                log.warning("%s; downloading it again", exc.message)  # the bad file is gone: heal below
            else:
                if progress is not None:
                    progress(1.0, f"{ref} found in the cache")
                return cached
        if offline:
            raise HubOfflineError(
                f"{ref} is not in the cache at {cache} and offline mode is on: unset HF_HUB_OFFLINE (or pass "
                "local_files_only=False) and connect once to download it")

    # 2. Ask the Hub which commit the revision is and what each file's hash is.
    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=__version__)
    try:
        info = api.model_info(ref.repo_id, revision=rev, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - every failure is mapped to a typed error
        mapped = _map_error(exc, ref, endpoint)
        if isinstance(mapped, (HubUnreachableError, HubOfflineError)):
            cached = _cached_snapshot(ref, rev, cache)  # Hub down: a cached copy of the branch still works
            if cached is not None:
                log.warning("%s; using the cached copy of %s", mapped.message, ref)
                verify_snapshot(cached)
                return cached
        raise mapped from None
    commit = info.sha
    if not commit or not info.siblings:
        raise HubError(f"{endpoint} returned no commit or no files for {ref}; is it a Hub-compatible endpoint?")
    storage = _storage_folder(cache, ref.repo_id)
    expected = {s.rfilename: (s.lfs.sha256 if s.lfs else s.blob_id) for s in info.siblings}
    pending = [s for s in info.siblings
               if not (storage / "snapshots" / commit / s.rfilename).exists()]
    tracker.total = max(1, sum((s.lfs.size if s.lfs else (s.size or 0)) for s in pending))

    # 3. Weights (LFS files) with resume; then the rest, links and tree listing through snapshot_download.
    try:
        for s in pending:
            if s.lfs is not None:
                _download_lfs_blob(ref=ref, commit=commit, filename=s.rfilename, sha256=s.lfs.sha256,
                                   size=s.lfs.size, storage=storage, cache_dir=cache, endpoint=endpoint,
                                   token=token, tracker=tracker)
        path = snapshot_download(
            ref.repo_id, revision=commit, cache_dir=str(cache), endpoint=endpoint, token=token,
            library_name=LIBRARY_NAME, library_version=__version__, max_workers=4,
            tqdm_class=tracker.bar_class(lambda kw: str(kw.get("desc", "")).startswith("Reconstructing")))
    except (HubDownloadCancelled, HubIntegrityError, JobCancelled):
        raise
    except Exception as exc:  # noqa: BLE001
        raise _map_error(exc, ref, endpoint) from None
    _write_ref(storage, rev, commit)
    verify_snapshot(path, {k: v for k, v in expected.items() if v})
    if progress is not None:
        progress(1.0, f"{ref} ready ({commit[:12]})")
    return Path(path)


def model_uri(repo_id: str, commit: str) -> str:
    """The pinned id a job records for provenance: ``hf://ORG/NAME@<commit>``."""
    return str(ModelRef(repo_id, commit))


# --------------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------------
def _task_from_tags(tags: list[str]) -> str | None:
    from training.package import TASKS

    for t in tags:
        if t.startswith(RSFM_TAG + "-"):
            task = t[len(RSFM_TAG) + 1:].replace("-", "_")
            if task in TASKS:
                return task
    return None


def _call_with_deadline(fn: Callable[[], Any], timeout_s: float | None) -> Any:
    """Run ``fn`` in a daemon thread and wait at most ``timeout_s``; raise TimeoutError past it.

    huggingface_hub retries listing calls on connection errors for ~25 s (sensible for scripts); a model
    browser wants an answer sooner. The abandoned call finishes in the background and is discarded.
    """
    if timeout_s is None:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=target, name="rsfm-hub-list", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def list_rsfm_models(endpoint: str | None = None, token: str | bool | None = None, *, search: str | None = None,
                     task: str | None = None, author: str | None = None, limit: int | None = 200,
                     timeout_s: float | None = None) -> list[dict]:
    """The RSFM packages on an endpoint: model repos tagged ``rsfm`` (optionally ``rsfm-<task>``).

    ``timeout_s`` bounds the wait (the client otherwise retries an unreachable Hub for ~25 s).

    Returns:
        One dict per repo: ``repo_id``, ``id`` (``hf://repo@sha``), ``sha``, ``task``, ``tags``,
        ``downloads``, ``likes``, ``last_modified`` (ISO), ``private``, ``gated``, ``library_name``,
        ``license``, ``pipeline_tag``; sorted by downloads, most first.

    Raises:
        HubOfflineError (offline mode), HubAuthError, HubUnreachableError, HubError.
    """
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    ref = ModelRef("*/*")
    if offline_mode():
        raise HubOfflineError(f"offline mode is on (HF_HUB_OFFLINE): the models on {endpoint} cannot be listed; "
                              "list the cached ones instead (GET /api/v1/hub/models?cached=1)")
    filters = [RSFM_TAG]
    if task:
        from training.package import TASKS

        if task not in TASKS:
            raise BadRequestError(f"task {task!r} is not one of {', '.join(TASKS)}")
        filters.append(f"{RSFM_TAG}-{task.replace('_', '-')}")
    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=__version__)
    try:
        infos = _call_with_deadline(lambda: list(api.list_models(
            filter=filters, search=search, author=author, limit=limit, full=True, cardData=True,
            sort="downloads")), timeout_s)
    except TimeoutError as exc:
        raise HubUnreachableError(
            f"the Hub at {endpoint} did not answer ({exc}): check the network, HF_ENDPOINT and any proxy "
            "(HTTPS_PROXY), or list the cached models instead") from None
    except Exception as exc:  # noqa: BLE001
        raise _map_error(exc, ref, endpoint) from None
    out = []
    for m in infos:
        tags = list(m.tags or [])
        card = m.card_data.to_dict() if m.card_data is not None else {}
        out.append({
            "repo_id": m.id, "id": model_uri(m.id, m.sha) if m.sha else f"{HUB_PREFIX}{m.id}", "sha": m.sha,
            "task": _task_from_tags(tags), "tags": tags, "downloads": m.downloads or 0, "likes": m.likes or 0,
            "last_modified": m.last_modified.isoformat() if m.last_modified else None,
            "private": bool(m.private), "gated": m.gated or False, "library_name": m.library_name,
            "license": card.get("license"), "pipeline_tag": m.pipeline_tag,
        })
    out.sort(key=lambda d: d["downloads"], reverse=True)
    return out


def list_cached_models(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """RSFM packages already in the HF cache (no network): one dict per cached commit.

    Returns:
        ``repo_id``, ``id`` (``hf://repo@commit``), ``sha``, ``refs`` (branches pointing at it), ``task``,
        ``name`` (from config.json), ``path``, ``size_bytes``.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from training.package import PackageConfig, PackageError

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return []
    out = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            try:
                cfg = PackageConfig.load(rev.snapshot_path)
            except PackageError:
                continue  # not an RSFM package (or an incomplete one)
            out.append({"repo_id": repo.repo_id, "id": model_uri(repo.repo_id, rev.commit_hash),
                        "sha": rev.commit_hash, "refs": sorted(rev.refs), "task": cfg.task, "name": cfg.name,
                        "path": str(rev.snapshot_path), "size_bytes": rev.size_on_disk})
    return sorted(out, key=lambda d: (d["repo_id"], d["sha"]))
