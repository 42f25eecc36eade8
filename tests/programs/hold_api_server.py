"""Test program: get an API server the way an executor does, report it, then exit by MODE.

    python -m tests.programs.hold_api_server normal|exception|wait

Prints one JSON line {"url", "origin", "pid"} once the server is usable (``pid``: the
server process this program spawned, else null), then: ``normal`` returns, ``exception``
raises, ``wait`` blocks until a signal arrives.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from autopack.config import load_settings
from autopack.connect import connect
from autopack.db import open_database
from autopack.logs import configure_logging


def spawned_server_pid(url: str) -> int:
    """The pid of our child process serving ``url`` (``uvicorn autopack.main:app --port N``)."""
    port = str(urlsplit(url).port)
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # exited meanwhile
            continue
        parent = stat.rsplit(")", 1)[-1].split()[1]
        words = [word.decode(errors="replace") for word in argv]
        if parent == me and "autopack.main:app" in words and port in words:
            found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one API server child on port {port}, found {found}")
    return found[0]


def main(mode: str) -> None:
    settings = load_settings().settings
    configure_logging()
    database = open_database(settings.database_url, role="executor", create=True)
    with connect(settings, database.identity, own="process") as connection:
        url = connection.client.base_url
        pid = spawned_server_pid(url) if connection.origin == "spawned" else None
        print(json.dumps({"url": url, "origin": connection.origin, "pid": pid}), flush=True)
        if mode == "exception":
            raise RuntimeError("boom inside the executor")
        if mode == "wait":
            threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1])
