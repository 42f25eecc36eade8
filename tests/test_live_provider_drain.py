"""A drain with the real ``anthropic`` / ``openai`` SDK clients: every call becomes a usage row.

The executor runs as a real subprocess configured only through the environment a user
would set (``ANTHROPIC_API_KEY`` + ``ANTHROPIC_BASE_URL``, or an OpenAI-compatible
``OPENAI_BASE_URL``); the far end is the loopback wire-format server. The Builder's first
call fails (a 500 the SDK does not retry), the second is rate limited once and then
answers (the SDK's own retry), and the LLM Auditor approves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopack.llm.pricing import PriceFile
from tests.executor_support import (
    attempts,
    create_run,
    drain,
    env_for,
    files,
    git,
    on_branch,
    phase,
    repository,
    rows,
    run_file,
)
from tests.fakes.llm_wire import OPENAI_PATH, RETRY_NOW, Reply, WireServer, openai_completion
from tests.llm.support import FLAVOURS, Flavour
from tests.support import cli, free_port

VERDICT = json.dumps({"approved": True, "issues": [], "summary": "mod.py does what p1 asks."})


def _provider_env(flavour: Flavour, wire: WireServer) -> dict[str, str]:
    if flavour.name == "anthropic":
        return {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": wire.url}
    return {"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": f"{wire.url}/v1"}


@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_failed_retried_and_auditor_calls_are_all_recorded(name: str, tmp_path: Path) -> None:
    flavour = FLAVOURS[name]
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    with WireServer() as wire:
        wire.script(
            flavour.path,
            Reply(500, flavour.error("api_error", "overloaded"), {"x-should-retry": "false"}),
            Reply(429, flavour.error("rate_limit_error", "slow down"), RETRY_NOW),
            Reply(200, flavour.body(files(mod_py="VALUE = 42\n"), output_tokens=30)),
            Reply(200, flavour.body(VERDICT, output_tokens=12)),
        )
        result = drain(
            "phase",
            *("--run-id", "exec-run", "--phase-id", "p1", "--auditor", "llm"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, **_provider_env(flavour, wire)},
            cwd=tmp_path,
        )
        requests = wire.seen(flavour.path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(requests) == 4
    assert on_branch(tmp_path / "ws", "pkg/mod.py") == "VALUE = 42\n"

    usage = rows(
        sqlite_url,
        "SELECT attempt, role, provider, success, error_class, output_tokens, cost_usd "
        "FROM llm_usage_events ORDER BY id",
    )
    assert [(u["attempt"], u["role"], u["provider"], bool(u["success"])) for u in usage] == [
        (1, "builder", name, False),
        (2, "builder", name, True),
        (2, "auditor", name, True),
    ]
    assert usage[0]["error_class"] == "InternalServerError"
    assert [u["output_tokens"] for u in usage[1:]] == [30, 12]
    assert all(u["cost_usd"] is not None and u["cost_usd"] > 0 for u in usage[1:])
    attempts = rows(sqlite_url, "SELECT attempt, stop_reason FROM phase_attempts ORDER BY attempt")
    assert [(a["attempt"], a["stop_reason"]) for a in attempts] == [
        (1, "llm_error"),
        (2, "completed"),
    ]


def test_context_read_through_a_symlink_leaving_the_workspace_is_not_sent(tmp_path: Path) -> None:
    """A repository may hold symlinks (``pkg/ctx/env -> /proc/self/environ``, ``-> ~``): the
    Builder's prompt read what they point at, so the executor's environment, or any file
    it can read, went to the LLM provider as read-only context or an existing deliverable.
    A deliverable that is such a link cannot be written by any answer: its phase fails
    ``deliverable_unwritable`` before a prompt is made."""
    flavour = FLAVOURS["anthropic"]
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE\n")
    ws = repository(tmp_path / "ws", {"pkg/ctx/ok.txt": "VISIBLE-CONTEXT\n"})
    (ws / "pkg/ctx/env").symlink_to("/proc/self/environ")
    (ws / "pkg/ctx/secret").symlink_to(secret)
    (ws / "pkg/ctx/home").symlink_to(tmp_path)  # a directory outside
    (ws / "pkg/leak.py").symlink_to(secret)  # an "existing deliverable"
    git("add", "-A", cwd=ws)
    git("commit", "-qm", "links", cwd=ws)
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, EXECUTOR_ONLY_SECRET="ENVIRONMENT-SECRET-VALUE")
    specs = [
        phase(
            name,
            [deliverable],
            scope={
                "paths": ["pkg/"],
                "deliverables": [deliverable],
                "read_only_context": ["pkg/ctx"],
            },
        )
        for name, deliverable in (("p1", "pkg/mod.py"), ("p2", "pkg/leak.py"))
    ]
    create_run(run_file(tmp_path, specs), env, tmp_path)
    with WireServer() as wire:
        wire.script(flavour.path, Reply(200, flavour.body(files(mod_py="V = 1\n"))))
        result = drain(
            *("run", "--run-id", "exec-run", "--auditor", "off"),
            *("--workspace", str(ws)),
            env={**env, **_provider_env(flavour, wire)},
            cwd=tmp_path,
        )
        sent = json.dumps([request.body for request in wire.seen(flavour.path)])
    assert "VISIBLE-CONTEXT" in sent
    assert "ENVIRONMENT-SECRET-VALUE" not in sent and "TOP-SECRET-VALUE" not in sent
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert {a["stop_reason"] for a in attempts(sqlite_url, "p2")} == {"deliverable_unwritable"}


def test_calls_of_a_model_without_a_price_are_not_summed_as_zero_dollars(tmp_path: Path) -> None:
    """A local model (``qwen2.5-coder:32b`` on Ollama) has no price: its calls are recorded
    with cost NULL, but the drain's summary said ``cost $0.0000``, as if they were free."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL="qwen2.5-coder:32b")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    drain = ("drain", "phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "off")
    with WireServer() as wire:
        model = "qwen2.5-coder:32b"
        answer = openai_completion(files(mod_py="V = 1\n"), model=model)
        wire.script(OPENAI_PATH, Reply(200, answer))
        local = {**env, **_provider_env(FLAVOURS["openai"], wire)}
        result = cli(*drain, "--workspace", str(tmp_path / "ws"), env=local, cwd=tmp_path)
        # A later drain, with nothing left to do, said the run's cost as $0.0000 alone.
        again = cli(*drain, "--workspace", str(tmp_path / "ws"), env=local, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows(sqlite_url, "SELECT model, cost_usd FROM llm_usage_events") == [
        {"model": model, "cost_usd": None}
    ]
    summary = " ".join(result.stdout.split())
    assert "1 call(s) of models without a price: cost unknown" in summary, summary
    assert again.returncode == 0, again.stderr[-3000:]
    summary = " ".join(again.stdout.split())
    assert "cost $0.0000 + 1 call(s) of models without a price" in summary, summary
    listed = cli("run", "list", "--json", env=env, cwd=tmp_path)
    assert [r["unpriced_calls"] for r in json.loads(listed.stdout)["items"]] == [1]
    for view in (("run", "list"), ("run", "show", "exec-run")):  # $0.00 alone there too
        shown = " ".join(cli(*view, env=env, cwd=tmp_path).stdout.split())
        assert "$0.00 + 1 unpriced call(s)" in shown, shown


LOCAL_MODEL = "qwen2.5-coder:32b"
PRICE_FILE = {"version": "local", "models": {LOCAL_MODEL: {"input": 0, "output": 0}}}


@pytest.mark.parametrize(
    "case", ["capped", "phase-capped", "uncapped", "priced", "free", "answered-as"]
)
def test_a_cost_cap_over_a_model_without_a_price_is_warned_about_once(
    case: str, tmp_path: Path
) -> None:
    """A local model's calls cost NULL, which no cost cap counts: the run's cap (and
    --phase-cost-cap) silently could not stop its spending. The drain now says so once,
    naming the model, the cap and the two ways out, and still drains (free local models
    are fine); with no cost cap, once priced or once declared free (AUTOPACK_FREE_MODELS,
    recorded at $0), it says nothing. Only the configured names were checked: an answer
    under another name (the one priced) went unmentioned, so it is warned about when it
    first comes back."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    extra = {"AUTOPACK_BUILDER_MODEL": LOCAL_MODEL}
    if case == "priced":
        (tmp_path / "prices.json").write_text(json.dumps(PRICE_FILE))
        extra["AUTOPACK_PRICE_TABLE"] = str(tmp_path / "prices.json")
    if case == "free":
        extra["AUTOPACK_FREE_MODELS"] = f"llama3.2:3b, {LOCAL_MODEL}"
    if case == "answered-as":
        extra["AUTOPACK_BUILDER_MODEL"] = "gpt-6-luna"  # priced, but answered as LOCAL_MODEL
    env = env_for(sqlite_url, **extra)
    budgets = (
        {"cost_cap_usd": None} if case in ("uncapped", "phase-capped") else {"cost_cap_usd": 7.5}
    )
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])], budgets=budgets), env, tmp_path)
    args = ["--run-id", "exec-run", "--phase-id", "p1", "--auditor", "off"]
    if case == "phase-capped":
        args += ["--phase-cost-cap", "0.25"]
    with WireServer() as wire:
        answer = openai_completion(files(mod_py="V = 1\n"), model=LOCAL_MODEL)
        wire.script(OPENAI_PATH, Reply(200, answer))
        result = cli(
            *("drain", "phase", *args, "--workspace", str(tmp_path / "ws")),
            env={**env, **_provider_env(FLAVOURS["openai"], wire)},
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "has no price" in line]
    # said once: the log line about the missing price only where no warning said it
    # first (an answer's own model name is priced, and logged, before its warning)
    logged = case in ("uncapped", "answered-as")
    assert ("llm_price_unknown" in result.stderr) == logged, result.stderr
    if case in ("uncapped", "priced", "free"):
        assert warnings == [], warnings
        cost = None if case == "uncapped" else 0.0
        assert rows(sqlite_url, "SELECT cost_usd FROM llm_usage_events") == [{"cost_usd": cost}]
        if case != "uncapped":
            assert "without a price" not in result.stdout, result.stdout
        return
    [warning] = warnings
    cap = "--phase-cost-cap $0.25" if case == "phase-capped" else "the run's cost_cap_usd $7.5"
    assert f"model {LOCAL_MODEL} has no price" in warning and cap in warning, warning
    assert "token caps still apply" in warning and "AUTOPACK_PRICE_TABLE=FILE" in warning
    # the advice works: the example price file it shows is one the table accepts, and
    # the free declaration it names is the one the "free" case drains with
    example = json.loads(warning.split("e.g. ", 1)[1].rsplit(", and set", 1)[0])
    PriceFile.model_validate(example)
    assert f"AUTOPACK_FREE_MODELS={LOCAL_MODEL}." in warning, warning


def test_a_priced_model_is_never_declared_free(tmp_path: Path) -> None:
    """AUTOPACK_FREE_MODELS naming a model the table prices (a typo of intent) would make
    its real spending $0 under every cap: refused, exit 2, naming the setting and model."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_FREE_MODELS="openai/gpt-6-luna")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    result = cli(
        *("drain", "phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "off"),
        *("--workspace", str(tmp_path / "ws")),
        env={**env, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    said = " ".join(result.stderr.split())
    assert "AUTOPACK_FREE_MODELS names openai/gpt-6-luna" in said, said
    assert "Traceback" not in result.stderr
    assert rows(sqlite_url, "SELECT count(*) AS n FROM phase_attempts") == [{"n": 0}]


def test_a_local_server_with_one_model_named_answers_the_auditor_too(tmp_path: Path) -> None:
    """The README's Ollama recipe sets AUTOPACK_BUILDER_MODEL only: the LLM Auditor then
    asked the local server for the provider's default model (gpt-6-luna), which it does
    not serve, and every phase failed with "model not found". The named model now serves
    both roles there, and `doctor` names the model of each role."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL=LOCAL_MODEL)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    with WireServer() as wire:
        wire.script(
            OPENAI_PATH,
            Reply(200, openai_completion(files(mod_py="V = 1\n"), model=LOCAL_MODEL)),
            Reply(200, openai_completion(VERDICT, model=LOCAL_MODEL)),
        )
        local = {"OPENAI_BASE_URL": f"{wire.url}/v1"}
        result = drain(
            *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "llm"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, **local},
            cwd=tmp_path,
        )
        asked = [request.body["model"] for request in wire.seen(OPENAI_PATH)]
        doctor = cli("doctor", env={**env, **local}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert asked == [LOCAL_MODEL, LOCAL_MODEL]
    assert f"builder {LOCAL_MODEL}, auditor {LOCAL_MODEL}" in doctor.stdout, doctor.stdout


def test_the_telemetry_report_counts_unknown_costs_and_only_those(tmp_path: Path) -> None:
    """`telemetry report` said "(1 unpriced)" of a priced model's refused call (a 404
    reports no tokens: it cost nothing), and its total "billed cost $0.0000" under the
    table left out the calls whose cost is unknown without a word."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(
        sqlite_url, AUTOPACK_BUILDER_MODEL=LOCAL_MODEL, AUTOPACK_AUDITOR_MODEL="gpt-6-luna"
    )
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    with WireServer() as wire:
        wire.script(
            OPENAI_PATH,
            Reply(200, openai_completion(files(mod_py="V = 1\n"), model=LOCAL_MODEL)),
            Reply(404, FLAVOURS["openai"].error("not_found_error", "model not found")),
        )
        drained = drain(
            *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "llm"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, "OPENAI_BASE_URL": f"{wire.url}/v1"},
            cwd=tmp_path,
        )
    assert drained.returncode == 2, drained.stderr[-3000:]  # the auditor's model refused
    report = cli("telemetry", "report", "--json", env=env, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    usage = {row["model"]: row for row in json.loads(report.stdout)["usage"]}
    assert usage[LOCAL_MODEL]["unpriced_calls"] == 1
    assert (usage["gpt-6-luna"]["calls"], usage["gpt-6-luna"]["unpriced_calls"]) == (1, 0)
    shown = cli("telemetry", "report", env=env, cwd=tmp_path)
    said = " ".join(shown.stdout.split())
    assert said.count("unpriced") == 1, said
    assert "billed cost $0.0000 + 1 call(s) of models without a price: cost unknown" in said


@pytest.mark.parametrize("sized", [False, True])
def test_a_phase_over_an_assumed_output_ceiling_is_not_called_too_large(
    sized: bool, tmp_path: Path
) -> None:
    """A two-file phase on a local model printed "p1 needs about 10863 output tokens, more
    than the model's largest answer: split this phase": the number is the budget for 2 %
    truncation, not a need, and 8192 was only the default for a model the price table
    does not size. It is now said as both; a price file's max_output_tokens ends it."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    extra = {"AUTOPACK_BUILDER_MODEL": LOCAL_MODEL}
    if sized:
        sized_as = {"input": 0, "output": 0, "max_output_tokens": 32768}
        sizes = {"version": "local", "models": {LOCAL_MODEL: sized_as}}
        (tmp_path / "prices.json").write_text(json.dumps(sizes))
        extra["AUTOPACK_PRICE_TABLE"] = str(tmp_path / "prices.json")
    env = env_for(sqlite_url, **extra)
    two_files = phase("p1", ["pkg/a.py", "pkg/b.py"])
    create_run(run_file(tmp_path, [two_files]), env, tmp_path)
    with WireServer() as wire:
        answer = files(a_py="A = 1\n", b_py="B = 2\n")
        wire.script(OPENAI_PATH, Reply(200, openai_completion(answer, model=LOCAL_MODEL)))
        result = cli(
            *("drain", "phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "off"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, "OPENAI_BASE_URL": f"{wire.url}/v1"},
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    said = " ".join(result.stderr.split())
    assert "needs about" not in said and "the model's largest answer" not in said, said
    if sized:
        assert "phase_too_large" not in said and "may need up to" not in said, said
        return
    assert "p1 may need up to" in said, said
    assert f"than the 8192 assumed for {LOCAL_MODEL} (a price file's max_output_tokens" in said


def test_a_drain_with_nothing_left_to_do_warns_about_nothing_it_would_call(
    tmp_path: Path,
) -> None:
    """Draining a finished run again (or its COMPLETE phase with --force) repeated the
    cost-cap warning and "telemetry is off" though it made no call."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = {**env_for(sqlite_url, AUTOPACK_BUILDER_MODEL=LOCAL_MODEL), "TELEMETRY_DB_ENABLED": "0"}
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    args = ("--run-id", "exec-run", "--auditor", "off", "--workspace", str(tmp_path / "ws"))
    with WireServer() as wire:
        answer = openai_completion(files(mod_py="V = 1\n"), model=LOCAL_MODEL)
        wire.script(OPENAI_PATH, Reply(200, answer))
        local = {**env, "OPENAI_BASE_URL": f"{wire.url}/v1"}
        drains = [cli("drain", "run", *args, env=local, cwd=tmp_path) for _ in range(2)]
        # --force requeues a phase that gave up, never a COMPLETE one: still nothing to call
        forced = ("drain", "phase", *args, "--phase-id", "p1", "--force")
        drains.append(cli(*forced, env=local, cwd=tmp_path))
    assert [d.returncode for d in drains] == [0, 0, 0], drains[-1].stderr[-3000:]
    assert "done before this drain" in drains[1].stdout
    warned = [("has no price" in d.stderr, "telemetry is off" in d.stderr) for d in drains]
    assert warned == [(True, True), (False, False), (False, False)], warned


def test_a_base_url_missing_its_path_is_named_in_the_404(tmp_path: Path) -> None:
    """OPENAI_BASE_URL=http://127.0.0.1:11434 (Ollama's OpenAI API is under /v1) failed
    every attempt with "openai-compatible 404: 404 page not found", naming no address."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL=LOCAL_MODEL)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    with WireServer() as wire:
        wire.script("/chat/completions", Reply(404, "404 page not found"))
        result = cli(
            *("drain", "phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "off"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, "OPENAI_BASE_URL": wire.url},
            cwd=tmp_path,
        )
    assert result.returncode == 2, result.stderr[-3000:]
    said = " ".join(result.stderr.split())
    assert f"openai-compatible 404 at {wire.url}/chat/completions: " in said, said


def test_a_drain_on_a_compatible_server_without_a_model_says_which_setting_to_set(
    tmp_path: Path,
) -> None:
    """``OPENAI_BASE_URL`` alone (Ollama, vLLM) had every call name OpenAI's default model:
    the server answered "model not found", the phase FAILED, and the drain named no
    setting; only ``autopack doctor`` said to set ``AUTOPACK_BUILDER_MODEL``."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    with WireServer() as wire:
        missing = FLAVOURS["openai"].error("invalid_request_error", "model not found")
        wire.script(OPENAI_PATH, Reply(404, missing))
        result = cli(
            *("drain", "phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "off"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, "OPENAI_BASE_URL": f"{wire.url}/v1"},
            cwd=tmp_path,
        )
    assert result.returncode == 2, result.stderr[-3000:]
    shown = " ".join(result.stderr.split())
    assert "set AUTOPACK_BUILDER_MODEL to a model it has" in shown, shown


@pytest.mark.parametrize("key", ["", "wrong-key"])
def test_a_compatible_server_refusing_the_key_is_named_with_what_was_sent(
    key: str, tmp_path: Path
) -> None:
    """A server behind a key (vLLM ``--api-key``, a proxy) answered 401 and the attempt
    said only "openai-compatible 401: Error code: 401 - ...": no address, and nothing said
    that without ``OPENAI_API_KEY`` a placeholder key had been sent."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL="qwen2.5-coder:32b")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    with WireServer() as wire:
        refused = FLAVOURS["openai"].error("invalid_api_key", "Incorrect API key provided")
        wire.script(OPENAI_PATH, Reply(401, refused))
        provider = {"OPENAI_BASE_URL": f"{wire.url}/v1"} | ({"OPENAI_API_KEY": key} if key else {})
        result = cli(
            *("drain", "phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "off"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, **provider},
            cwd=tmp_path,
        )
    assert result.returncode == 2, result.stderr[-3000:]
    error = " ".join(result.stderr.split())
    assert f"401 at {wire.url}/v1/chat/completions" in error, error
    assert ("OPENAI_API_KEY is not set" in error) == (not key), error


@pytest.mark.parametrize("name", ["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"])
def test_a_base_url_without_its_scheme_is_refused_before_a_phase_is_claimed(
    name: str, tmp_path: Path
) -> None:
    """``OPENAI_BASE_URL=localhost:11434/v1`` (no ``http://``): every attempt failed as
    "unreachable" and the phase FAILED, instead of the drain refusing the setting."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    key = {"OPENAI_BASE_URL": "OPENAI_API_KEY", "ANTHROPIC_BASE_URL": "ANTHROPIC_API_KEY"}[name]
    env = env_for(sqlite_url, **{name: f"127.0.0.1:{free_port()}/v1", key: "k"})
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    result = cli(
        *("drain", "run", "--run-id", "exec-run", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{name}='127.0.0.1:" in result.stderr and "http://" in result.stderr
    assert "Traceback" not in result.stderr
    assert rows(sqlite_url, "SELECT state FROM phases") == [{"state": "QUEUED"}]
    assert rows(sqlite_url, "SELECT count(*) AS n FROM phase_attempts") == [{"n": 0}]


def test_a_model_the_server_does_not_list_is_refused_before_a_phase_is_claimed(
    tmp_path: Path,
) -> None:
    """``AUTOPACK_BUILDER_MODEL=qwen2.5-codr`` on Ollama: the first call's 404 failed the
    phase, which then needed a requeue. The server's model list (``GET /v1/models``) says
    so before anything is claimed; a server that lists nothing is asked anyway."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL="qwen2.5-codr")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    drain = ("drain", "run", "--run-id", "exec-run", "--auditor", "off")
    with WireServer() as wire:
        wire.models = ["qwen2.5-coder:32b", "llama3.1:8b"]
        local = {**env, "OPENAI_BASE_URL": f"{wire.url}/v1"}
        refused = cli(*drain, "--workspace", str(tmp_path / "ws"), env=local, cwd=tmp_path)
        doctor = cli("doctor", env=local, cwd=tmp_path)
        assert wire.seen(OPENAI_PATH) == []
        wire.models = None  # lists nothing: the call is made
        wire.script(OPENAI_PATH, Reply(200, openai_completion(files(mod_py="V = 1\n"))))
        drained = cli(*drain, "--workspace", str(tmp_path / "ws"), env=local, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    said = " ".join(refused.stderr.split())
    assert "AUTOPACK_BUILDER_MODEL='qwen2.5-codr'" in said and "qwen2.5-coder:32b" in said, said
    assert "Traceback" not in refused.stderr
    assert doctor.returncode == 2, doctor.stdout + doctor.stderr
    assert "qwen2.5-codr" in doctor.stdout + doctor.stderr
    assert drained.returncode == 0, drained.stderr[-3000:]
    [attempt] = rows(sqlite_url, "SELECT attempt, outcome FROM phase_attempts")
    assert attempt == {"attempt": 1, "outcome": "COMPLETE"}


def test_a_model_named_without_its_tag_or_by_a_one_model_server_is_called(
    tmp_path: Path,
) -> None:
    """Ollama answers ``qwen2.5-coder`` with ``qwen2.5-coder:latest``; llama.cpp answers
    every name with its one model (which it lists under its file name): neither is
    refused. The one-model server gets a warning naming the setting instead."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL="qwen2.5-coder")
    create_run(
        run_file(tmp_path, [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/b.py"])]), env, tmp_path
    )
    results = []
    with WireServer() as wire:
        local = {**env, "OPENAI_BASE_URL": f"{wire.url}/v1"}
        for phase_id, listed, answer in (
            ("p1", ["qwen2.5-coder:latest", "llama3.1:8b"], files(a_py="A = 1\n")),
            ("p2", ["models/qwen.gguf"], files(b_py="B = 1\n")),
        ):
            wire.models = listed
            wire.script(OPENAI_PATH, Reply(200, openai_completion(answer)))
            results.append(
                cli(
                    *("drain", "phase", "--run-id", "exec-run", "--phase-id", phase_id),
                    *("--auditor", "off", "--workspace", str(tmp_path / "ws")),
                    env=local,
                    cwd=tmp_path,
                )
            )
    tagless, one_model = results
    assert tagless.returncode == 0, tagless.stderr[-3000:]
    assert "model not listed" not in tagless.stderr
    assert one_model.returncode == 0, one_model.stderr[-3000:]
    said = " ".join(one_model.stderr.split())
    assert "model not listed" in said and "set AUTOPACK_BUILDER_MODEL" in said, said
