"""Nobody gets in who shouldn't: tokens with roles on every endpoint, on a real server.

Every operation of the OpenAPI document is classified here (operator, worker, public) and
the classification must cover the document, so a new endpoint cannot be added without
saying who may call it. Each secured one is called with no token, a wrong token and (for
the operator's) the worker token; the dashboard logs in over HTTP with its cookie and its
forms are refused without their CSRF token or from another origin.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from autopack.api.auth import Authenticator
from autopack.api.routers.ui_session import MAX_FORM_BYTES
from autopack.config import Settings
from autopack.errors import ConfigError, Forbidden
from tests.conftest import empty_sqlite
from tests.support import Server, clean_env, cli, wait_for

OPERATOR_TOKEN = "operator-token-0123456789abcdef"
WORKER_TOKEN = "worker-token-0123456789abcdef"
TOKENS = {"AUTOPACK_API_TOKEN": OPERATOR_TOKEN, "AUTOPACK_WORKER_TOKEN": WORKER_TOKEN}

OPERATOR_ONLY = {
    ("post", "/runs"),
    ("post", "/runs/{run_id}/cancel"),
    ("post", "/runs/{run_id}/phases/{phase_id}/requeue"),
    ("get", "/approvals"),
    ("get", "/approvals/{approval_id}"),
    ("post", "/approvals/{approval_id}/approve"),
    ("post", "/approvals/{approval_id}/reject"),
    ("get", "/telemetry/events"),
    ("get", "/telemetry/summary"),
    ("get", "/telemetry/counts"),
}
WORKER = {
    ("post", "/claims"),
    ("post", "/runs/{run_id}/branch-check"),
    ("get", "/runs"),
    ("get", "/runs/{run_id}"),
    ("get", "/runs/{run_id}/brief"),
    ("get", "/runs/{run_id}/phases/{phase_id}"),
    ("post", "/runs/{run_id}/phases/{phase_id}/heartbeat"),
    ("post", "/runs/{run_id}/phases/{phase_id}/usage"),
    ("post", "/runs/{run_id}/phases/{phase_id}/result"),
    ("post", "/runs/{run_id}/phases/{phase_id}/approvals"),
    ("post", "/telemetry/llm-usage"),
    ("post", "/telemetry/estimations"),
    ("post", "/telemetry/escalations"),
    ("get", "/metrics"),
}
PUBLIC = {("get", "/health"), ("head", "/health"), ("get", "/schemas/run")}
EXAMPLE_PARAMS = {"run_id": "r1", "phase_id": "p1", "approval_id": "1"}
RUN = {
    "run_id": "r1",
    "tiers": [{"tier_id": "T1", "name": "t", "phases": [{"phase_id": "p1", "name": "p"}]}],
}


def _url(path: str) -> str:
    return re.sub(r"{(\w+)}", lambda m: EXAMPLE_PARAMS[m.group(1)], path)


def _call(
    server: Server, method: str, path: str, token: str | None, instance_id: str | None = None
) -> httpx.Response:
    """``instance_id``: the database this client says it proved (a header every Autopack
    client sends after its handshake)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if instance_id is not None:
        headers["X-Autopack-Instance-Id"] = instance_id
    params = {"run_id": "r1", "phase_id": "p1"} if path == "/telemetry/counts" else None
    body: dict[str, Any] | None = {} if method == "post" else None
    return httpx.request(
        method, server.url + _url(path), json=body, headers=headers, params=params, timeout=10
    )


@pytest.fixture
def server(tmp_path: Path) -> Any:
    url = empty_sqlite(tmp_path / "autopack.db")
    with Server(clean_env(DATABASE_URL=url, **TOKENS), cwd=tmp_path) as running:
        yield running


