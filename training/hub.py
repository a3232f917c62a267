"""``rsfm-train push``: publish a model package to a Hugging Face Hub (or a private Hub mirror).

The package is checked first (``config.json`` through :class:`training.package.PackageConfig`, weights
present and readable as safetensors, ONNX file present if named), then uploaded in one commit with
``huggingface_hub`` (``create_repo`` + ``create_commit``). The model card's YAML front matter is completed
so the Hub can index the model: ``license``, ``library_name: rsfm``, ``tags`` (``rsfm``,
``rsfm-<task>``, ``remote-sensing``, ...), ``pipeline_tag``, ``metrics`` and a ``model-index`` with the
held-back results from ``config.json``. The commit id is printed on stdout (alone, for scripts); the token
is never printed or logged.

Example::

    HF_TOKEN=hf_xxx rsfm-train push runs/landcover/package --repo-id my-org/rsfm-landcover-efflite0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from training.package import CARD_NAME, PackageConfig, PackageError, default_card

LIBRARY_NAME = "rsfm"
RSFM_TAG = "rsfm"
# The Hub's pipeline tags closest to each RSFM task (used by the Hub's search facets).
PIPELINE_TAGS = {
    "semantic_segmentation": "image-segmentation",
    "instance_segmentation": "image-segmentation",
    "object_detection": "object-detection",
    "rotated_detection": "object-detection",
    "scene_classification": "image-classification",
    "change_detection": "image-segmentation",
}
# Licence ids the Hub accepts in card metadata; anything else is published as "other" + license_name.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
    "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "cc0-1.0", "cc-by-2.0", "cc-by-2.5",
    "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0",
    "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "agpl-3.0", "afl-3.0",
    "artistic-2.0", "ecl-2.0", "epl-1.0", "epl-2.0", "eupl-1.1", "mpl-2.0", "odbl", "odc-by", "pddl",
    "unlicense", "wtfpl", "zlib", "isc", "ms-pl", "postgresql", "osl-3.0", "bsl-1.0", "unknown", "other",
})
# Files of a package folder that are never uploaded: temporaries from atomic writes, caches, VCS folders.
_SKIP = re.compile(r"(^|/)(\.[^/]*|__pycache__|.*\.tmp|.*\.incomplete)(/|$)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rsfm")
    except PackageNotFoundError:
        return "dev"


class PushError(Exception):
    """The package cannot be published; the message says what to fix."""


# --------------------------------------------------------------------------------------------------------
# Package checks and the model card
# --------------------------------------------------------------------------------------------------------
def check_package(package_dir: Path, *, load_check: bool = True) -> PackageConfig:
    """Validate a package folder before upload.

    ``load_check`` also builds the architecture and loads the weights into it (needs torch; a second or two
    for small models), so weights that do not fit the config are refused too.

    Raises:
        PushError: missing folder, broken ``config.json``, missing/unreadable weights, missing ONNX file,
            weights that do not match the architecture.
    """
    if not package_dir.is_dir():
        raise PushError(f"{package_dir} is not a folder; give the model package folder (with config.json)")
    try:
        config = PackageConfig.load(package_dir)
    except PackageError as exc:
        raise PushError(f"refusing to push a broken package: {exc}") from None
    weights = package_dir / config.weights
    if not weights.is_file():
        raise PushError(f"refusing to push {package_dir}: config.json names weights {config.weights!r} but "
                        "there is no such file; re-export the package (rsfm-train export)")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="numpy") as f:  # reads the header only
            n_tensors = len(list(f.keys()))
    except Exception as exc:  # noqa: BLE001 - any failure means an unreadable weights file
        raise PushError(f"refusing to push {package_dir}: {weights.name} is not a readable safetensors file "
                        f"({exc}); re-export the package") from None
    if n_tensors == 0:
        raise PushError(f"refusing to push {package_dir}: {weights.name} holds no tensors")
    if config.onnx and not (package_dir / config.onnx).is_file():
        raise PushError(f"refusing to push {package_dir}: config.json names ONNX file {config.onnx!r} which "
                        "is missing; export it again or set \"onnx\": null")
    if load_check:
        from training.package import load_package

        try:  # builds the architecture and loads the weights strictly: names and shapes must match
            load_package(package_dir)
        except PackageError as exc:
            raise PushError(f"refusing to push a package that does not load: {exc}") from None
    return config


def _split_card(text: str) -> tuple[dict[str, Any], str]:
    """``(front matter, body)`` of a model card; an empty dict when it has no front matter."""
    import yaml

    m = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not m:
        return {}, text
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as exc:
        raise PushError(f"the model card's YAML front matter is invalid ({exc}); fix README.md") from None
    if not isinstance(meta, dict):
        raise PushError("the model card's front matter must be a YAML mapping (key: value lines)")
    return meta, text[m.end():]


def hub_license(licence: str) -> tuple[str, str | None]:
    """Map a package licence (SPDX id or free text) to the Hub's ``license`` (and ``license_name``)."""
    lid = (licence or "unknown").strip().lower()
    if lid in HUB_LICENSES:
        return lid, None
    return "other", re.sub(r"[^a-z0-9.-]+", "-", lid).strip("-") or "custom"


