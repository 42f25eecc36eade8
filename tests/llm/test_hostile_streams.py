"""Hostile and broken streams through the real SDKs: each ends as a clear LLMError.

Found by attacking the streaming code as a broken or hostile server would: an error event
inside a 200 stream must be as retryable as the same HTTP status; a stream the wire
format does not allow (bad JSON or UTF-8, events of the wrong shape), impossible usage
counts, or far more text than ``max_tokens`` allows is a ``MalformedResponse`` with a usage
row, never a raw exception that ends the attempt ``executor_error`` with no record; a
stream that keeps sending events without text, or only SSE comments, is stopped after
the call's timeout; a continuation whose usage never arrived counts its whole allowance.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from autopack.errors import LLMError
from autopack.llm.anthropic_provider import AnthropicProvider
from autopack.llm.base import LLMResponse, StreamInterrupted
from autopack.llm.openai_provider import OpenAIProvider
from tests.executor_support import (
    attempts,
    create_run,
    drain,
    env_for,
    files,
    phase,
    rows,
    run_file,
)
from tests.fakes.raw_sse import (
    HEAD,
    Raw,
    RawServer,
    a_block_start,
    a_delta,
    a_end,
    a_start,
    a_stream,
    o_chunk,
    o_stream,
    sse,
)
from tests.llm.support import make_request

ANSWER = files(mod_py="def answer() -> int:\n    return 42\n")
VERDICT = json.dumps({"approved": True, "issues": [], "summary": "ok"})
OVERLOADED = sse(
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"
)
BAD_JSON_DELTA = "event: content_block_delta\ndata: {not json\n\n"
STALL_HOLD_S = 30.0
"""How long a silent fake holds a stream (far past the 1 s a test configures)."""


def complete(provider: str, raw: Raw, timeout: float = 10.0, max_tokens: int = 256) -> LLMResponse:
    """One call (no SDK retries) against a server sending ``raw``; the provider is
    closed after it, so no socket is left for the garbage collector."""
    with RawServer() as server:
        server.replies.append(raw)
        live: AnthropicProvider | OpenAIProvider
        if provider == "anthropic":
            live = AnthropicProvider(
                api_key="k", base_url=server.url, max_retries=0, timeout=timeout
            )
            request = make_request(max_tokens=max_tokens)
        else:
            live = OpenAIProvider(
                api_key="k", base_url=server.url + "/v1", max_retries=0, timeout=timeout
            )
            request = make_request(model="gpt-6-luna", max_tokens=max_tokens)
        try:
            return live.complete(request)
        finally:
            live.close()


def drain_against(
    tmp_path: Path,
    provider: str,
    *replies: Raw,
    env: dict[str, str] | None = None,
    max_attempts: int = 1,
) -> tuple[str, list[tuple[dict[str, str], object]]]:
    """``drain phase`` of a one-phase run (LLM auditor) against scripted replies; the
    database URL and the request bodies the server saw."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    settings = env_for(url, **(env or {}))
    definition = [phase("p1", ["pkg/mod.py"], max_attempts=max_attempts)]
    create_run(run_file(tmp_path, definition), settings, tmp_path)
    with RawServer() as server:
        server.replies.extend(replies)
        keys = (
            {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": server.url}
            if provider == "anthropic"
            else {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": server.url + "/v1"}
        )
        drain(
            "phase",
            "--run-id",
            "exec-run",
            "--phase-id",
            "p1",
            "--auditor",
            "llm",
            "--workspace",
            str(tmp_path / "ws"),
            env={**settings, **keys},
            cwd=tmp_path,
            timeout=120,
        )
        return url, list(server.seen)


def test_an_overload_event_inside_a_200_stream_is_retryable() -> None:
    with pytest.raises(LLMError) as caught:
        complete("anthropic", Raw([a_start(), OVERLOADED]))
    assert caught.value.retryable is True
    assert caught.value.status_code == 529
    assert "overloaded_error in the stream" in caught.value.message


def test_an_openai_compatible_error_chunk_is_as_retryable_as_its_code() -> None:
    error = {"message": "upstream overloaded", "type": "server_error", "code": 503}
    with pytest.raises(LLMError) as caught:
        complete("openai", Raw([sse({"error": error})]))
    assert caught.value.retryable is True
    assert caught.value.status_code == 503


def test_a_stream_reporting_an_overload_is_called_again_in_the_same_attempt(
    tmp_path: Path,
) -> None:
    """An overload is the provider's state, not the phase's: waited for, no try spent."""
    url, _ = drain_against(
        tmp_path,
        "anthropic",
        Raw([a_start(), OVERLOADED]),
        Raw(a_stream(ANSWER)),
        Raw(a_stream(VERDICT)),
    )
    assert [a["outcome"] for a in attempts(url, "p1")] == ["COMPLETE"]
    usage = rows(url, "SELECT success FROM llm_usage_events ORDER BY id")
    assert [u["success"] for u in usage] == [0, 1, 1]


MALFORMED_STREAMS: dict[str, tuple[str, Sequence[str | bytes]]] = {
    "anthropic bad json": ("anthropic", [a_start(), a_block_start(), BAD_JSON_DELTA]),
    "anthropic delta without a block": ("anthropic", [a_start(), a_delta("x"), *a_end()]),
    "anthropic data null": (
        "anthropic",
        [a_start(), a_block_start(), "event: content_block_delta\ndata: null\n\n"],
    ),
    "anthropic usage not an object": (
        "anthropic",
        [a_start(), a_block_start(), a_delta("x"), *a_end(usage="x")],
    ),
    "anthropic invalid utf-8": (
        "anthropic",
        [
            a_start(),
            a_block_start(),
            b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0,'
            b' "delta": {"type": "text_delta", "text": "\xff"}}\n\n',
        ],
    ),
    "openai bad json": ("openai", [o_chunk({"content": "x"}), "data: {not json\n\n"]),
    "openai choices not a list": ("openai", [sse({**HEAD, "choices": 5})]),
    "openai usage not an object": ("openai", o_stream(usage="x")),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_STREAMS))
def test_a_malformed_stream_is_a_malformed_response(name: str) -> None:
    provider, chunks = MALFORMED_STREAMS[name]
    with pytest.raises(LLMError) as caught:
        complete(provider, Raw(chunks))
    assert caught.value.error_class in ("MalformedResponse", "StreamInterrupted")
    assert not caught.value.retryable or isinstance(caught.value, StreamInterrupted)


IMPOSSIBLE_USAGE: dict[str, tuple[str, Sequence[str | bytes]]] = {
    "anthropic negative": (
        "anthropic",
        a_stream(
            start_usage={"input_tokens": -5000, "output_tokens": 1},
            end_usage={"output_tokens": -7},
        ),
    ),
    "anthropic 2**70": (
        "anthropic",
        a_stream(
            start_usage={"input_tokens": 2**70, "output_tokens": 1},
            end_usage={"output_tokens": 2**70},
        ),
    ),
    "anthropic negative cache": (
        "anthropic",
        a_stream(
            start_usage={
                "input_tokens": 10,
                "output_tokens": 1,
                "cache_read_input_tokens": -(10**6),
            }
        ),
    ),
    "openai negative": ("openai", o_stream(usage={"prompt_tokens": -10, "completion_tokens": -20})),
    "openai cache count 2.5": (
        "openai",
        o_stream(
            usage={
                "prompt_tokens": 10,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 2.5},
            }
        ),
    ),
    "openai 2**70": (
        "openai",
        o_stream(usage={"prompt_tokens": 2**70, "completion_tokens": 2**70}),
    ),
    "openai more cached than input": (
        "openai",
        o_stream(
            usage={
                "prompt_tokens": 10,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 10**6},
            }
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(IMPOSSIBLE_USAGE))
def test_impossible_usage_is_refused_as_malformed(name: str) -> None:
    provider, chunks = IMPOSSIBLE_USAGE[name]
    with pytest.raises(LLMError) as caught:
        complete(provider, Raw(chunks))
    assert caught.value.error_class == "MalformedResponse"
    assert "usage" in caught.value.message


# The SDK's stream accumulator dumps the snapshot itself and warns of the float first.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
def test_a_streamed_cache_count_that_is_no_count_is_malformed_not_zero() -> None:
    """A cache count of 1e30 was read as zero: the call billed short."""
    usage = {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 1e30}
    with pytest.raises(LLMError) as caught:
        complete("anthropic", Raw(a_stream(start_usage=usage)))
    assert caught.value.error_class == "MalformedResponse"
    assert "usage" in caught.value.message


@pytest.mark.parametrize(
    "raw",
    [
        Raw([a_start(), a_block_start(), BAD_JSON_DELTA]),
        Raw(a_stream(ANSWER, start_usage={"input_tokens": -5000, "output_tokens": 1})),
    ],
    ids=["malformed stream", "negative usage"],
)
def test_a_drain_records_a_bad_stream_as_an_llm_error_with_its_row(
    tmp_path: Path, raw: Raw
) -> None:
    url, _ = drain_against(tmp_path, "anthropic", raw)
    assert [a["stop_reason"] for a in attempts(url, "p1")] == ["llm_error"]
    (row,) = rows(url, "SELECT error_class, success FROM llm_usage_events")
    assert (row["error_class"], row["success"]) == ("MalformedResponse", False)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_an_answer_far_beyond_max_tokens_is_refused(provider: str) -> None:
    huge = "x" * (8 * 1024 * 1024)  # make_request asks for 256 tokens
    chunks = a_stream(huge) if provider == "anthropic" else o_stream(huge)
    with pytest.raises(LLMError) as caught:
        complete(provider, Raw(chunks))
    assert caught.value.error_class == "MalformedResponse"
    assert "max_tokens 256" in caught.value.message


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_stream_sending_events_without_text_is_stopped_after_the_timeout(
    provider: str,
) -> None:
    """The SDK's timeout bounds each read, so events without text would hold the call
    (and with it the phase's lease) as long as the server likes."""

    def empty_events() -> list[str]:
        if provider == "anthropic":
            return [a_start(), a_block_start(), a_delta("x"), *[a_delta("")] * 40, *a_end()]
        return [o_chunk({"content": "x"}), *[o_chunk({})] * 40, *o_stream()[2:]]

    with pytest.raises(StreamInterrupted) as caught:
        complete(provider, Raw(empty_events, gap=0.1), timeout=1.0)
    assert caught.value.partial == "x"
    assert "no text for 1 s" in caught.value.message


KEEP_ALIVE = ": keep-alive\n\n"


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_stream_kept_alive_by_sse_comments_is_stopped_after_the_timeout(provider: str) -> None:
    """SSE comments never reach the code reading events (the SDKs' parsers drop them) and
    each one is a read within the timeout: a watchdog has to close such a stream."""

    def kept_alive() -> list[str]:
        if provider == "anthropic":
            return [a_start(), a_block_start(), a_delta("x"), *[KEEP_ALIVE] * 60, *a_end()]
        return [o_chunk({"content": "x"}), *[KEEP_ALIVE] * 60, *o_stream()[2:]]

    with pytest.raises(StreamInterrupted) as caught:
        complete(provider, Raw(kept_alive, gap=0.1), timeout=1.0)
    assert caught.value.partial == "x"
    assert "no text for 1 s" in caught.value.message
    assert caught.value.latency_ms < 4000, "stopped at the timeout, not when the server chose"


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_stream_of_nothing_but_comments_is_a_retryable_error(provider: str) -> None:
    with pytest.raises(LLMError) as caught:
        complete(provider, Raw([KEEP_ALIVE] * 60, gap=0.1), timeout=1.0)
    assert caught.value.retryable, caught.value.message
    assert "no text for 1 s" in caught.value.message


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_stream_dripping_text_is_stopped_at_the_calls_deadline(provider: str) -> None:
    """A character every half second is a read within any timeout and text within the
    stall limit: the call ran for as long as the server dripped (max_tokens 4 allows 256
    characters, two minutes of this). It ends at the timeout plus a second per token."""

    def dripping() -> Iterator[str]:
        if provider == "anthropic":
            yield from [a_start(), a_block_start()]
        for _ in range(240):
            yield a_delta("x") if provider == "anthropic" else o_chunk({"content": "x"})

    with pytest.raises(StreamInterrupted) as caught:
        complete(provider, Raw(dripping, gap=0.5), timeout=2.0, max_tokens=4)
    assert "the answer took over 6 s" in caught.value.message
    assert caught.value.partial.startswith("x")
    assert caught.value.latency_ms < 30_000, "stopped at the deadline, not when the server chose"


def test_continuations_whose_usage_never_arrived_count_their_whole_allowance(
    tmp_path: Path,
) -> None:
    """OpenAI reports usage at the end of a stream: a continuation cut before it would
    count 0 tokens, and AUTOPACK_CONTINUATION_TOKEN_CAP would never stop them."""
    first = Raw(
        o_stream(ANSWER[:40], "length", usage={"prompt_tokens": 10, "completion_tokens": 50})
    )
    cut = Raw([o_chunk({"role": "assistant", "content": ""}), o_chunk({"content": ANSWER[40:60]})])
    _, seen = drain_against(
        tmp_path,
        "openai",
        first,
        cut,
        cut,
        cut,
        env={"AUTOPACK_CONTINUATION_TOKEN_CAP": "50"},
    )
    budgets = [body["max_tokens"] for _, body in seen if isinstance(body, dict)]
    assert budgets[1:] == [50], budgets


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_stream_that_stops_mid_answer_is_given_up_on_after_the_configured_timeout(
    provider: str, tmp_path: Path
) -> None:
    """The timeout was a fixed 600 s no setting changed: a local server that stopped
    sending mid-answer held the phase ten minutes before it was continued.
    AUTOPACK_LLM_TIMEOUT_SECONDS reaches the provider the CLI drain builds."""
    release = threading.Event()  # the silent server's hold ends with the test
    cut = ANSWER.index("return") + 3
    rest = ANSWER[cut:]

    def silent_after_some_text() -> Iterator[str]:
        if provider == "anthropic":
            yield from [a_start(), a_block_start(), a_delta(ANSWER[:cut])]
        else:
            yield from [
                o_chunk({"role": "assistant", "content": ""}),
                o_chunk({"content": ANSWER[:cut]}),
            ]
        release.wait(STALL_HOLD_S)  # sends nothing more (not even a keep-alive)

    if provider == "anthropic":
        continued, verdict = Raw(a_stream(rest)), Raw(a_stream(VERDICT))
    else:
        continued, verdict = Raw(o_stream(rest)), Raw(o_stream(VERDICT))
    try:
        url, _ = drain_against(
            tmp_path,
            provider,
            Raw(silent_after_some_text),
            continued,
            verdict,
            env={"AUTOPACK_LLM_TIMEOUT_SECONDS": "1"},
        )
    finally:
        release.set()
    builder = rows(
        url,
        "SELECT error_class, latency_ms FROM llm_usage_events WHERE role = 'builder' ORDER BY id",
    )
    assert [b["error_class"] for b in builder] == ["StreamInterrupted", None], builder
    assert builder[0]["latency_ms"] < 10_000, "given up on at the setting, not the 600 s default"
    assert [a["outcome"] for a in attempts(url, "p1")] == ["COMPLETE"]


CUT_AFTER_IMPOSSIBLE_START = {
    "2**63 input": {"input_tokens": 2**63, "output_tokens": 1},
    "negative input": {"input_tokens": -7, "output_tokens": 1},
}


@pytest.mark.parametrize("name", sorted(CUT_AFTER_IMPOSSIBLE_START))
def test_a_broken_stream_whose_start_usage_cannot_be_true_is_a_malformed_answer(
    tmp_path: Path, name: str
) -> None:
    """Anthropic reports the input in ``message_start``; a stream broken off after that
    went to the accounting unchecked, the control plane refused its token count, and the
    attempt ended ``executor_error`` with no usage row."""
    start = CUT_AFTER_IMPOSSIBLE_START[name]
    url, _ = drain_against(
        tmp_path, "anthropic", Raw([a_start(start), a_block_start(), a_delta("{")])
    )
    ((stop, error),) = [(a["stop_reason"], a["error"]) for a in attempts(url, "p1")]
    assert stop == "llm_error"
    assert "usage it reported cannot be true" in error
    (row,) = rows(url, "SELECT error_class, success, input_tokens, cost_usd FROM llm_usage_events")
    assert row == {
        "error_class": "MalformedResponse",
        "success": 0,
        "input_tokens": None,
        "cost_usd": None,
    }


def test_a_cassette_line_recording_impossible_usage_for_a_broken_stream_is_malformed(
    tmp_path: Path,
) -> None:
    """A replayed broken stream carries the usage its line recorded, unchecked the same
    way (a hand-edited or corrupted cassette)."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    settings = env_for(url)
    create_run(
        run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), settings, tmp_path
    )
    broken = {
        "match": {"run_id": "exec-run", "phase_id": "p1", "attempt": 1, "role": "builder"},
        "provider": "anthropic",
        "model": "claude-sonnet-5-5",
        "latency_ms": 1.0,
        "error": {
            "message": "stream interrupted",
            "partial": '{"files": [',
            "usage": {"input_tokens": 2**63, "output_tokens": 3},
        },
    }
    tape = tmp_path / "cassette.jsonl"
    tape.write_text(json.dumps(broken) + "\n")
    result = drain(
        *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "rules"),
        *("--cassette", str(tape), "--workspace", str(tmp_path / "ws")),
        env=settings,
        cwd=tmp_path,
        timeout=120,
    )
    assert "Traceback" not in result.stderr
    assert [a["stop_reason"] for a in attempts(url, "p1")] == ["llm_error"]
    (row,) = rows(url, "SELECT error_class, success FROM llm_usage_events")
    assert (row["error_class"], row["success"]) == ("MalformedResponse", 0)


@pytest.mark.parametrize("price", ["Infinity", "NaN", "1e300"])
def test_a_price_file_pricing_a_model_beyond_reason_is_refused_naming_it(
    tmp_path: Path, price: str
) -> None:
    """A price of ``Infinity`` (JSON as Python reads it) made the call's cost NaN, one of
    1e300 a cost beyond any report: the usage report refused it and the attempt ended
    ``executor_error``, the call unrecorded. (NaN was refused already; kept as a guard.)"""
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            {"version": "mine", "models": {"claude-sonnet-5-5": {"input": 0, "output": 1}}}
        ).replace('"input": 0', f'"input": {price}')
    )
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    settings = env_for(url, AUTOPACK_PRICE_TABLE=str(prices))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), settings, tmp_path)
    with RawServer() as server:
        server.replies.append(Raw(a_stream(ANSWER)))
        keys = {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": server.url}
        result = drain(
            *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "rules"),
            *("--workspace", str(tmp_path / "ws")),
            env={**settings, **keys},
            cwd=tmp_path,
            timeout=120,
        )
    assert result.returncode == 2, (result.stdout, result.stderr[-600:])
    assert "Traceback" not in result.stderr
    assert "prices.json is invalid" in result.stderr and "input" in result.stderr
    assert attempts(url, "p1") == []


def test_the_chunks_of_another_choice_are_not_part_of_the_answer() -> None:
    """One choice is asked for; a server streaming a second one too (``index`` 1) had its
    text mixed into the answer the Builder's files are parsed from."""
    other = {"index": 1, "delta": {"content": "OTHER"}, "finish_reason": None, "logprobs": None}
    stream = o_stream("hello")
    stream.insert(2, sse({**HEAD, "choices": [other]}))
    assert complete("openai", Raw(stream)).text == "hello"
