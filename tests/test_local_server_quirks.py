"""What OpenAI-compatible servers on your own hardware (vLLM, llama.cpp, Ollama) answer
that a hosted API does not, met by a real drain through the real ``openai`` SDK.

The far end is the loopback wire-format server scripted as each server answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from tests.executor_support import (
    attempts,
    create_run,
    env_for,
    files,
    on_branch,
    phase,
    rows,
    run_file,
)
from tests.fakes.llm_wire import (
    OPENAI_PATH,
    ContextLimited,
    Reply,
    Seen,
    WireServer,
    openai_completion,
)
from tests.fakes.raw_sse import HEAD, Raw, RawServer, o_chunk, sse
from tests.llm.support import FLAVOURS
from tests.support import cli

MODEL = "Qwen/Qwen2.5-Coder-7B-Instruct"
DRAIN = ("drain", "run", "--run-id", "exec-run", "--auditor", "off")


def _two_phases(tmp_path: Path) -> tuple[str, dict[str, str]]:
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL=MODEL)
    spec = [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/b.py"])]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    return sqlite_url, env


def _answer(seen: Seen) -> dict[str, object]:
    """The Builder's answer for the phase the prompt names."""
    prompt = str(seen.body["messages"])
    answer = files(b_py="B = 2\n") if "pkg/b.py" in prompt else files(a_py="A = 1\n")
    return openai_completion(answer, model=MODEL)


def _drain(tmp_path: Path, env: dict[str, str], server_url: str) -> CompletedProcess[str]:
    """``autopack drain run`` of ``exec-run`` against the OpenAI-compatible server there."""
    return cli(
        *DRAIN,
        *("--workspace", str(tmp_path / "ws")),
        env={**env, "OPENAI_BASE_URL": f"{server_url}/v1"},
        cwd=tmp_path,
    )


def _assert_stopped_with_phases_handed_back(
    result: CompletedProcess[str], sqlite_url: str, *phrases: str
) -> None:
    """The drain stopped (exit 2) saying ``phrases``, and no phase spent a retry."""
    said = " ".join(result.stderr.split())
    assert result.returncode == 2, said[-3000:]
    assert all(phrase in said for phrase in phrases), said[-3000:]
    assert "Traceback" not in result.stderr
    states = rows(sqlite_url, "SELECT state FROM phases ORDER BY phase_id")
    assert [s["state"] for s in states] == ["QUEUED", "QUEUED"]


@pytest.mark.parametrize("server", ["vllm", "vllm-old"])
def test_a_budget_larger_than_the_servers_context_is_clipped_to_what_it_says(
    server: str, tmp_path: Path
) -> None:
    """vLLM started with ``--max-model-len 4096`` refuses a ``max_tokens`` that does not
    fit beside the prompt (400 "This model's maximum context length is 4096 tokens ...").
    Every phase of the run failed on it, one after another, exit 1, though the server's
    answer says what fits: the call is made again within it and the run completes."""
    sqlite_url, env = _two_phases(tmp_path)
    with WireServer() as wire:
        wire.respond = ContextLimited(4096, 1500, _answer, server)
        result = _drain(tmp_path, env, wire.url)
        asked = [seen.body["max_tokens"] for seen in wire.seen(OPENAI_PATH)]
    assert result.returncode == 0, result.stderr[-3000:]
    assert on_branch(tmp_path / "ws", "pkg/b.py") == "B = 2\n"
    assert len(asked) == 4 and asked[0] > 2596 and asked[1::2] == [2596, 2596], asked
    assert "llm_budget_clipped" in result.stderr
    states = rows(sqlite_url, "SELECT state FROM phases ORDER BY phase_id")
    assert [s["state"] for s in states] == ["COMPLETE", "COMPLETE"]
    usage = rows(sqlite_url, "SELECT success, max_tokens FROM llm_usage_events ORDER BY id")
    assert [(bool(u["success"]), u["max_tokens"]) for u in usage][:2] == [
        (False, asked[0]),
        (True, 2596),
    ]


def test_a_prompt_filling_the_servers_context_stops_the_drain_naming_the_setting(
    tmp_path: Path,
) -> None:
    """llama-server's slot of 4096 tokens (``--ctx-size`` divided by ``--parallel``)
    cannot hold the prompt: its 400 ``exceed_context_size_error`` failed every phase in
    turn. No budget makes it fit, so the drain stops (exit 2) naming the settings, and
    the phases are handed back without spending a retry."""
    sqlite_url, env = _two_phases(tmp_path)
    with WireServer() as wire:
        wire.respond = ContextLimited(4096, 5000, _answer, "llama.cpp")
        result = _drain(tmp_path, env, wire.url)
        calls = len(wire.seen(OPENAI_PATH))
    _assert_stopped_with_phases_handed_back(
        result, sqlite_url, "exceeds the available context size", "--ctx-size"
    )
    assert calls == 1