def _metric_entries(config: PackageConfig) -> tuple[list[str], list[dict[str, Any]]]:
    """Numeric metrics -> (metric names, model-index results); text entries describe the evaluation data."""
    numeric = {k: v for k, v in config.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    text = {k: str(v) for k, v in config.metrics.items() if k not in numeric}
    if not numeric:
        return [], []
    dataset = text.get("dataset") or config.training_data or "held-back data"
    split = text.get("split")
    results = [{
        "task": {"type": PIPELINE_TAGS.get(config.task, config.task), "name": config.task},
        "dataset": {"name": dataset[:200], "type": re.sub(r"[^a-z0-9]+", "-", dataset.lower())[:64].strip("-")
                    or "custom", **({"split": split} if split else {})},
        "metrics": [{"type": k.lower(), "name": k, "value": float(v)} for k, v in numeric.items()],
    }]
    return [k.lower() for k in numeric], results


def build_model_card(config: PackageConfig, existing: str | None) -> str:
    """The card to publish: the package's README (or a default one) with complete Hub metadata.

    Keys already in the card are kept, except that ``tags`` always gain ``rsfm`` and ``rsfm-<task>``,
    ``license`` is normalised to a Hub licence id, and ``library_name`` / ``pipeline_tag`` / ``metrics`` /
    ``model-index`` are filled in when missing.
    """
    import yaml

    meta, body = _split_card(existing if existing is not None else default_card(config))
    if not body.strip():
        body = _split_card(default_card(config))[1]
    # the Hub rejects licence values outside its id list (e.g. "CC0-1.0"): normalise the card's or the config's
    lic, lic_name = hub_license(str(meta.get("license") or config.licence))
    meta["license"] = lic
    if lic == "other" and lic_name:
        meta.setdefault("license_name", lic_name)
    meta.setdefault("library_name", LIBRARY_NAME)
    meta.setdefault("pipeline_tag", PIPELINE_TAGS.get(config.task))
    task_tag = f"{RSFM_TAG}-{config.task.replace('_', '-')}"
    tags = [str(t) for t in (meta.get("tags") or [])]
    for t in (RSFM_TAG, task_tag, "remote-sensing", "earth-observation", config.architecture):
        if t not in tags:
            tags.append(t)
    meta["tags"] = tags
    metric_names, results = _metric_entries(config)
    if metric_names:
        meta.setdefault("metrics", metric_names)
        meta.setdefault("model-index", [{"name": config.name, "results": results}])
    meta = {k: v for k, v in meta.items() if v is not None}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    sep = "" if body.startswith("\n") else "\n"  # one blank line between front matter and text
    return f"---\n{front}---\n{sep}{body}"


def package_files(package_dir: Path) -> list[Path]:
    """Files of the package to upload (everything but temporaries and hidden files), sorted."""
    out = []
    for p in sorted(package_dir.rglob("*")):
        rel = p.relative_to(package_dir).as_posix()
        if p.is_file() and not _SKIP.search(rel):
            out.append(p)
    return out


# --------------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------------
def push_package(package_dir: str | os.PathLike, repo_id: str, *, revision: str | None = None,
                 private: bool = False, token: str | bool | None = None, endpoint: str | None = None,
                 commit_message: str | None = None, load_check: bool = True) -> str:
    """Check ``package_dir`` and publish it to ``repo_id`` in one commit; return the commit id.

    Args:
        package_dir: the model package folder (config.json, weights, optional model.onnx and README.md).
        repo_id: ``ORG/NAME`` on the Hub (created if missing; an existing repo keeps its visibility).
        revision: branch to commit to (created from ``main`` if missing); default ``main``.
        private: create the repo private.
        token: write token; None uses ``HF_TOKEN`` or the saved ``huggingface-cli login``.
        endpoint: Hub URL; default ``HF_ENDPOINT`` or https://huggingface.co.
        load_check: load the weights into the architecture before uploading (see :func:`check_package`).

    Raises:
        PushError: the package is broken or the Hub refused (message says what to do).
    """
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    pkg = Path(package_dir).expanduser().resolve()
    config = check_package(pkg, load_check=load_check)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo_id or ""):
        raise PushError(f"--repo-id {repo_id!r} must be ORG/NAME, e.g. my-org/{config.name}")
    card_path = pkg / CARD_NAME
    card = build_model_card(config, card_path.read_text(encoding="utf-8") if card_path.is_file() else None)
    ops = [CommitOperationAdd(path_in_repo=p.relative_to(pkg).as_posix(), path_or_fileobj=str(p))
           for p in package_files(pkg) if p.name != CARD_NAME or p.parent != pkg]
    ops.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode("utf-8")))
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=_version())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(
            repo_id, operations=ops, revision=revision,
            commit_message=commit_message or f"Upload {config.name} ({config.task}, {config.architecture})",
            commit_description=f"Model package pushed with rsfm-train push from {pkg.name}.")
    except RepositoryNotFoundError:
        raise PushError(f"{endpoint} does not let this token write to {repo_id}: use a token with write access "
                        "to that namespace (HF_TOKEN or --token-file)") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        hint = {401: "the token is invalid or missing: set HF_TOKEN (a write token) or use --token-file",
                403: f"this token may not write to {repo_id.split('/')[0]}: use a write token of a member"}.get(
                    status, "see the message above")
        raise PushError(f"{endpoint} refused the upload ({status}): {exc.server_message or exc}; {hint}") from None
    except ValueError as exc:  # e.g. the Hub rejected the card's metadata
        raise PushError(f"{endpoint} rejected the package: {exc}") from None
    except (OSError, httpx2.HTTPError) as exc:
        raise PushError(f"cannot reach {endpoint} ({type(exc).__name__}: {exc}); check the network, "
                        "HF_ENDPOINT and HTTPS_PROXY") from None
    return info.oid


