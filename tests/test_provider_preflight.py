"""Settings no LLM call can succeed with are refused before a drain claims anything.

A stopped Ollama (``OPENAI_BASE_URL`` at a port nothing listens on), a mistyped
``ANTHROPIC_BASE_URL`` or a key the server refuses: each drain went on to claim every phase
of its run, failed each (a refused key at once, an unreachable server after its retries),
and exited 1 with the whole run FAILED. A drain never retries a FAILED phase, so after
fixing the one setting the user had to requeue every phase by hand. The model list
(``GET /models``) is asked first; its answer is exit 2 naming the setting, the run is left
as it was, and the same drain with the setting fixed does the work.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.executor_support import (
    create_run,
    drain_process,
    env_for,
    files,
    on_branch,
    phase,
    rows,
    run_file,
)
from tests.fakes.llm_wire import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    RETRY_NOW,
    Reply,
    Seen,
    WireServer,
    openai_completion,
)
from tests.llm.support import FLAVOURS
from tests.support import cli, free_port, wait_for

DRAIN = ("drain", "run", "--run-id", "exec-run", "--auditor", "off")


def _provider(name: str, url: str, key: str = "test-key") -> dict[str, str]:
    if name == "anthropic":
        return {"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": url}
    return {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": f"{url}/v1"}


def _three_phases(tmp_path: Path) -> tuple[str, dict[str, str], tuple[str, str]]:
    """A run of phases p1-p3 in a new SQLite database: its URL, environment and the
    drain's workspace option."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url)
    spec = [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/b.py"]), phase("p3", ["pkg/c.py"])]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    return sqlite_url, env, ("--workspace", str(tmp_path / "ws"))


@pytest.mark.parametrize("failure", ["unreachable", "key refused"])
@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_a_provider_no_call_can_reach_is_exit_2_and_the_run_waits_for_the_fix(
    name: str, failure: str, tmp_path: Path
) -> None:
    flavour = FLAVOURS[name]
    sqlite_url, env, workspace = _three_phases(tmp_path)
    with WireServer() as wire:
        if failure == "unreachable":
            address = f"http://127.0.0.1:{free_port()}"
            setting = f"unreachable at {address}/v1/models"  # and the setting's name:
            wrong = _provider(name, address)
        else:
            setting = f"{name.upper()}_API_KEY is refused by the server at"
            wire.models_status = 401
            wrong = _provider(name, wire.url, key="wrong-key")
        refused = cli(*DRAIN, *workspace, env={**env, **wrong}, cwd=tmp_path)
        doctor = cli("doctor", env={**env, **wrong}, cwd=tmp_path)
        assert wire.seen(flavour.path) == []  # not one call was made

        wire.models_status = None
        for answer in (files(a_py="A = 1\n"), files(b_py="B = 1\n"), files(c_py="C = 1\n")):
            wire.script(flavour.path, Reply(200, flavour.body(answer)))
        fixed = cli(*DRAIN, *workspace, env={**env, **_provider(name, wire.url)}, cwd=tmp_path)

    assert refused.returncode == 2, refused.stderr[-3000:]
    said = " ".join(refused.stderr.split())
    assert setting in said and "nothing was claimed" in said, said
    assert f"{name.upper()}_{'BASE_URL=' if failure == 'unreachable' else 'API_KEY'}" in said
    assert "Traceback" not in refused.stderr
    doctor_said = " ".join((doctor.stdout + doctor.stderr).split())
    assert doctor.returncode == 2 and setting in doctor_said, doctor_said
    assert "claimed" not in doctor_said, "doctor claims nothing: it says so of nothing"
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    attempts = rows(sqlite_url, "SELECT phase_id, attempt, outcome FROM phase_attempts")
    assert sorted((a["phase_id"], a["attempt"], a["outcome"]) for a in attempts) == [
        ("p1", 1, "COMPLETE"),
        ("p2", 1, "COMPLETE"),
        ("p3", 1, "COMPLETE"),
    ]
    assert on_branch(tmp_path / "ws", "pkg/c.py") == "C = 1\n"


@pytest.mark.parametrize("name", sorted(FLAVOURS))
@pytest.mark.parametrize("listing", ["none", "scope"])
def test_a_model_list_that_says_nothing_of_the_calls_is_no_refusal(
    name: str, listing: str, tmp_path: Path
) -> None:
    """Not every server has ``GET /models`` (404), and an OpenAI key restricted to calls is
    refused the list only (401, "Missing scopes: api.model.read"): neither says the calls
    will fail, so they are made."""
    flavour = FLAVOURS[name]
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    with WireServer() as wire:
        if listing == "scope":
            wire.models_status = 401
            wire.models_refusal = (
                "You have insufficient permissions. Missing scopes: api.model.read"
            )
        wire.script(flavour.path, Reply(200, flavour.body(files(a_py="A = 1\n"))))
        drained = cli(
            *DRAIN,
            *("--workspace", str(tmp_path / "ws")),
            env={**env, **_provider(name, wire.url)},
            cwd=tmp_path,
        )
    assert drained.returncode == 0, drained.stderr[-3000:]
    assert on_branch(tmp_path / "ws", "pkg/a.py") == "A = 1\n"


def test_a_base_url_without_v1_at_a_server_that_has_it_is_exit_2_naming_the_url(
    tmp_path: Path,
) -> None:
    """``OPENAI_BASE_URL=http://127.0.0.1:11434``, Ollama's address without ``/v1``: every
    call was a 404 and every phase FAILED. The server lists its models under ``/v1``, so
    the drain names the URL to set instead; with it, the same drain does the work."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL="qwen2.5-coder:32b")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    workspace = ("--workspace", str(tmp_path / "ws"))
    with WireServer() as wire:
        wire.models = ["qwen2.5-coder:32b"]
        refused = cli(*DRAIN, *workspace, env={**env, "OPENAI_BASE_URL": wire.url}, cwd=tmp_path)
        answer = openai_completion(files(a_py="A = 1\n"), model="qwen2.5-coder:32b")
        wire.script(OPENAI_PATH, Reply(200, answer))
        fixed = cli(
            *DRAIN, *workspace, env={**env, "OPENAI_BASE_URL": f"{wire.url}/v1"}, cwd=tmp_path
        )
    assert refused.returncode == 2, refused.stderr[-3000:]
    said = " ".join(refused.stderr.split())
    assert f"set OPENAI_BASE_URL={wire.url}/v1" in said, said
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert rows(sqlite_url, "SELECT attempt, outcome FROM phase_attempts") == [
        {"attempt": 1, "outcome": "COMPLETE"}
    ]


@pytest.mark.parametrize(
    "setting", ["OPENAI_BASE_URL=http://[::1", "ANTHROPIC_BASE_URL=http://127.0.0.1:abc"]
)
@pytest.mark.parametrize("command", ["drain", "doctor"])
def test_a_base_url_that_does_not_parse_is_refused_naming_it(
    setting: str, command: str, tmp_path: Path
) -> None:
    """``http://[::1`` (an IPv6 address missing its bracket) or a port that is no number:
    a ValueError traceback from the URL parser, in the drain and in doctor alike."""
    name, value = setting.split("=", 1)
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(
        sqlite_url,
        **{name: value, "ANTHROPIC_API_KEY": "k"} if "ANTHROPIC" in name else {name: value},
    )
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    args = (*DRAIN, "--workspace", str(tmp_path / "ws")) if command == "drain" else ("doctor",)
    result = cli(*args, env=env, cwd=tmp_path)
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, said[-3000:]
    assert f"{name}={value!r} is not a URL" in said and "Traceback" not in said, said[-3000:]
    assert rows(sqlite_url, "SELECT state FROM phases") == [{"state": "QUEUED"}]


def test_an_anthropic_base_url_ending_in_v1_is_exit_2_naming_the_url(tmp_path: Path) -> None:
    """``ANTHROPIC_BASE_URL=http://host/v1``: the SDK adds ``/v1`` itself, so every call was
    a 404 at ``/v1/v1/messages`` and every phase FAILED; with the URL it names, the same
    drain does the work."""
    flavour = FLAVOURS["anthropic"]
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    workspace = ("--workspace", str(tmp_path / "ws"))
    with WireServer() as wire:
        wire.models = ["claude-sonnet-5-5"]
        doubled = _provider("anthropic", f"{wire.url}/v1")
        refused = cli(*DRAIN, *workspace, env={**env, **doubled}, cwd=tmp_path)
        wire.script(flavour.path, Reply(200, flavour.body(files(a_py="A = 1\n"))))
        fixed = cli(
            *DRAIN, *workspace, env={**env, **_provider("anthropic", wire.url)}, cwd=tmp_path
        )
    assert refused.returncode == 2, refused.stderr[-3000:]
    said = " ".join(refused.stderr.split())
    assert f"set ANTHROPIC_BASE_URL={wire.url}." in said and "Traceback" not in said, said
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert rows(sqlite_url, "SELECT attempt, outcome FROM phase_attempts") == [
        {"attempt": 1, "outcome": "COMPLETE"}
    ]


@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_a_provider_gone_mid_drain_stops_the_drain_and_fails_no_phase(
    name: str, tmp_path: Path
) -> None:
    """The server answered the model list and the first phase, then went away (a laptop
    off the network, Ollama stopped): every phase after it failed its tries ``llm_error
    … unreachable`` and the run with them. Now the drain waits for it a while
    (AUTOPACK_LLM_UNREACHABLE_SECONDS), then stops, handing the phase back unspent."""
    flavour = FLAVOURS[name]
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_LLM_UNREACHABLE_SECONDS="3")
    create_run(
        run_file(tmp_path, [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/b.py"])]), env, tmp_path
    )
    answered = threading.Event()
    with WireServer() as wire:
        p1 = flavour.body(files(a_py="A = 1\n"))
        # the connection closes with p1's answer, as a server going away closes its own
        wire.script(flavour.path, Reply(200, p1, {"Connection": "close"}, gate=answered))
        args = [*DRAIN[1:], "--workspace", str(tmp_path / "ws")]
        draining = drain_process(*args, env={**env, **_provider(name, wire.url)}, cwd=tmp_path)
        wait_for(lambda: wire.seen(flavour.path), timeout=60)  # p1's call, held
    answered.set()  # p1 gets its answer; nothing listens for p2's calls any more
    _, stderr = draining.communicate(timeout=180)
    assert draining.returncode == 2, stderr[-3000:]
    said = " ".join(stderr.split())
    assert "ProviderUnreachable" in said and "handed phase p2 back" in said, said[-3000:]
    assert "Traceback" not in stderr
    states = rows(sqlite_url, "SELECT phase_id, state FROM phases ORDER BY phase_id")
    assert [(s["phase_id"], s["state"]) for s in states] == [("p1", "COMPLETE"), ("p2", "QUEUED")]
    [p2] = rows(sqlite_url, "SELECT stop_reason FROM phase_attempts WHERE phase_id = 'p2'")
    assert p2["stop_reason"] == "interrupted"  # spent no retry


@pytest.mark.parametrize(
    ("status", "kind", "fix"),
    [
        (401, "authentication_error", "set a working API key"),
        (404, "not_found_error", "check the model's name"),
    ],
)
@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_a_key_or_model_refused_mid_drain_stops_the_drain_and_fails_no_phase(
    name: str, status: int, kind: str, fix: str, tmp_path: Path
) -> None:
    """The key was revoked (or ran out of credit) after the model list answered and the
    first phase was done, or the server does not know the model's name (its list leaves
    out aliases): each later phase failed all its tries with the same refusal, and the
    run with them. Every call sends the same key and name, so the drain stops at the
    first refusal instead, handing its phase back unspent, and the failed call is still
    recorded."""
    flavour = FLAVOURS[name]
    sqlite_url, env, workspace = _three_phases(tmp_path)
    with WireServer() as wire:
        wire.script(
            flavour.path,
            Reply(200, flavour.body(files(a_py="A = 1\n"))),
            Reply(status, flavour.error(kind, "refused by the test")),
        )
        refused = cli(*DRAIN, *workspace, env={**env, **_provider(name, wire.url)}, cwd=tmp_path)
        calls = len(wire.seen(flavour.path))
    assert refused.returncode == 2, refused.stderr[-3000:]
    said = " ".join(refused.stderr.split())
    assert "ProviderRefused" in said and f"{status}" in said, said[-3000:]
    assert "handed phase p2 back" in said and fix in said, said[-3000:]
    assert "Traceback" not in refused.stderr
    assert calls == 2  # no third call: p3 was never claimed
    states = rows(sqlite_url, "SELECT phase_id, state FROM phases ORDER BY phase_id")
    assert [(s["phase_id"], s["state"]) for s in states] == [
        ("p1", "COMPLETE"),
        ("p2", "QUEUED"),
        ("p3", "QUEUED"),
    ]
    [p2] = rows(sqlite_url, "SELECT stop_reason, error FROM phase_attempts WHERE phase_id = 'p2'")
    assert p2["stop_reason"] == "interrupted"  # spent no retry
    assert f" {status}" in p2["error"] and "Ctrl-C" not in p2["error"], p2  # why, not a signal
    failed_calls = rows(sqlite_url, "SELECT phase_id FROM llm_usage_events WHERE NOT success")
    assert [c["phase_id"] for c in failed_calls] == ["p2"], failed_calls


BUSY = {"anthropic": (529, "overloaded_error"), "openai": (429, "rate_limit_exceeded")}


@pytest.mark.parametrize("outlasts", [False, True], ids=["passes", "outlasts the patience"])
@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_a_busy_provider_is_waited_for_and_spends_no_phase_retry(
    name: str, outlasts: bool, tmp_path: Path
) -> None:
    """Ten executors on one key hit its rate limit (or the provider was overloaded) for
    longer than the SDK's two quick retries: each phase failed its tries ``llm_error``,
    and the run with them. Now a busy answer (429/529) is waited for like an unreachable
    provider (AUTOPACK_LLM_UNREACHABLE_SECONDS): a limit that passes costs the phase
    nothing, one that outlasts the wait stops the drain with the phase handed back."""
    flavour = FLAVOURS[name]
    status, kind = BUSY[name]
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_LLM_UNREACHABLE_SECONDS="3")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"], max_attempts=1)]), env, tmp_path)
    busy = Reply(status, flavour.error(kind, "slow down"), RETRY_NOW)
    # 3 requests a call (the SDK's 2 retries) and 3 calls (after waits of 2 s and 1 s)
    replies = (
        [busy] * 9 if outlasts else [busy] * 4 + [Reply(200, flavour.body(files(a_py="A = 1\n")))]
    )
    with WireServer() as wire:
        wire.script(flavour.path, *replies)
        drained = cli(
            *DRAIN,
            *("--workspace", str(tmp_path / "ws")),
            env={**env, **_provider(name, wire.url)},
            cwd=tmp_path,
        )
        calls = len(wire.seen(flavour.path))
    assert calls == len(replies), drained.stderr[-3000:]
    said = " ".join(drained.stderr.split())
    assert "Traceback" not in drained.stderr
    [p1] = rows(sqlite_url, "SELECT state FROM phases")
    attempts = rows(sqlite_url, "SELECT stop_reason FROM phase_attempts")
    busy_rows = rows(sqlite_url, "SELECT error_class FROM llm_usage_events WHERE NOT success")
    if outlasts:
        assert drained.returncode == 2, said[-3000:]
        assert "ProviderBusy" in said and "handed phase p1 back" in said, said[-3000:]
        assert (p1["state"], attempts) == ("QUEUED", [{"stop_reason": "interrupted"}])
        assert len(busy_rows) == 3  # each of the drain's calls, after the SDK's retries
    else:
        assert drained.returncode == 0, said[-3000:]
        assert (p1["state"], attempts) == ("COMPLETE", [{"stop_reason": "completed"}])
        assert len(busy_rows) == 1


REFUSALS = {
    "an HTML page with a NUL": (404, "<html><body><h1>404 Not Found</h1>\x00</body></html>"),
    "a message with a lone surrogate": (
        401,
        '{"type": "error", "error": {"type": "authentication_error", "message": "bad \\ud800"},'
        ' "message": "bad \\ud800 key"}',
    ),
}


@pytest.mark.parametrize("body", sorted(REFUSALS))
@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_a_refusal_whose_text_a_column_cannot_hold_still_hands_the_phase_back(
    name: str, body: str, tmp_path: Path
) -> None:
    """A 404 page holding a NUL byte (or an OpenAI-compatible server's message holding a
    lone surrogate, which JSON's escapes can spell): the hand-back quoting it was refused
    by the executor's own validation, the phase stayed EXECUTING until its lease expired,
    and the drain said "invalid input: error: contains a NUL byte" instead of the refusal."""
    flavour = FLAVOURS[name]
    status, page = REFUSALS[body]
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    with WireServer() as wire:
        wire.script(flavour.path, Reply(status, page))
        refused = cli(
            *DRAIN,
            *("--workspace", str(tmp_path / "ws")),
            env={**env, **_provider(name, wire.url)},
            cwd=tmp_path,
        )
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2, said[-3000:]
    assert "ProviderRefused" in said and "handed phase p1 back" in said, said[-3000:]
    assert "Traceback" not in refused.stderr and "invalid input" not in said, said[-3000:]
    assert rows(sqlite_url, "SELECT state FROM phases") == [{"state": "QUEUED"}]
    [p1] = rows(sqlite_url, "SELECT stop_reason, error FROM phase_attempts")
    assert p1["stop_reason"] == "interrupted" and f" {status}" in p1["error"], p1
    [call] = rows(sqlite_url, "SELECT error_message FROM llm_usage_events")
    assert f"{status}" in call["error_message"], call


def test_a_refusal_ends_another_workers_wait_for_a_busy_provider(tmp_path: Path) -> None:
    """``--concurrency 2``: one phase's call was refused (401) while the other's worker
    waited out a busy provider. The drain had stopped claiming, but the waiting worker
    went on for all of AUTOPACK_LLM_UNREACHABLE_SECONDS (and called again) before the
    drain could exit. Now the stop ends the wait: both phases are handed back unspent."""
    flavour = FLAVOURS["anthropic"]
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_LLM_UNREACHABLE_SECONDS="600")
    spec = [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/b.py"])]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    waiting = threading.Event()
    with WireServer() as wire:
        busy = Reply(529, flavour.error("overloaded_error", "slow down"), RETRY_NOW)
        refused = Reply(401, flavour.error("authentication_error", "revoked"), gate=waiting)

        def respond(seen: Seen) -> Reply:
            return busy if "pkg/a.py" in json.dumps(seen.body) else refused

        wire.respond = respond
        args = [*DRAIN[1:], "--concurrency", "2", "--workspace", str(tmp_path / "ws")]
        draining = drain_process(
            *args, env={**env, **_provider("anthropic", wire.url)}, cwd=tmp_path
        )
        # p1's call was tried three times (the SDK's retries): its worker waits now
        wait_for(lambda: sum("pkg/a.py" in json.dumps(s.body) for s in wire.seen()) >= 3, 60)
        waiting.set()  # p2's call is refused
        _, stderr = draining.communicate(timeout=120)
    said = " ".join(stderr.split())
    assert draining.returncode == 2, said[-3000:]
    assert "ProviderRefused" in said and "Traceback" not in stderr, said[-3000:]
    states = rows(sqlite_url, "SELECT phase_id, state FROM phases ORDER BY phase_id")
    assert [(s["phase_id"], s["state"]) for s in states] == [("p1", "QUEUED"), ("p2", "QUEUED")]
    stopped = rows(sqlite_url, "SELECT phase_id, stop_reason, error FROM phase_attempts")
    assert {(a["phase_id"], a["stop_reason"]) for a in stopped} == {
        ("p1", "interrupted"),
        ("p2", "interrupted"),
    }
    [p1] = [a for a in stopped if a["phase_id"] == "p1"]
    assert "The drain was stopping" in p1["error"], p1


def test_an_account_out_of_credit_is_refused_at_once_not_waited_for(tmp_path: Path) -> None:
    """OpenAI answers an account without credit with a 429 (``insufficient_quota``): read
    as a rate limit, the drain waited out its patience and then said to raise it. No
    wait ends it: the drain stops at once, saying so, the phase handed back unspent."""
    sqlite_url, env, workspace = _three_phases(tmp_path)
    out = {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    with WireServer() as wire:
        wire.script(OPENAI_PATH, *[Reply(429, out, RETRY_NOW)] * 3)  # the SDK's 2 retries
        env = {**env, "AUTOPACK_LLM_UNREACHABLE_SECONDS": "600"}
        drained = cli(
            *DRAIN, *workspace, env={**env, **_provider("openai", wire.url)}, cwd=tmp_path
        )
        calls = len(wire.seen(OPENAI_PATH))
    said = " ".join(drained.stderr.split())
    assert drained.returncode == 2, said[-3000:]
    assert "ProviderRefused" in said and "out of credit" in said, said[-3000:]
    assert calls == 3  # the SDK's own tries, and no more
    states = rows(sqlite_url, "SELECT state FROM phases ORDER BY phase_id")
    assert [s["state"] for s in states] == ["QUEUED"] * 3


def test_a_probe_meeting_a_refused_key_is_exit_2_with_its_phase_handed_back(
    tmp_path: Path,
) -> None:
    """`autopack probe` drains its phase through `drain phase`: the refusal stops it the
    same way (exit 2, the phase QUEUED, no retry spent), not a probe failure of its own."""
    sqlite_url, env, _ = _three_phases(tmp_path)
    refused = FLAVOURS["anthropic"].error("authentication_error", "invalid x-api-key")
    with WireServer() as wire:
        wire.script(ANTHROPIC_PATH, Reply(401, refused))
        probed = cli(
            *("probe", "--run-id", "exec-run", "--phase-id", "p1"),
            env={**env, **_provider("anthropic", wire.url)},
            cwd=tmp_path,
        )
    said = " ".join(probed.stderr.split())
    assert probed.returncode == 2, said[-3000:]
    assert "ProviderRefused" in said and "Traceback" not in probed.stderr, said[-3000:]
    [p1] = rows(sqlite_url, "SELECT state FROM phases WHERE phase_id = 'p1'")
    [attempt] = rows(sqlite_url, "SELECT stop_reason FROM phase_attempts")
    assert (p1["state"], attempt["stop_reason"]) == ("QUEUED", "interrupted")