def test_a_thinking_models_reasoning_before_its_answer_is_not_taken_for_it(
    tmp_path: Path,
) -> None:
    """DeepSeek-R1 or Qwen3 through Ollama (or vLLM without a reasoning parser) put their
    reasoning first, in the answer: ``<think>... {"files": []} ...</think>`` then the JSON.
    The draft in the reasoning was parsed as the Builder's answer (``empty_files`` on every
    attempt, the phase FAILED), and a draft verdict as the Auditor's."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL="qwen3:8b")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    builder = (
        '<think>\nThe answer looks like {"files": [], "summary": ""}; first a sketch:\n'
        '```json\n{"files": []}\n```\nNow the real one.\n</think>\n\n' + files(a_py="A = 1\n")
    )
    auditor = (
        '<think>\nShould I answer {"approved": false, "issues": ["?"]}? No, it is fine.\n'
        '</think>\n{"approved": true, "issues": [], "summary": "a.py is what p1 asks."}'
    )
    with WireServer() as wire:
        wire.script(
            OPENAI_PATH,
            Reply(200, openai_completion(builder, model="qwen3:8b")),
            Reply(200, openai_completion(auditor, model="qwen3:8b")),
        )
        result = cli(
            *("drain", "run", "--run-id", "exec-run", "--auditor", "llm"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, "OPENAI_BASE_URL": f"{wire.url}/v1"},
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert on_branch(tmp_path / "ws", "pkg/a.py") == "A = 1\n"
    [attempt] = attempts(sqlite_url, "p1")
    assert attempt["outcome"] == "COMPLETE"
    verdict = attempt["audit_verdict"]
    assert (verdict["approved"], verdict["issues"]) == (True, []), verdict


def test_a_model_answering_with_a_tool_call_is_told_no_tools_are_offered(
    tmp_path: Path,
) -> None:
    """A local model whose chat template makes it call a tool (Qwen through Ollama) answers
    ``finish_reason: tool_calls`` and no text. The next attempt was told "Your answer was
    empty", which gave the model nothing to change; it is now told why."""
    sqlite_url, env = _two_phases(tmp_path)
    with WireServer() as wire:
        wire.script(
            OPENAI_PATH,
            Reply(200, openai_completion(None, model=MODEL, finish_reason="tool_calls")),
        )
        wire.respond = lambda seen: Reply(200, _answer(seen))
        result = _drain(tmp_path, env, wire.url)
        prompts = " ".join(str(seen.body["messages"]) for seen in wire.seen(OPENAI_PATH))
    assert result.returncode == 0, result.stderr[-3000:]
    [told] = [
        a for p in ("p1", "p2") for a in attempts(sqlite_url, p) if a["outcome"] != "COMPLETE"
    ]
    assert told["stop_reason"] == "empty_output", told
    assert "no tools are offered" in prompts and "answer was empty" not in prompts, prompts[-2000:]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_model_thinking_longer_than_the_timeout_is_not_cut_off_as_stalled(
    field: str, tmp_path: Path
) -> None:
    """vLLM and llama.cpp stream a thinking model's reasoning as ``reasoning_content``
    deltas, Ollama as ``reasoning``, with no ``content``: a local model thinking longer
    than ``AUTOPACK_LLM_TIMEOUT_SECONDS`` was cut off as "no text for N s" on every attempt
    and the phase FAILED, though tokens kept arriving. (The timeout is 2 s here; the
    reasoning lasts about 4 s, in deltas 0.25 s apart.)"""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL="qwen3:8b", AUTOPACK_LLM_TIMEOUT_SECONDS="2")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    thinking = [o_chunk({"role": "assistant", "content": ""})]
    thinking += [o_chunk({"content": None, field: "Let me think. "}) for _ in range(16)]
    usage = {"prompt_tokens": 100, "completion_tokens": 90}
    answer = [o_chunk({"content": files(a_py="A = 1\n")}), o_chunk({}, "stop")]
    answer += [sse({**HEAD, "choices": [], "usage": usage}), "data: [DONE]\n\n"]
    with RawServer() as server:
        server.replies.append(Raw(thinking + answer, gap=0.25))
        result = _drain(tmp_path, env, server.url)
        calls = len(server.seen)
    assert result.returncode == 0, result.stderr[-3000:]
    assert calls == 1
    assert on_branch(tmp_path / "ws", "pkg/a.py") == "A = 1\n"
    [row] = rows(sqlite_url, "SELECT success, output_tokens FROM llm_usage_events")
    assert (bool(row["success"]), row["output_tokens"]) == (True, 90)


