"""Response bodies a server (or a cassette) should never send, through the one normaliser.

The contract: a MalformedResponse :class:`LLMError`, or an answer whose telemetry row the
control plane takes. Anything else (an OverflowError, a row pydantic refuses) ends the
attempt as an executor error after the call was paid for, with no telemetry row.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from autopack.errors import LLMError
from autopack.llm.base import LLMResponse, StreamInterrupted, Usage
from autopack.llm.openai_provider import OpenAIProvider
from autopack.llm.replay import ReplayProvider
from autopack.llm.responses import ANTHROPIC, OPENAI, normalise
from autopack.telemetry.events import LlmUsageIn
from tests.fakes.llm_wire import OPENAI_PATH, Reply, WireServer, openai_completion
from tests.llm.support import make_request

HUGE = json.loads("1" + "0" * 400)
"""An integer JSON allows and no float holds."""


def body(kind: str, **changes: Any) -> dict[str, Any]:
    if kind == ANTHROPIC:
        made: dict[str, Any] = {
            "model": "claude-x",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }
    else:
        made = {
            "model": "gpt-x",
            "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        }
    return {**made, **changes}


def parse(kind: str, data: dict[str, Any]) -> LLMResponse:
    return normalise(kind, data, request_model="m", request_id="r", latency_ms=1.0)


def usage_row(response: LLMResponse) -> LlmUsageIn:
    """The row the executor's meter builds from a successful answer."""
    answer = dataclasses.asdict(response)
    kept = ("provider", "model", "stop_reason", "latency_ms", "provider_cost_usd")
    row = {"run_id": "run", "phase_id": "phase", "role": "builder", "success": True}
    return LlmUsageIn(**row, **{key: answer[key] for key in kept}, **answer["usage"])


@pytest.mark.parametrize("cost", [HUGE, 1e9, 100_000.01], ids=["1e400", "1e9", "100000.01"])
@pytest.mark.parametrize("kind", [ANTHROPIC, OPENAI])
def test_a_reported_cost_a_usage_row_cannot_hold_is_dropped(kind: str, cost: float) -> None:
    """Too large for a float, or beyond the $100,000 a row takes (a server's usage.cost of
    1e9 made the row refused: every attempt ended executor_error, its call unrecorded)."""
    data = body(kind)
    data["usage"] = {**data["usage"], "cost": cost}
    response = parse(kind, data)
    assert response.provider_cost_usd is None
    assert usage_row(response).provider_cost_usd is None


def test_a_cassette_reporting_such_a_cost_replays(tmp_path: Path) -> None:
    data = body(ANTHROPIC)
    data["usage"] = {**data["usage"], "cost": HUGE}
    line = {
        "match": {"run_id": "run-1", "phase_id": "phase-1", "attempt": 1, "role": "builder"},
        "provider": ANTHROPIC,
        "model": "m",
        "response": data,
    }
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    answer = ReplayProvider(path).complete(make_request())
    assert answer.text == "hi" and answer.provider_cost_usd is None


def test_a_live_server_reporting_such_a_cost_still_answers() -> None:
    with WireServer() as wire:
        wire.script(OPENAI_PATH, Reply(200, openai_completion("x", cost=HUGE)))
        provider = OpenAIProvider(api_key="k", base_url=wire.url + "/v1", max_retries=0)
        try:
            answer = provider.complete(make_request(model="gpt-6-luna"))
        finally:
            provider.close()
    assert answer.text == "x" and answer.provider_cost_usd is None


@pytest.mark.parametrize(
    ("kind", "usage", "said"),
    [
        (ANTHROPIC, {"input_tokens": True, "output_tokens": True}, "usage.input_tokens"),
        (OPENAI, {"prompt_tokens": True, "completion_tokens": 5}, "usage.prompt_tokens"),
        (ANTHROPIC, {"input_tokens": 10, "output_tokens": 1e30}, "usage.output_tokens"),
        (OPENAI, {"prompt_tokens": math.nan, "completion_tokens": 5}, "usage.prompt_tokens"),
    ],
)
def test_token_counts_that_are_no_counts_are_malformed_not_counted(
    kind: str, usage: dict[str, Any], said: str
) -> None:
    """Reported, but not as a count: said as such (it was "no usage…: the server must
    report usage", as if the server had sent none)."""
    with pytest.raises(LLMError) as caught:
        parse(kind, body(kind, usage=usage))
    assert caught.value.error_class == "MalformedResponse"
    assert f"{said} is not a token count" in caught.value.message, caught.value.message


