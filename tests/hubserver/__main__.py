"""Run the loopback Hub by hand: ``python -m tests.hubserver ROOT_DIR [--port N]`` (Ctrl-C stops it).

Point a client at it with ``HF_ENDPOINT=<printed url>`` and ``HF_HUB_DISABLE_XET=1``; the write token is
:data:`tests.hubserver.DEFAULT_TOKEN`.
"""

import argparse
import json
import threading

from .server import DEFAULT_TOKEN, HubServer

parser = argparse.ArgumentParser(prog="python -m tests.hubserver", description=__doc__.splitlines()[0])
parser.add_argument("root_dir")
parser.add_argument("--port", type=int, default=0)
args = parser.parse_args()
hub = HubServer(args.root_dir, port=args.port).start()
print(json.dumps({"event": "ready", "url": hub.url, "token": DEFAULT_TOKEN}), flush=True)
try:
    threading.Event().wait()
except KeyboardInterrupt:
    hub.stop()
