"""The exits test_redaction.py does not walk: each one a real process, grepped for the secret.

Same adversary as there (a provider whose error body echoes the request's key), followed
to the places a secret could still leave: the OpenTelemetry spans a drain exports.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.executor_support import create_run, drain, env_for, phase, run_file
from tests.fakes.llm_wire import ANTHROPIC_PATH, Reply, WireServer
from tests.fakes.loopback import LoopbackServer

KEY = "test-key-7f3a9c1e5b2d8e4f"
"""Not shaped like sk-…: only the configured-value and header rules can catch it."""


class Collector(LoopbackServer):
    """An OTLP/HTTP collector on loopback: keeps every body posted to it, answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with collector._lock:
                    collector.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(Handler)

    def received(self) -> bytes:
        with self._lock:
            return b"".join(self.bodies)


def test_an_echoed_key_is_not_in_the_exported_error_span(database_url: str, tmp_path: Path) -> None:
    """A failed call's span carried the provider's message, unredacted, as its status."""
    env = env_for(database_url, ANTHROPIC_API_KEY=KEY, AUTOPACK_OTEL="1")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    with WireServer() as wire, Collector() as collector:
        wire.script(ANTHROPIC_PATH, Reply(400, echo_headers=True))
        result = drain(
            *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "rules"),
            *("--workspace", str(tmp_path / "ws")),
            env={
                **env,
                "ANTHROPIC_BASE_URL": wire.url,
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            },
            cwd=tmp_path,
        )
        exported = collector.received()
    assert result.returncode == 1, result.stderr[-3000:]
    assert b"authorization" in exported  # the span's status is the provider's message
    assert KEY.encode() not in exported
    assert b"[REDACTED]" in exported