def test_every_endpoint_refuses_a_missing_wrong_or_weaker_token(server: Server) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    documented = {(m, p) for p, item in document["paths"].items() for m in item}
    assert documented | {("get", "/metrics")} == OPERATOR_ONLY | WORKER | PUBLIC
    for method, path in sorted(OPERATOR_ONLY | WORKER):
        for token in (None, "not-a-token-of-this-server"):
            # Another database's instance_id is the token's business first: a 409 told a
            # caller without a token which database the server serves, and that it is up.
            for instance_id in (None, "another-database"):
                answer = _call(server, method, path, token, instance_id)
                assert answer.status_code == 401, (method, path, token, answer.text)
                assert answer.json()["error"] == "Unauthorized"
                assert answer.headers["www-authenticate"] == "Bearer"
        other = _call(server, method, path, WORKER_TOKEN, "another-database")
        assert other.status_code == 409, (method, path, other.text)
        assert other.json()["error"] == "IdentityMismatch"
        as_worker = _call(server, method, path, WORKER_TOKEN)
        if (method, path) in OPERATOR_ONLY:
            assert as_worker.status_code == 403, (method, path, as_worker.text)
            assert "operator token" in as_worker.json()["detail"]
        else:
            assert as_worker.status_code not in (401, 403), (method, path, as_worker.text)
        as_operator = _call(server, method, path, OPERATOR_TOKEN)
        assert as_operator.status_code not in (401, 403), (method, path, as_operator.text)
    for method, path in sorted(PUBLIC):
        assert _call(server, method, path, None).status_code == 200, path
    assert OPERATOR_TOKEN not in server.output() and WORKER_TOKEN not in server.output()


def test_health_is_open_and_shows_only_identity(server: Server) -> None:
    body = httpx.get(f"{server.url}/health").json()
    assert set(body) == {"status", "version", "database", "error"}
    assert set(body["database"]) <= {
        "instance_id",
        "backend",
        "public_url",
        "fingerprint",
        "schema_revision",
        "code_revision",
        "in_sync",
        "database_name",
        "system_identifier",
    }


def test_the_worker_token_cannot_create_a_run_from_the_cli(server: Server, tmp_path: Path) -> None:
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(RUN))
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    as_worker = clean_env(DATABASE_URL=url, AUTOPACK_WORKER_TOKEN=WORKER_TOKEN)
    refused = cli(
        "--api-url", server.url, "run", "create", str(run_file), cwd=tmp_path, env=as_worker
    )
    assert refused.returncode == 2, refused.stderr
    assert "Forbidden" in refused.stderr and "operator token" in refused.stderr
    anonymous = clean_env(DATABASE_URL=url)
    refused = cli("--api-url", server.url, "run", "show", "r1", cwd=tmp_path, env=anonymous)
    assert refused.returncode == 2 and "Unauthorized" in refused.stderr
    as_operator = clean_env(DATABASE_URL=url, AUTOPACK_API_TOKEN=OPERATOR_TOKEN)
    created = cli(
        "--api-url", server.url, "run", "create", str(run_file), cwd=tmp_path, env=as_operator
    )
    assert created.returncode == 0, created.stderr
    shown = cli("--api-url", server.url, "run", "show", "r1", cwd=tmp_path, env=as_worker)
    assert shown.returncode == 0, shown.stderr