def test_a_server_reporting_no_usage_stops_the_drain_instead_of_failing_each_phase(
    tmp_path: Path,
) -> None:
    """A server (an Ollama before 0.5.2, a proxy) that ignores ``include_usage`` ends every
    stream without usage: each phase in turn failed one attempt as malformed, and the whole
    run was FAILED, needing a requeue per phase once the server was upgraded. It is the
    server's doing, like a refused key: the drain stops with the phases handed back."""
    sqlite_url, env = _two_phases(tmp_path)
    no_usage = openai_completion(files(a_py="A = 1\n"), model=MODEL)
    del no_usage["usage"]
    with WireServer() as wire:
        wire.script(OPENAI_PATH, Reply(200, no_usage))
        result = _drain(tmp_path, env, wire.url)
        calls = len(wire.seen(OPENAI_PATH))
    _assert_stopped_with_phases_handed_back(
        result, sqlite_url, "no usage chunk", "upgrade the server"
    )
    assert calls == 1
    [row] = rows(sqlite_url, "SELECT success, error_class FROM llm_usage_events")
    assert (bool(row["success"]), row["error_class"]) == (False, "MalformedResponse")


def test_a_continuation_filling_the_servers_context_ends_the_attempt_not_the_drain(
    tmp_path: Path,
) -> None:
    """llama-server stops an answer when its slot's context is full (``length``); the
    continuation's prompt, holding that answer, then fills the context by itself. That is
    this answer's length, not a server no phase can use: the attempt ends ``truncated``
    (the phase's own failure) instead of the drain stopping on every run of it."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL=MODEL)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"], max_attempts=1)]), env, tmp_path)
    cut = openai_completion(files(a_py="A = 1\n")[:30], model=MODEL, finish_reason="length")
    full = ContextLimited(4096, 4100, _answer, "llama.cpp")._llama_cpp()
    with WireServer() as wire:
        wire.script(OPENAI_PATH, Reply(200, cut), Reply(400, {"error": full}))
        result = _drain(tmp_path, env, wire.url)
        calls = len(wire.seen(OPENAI_PATH))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "ProviderRefused" not in result.stderr
    assert calls == 2
    [attempt] = attempts(sqlite_url, "p1")
    assert (attempt["outcome"], attempt["stop_reason"]) == ("FAILED", "truncated"), attempt


def test_a_model_too_large_for_the_servers_memory_stops_the_drain(tmp_path: Path) -> None:
    """Ollama with a model pulled too large for the machine answers every call 500 "model
    requires more system memory (21.3 GiB) than is available (14.2 GiB)": each phase
    failed all three attempts on it (three SDK tries each), and the run with them. No
    call can succeed until the model changes: the drain stops, the phases handed back."""
    sqlite_url, env = _two_phases(tmp_path)
    memory = "model requires more system memory (21.3 GiB) than is available (14.2 GiB)"
    with WireServer() as wire:
        wire.respond = lambda seen: Reply(500, {"error": {"message": memory, "type": "api_error"}})
        result = _drain(tmp_path, env, wire.url)
        calls = len(wire.seen(OPENAI_PATH))
    _assert_stopped_with_phases_handed_back(result, sqlite_url, memory, "cannot load the model")
    assert calls == 3  # the SDK's own tries, and no more


def _shrinking_room(seen: Seen) -> Reply:
    """A hostile server: every refusal names a room one token short of what was asked."""
    asked = int(seen.body.get("max_tokens") or 0)
    message = (
        f"This model's maximum context length is 100000 tokens. However, you requested "
        f"{100001 + asked} tokens ({100001 - asked} in the messages, {asked} in the completion)."
    )
    return Reply(400, {"object": "error", "message": message, "type": "BadRequestError"})


def _endless_room(seen: Seen) -> Reply:
    """A server naming a number thousands of digits long (no limit any call meets)."""
    message = f"This model's maximum context length is {'9' * 5000} tokens (5 in the messages"
    return Reply(400, {"object": "error", "message": message, "type": "BadRequestError"})


@pytest.mark.parametrize("respond", [_shrinking_room, _endless_room])
def test_a_servers_odd_room_is_clipped_to_once_and_never_crashes(
    respond: Any, tmp_path: Path
) -> None:
    """A server naming a smaller room each time had the call made again for each token of
    the budget, recursing until Python's limit (an ``executor_error``); one naming a
    number too long for ``int()`` failed the phase ``executor_error`` with a ValueError.
    Either is the provider's refusal, met with at most one clipped call per attempt."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL=MODEL)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    with WireServer() as wire:
        wire.respond = respond
        result = _drain(tmp_path, env, wire.url)
        calls = len(wire.seen(OPENAI_PATH))
    assert "Traceback" not in result.stderr
    tried = attempts(sqlite_url, "p1")
    assert tried and calls <= 2 * len(tried), (calls, len(tried))
    assert all(a["stop_reason"] != "executor_error" for a in tried), tried


