"""Test program: get an API server the way an executor does, report it, then exit by MODE.

    python -m tests.programs.hold_api_server normal|exception|wait

Prints one JSON line {"url", "origin", "pid"} once the server is usable, then: ``normal``
returns, ``exception`` raises, ``wait`` blocks until a signal arrives.
"""

from __future__ import annotations

import json
import sys
import threading

from autopack.config import load_settings
from autopack.db import open_database
from autopack.executor.server import api_server
from autopack.logs import configure_logging


def main(mode: str) -> None:
    settings = load_settings().settings
    configure_logging()
    database = open_database(settings.database_url, role="executor")
    with api_server(settings, database.identity) as endpoint:
        pid = endpoint.process.pid if endpoint.process else None
        print(json.dumps({"url": endpoint.url, "origin": endpoint.origin, "pid": pid}), flush=True)
        if mode == "exception":
            raise RuntimeError("boom inside the executor")
        if mode == "wait":
            threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1])