# --------------------------------------------------------------------------------------------------------
# CLI stage
# --------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Publish a model package to a Hugging Face Hub (HF_ENDPOINT selects a private mirror)."
    parser.add_argument("package_dir", help="model package folder (config.json + weights [+ README.md])")
    parser.add_argument("--repo-id", required=True, help="target repo ORG/NAME (created if missing)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--token", default=None,
                        help="Hub write token (visible to other users in the process list: prefer HF_TOKEN "
                             "or --token-file)")
    parser.add_argument("--token-file", default=None, help="file holding the Hub write token")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--no-xet", action="store_true",
                        help="upload weights with plain Git LFS instead of Xet (for mirrors without Xet "
                             "storage; same as HF_HUB_DISABLE_XET=1)")
    parser.add_argument("--no-load-check", action="store_true",
                        help="skip loading the weights into the architecture before uploading (no torch needed)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the package and print the model card and file list, upload nothing")


def run(args: argparse.Namespace) -> int:
    token: str | None = args.token
    if args.token_file:
        try:
            token = Path(args.token_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"rsfm-train push: cannot read --token-file: {exc.strerror}", file=sys.stderr)
            return 2
    pkg = Path(args.package_dir)
    if args.no_xet:
        from huggingface_hub import constants

        constants.HF_HUB_DISABLE_XET = True  # the library's own switch, read when an upload starts
    try:
        if args.dry_run:
            config = check_package(pkg, load_check=not args.no_load_check)
            card_path = pkg / CARD_NAME
            print(build_model_card(config, card_path.read_text(encoding="utf-8") if card_path.is_file() else None))
            files = [p.relative_to(pkg).as_posix() for p in package_files(pkg)]
            print(json.dumps({"files": sorted(set(files) | {CARD_NAME})}), file=sys.stderr)
            return 0
        commit = push_package(pkg, args.repo_id, revision=args.revision, private=args.private, token=token,
                              endpoint=args.endpoint, commit_message=args.message,
                              load_check=not args.no_load_check)
    except PushError as exc:
        print(f"rsfm-train push: {exc}", file=sys.stderr)
        return 1
    ref = f"hf://{args.repo_id}@{commit}"
    print(f"pushed {pkg} to {args.repo_id} ({args.revision or 'main'}); pin it as {ref}", file=sys.stderr)
    print(commit)
    return 0


__all__ = ["PushError", "add_arguments", "build_model_card", "check_package", "package_files", "push_package",
           "run"]
