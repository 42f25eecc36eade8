"""The one way to an API server: proven to use our database before it is used.

The legacy executor spawned a server that silently read another database, so every lookup
was a 404. Every part of Autopack that talks to the control plane (each CLI command, each
executor, each script) gets its :class:`~autopack.client.ApiClient` from :func:`connect`,
which tries, in a fixed order, servers that must pass the identity handshake (same
database fingerprint) before they are used:

1. ``--api-url`` / ``AUTOPACK_API_URL``: used only if the handshake passes; otherwise the
   mismatch is an error naming both databases (exit 2). Never a fallback. A client that
   names no database of its own (a worker machine holding only a token, see
   :meth:`autopack.cli._common.CliState.names_no_database`) takes the database this
   server serves: there is no second one it could drift to, and nothing else is tried.
   ``AUTOPACK_EXPECTED_INSTANCE_ID`` pins which one that must be.
2. A server already on the default port whose identity matches. One that does not match
   is ignored, with a warning naming it.
3. Our own, on this process's resolved settings and the expected instance_id, which it
   verifies before serving:

   * ``"thread"`` (CLI commands): uvicorn in a thread of this process, on a Unix socket
     in a private directory. Starts in milliseconds; reachable by nobody else, so it runs
     without tokens.
   * ``"process"`` (drains): ``uvicorn autopack.main:app`` in a child process on a free
     loopback port, with an explicit environment (every resolved setting, our pid). Its
     own interpreter serves the executor's many threads without sharing our GIL; it
     exits if we die, and we stop it on every exit path (normal, exception, Ctrl-C,
     SIGTERM). Its port is reachable by every local process, so it always has tokens: the
     configured ones, or random ones only we know.

Every client is given this process's token (:func:`client_token`): the operator's if
configured, else the worker's.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
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

import httpx
from pydantic import SecretStr

from autopack import redact
from autopack.client import ApiClient
from autopack.config import Settings, child_env
from autopack.contract import Health
from autopack.errors import IdentityMismatch, ServerUnavailable
from autopack.identity import DbIdentity, PublicIdentity
from autopack.logs import log_event
from autopack.transport import DEFAULT_TIMEOUT

logger = logging.getLogger("autopack.connect")

Origin = Literal["explicit", "default_port", "spawned", "in_process"]
Own = Literal["thread", "process"]
SPAWN_ATTEMPTS = 3
STOP_GRACE_SECONDS = 10.0
START_TIMEOUT_SECONDS = 30.0
WAIT_POLL_SECONDS = 0.25
"""How often a command waiting for its AUTOPACK_API_URL server knocks again."""
PROBE_TIMEOUT = httpx.Timeout(3.0)
"""How long the default port's server may take to answer /health before we start our own."""


@dataclass
class Connection:
    """A client on a server proven to use our database, and where that server came from."""

    client: ApiClient
    origin: Origin
    database: PublicIdentity
    """The database behind the server: ours, proven the same; or, for a client that names
    no database, the one the server serves."""

    @property
    def where(self) -> str:
        return self.client.where


@contextmanager
def connect(
    settings: Settings,
    identity: DbIdentity | None,
    *,
    own: Own,
    start_timeout: float = START_TIMEOUT_SECONDS,
) -> Iterator[Connection]:
    """The API server to use for as long as the block runs (see the module docstring).

    ``identity`` None: this client names no database, and ``AUTOPACK_API_URL`` is its one
    server.
    """
    if settings.autopack_api_url:
        client, database = _attach(settings.autopack_api_url, identity, "explicit", settings)
        with client:
            yield Connection(client, "explicit", database)
        return
    assert identity is not None, "a client naming no database has AUTOPACK_API_URL"
    default_url = f"http://127.0.0.1:{settings.autopack_default_api_port}"
    try:
        client, database = _attach(default_url, identity, "default_port", settings)
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
        with client:
            yield Connection(client, "default_port", database)
        return
    start = _thread_server if own == "thread" else _process_server
    with start(settings, identity, start_timeout) as client:
        yield Connection(client, "in_process" if own == "thread" else "spawned", identity)


def client_token(settings: Settings) -> str | None:
    """The token this process sends: the operator's when it has it (an operator may do
    everything a worker may), else the worker's, else none."""
    for secret in (settings.autopack_api_token, settings.autopack_worker_token):
        if secret is not None:
            return secret.get_secret_value()
    return None


