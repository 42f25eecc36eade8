"""The exits test_redaction.py does not walk: each one a real process, grepped for the secret.

Same adversary as there (a provider whose error body echoes the request's key), followed
to the places a secret could still leave: the OpenTelemetry spans a drain exports. And a
second one: a check, the LLM's code run as the executor's user, looking for the secrets
its own environment was stripped of in the other processes of that user.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from tests.executor_support import (
    cassette,
    cli_drain,
    create_run,
    drain,
    env_for,
    files,
    line,
    phase,
    run_file,
)
from tests.fakes.llm_wire import ANTHROPIC_PATH, Reply, WireServer
from tests.fakes.loopback import LoopbackServer
from tests.support import Server, clean_env, cli

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


PROBE = """
import json, os, sys
secrets, canary = sys.argv[1].split(","), sys.argv[2]
leaked, readable = [], 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        environment = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    except OSError:  # another user's, gone, or kept from us
        continue
    readable += canary in environment
    leaked += [(pid, s) for s in secrets if s in environment]
json.dump({"leaked": leaked, "readable": readable}, open(sys.argv[3], "w"))
"""


def _as_an_ordinary_user() -> None:
    """In the drain's child before exec: no capability for it or its checks, as for any
    user but root (root's CAP_SYS_PTRACE reads every process's /proc files anyway)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in range(64):
        libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP; past the last: EINVAL


def test_a_check_cannot_read_the_secrets_from_the_drains_processes(
    database_url: str, tmp_path: Path
) -> None:
    """Checks run without the keys in their environment, but read them (and the tokens,
    and the database password) from /proc/PID/environ of their executor and of the API
    server it started: both are processes of the same user."""
    tag = uuid.uuid4().hex
    key, operator, worker = f"key-{tag}", f"operator-{tag}", f"worker-{tag}"
    secrets = [key, operator, worker]
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":  # trust auth: a password nobody checks
        secrets.append(f"pw{tag}")
        database_url = url.set(password=secrets[-1]).render_as_string(hide_password=False)
    env = env_for(
        database_url,
        ANTHROPIC_API_KEY=key,
        AUTOPACK_API_TOKEN=operator,
        AUTOPACK_WORKER_TOKEN=worker,
    )
    _probe_from_a_check(env, secrets, tag, tmp_path)


def test_a_check_cannot_read_what_only_the_environment_holds(
    database_url: str, tmp_path: Path
) -> None:
    """A drain on a loopback server without tokens, given no key (a cassette), held no
    secret Autopack knew of and stayed readable: a check read the credentials the SDKs and
    libpq take from the environment (a gateway's header, a bearer token, PGPASSWORD) from
    its executor's /proc/PID/environ."""
    tag = uuid.uuid4().hex
    secrets = {
        "ANTHROPIC_AUTH_TOKEN": f"bearer-{tag}",
        "OPENAI_CUSTOM_HEADERS": f"X-Gateway-Key: gateway-{tag}",
        "PGPASSWORD": f"pw-{tag}",  # trust auth (PostgreSQL), unused (SQLite)
    }
    env = env_for(database_url)
    with Server(env, tmp_path) as server:
        drained = {**env, **secrets, "AUTOPACK_API_URL": server.url}
        _probe_from_a_check(drained, list(secrets.values()), tag, tmp_path)


