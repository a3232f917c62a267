"""Loopback Hub for the plugin's model-browser tests; runs in the backend venv (it needs torch and
huggingface_hub, which QGIS's Python must not import).

    python tests/qgis/hub_seed.py ROOT_DIR PACKAGE_DIR [--no-slow]

Starts :class:`tests.hubserver.HubServer` on 127.0.0.1, pushes PACKAGE_DIR twice with
``training.hub.push_package`` (``rsfm/seg-hub``, and ``rsfm/seg-hub-slow`` whose file downloads are held back
``SLOW_S`` seconds each so a test can cancel an install mid-way; left out with ``--no-slow``), prints one JSON ready line
``{"event": "ready", "url", "repos": {repo_id: commit}}`` and serves until its stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ["HF_HUB_DISABLE_XET"] = "1"  # the loopback Hub speaks plain LFS only

SLOW_S = 1.5
FAST_REPO, SLOW_REPO = "rsfm/seg-hub", "rsfm/seg-hub-slow"


def main(root_dir: str, package_dir: str, slow: bool = True) -> None:
    from tests.hubserver import DEFAULT_TOKEN, HubServer
    from tests.hubserver import server as hubserver_module
    from training.hub import push_package

    class SlowHandler(hubserver_module._Handler):
        """Holds back every file download of the slow repo (the loopback is otherwise too fast to cancel)."""

        def h_resolve(self, repo: str, rev: str, path: str) -> None:
            if repo == SLOW_REPO and self.command == "GET":
                time.sleep(SLOW_S)
            super().h_resolve(repo=repo, rev=rev, path=path)

    hub = HubServer(root_dir)
    hub._httpd.RequestHandlerClass = SlowHandler
    hub.start()
    names = (FAST_REPO, SLOW_REPO) if slow else (FAST_REPO,)
    repos = {r: push_package(package_dir, r, token=DEFAULT_TOKEN, endpoint=hub.url) for r in names}
    print(json.dumps({"event": "ready", "url": hub.url, "repos": repos}), flush=True)
    sys.stdin.read()  # serve until the test closes our stdin (or dies)
    hub.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], slow="--no-slow" not in sys.argv[3:])