def _attach(
    url: str, identity: DbIdentity | None, origin: Origin, settings: Settings
) -> tuple[ApiClient, PublicIdentity]:
    """A client on ``url`` once the server there proved it uses ``identity``'s database
    (any, for ``None``; the pinned instance_id, if one is), and that database."""
    token = client_token(settings)
    # Probing the default port, nobody listening is the common answer: the handshake makes
    # no connect retry (its 0.5 s backoff was paid by every command that went on to start
    # its own server). The client kept for the work retries as every client does.
    # Whatever holds the port but does not answer (a stopped server) must not hold every
    # command for the 30 s read timeout either: a live server answers /health at once.
    probing = origin == "default_port"
    with ApiClient(
        url,
        token=token,
        connect_retries=0 if probing else 2,
        timeout=PROBE_TIMEOUT if probing else DEFAULT_TIMEOUT,
    ) as probe:
        wait = 0.0 if probing else settings.autopack_api_wait_seconds
        health = _handshake(probe, identity, settings, wait)
    database = identity or health.database
    client = ApiClient(url, token=token, proved=database)
    log_event(
        logger,
        "api_server_attached",
        url=url,
        origin=origin,
        instance_id=database.instance_id,
        database=database.location,
    )
    return client, database


def _handshake(
    probe: ApiClient, identity: DbIdentity | None, settings: Settings, wait: float
) -> Health:
    """The identity handshake, tried again for up to ``wait`` seconds while nothing answers
    at the URL. An executor started with its server, or while a supervisor restarts it,
    exited 2 at once; a running one rides out the same restart (transport.RETRY_SECONDS).
    Only silence is waited for: a server that answers wrongly is refused at once."""
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            return probe.verify_identity(
                identity, instance_id=settings.autopack_expected_instance_id
            )
        except ServerUnavailable as exc:
            silent = isinstance(exc.__cause__, httpx.TransportError)
            if not silent or time.monotonic() >= deadline:
                if not said:
                    raise
                raise ServerUnavailable(
                    f"{exc.message}; waited {wait:g} s (AUTOPACK_API_WAIT_SECONDS)",
                    **exc.details,
                ) from exc
            if not said:
                log_event(
                    logger,
                    "api_server_waiting",
                    logging.WARNING,
                    url=probe.base_url,
                    reason=exc.message,
                    up_to_s=wait,
                )
                said = True
            time.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


# -- our own server, in a thread -----------------------------------------------------------


@contextmanager
def _thread_server(settings: Settings, identity: DbIdentity, timeout: float) -> Iterator[ApiClient]:
    """uvicorn in a daemon thread on a Unix socket in a private (0700) directory."""
    import uvicorn  # the web stack loads only when a server is started

    from autopack.api.app import create_app

    directory = Path(tempfile.mkdtemp(prefix="autopack-api-"))
    path = directory / "api.sock"
    # private: no tokens. The socket is in a 0700 directory of this process, which holds
    # the database's credentials anyway; a token would protect nothing here. No parent
    # watchdog either: this server is this process, and one watching a parent named by an
    # inherited AUTOPACK_PARENT_PID sent the command itself SIGTERM (exit 143, no word).
    update = {"autopack_expected_instance_id": identity.instance_id, "autopack_parent_pid": None}
    app = create_app(settings.model_copy(update=update), private=True)
    config = uvicorn.Config(
        app, uds=str(path), log_config=None, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="autopack-api", daemon=True)
    client = ApiClient(
        "http://autopack",
        transport=httpx.HTTPTransport(uds=str(path), verify=False),  # plain http on a socket
        where=f"API (in-process, {identity.url})",
    )
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ServerUnavailable(
                    f"the API server Autopack started in this process for {identity.url} did "
                    "not start (see the log lines above)"
                )
            time.sleep(0.005)
        client.verify_identity(identity)
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(STOP_GRACE_SECONDS)
        shutil.rmtree(directory, ignore_errors=True)


# -- our own server, in a child process ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class _Child:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, *, keep_log: bool = False) -> None:
        """Stop the server; its log is deleted unless something went wrong (it died on
        its own, or ``keep_log``), so temp directories do not fill with healthy logs."""
        if self.process.poll() is not None:
            self._keep_log("it exited with status " + str(self.process.returncode))
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log_event(logger, "api_server_stopped", url=self.url, pid=self.process.pid)
        if keep_log:
            self._keep_log("it did not become healthy")
        else:
            self.log_path.unlink(missing_ok=True)

    def _keep_log(self, why: str) -> None:
        log_event(logger, "api_server_log_kept", logging.WARNING, log=self.log_path, reason=why)


class _PortTaken(Exception):
    """Another process took the probed port before our child bound it (retry elsewhere)."""