def test_serve_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}")
    refused = cli("serve", "--host", "0.0.0.0", cwd=tmp_path, env=env, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert "AUTOPACK_API_TOKEN" in refused.stderr and "AUTOPACK_WORKER_TOKEN" in refused.stderr
    assert "secrets.token_urlsafe" in refused.stderr


def test_a_server_without_tokens_serves_loopback_clients_only() -> None:
    auth = Authenticator.from_settings(Settings())
    assert not auth.enabled
    for host, allowed in [("127.0.0.1", True), ("::1", True), ("10.1.2.3", False)]:
        request = Request({"type": "http", "client": (host, 5000), "headers": []})
        if allowed:
            auth.admit_unauthenticated(request)
        else:
            with pytest.raises(Forbidden, match="loopback clients only"):
                auth.admit_unauthenticated(request)
    with pytest.raises(ConfigError, match="AUTOPACK_API_TOKEN is not"):
        Authenticator.from_settings(Settings(autopack_worker_token=WORKER_TOKEN))


def test_a_server_without_tokens_refuses_requests_addressed_to_another_name(
    tmp_path: Path,
) -> None:
    """DNS rebinding: a web page whose name resolves to 127.0.0.1 reached a tokenless
    loopback server as a loopback client, same-origin for the browser, so it could read
    the dashboard and create runs (whose checks every executor runs)."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    with Server(env, cwd=tmp_path) as running:
        port = running.port
        for host in (
            f"evil.example:{port}",
            "evil.example",
            f"[::1:{port}",
            "127.0.0.1.evil.example",
        ):
            for method, path in (("GET", "/ui"), ("GET", "/runs"), ("POST", "/runs")):
                answer = httpx.request(
                    method, running.url + path, headers={"Host": host}, json={}, timeout=10
                )
                assert answer.status_code == 403, (host, path, answer.text)
                assert "loopback name only" in answer.json()["detail"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost."):
            answer = httpx.get(running.url + "/runs", headers={"Host": host}, timeout=10)
            assert answer.status_code == 200, (host, answer.text)


def _csrf(page: str) -> str:
    found = re.search(r"name='csrf' value='([0-9a-f]+)'", page)
    assert found, page
    return found.group(1)


def test_dashboard_logs_in_once_and_its_actions_are_csrf_safe(server: Server) -> None:
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    worker = {"Authorization": f"Bearer {WORKER_TOKEN}"}
    assert httpx.post(f"{server.url}/runs", json=RUN, headers=operator).status_code == 201
    claim = httpx.post(
        f"{server.url}/claims", json={"worker_id": "w", "run_id": "r1"}, headers=worker
    ).json()
    asked = httpx.post(
        f"{server.url}/runs/r1/phases/p1/approvals",
        json={"lease_token": claim["lease_token"], "reason": "delete a file"},
        headers=worker,
    ).json()
    approval = asked["approval_id"]

    with httpx.Client(base_url=server.url) as browser:
        first = browser.get("/ui")
        assert first.status_code == 303 and first.headers["location"] == "/ui/login"
        wrong = browser.post("/ui/login", data={"token": WORKER_TOKEN})
        assert wrong.status_code == 401 and "autopack_session" not in browser.cookies
        logged = browser.post("/ui/login", data={"token": OPERATOR_TOKEN})
        assert logged.status_code == 303
        cookie = logged.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        assert OPERATOR_TOKEN not in logged.headers["set-cookie"]
        page = browser.get("/ui")
        assert page.status_code == 200 and f"/ui/approvals/{approval}/approve" in page.text
        csrf = _csrf(page.text)

        action = f"/ui/approvals/{approval}/approve"
        assert browser.post(action, data={}).status_code == 403
        assert browser.post(action, data={"csrf": "0" * 64}).status_code == 403
        evil = browser.post(action, data={"csrf": csrf}, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403
        done = browser.post(action, data={"csrf": csrf}, headers={"Origin": server.url})
        assert done.status_code == 303, done.text
        out = browser.post("/ui/logout", data={"csrf": csrf})
        assert out.status_code == 303
        assert browser.get("/ui").status_code == 303  # logged out
    with httpx.Client(base_url=server.url) as stranger:  # no cookie: no action
        assert stranger.post(action, data={"csrf": csrf}).status_code == 403
    decided = httpx.get(f"{server.url}/approvals?status=all", headers=operator).json()["items"]
    assert [(a["id"], a["status"], a["responder"]) for a in decided] == [
        (approval, "approved", "dashboard")
    ]


def test_log_out_ends_the_session_for_every_copy_of_its_cookie(
    database_url: str, tmp_path: Path
) -> None:
    """The cookie's copy (another browser, a proxy's log) opens nothing after log out; a
    session that did not log out stays open. On both backends (the insert is dialect's)."""
    with Server(clean_env(DATABASE_URL=database_url, **TOKENS), cwd=tmp_path) as server:
        browsers = [httpx.Client(base_url=server.url) for _ in range(3)]
        leaving, copy, other = browsers
        for browser in (leaving, other):
            assert browser.post("/ui/login", data={"token": OPERATOR_TOKEN}).status_code == 303
        copy.cookies.set("autopack_session", leaving.cookies["autopack_session"], path="/ui")
        csrf = _csrf(copy.get("/ui").text)  # the copy works, until...
        assert leaving.post("/ui/logout", data={"csrf": csrf}).status_code == 303

        page = copy.get("/ui")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login"
        refused = copy.post("/ui/logout", data={"csrf": csrf})
        assert refused.status_code == 403 and "log in" in refused.json()["detail"]
        assert other.get("/ui").status_code == 200  # another session is not ended
        again = copy.post("/ui/login", data={"token": OPERATOR_TOKEN})  # a new session opens
        assert again.status_code == 303 and copy.get("/ui").status_code == 200
        for browser in browsers:
            browser.close()
        assert "Traceback" not in server.output()


def test_a_forged_session_cookie_is_a_login_page_not_a_500(server: Server) -> None:
    # a cookie is Latin-1 on the wire: any byte may arrive, and ASCII digits are not all
    # that str.isdigit() takes
    forged = [b"1.\xe9\xe9", b"\xb2.00", b"\xd9\xa1.00", b"1.", b".", b"x" * 5000]
    for value in forged:
        cookie = {b"Cookie": b"autopack_session=" + value}
        page = httpx.get(f"{server.url}/ui", headers=cookie)
        assert page.status_code == 303 and page.headers["location"] == "/ui/login", value
        action = httpx.post(f"{server.url}/ui/logout", headers=cookie, data={"csrf": "0"})
        assert action.status_code == 403, (value, action.text)
    assert "Traceback" not in server.output()


def test_a_token_no_header_can_carry_is_refused_where_it_is_set(
    server: Server, tmp_path: Path
) -> None:
    # a header carries ASCII (Latin-1 at most): a server with this token could never be
    # called, and a client with it could not send a single request
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    for name in ("AUTOPACK_API_TOKEN", "AUTOPACK_WORKER_TOKEN"):
        env = clean_env(DATABASE_URL=url, **{**TOKENS, name: "tökén-0123456789abcdef"})
        for command in (("--api-url", server.url, "run", "list"), ("serve", "--port", "1")):
            refused = cli(*command, cwd=tmp_path, env=env, timeout=60)
            assert refused.returncode == 2, (command, refused.stderr)
            assert name in refused.stderr and "ASCII" in refused.stderr
            assert "Traceback" not in refused.stderr


def _answer_while_sending(
    server: Server,
    head: str,
    body: bytes,
    path: str = "/ui/login",
    content_type: str = "application/x-www-form-urlencoded",
) -> tuple[str, dict[str, Any]]:
    """POST ``path`` with ``head``'s framing headers and only ``body``, which is never
    finished: a server that reads the whole body before refusing it never answers (the
    socket times out), one that refuses it first does."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as conn:
        received = _post_unfinished(conn, server, path, head, body, content_type)
    status_line, _, rest = received.decode().partition("\r\n")
    return status_line, json.loads(rest.partition("\r\n\r\n")[2])


def _post_unfinished(
    conn: socket.socket, server: Server, path: str, head: str, body: bytes, content_type: str
) -> bytes:
    """Send on ``conn`` a POST of ``path`` whose body begins with ``body``; the answer."""
    conn.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: {content_type}\r\n{head}\r\n".encode()
        + body
    )
    received = b""
    while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
        chunk = conn.recv(65536)
        assert chunk, received
        received += chunk
    return received


def test_a_dashboard_form_over_its_limit_is_413_naming_it_and_read_no_further(
    server: Server,
) -> None:
    limit = f"({MAX_FORM_BYTES} bytes)"
    over = MAX_FORM_BYTES + 1
    declared = _answer_while_sending(server, f"Content-Length: {over}\r\n", b"token=")
    piece = b"t" * over  # one chunk past the limit, and no closing chunk ever sent
    chunked = _answer_while_sending(
        server, "Transfer-Encoding: chunked\r\n", f"{over:x}\r\n".encode() + piece + b"\r\n"
    )
    for status_line, body in (declared, chunked):
        assert status_line.startswith("HTTP/1.1 413 "), (status_line, body)
        assert body["error"] == "RequestTooLarge" and limit in body["detail"], body
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    sent = httpx.post(f"{server.url}/ui/login", content=b"token=" + b"x" * over, headers=form)
    assert sent.status_code == 413 and limit in sent.json()["detail"], sent.text
    at_limit = b"token=" + b"x" * (MAX_FORM_BYTES - 6)
    judged = httpx.post(f"{server.url}/ui/login", content=at_limit, headers=form)
    assert judged.status_code == 401, judged.text  # read and judged: a wrong token
    assert "Traceback" not in server.output()


def test_a_body_without_a_token_is_refused_before_it_is_read(server: Server) -> None:
    """FastAPI reads and parses a JSON body before any dependency runs: a client with no
    token could make the server take 16 MiB and parse it before its 401. The answer
    must come while the body is still unsent."""
    declared = "Content-Length: 16000000\r\n"
    chunked = "Transfer-Encoding: chunked\r\n"
    cases = [
        ("/runs", declared, "", 401),
        ("/claims", chunked, "", 401),
        ("/runs/r1/phases/p1/result", declared, "Bearer not-a-token-of-this-server", 401),
        ("/runs", declared, f"Bearer {WORKER_TOKEN}", 403),
        ("/approvals/1/approve", chunked, f"Bearer {WORKER_TOKEN}", 403),
    ]
    for path, framing, token, status in cases:
        head = framing + (f"Authorization: {token}\r\n" if token else "")
        status_line, answer = _answer_while_sending(
            server, head, b"4000\r\n[" if framing == chunked else b"[", path, "application/json"
        )
        assert status_line.startswith(f"HTTP/1.1 {status} "), (path, token, status_line, answer)
        assert answer["error"] == ("Unauthorized" if status == 401 else "Forbidden"), answer
    allowed = _call(server, "post", "/claims", WORKER_TOKEN)
    assert allowed.status_code == 422, allowed.text  # a known token's body is read and judged


def test_a_client_hanging_up_mid_form_is_one_log_line_not_a_traceback(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as conn:
        conn.sendall(
            f"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
            "token=".encode()
        )
    wait_for(lambda: "request_abandoned" in server.output())
    assert "path=/ui/login" in server.output()
    assert "Traceback" not in server.output() and "request_failed" not in server.output()


def test_a_content_length_with_blanks_around_it_is_the_number(server: Server) -> None:
    """``Content-Length: 7 `` (HTTP allows blanks around a field's value; uvicorn passes
    them on) was refused as "bad Content-Length header", a 400 no client could explain."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as conn:
        conn.sendall(
            f"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length:  7 \t\r\n\r\n"
            "token=x".encode()
        )
        received = b"".join(iter(lambda: conn.recv(65536), b""))
    status_line = received.decode(errors="replace").partition("\r\n")[0]
    assert status_line.split()[1] not in ("400", "500"), received[-3000:]
    assert b"Content-Length" not in received.partition(b"\r\n\r\n")[2], received[-3000:]


def test_an_origin_that_is_no_url_is_a_403_not_a_500(server: Server) -> None:
    for path, form in (("/ui/login", {"token": OPERATOR_TOKEN}), ("/ui/logout", {"csrf": "x"})):
        for origin in ("http://[::1", "http://[x]"):
            refused = httpx.post(f"{server.url}{path}", data=form, headers={"Origin": origin})
            assert refused.status_code == 403, (path, origin, refused.text)
            assert "cross-site form refused" in refused.json()["detail"]
    assert "request_failed" not in server.output()


def test_a_body_without_a_token_is_refused_first_behind_a_root_path(tmp_path: Path) -> None:
    """Behind ``--root-path`` the request's path carries the prefix, which the router
    strips: the early token check must match routes the same way."""
    url = empty_sqlite(tmp_path / "autopack.db")
    env = clean_env(DATABASE_URL=url, **TOKENS)
    with Server(env, cwd=tmp_path, uvicorn_args=["--root-path", "/api"]) as server:
        head = "Content-Length: 16000000\r\n"
        status_line, answer = _answer_while_sending(server, head, b"[", "/runs", "application/json")
    assert status_line.startswith("HTTP/1.1 401 "), (status_line, answer)


def test_a_body_refused_before_it_is_read_ends_the_connection_so_no_more_of_it_is_taken(
    server: Server,
) -> None:
    """uvicorn reads and throws away the rest of a body nobody read, to serve the
    connection's next request: after its 401 (or 404, 405, 413) a client without a token
    could go on sending a chunked body for as long as it liked (131 MB in a few seconds,
    every byte received). The answer now closes the connection: sending more fails."""
    chunk = b"10000\r\n" + b"[" * 0x10000 + b"\r\n"
    cases = [
        ("/runs", "Transfer-Encoding: chunked\r\n", 401),
        ("/runs", "Transfer-Encoding: chunked\r\nAuthorization: Bearer not-a-token\r\n", 401),
        ("/claims", "Content-Length: 16000000\r\n", 401),
        ("/health", "Transfer-Encoding: chunked\r\n", 405),
        ("/no-such-route", "Transfer-Encoding: chunked\r\n", 404),
        ("/runs", "Content-Length: 99999999999\r\n", 413),
    ]
    for path, head, status in cases:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            received = _post_unfinished(conn, server, path, head, chunk, "application/json")
            assert received.startswith(f"HTTP/1.1 {status} ".encode()), (path, head, received)
            taken = 0
            with pytest.raises(OSError):  # the connection is gone: no more of it is taken
                while taken < 256 * 2**20:
                    conn.sendall(chunk)
                    taken += len(chunk)
    kept = httpx.Client(headers={"Authorization": f"Bearer {WORKER_TOKEN}"})
    with kept:  # a body the server reads keeps its connection for the next request
        answered = kept.post(f"{server.url}/claims", json={"worker_id": "w"})
        assert answered.status_code == 204, answered.text
        assert "close" not in answered.headers.get("connection", "")