LONG_TASK = "Write pkg/a.py with a function per rule below; keep each one short.\n" + "".join(
    f"- Rule {n}: when the input holds key_{n}, return its value times {n}.\n" for n in range(600)
)
"""A task of about 33k characters: at 3 to 4 a token, 8k to 11k tokens of prompt."""


def _one_long_phase(tmp_path: Path, model: str = MODEL) -> tuple[str, dict[str, str]]:
    """A run of one phase, p1, whose task is :data:`LONG_TASK`, for ``model``."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL=model)
    create_run(
        run_file(tmp_path, [phase("p1", ["pkg/a.py"], description=LONG_TASK)]), env, tmp_path
    )
    return sqlite_url, env


@pytest.mark.parametrize("wire_format", ["openai", "anthropic"])
def test_a_server_that_cut_the_prompt_to_its_context_stops_the_drain_naming_the_setting(
    wire_format: str, tmp_path: Path
) -> None:
    """Ollama runs a model in 4096 tokens unless told otherwise and drops the front of a
    longer prompt (the system prompt with the answer format), answering 200 with
    ``prompt_tokens`` 2050 (on its Anthropic-compatible ``/v1/messages`` too). That
    answer was taken as the model's best: each phase in turn failed later on its files for
    a reason hiding the cause. Now the drain stops (exit 2) naming both counts and
    OLLAMA_CONTEXT_LENGTH / num_ctx, the phases are handed back without spending a retry,
    and the call, run and billed, keeps its usage row."""
    flavour = FLAVOURS[wire_format]
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL=flavour.model)
    spec = [
        phase("p1", ["pkg/a.py"], description=LONG_TASK),
        phase("p2", ["pkg/b.py"], description=LONG_TASK),
    ]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    answer = flavour.body(files(a_py="A = 1\n"), input_tokens=2050)
    with WireServer() as wire:
        wire.respond = lambda seen: Reply(200, answer)
        server = {"OPENAI_BASE_URL": f"{wire.url}/v1"}
        if wire_format == "anthropic":
            server = {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": wire.url}
        result = cli(
            *DRAIN,
            *("--workspace", str(tmp_path / "ws")),
            env={**env, **server},
            cwd=tmp_path,
        )
        calls = len(wire.seen(flavour.path))
    _assert_stopped_with_phases_handed_back(result, sqlite_url, "OLLAMA_CONTEXT_LENGTH", "num_ctx")
    said = " ".join(result.stderr.split())
    assert re.search(r"reporting 2050 input tokens for a prompt of at least \d{4}", said), said
    assert calls == 1
    [row] = rows(sqlite_url, "SELECT success, error_class, input_tokens FROM llm_usage_events")
    assert (bool(row["success"]), row["error_class"], row["input_tokens"]) == (
        False,
        "PromptCut",
        2050,
    )


def test_a_long_prompt_read_in_full_is_answered_as_usual(tmp_path: Path) -> None:
    """The same long task, on a server whose context holds it and that says so: its
    ``prompt_tokens`` are a real count (3.5 characters a token), never taken for a cut."""
    _, env = _one_long_phase(tmp_path, "qwen2.5-coder:7b")

    def honest(seen: Seen) -> Reply:
        count = len(str(seen.body["messages"])) * 2 // 7
        body = files(a_py="A = 1\n")
        return Reply(200, openai_completion(body, model="qwen2.5-coder:7b", prompt_tokens=count))

    with WireServer() as wire:
        wire.respond = honest
        result = _drain(tmp_path, env, wire.url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert on_branch(tmp_path / "ws", "pkg/a.py") == "A = 1\n"


def _counted(seen: Seen, per_answer_token: int = 32) -> int:
    """Input tokens an honest server counts: 3.5 characters a token of the prompt, and
    ``per_answer_token`` of an assistant turn (the answer so far)."""
    messages = seen.body["messages"]
    given = sum(len(m["content"]) for m in messages if m["role"] != "assistant")
    written = sum(len(m["content"]) for m in messages if m["role"] == "assistant")
    return given * 2 // 7 + written // per_answer_token


def test_a_continuation_of_a_long_padded_answer_is_not_taken_for_a_cut_prompt(
    tmp_path: Path,
) -> None:
    """A continuation's prompt holds the answer so far, here 40k characters mostly of one
    ``-`` rule, which a tokenizer packs densely (32 a token): counted like the prompt, at
    most 10 characters a token, it looked longer than the server's honest count and the
    drain would have stopped on a server that read it all. The model's own text is held
    to the 64 characters a token its stream was, and the answer is joined as usual."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url, AUTOPACK_BUILDER_MODEL=MODEL)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    content = "# " + "-" * 40_000 + "\nA = 1\n"
    whole = files(a_py=content)
    cut = whole.index("A = 1") + 1
    parts = iter([(whole[:cut], "length"), (whole[cut:], "stop")])

    def honest(seen: Seen) -> Reply:
        text, finish = next(parts)
        body = openai_completion(
            text, model=MODEL, finish_reason=finish, prompt_tokens=_counted(seen)
        )
        return Reply(200, body)

    with WireServer() as wire:
        wire.respond = honest
        result = _drain(tmp_path, env, wire.url)
        calls = len(wire.seen(OPENAI_PATH))
    assert result.returncode == 0, result.stderr[-3000:]
    assert calls == 2
    assert on_branch(tmp_path / "ws", "pkg/a.py") == content