def _spawn_once(settings: Settings, identity: DbIdentity, deadline: float) -> _Child:
    """Start one child and wait until it is healthy.

    Raises :class:`_PortTaken` when the port was taken between probe and bind: the child
    says so, or another server answers there (ours never answers for another database:
    it refuses to start on one). Raises ServerUnavailable when it died or stayed unhealthy.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = child_env(
        settings,
        AUTOPACK_EXPECTED_INSTANCE_ID=identity.instance_id,
        AUTOPACK_PARENT_PID=str(os.getpid()),
        AUTOPACK_API_URL="",
    )
    command = [sys.executable, "-m", "uvicorn", "autopack.main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"]
    # Created by mkstemp: readable by this user only, and never through a file another
    # user left at a name known in advance (the log was made 0644, opened following a
    # symbolic link at /tmp/autopack-api-PID-PORT.log).
    fd, name = tempfile.mkstemp(prefix=f"autopack-api-{os.getpid()}-{port}-", suffix=".log")
    log_path = Path(name)
    process: subprocess.Popen[bytes] | None = None
    try:
        with os.fdopen(fd, "wb") as log_file:
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches us, and we stop the child
                # after posting whatever results are in flight.
                start_new_session=True,
            )
        return _healthy(_Child(url, process, log_path), identity, deadline)
    except (KeyboardInterrupt, SystemExit):
        # Stopped (Ctrl-C, SIGTERM) while the child starts: nobody else would stop it (the
        # caller never got it), and its log stayed in the temp directory for good.
        if process is None:
            log_path.unlink(missing_ok=True)
        else:
            _Child(url, process, log_path).stop()
        raise


def _healthy(child: _Child, identity: DbIdentity, deadline: float) -> _Child:
    """Wait until ``child`` answers for ``identity`` (see :func:`_spawn_once`)."""
    url, process, log_path = child.url, child.process, child.log_path
    failed = f"the API server Autopack started for {identity.url}"
    # No connect retry: the loop below is the retry, at 50 ms instead of httpcore's 0.5 s.
    with ApiClient(url, connect_retries=0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = _tail(log_path)
                if "address already in use" in tail.lower():
                    raise _PortTaken(url)
                raise ServerUnavailable(
                    f"{failed} exited with status {process.returncode} (log {log_path}):\n{tail}"
                )
            try:
                client.verify_identity(identity)
                return child
            except ServerUnavailable:
                time.sleep(0.05)
            except IdentityMismatch as exc:
                child.stop()
                raise _PortTaken(url) from exc
    child.stop(keep_log=True)
    raise ServerUnavailable(
        f"{failed} was not healthy within the deadline (log {log_path}):\n{_tail(log_path)}"
    )


def _spawn(settings: Settings, identity: DbIdentity, timeout: float) -> _Child:
    deadline = time.monotonic() + timeout
    for attempt in range(1, SPAWN_ATTEMPTS + 1):
        try:
            child = _spawn_once(settings, identity, deadline)
        except _PortTaken as taken:
            log_event(logger, "api_port_taken", logging.WARNING, url=str(taken), tries=attempt)
            continue
        log_event(
            logger,
            "api_server_spawned",
            url=child.url,
            pid=child.process.pid,
            instance_id=identity.instance_id,
            log=child.log_path,
        )
        return child
    raise ServerUnavailable(
        f"the API server Autopack started for {identity.url} found its port taken by another "
        f"process {SPAWN_ATTEMPTS} times in a row"
    )


@contextmanager
def _process_server(
    settings: Settings, identity: DbIdentity, timeout: float
) -> Iterator[ApiClient]:
    settings = _private_tokens(settings)
    with sigterm_unwinds():
        child = _spawn(settings, identity, timeout)
        try:
            token = client_token(settings)
            with ApiClient(child.url, token=token) as client:
                yield client
        finally:
            child.stop()


def _private_tokens(settings: Settings) -> Settings:
    """Tokens for a child server on a loopback port, which every local process can reach:
    the configured ones, or (none configured) fresh random ones only this process and its
    child know, so another local user cannot create runs whose checks we would execute."""
    if settings.autopack_api_token is not None:
        return settings
    operator, worker = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    redact.add_secrets([operator, worker])
    return settings.model_copy(
        update={
            "autopack_api_token": SecretStr(operator),
            "autopack_worker_token": SecretStr(worker),
        }
    )


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM, and SIGHUP (the terminal or SSH session closed), into SystemExit so
    ``finally`` blocks (stopping the child, handing leases back) run: SIGHUP's default
    killed a drain on the spot, its phases held by a dead worker until their leases
    expired. A SIGHUP already ignored (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    unwinding = [signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        unwinding.append(signal.SIGHUP)
    previous = {sig: signal.signal(sig, _exit) for sig in unwinding}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