def _probe_from_a_check(env: dict[str, str], secrets: list[str], tag: str, tmp_path: Path) -> None:
    """Drain a phase whose check looks for ``secrets`` in every /proc/PID/environ it can
    open, as an ordinary user; ``tag`` is in the check's environment, to show it can."""
    env = {
        **env,
        "PROBE_CANARY": tag,
    }  # not a secret: checks get it, so the probe shows it can read
    (tmp_path / "probe.py").write_text(PROBE)
    found = tmp_path / "found.json"
    check = f"python {tmp_path / 'probe.py'} {shlex.quote(','.join(secrets))} {tag} {found}"
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"], checks=[check])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="x = 1\n"))])
    result = subprocess.run(
        [
            *(sys.executable, "-m", "autopack", "drain", "phase", "--run-id", "exec-run"),
            *("--phase-id", "p1", "--auditor", "rules", "--cassette", str(tape)),
            *("--workspace", str(tmp_path / "ws")),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=_as_an_ordinary_user if os.geteuid() == 0 else None,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(found.read_text())
    assert seen["readable"] >= 1, seen  # the check's own shells: reading works
    assert seen["leaked"] == [], seen


def test_the_git_a_command_runs_in_your_project_gets_no_key(tmp_path: Path) -> None:
    """Creating the default database asks git whether it is ignored; git runs the command
    the project's configuration names (``core.fsmonitor``) with git's environment, which
    held the keys."""
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    dump = tmp_path / "fsmonitor-env"
    monitor = tmp_path / "monitor.sh"
    monitor.write_text(f"#!/bin/sh\nenv > {dump}\n")
    monitor.chmod(0o755)
    subprocess.run(["git", "config", "core.fsmonitor", str(monitor)], cwd=project, check=True)
    path = run_file(project, [phase("p1", ["pkg/a.py"])])
    result = cli("run", "create", str(path), cwd=project, env=clean_env(ANTHROPIC_API_KEY=KEY))
    assert result.returncode == 0, result.stderr
    assert "created new database" in result.stdout + result.stderr
    assert "PATH=" in dump.read_text()  # git ran it
    assert KEY not in dump.read_text()


def test_the_drains_table_shows_no_echoed_key(database_url: str, tmp_path: Path) -> None:
    """The table of a drain's outcomes, as a person reads it (not ``--json``), showed the
    attempt's error as the provider sent it: the echoed Authorization header."""
    env = env_for(database_url, ANTHROPIC_API_KEY=KEY)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    with WireServer() as wire:
        wire.script(ANTHROPIC_PATH, Reply(400, echo_headers=True))
        result = cli_drain(
            *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "rules"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, "ANTHROPIC_BASE_URL": wire.url},
            cwd=tmp_path,
        )
    assert result.returncode == 1, result.stderr[-3000:]
    shown = result.stdout + result.stderr
    assert "headers were" in shown  # the error is in the table, redacted
    assert KEY not in shown


def test_a_repo_urls_token_is_not_shown(database_url: str, tmp_path: Path) -> None:
    """``--repo https://user:TOKEN@host/x.git``: the drain's ``code:`` line and its last
    line (where the code is, how to export it) showed the token."""
    bare, home = tmp_path / "remote.git", tmp_path / "home"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = tmp_path / "seed"
    subprocess.run(["git", "clone", "-q", str(bare), str(seed)], check=True, capture_output=True)
    subprocess.run(
        ["git", "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "s", "--allow-empty"],
        cwd=seed,
        check=True,
    )
    subprocess.run(["git", "push", "-q", "origin", "HEAD:main"], cwd=seed, check=True)
    token = f"repo-token-{uuid.uuid4().hex}"
    url = f"https://ana:{token}@git.example/x.git"
    home.mkdir()  # the URL means the local bare repository (git's url.<base>.insteadOf)
    (home / ".gitconfig").write_text(f'[url "{bare}"]\n\tinsteadOf = {url}\n')
    env = env_for(database_url, HOME=str(home))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="x = 1\n"))])
    result = cli_drain(
        *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "rules"),
        *("--cassette", str(tape), "--repo", url),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shown = result.stdout + result.stderr
    assert "https://ana:[REDACTED]@git.example/x.git" in shown
    assert token not in shown