def _continued(reported: int) -> Callable[[Seen], Reply]:
    """A server ending the answer at 20 characters (``length``, the prompt counted as
    :func:`_counted`), then reporting ``reported`` input tokens for its continuation."""
    whole = files(a_py="A = 1\n")
    first = iter([True])

    def respond(seen: Seen) -> Reply:
        if next(first, False):
            return Reply(
                200,
                openai_completion(
                    whole[:20], model=MODEL, finish_reason="length", prompt_tokens=_counted(seen)
                ),
            )
        return Reply(200, openai_completion(whole[20:], model=MODEL, prompt_tokens=reported))

    return respond


def test_a_continuation_whose_prompt_the_server_cut_stops_the_drain(tmp_path: Path) -> None:
    """Ollama's context held the prompt but not the prompt with the answer so far: the
    continuation's front was dropped and the model went on without the task, its text
    joined into the files. It is judged like any call: the drain stops naming the setting,
    the phase handed back, both calls recorded."""
    sqlite_url, env = _one_long_phase(tmp_path)
    with WireServer() as wire:
        wire.respond = _continued(2050)
        result = _drain(tmp_path, env, wire.url)
        calls = len(wire.seen(OPENAI_PATH))
    said = " ".join(result.stderr.split())
    assert result.returncode == 2, said[-3000:]
    assert "for a prompt with the answer so far of at least" in said, said[-3000:]
    assert "OLLAMA_CONTEXT_LENGTH" in said, said[-3000:]
    assert calls == 2
    [state] = rows(sqlite_url, "SELECT state FROM phases")
    assert state["state"] == "QUEUED"
    usage = rows(sqlite_url, "SELECT success, input_tokens FROM llm_usage_events ORDER BY id")
    assert [(bool(u["success"]), u["input_tokens"]) for u in usage][1] == (False, 2050)


def test_a_continuation_counted_without_its_cached_prompt_is_not_taken_for_a_cut(
    tmp_path: Path,
) -> None:
    """Ollama 0.30's llama-server runner counted only the prompt tokens it had not cached
    (ollama#16414): a continuation, whose prompt is the cached one and the answer so far,
    reported a dozen. That is no context any model runs in, so no cut: the answer is
    continued and joined as usual."""
    _, env = _one_long_phase(tmp_path)
    with WireServer() as wire:
        wire.respond = _continued(12)
        result = _drain(tmp_path, env, wire.url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert on_branch(tmp_path / "ws", "pkg/a.py") == "A = 1\n"
