"""Where an executor's API server comes from, and the proof that it uses our database.

The legacy executor spawned a server that silently read another database, so every
lookup was a 404. Here the order is fixed and every candidate must pass the identity
handshake (same database fingerprint) before it is used:

1. ``--api-url`` / ``AUTOPACK_API_URL``: used only if the handshake passes; otherwise the
   mismatch is an error naming both databases. Never a fallback.
2. A server already on the default port whose identity matches. One that does not match
   is ignored, with a warning naming it.
3. Our own: ``uvicorn autopack.main:app`` in a child process on a free loopback port, with
   an explicit environment (every resolved setting, the expected instance_id, our pid). The
   child refuses to serve any other database and exits if we die; we stop it on every
   exit path (normal, exception, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

from autopack.client import ApiClient
from autopack.config import Settings, child_env
from autopack.db.identity import DbIdentity
from autopack.errors import IdentityMismatch, ServerUnavailable
from autopack.logs import log_event

logger = logging.getLogger("autopack.executor.server")

Origin = Literal["explicit", "default_port", "spawned"]
SPAWN_ATTEMPTS = 3
STOP_GRACE_SECONDS = 10.0


@dataclass
class ApiEndpoint:
    """The API server an executor talks to; ``process`` is set when we own it."""

    url: str
    origin: Origin
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _spawn_once(
    settings: Settings, identity: DbIdentity, deadline: float
) -> tuple[ApiEndpoint | None, str]:
    """Start one child; (endpoint, "") when healthy, (None, reason) when it died early."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.gettempdir()) / f"autopack-api-{os.getpid()}-{port}.log"
    env = child_env(
        settings,
        AUTOPACK_EXPECTED_INSTANCE_ID=identity.instance_id,
        AUTOPACK_PARENT_PID=str(os.getpid()),
        AUTOPACK_API_URL="",
    )
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "autopack.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C in the terminal reaches us, and we stop the child after
            # posting whatever results are in flight.
            start_new_session=True,
        )
    endpoint = ApiEndpoint(url=url, origin="spawned", process=process, log_path=log_path)
    with ApiClient(url) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return None, f"exited with status {process.returncode}:\n{_tail(log_path)}"
            try:
                client.verify_identity(identity)
                return endpoint, ""
            except ServerUnavailable:
                time.sleep(0.05)
            except IdentityMismatch:
                _stop(endpoint)
                raise
    _stop(endpoint)
    return None, f"not healthy within the deadline:\n{_tail(log_path)}"


def spawn_server(settings: Settings, identity: DbIdentity, timeout: float = 30.0) -> ApiEndpoint:
    """Start our own API server on ``identity``'s database and wait until it proves it."""
    deadline = time.monotonic() + timeout
    reason = ""
    for _ in range(SPAWN_ATTEMPTS):  # a free port can be taken between probe and bind
        endpoint, reason = _spawn_once(settings, identity, deadline)
        if endpoint is not None:
            assert endpoint.process is not None
            log_event(
                logger,
                "api_server_spawned",
                url=endpoint.url,
                pid=endpoint.process.pid,
                instance_id=identity.instance_id,
                log=endpoint.log_path,
            )
            return endpoint
        if "address already in use" not in reason.lower() or time.monotonic() >= deadline:
            break
    raise ServerUnavailable(f"the API server Autopack started for {identity.url} {reason}")


def _stop(endpoint: ApiEndpoint) -> None:
    process = endpoint.process
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log_event(logger, "api_server_stopped", url=endpoint.url, pid=process.pid)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so ``finally`` blocks (stopping the child) run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _attach(url: str, identity: DbIdentity, origin: Origin) -> ApiEndpoint:
    with ApiClient(url) as client:
        client.verify_identity(identity)
    log_event(
        logger, "api_server_attached", url=url, origin=origin, instance_id=identity.instance_id
    )
    return ApiEndpoint(url=url, origin=origin)


@contextmanager
def api_server(
    settings: Settings, identity: DbIdentity, *, spawn_timeout: float = 30.0
) -> Iterator[ApiEndpoint]:
    """The API server to use for as long as the block runs (see the module docstring)."""
    if settings.autopack_api_url:
        yield _attach(settings.autopack_api_url, identity, "explicit")
        return
    default_url = f"http://127.0.0.1:{settings.autopack_default_api_port}"
    try:
        endpoint = _attach(default_url, identity, "default_port")
    except IdentityMismatch as exc:
        log_event(
            logger,
            "api_server_ignored",
            logging.WARNING,
            url=default_url,
            reason="it uses another database",
            server_instance_id=exc.details.get("server_instance_id"),
            server_database=exc.details.get("server_url"),
        )
    except ServerUnavailable:
        pass
    else:
        yield endpoint
        return
    with sigterm_unwinds():
        endpoint = spawn_server(settings, identity, spawn_timeout)
        try:
            yield endpoint
        finally:
            _stop(endpoint)