def test_a_token_given_as_the_repo_urls_user_name_is_not_shown(
    database_url: str, tmp_path: Path
) -> None:
    """``--repo https://ghp_TOKEN@github.com/o/r.git``, the token as the URL's user name
    (no password): the GitError of a remote nothing answers at showed it, since only a
    URL's password was redacted. Now it exits 2 with the URL's user name redacted."""
    token = "ghp_" + uuid.uuid4().hex + "abcd"
    home = tmp_path / "home"
    home.mkdir()
    env = env_for(database_url, HOME=str(home))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="x = 1\n"))])
    result = cli_drain(
        *("run", "--run-id", "exec-run", "--auditor", "rules", "--cassette", str(tape)),
        *("--repo", f"https://{token}@127.0.0.1:9/x.git"),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    shown = result.stdout + result.stderr
    assert "GitError" in shown and "https://[REDACTED]@127.0.0.1:9/x.git" in shown
    assert token not in shown and token[4:] not in shown


def test_the_web_servers_own_log_lines_are_redacted(tmp_path: Path) -> None:
    """uvicorn's handlers wrote what Autopack's redaction never saw: its access line a
    request's query string (a token tried as ``?token=``), and its ``Exception in ASGI
    application`` traceback the unexpected error's message (here SQL parameters holding a
    key-shaped id) next to Autopack's redacted ``request_failed``."""
    token = f"operator-{uuid.uuid4().hex}"
    run_id = f"sk-proj-{uuid.uuid4().hex}"
    database = tmp_path / "autopack.db"
    env = env_for(f"sqlite:///{database}")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])], run_id=run_id), env, tmp_path)
    server = Server({**env, "AUTOPACK_API_TOKEN": token}, tmp_path, autopack_args=["serve"])
    try:
        server.wait_healthy()
        assert httpx.get(f"{server.url}/health?token={token}").status_code == 200
        with sqlite3.connect(database) as broken:  # every phase view now fails unexpectedly
            broken.execute("DROP TABLE approval_requests")
        failed = httpx.get(
            f"{server.url}/runs/{run_id}/phases/p1", headers={"Authorization": f"Bearer {token}"}
        )
        assert failed.status_code == 500, failed.text
        time.sleep(0.5)  # the log lines written after the answer
        shown = server.output()
    finally:
        server.stop()
    assert "Exception in ASGI application" in shown and "GET /health?token=" in shown, shown
    assert token not in shown and run_id not in shown, shown


def test_a_usage_error_does_not_quote_a_database_password(tmp_path: Path) -> None:
    """A database URL given without its flag was quoted back by Click's usage errors."""
    url = "postgresql+psycopg://ana:hunter2secret@db.example/autopack"
    for args in (["run", "list", url], [url], ["drain", "run", "--run-id", "r", url]):
        result = cli(*args, cwd=tmp_path, env=clean_env())
        assert result.returncode == 2, result.stderr
        assert "ana:[REDACTED]@db.example" in result.stderr, args
        assert "hunter2secret" not in result.stdout + result.stderr, args


def test_a_usage_error_does_not_quote_a_key_the_environment_holds(tmp_path: Path) -> None:
    """A key or token given as an argument (a shell variable in the wrong place) was quoted
    back whole by Click's usage errors: they come before the settings are read, and
    neither has a shape the redaction knows by itself."""
    token = f"operator-{uuid.uuid4().hex}"
    env = clean_env(ANTHROPIC_API_KEY=KEY, AUTOPACK_API_TOKEN=token)
    for secret in (KEY, token):
        for args in (["drain", "run", "--run-id", "r", secret], ["run", "list", secret], [secret]):
            result = cli(*args, cwd=tmp_path, env=env)
            assert result.returncode == 2, result.stderr
            assert "[REDACTED]" in result.stderr, args
            assert secret not in result.stdout + result.stderr, args


def test_a_check_gets_no_credential_the_sdks_read(database_url: str, tmp_path: Path) -> None:
    """Besides the keys Autopack names, the SDKs it drives read credentials of their own
    from the environment (the Anthropic SDK's bearer token, OpenAI's admin key, the
    headers a gateway's key travels in, the OTLP exporter's headers, libpq's password):
    checks, the LLM's code, were run with them."""
    secrets = {
        name: f"{name.lower()}-{uuid.uuid4().hex}"
        for name in (
            "ANTHROPIC_AUTH_TOKEN",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OPENAI_ADMIN_KEY",
            "ANTHROPIC_WEBHOOK_SIGNING_KEY",
            "OPENAI_WEBHOOK_SECRET",
            "PGPASSWORD",
        )
    }
    for sdk in ("ANTHROPIC", "OPENAI"):  # a gateway's key, in the SDK's header format
        secrets[f"{sdk}_CUSTOM_HEADERS"] = f"X-Gateway-Key: {uuid.uuid4().hex}"
    env = env_for(database_url, **secrets)
    dump = tmp_path / "check-env"
    create_run(
        run_file(tmp_path, [phase("p1", ["pkg/a.py"], checks=[f"env > {dump}"])]), env, tmp_path
    )
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="x = 1\n"))])
    result = drain(
        *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "rules"),
        *("--cassette", str(tape), "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = dump.read_text()
    assert "PATH=" in seen
    assert [name for name, value in secrets.items() if value in seen] == []