COUNTED = {"input_tokens": 10, "output_tokens": 5}
PROMPTED = {"prompt_tokens": 10, "completion_tokens": 5}


@pytest.mark.parametrize(
    ("kind", "usage"),
    [
        (ANTHROPIC, {**COUNTED, "cache_read_input_tokens": 1e30}),
        (ANTHROPIC, {**COUNTED, "cache_creation_input_tokens": 2.5}),
        (ANTHROPIC, {**COUNTED, "cache_read_input_tokens": "3"}),
        (OPENAI, {**PROMPTED, "prompt_tokens_details": {"cached_tokens": 1e30}}),
        (OPENAI, {**PROMPTED, "prompt_tokens_details": {"cache_write_tokens": float("inf")}}),
        (OPENAI, {**PROMPTED, "prompt_tokens_details": {"cached_tokens": [1]}}),
    ],
    ids=str,
)
def test_a_cache_count_that_is_no_count_is_malformed_not_zero(
    kind: str, usage: dict[str, Any]
) -> None:
    """A cache count of 1e30 (or "3", or 2.5) was read as zero: the call billed short."""
    with pytest.raises(LLMError) as caught:
        parse(kind, body(kind, usage=usage))
    assert caught.value.error_class == "MalformedResponse"
    assert "usage" in caught.value.message


def test_a_whole_float_cache_count_is_that_count() -> None:
    usage = {**COUNTED, "cache_read_input_tokens": 4.0}
    counted = parse(ANTHROPIC, body(ANTHROPIC, usage=usage)).usage
    assert (counted.cache_read_tokens, counted.input_tokens) == (4, 14)


@pytest.mark.parametrize(
    ("recorded", "usage"),
    [
        ({"input_tokens": 10.0, "output_tokens": 3}, Usage(10, 3)),
        ({"input_tokens": 10, "output_tokens": 2.5}, None),
        ({"input_tokens": 10, "cache_read_tokens": "4"}, None),
    ],
    ids=["whole float", "fraction", "text"],
)
def test_a_cassettes_broken_stream_usage_with_a_count_that_is_no_count_is_unknown(
    tmp_path: Path, recorded: dict[str, Any], usage: Usage | None
) -> None:
    """Read as zero, such a count billed the broken stream short; unknown usage makes the
    executor count the whole allowance."""
    line = {
        "match": {"run_id": "run-1", "phase_id": "phase-1", "attempt": 1, "role": "builder"},
        "provider": ANTHROPIC,
        "model": "m",
        "error": {"message": "stream interrupted", "partial": "{", "usage": recorded},
    }
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(StreamInterrupted) as caught:
        ReplayProvider(path).complete(make_request())
    assert caught.value.usage == usage


def test_a_live_server_reporting_a_cache_count_beyond_any_is_refused() -> None:
    answer = openai_completion("x")
    answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 1e30}  # JSON's 1e+30
    with WireServer() as wire:
        wire.script(OPENAI_PATH, Reply(200, answer))
        provider = OpenAIProvider(api_key="k", base_url=wire.url + "/v1", max_retries=0)
        try:
            with pytest.raises(LLMError) as caught:
                provider.complete(make_request(model="gpt-6-luna"))
        finally:
            provider.close()
    assert caught.value.error_class == "MalformedResponse"


@pytest.mark.parametrize(
    ("kind", "changes", "named"),
    [
        (ANTHROPIC, {"stop_reason": "x" * 41}, "stop_reason"),
        (ANTHROPIC, {"stop_reason": "end\x00"}, "stop_reason"),
        (ANTHROPIC, {"stop_reason": {"a": 1}}, "stop_reason"),
        (ANTHROPIC, {"model": "m" * 201}, "model"),
        (ANTHROPIC, {"model": "m\x00"}, "model"),
        (OPENAI, {"choices": [{"message": {"content": "x"}, "finish_reason": "y" * 41}]}, "finish"),
        (OPENAI, {"model": 7}, "model"),
    ],
)
def test_text_fields_the_usage_row_cannot_hold_are_malformed(
    kind: str, changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(LLMError) as caught:
        parse(kind, body(kind, **changes))
    assert caught.value.error_class == "MalformedResponse"
    assert named in caught.value.message


@pytest.mark.parametrize("kind", [ANTHROPIC, OPENAI])
def test_a_well_formed_body_makes_a_row_the_control_plane_takes(kind: str) -> None:
    response = parse(kind, body(kind, model=None))
    assert response.model == "m" and response.text == "hi"  # the requested model, unnamed
    assert usage_row(response).stop_reason in ("end_turn", "stop")
