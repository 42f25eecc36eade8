"""The API client's transport: certificates are checked for every https URL, and the
client kept after probing the default port retries a refused connection like any other.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from autopack.client import ApiClient
from autopack.config import Settings
from autopack.connect import connect
from autopack.db import open_database
from autopack.errors import ServerUnavailable
from tests.fakes.loopback import LoopbackServer
from tests.support import Server, clean_env, free_port


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        _Recorder.seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def untrusted_tls_port(tmp_path: Path) -> Iterator[int]:
    """A TLS server whose certificate nobody trusts (self-signed, made here)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *made],
        check=True,
        capture_output=True,
    )
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.mark.parametrize("scheme", ["https", "HTTPS", "Https"])
def test_an_untrusted_certificate_is_refused_and_the_token_never_sent(
    untrusted_tls_port: int, scheme: str
) -> None:
    """Plain http skips loading certificates; any spelling of https must still check them
    (httpx reads the scheme case-insensitively)."""
    _Recorder.seen.clear()
    url = f"{scheme}://127.0.0.1:{untrusted_tls_port}"
    with ApiClient(url, token="s3cret") as client, pytest.raises(ServerUnavailable):
        client.request("GET", "/runs")
    assert _Recorder.seen == []


def test_the_client_kept_after_probing_the_default_port_retries_connections(
    tmp_path: Path,
) -> None:
    """The probe of the default port makes no connect retry (nobody listening is the usual
    answer); the client then used for the work does, as every client does: an operator's
    write (never repeated) still survives a server that is a moment from listening."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    database = open_database(url, role="test", log=False, create=True)
    port = free_port()
    try:
        with Server(clean_env(DATABASE_URL=url), cwd=tmp_path, port=port):
            settings = Settings(database_url=url, autopack_default_api_port=port)
            with connect(settings, database.identity, own="thread") as connection:
                assert connection.origin == "default_port"
                default = ApiClient(f"http://127.0.0.1:{port}").connect_retries
                assert connection.client.connect_retries == default > 0
    finally:
        database.close()


@pytest.mark.timeout(20)
def test_a_silent_process_on_the_default_port_does_not_hold_the_command(tmp_path: Path) -> None:
    """A stopped server (SIGSTOP) or anything that accepts and never answers held every
    command for the 30 s read timeout before it started its own server."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    database = open_database(url, role="test", log=False, create=True)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never reads or answers
    try:
        port = int(silent.getsockname()[1])
        settings = Settings(database_url=url, autopack_default_api_port=port)
        with connect(settings, database.identity, own="thread") as connection:
            assert connection.origin == "in_process"
            assert connection.client.list_runs().total == 0  # ours, on this database
    finally:
        silent.close()
        database.close()


class _EndlessHealth(BaseHTTPRequestHandler):
    """Whatever else holds the port: a /health answer that never ends (until 64 MiB)."""

    sent: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()  # no length: the body runs until the connection closes
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:
                self.wfile.write(b"a" * 65536)
                sent += 65536
        except OSError:  # the client hung up
            pass
        _EndlessHealth.sent.append(sent)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_health_answer_larger_than_any_autopack_one_is_not_read_to_its_end() -> None:
    """The handshake read the whole /health body: a program on the default port answering
    without end held every command and its memory (1 GB resident for a 200 MB answer)."""
    with LoopbackServer(_EndlessHealth) as server, ApiClient(server.url) as client:
        with pytest.raises(ServerUnavailable, match="did not answer like an Autopack API"):
            client.health()
        deadline = time.monotonic() + 10
        while not _EndlessHealth.sent and time.monotonic() < deadline:
            time.sleep(0.01)
    assert _EndlessHealth.sent and _EndlessHealth.sent[0] < 8 * 1024 * 1024


class _DrippingHealth(BaseHTTPRequestHandler):
    """Whatever else holds the port: a /health answer of one byte every 0.2 s, each well
    within the read timeout."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(600):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:  # the client hung up
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_health_answer_that_drips_is_given_up_after_the_read_timeout() -> None:
    """The per-read timeout never tripped on a byte every 0.2 s: the handshake (so every
    command told AUTOPACK_API_URL) waited for ever."""
    with (
        LoopbackServer(_DrippingHealth) as server,
        ApiClient(server.url, timeout=httpx.Timeout(1.0)) as client,
    ):
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="did not finish answering within 1 s"):
            client.health()
    assert time.monotonic() - started < 10


def test_an_answer_that_is_not_autopacks_is_server_unavailable_not_bad_input() -> None:
    """Another program behind AUTOPACK_API_URL (one answering `{}` to everything) gave
    pydantic's error, which the CLI reports as the command's bad input ("items: Field
    required"); it is the server's answer that is wrong, and the message says so."""
    with LoopbackServer(_Recorder) as server, ApiClient(server.url) as client:
        for call in (client.list_runs, lambda: client.get_run("r1"), client.usage_events):
            with pytest.raises(ServerUnavailable, match="with a body that is not an Autopack"):
                call()
