"""Provider response bodies to :class:`~autopack.llm.base.LLMResponse`: one normaliser per
wire format, shared by the live providers and replay.

A live call rebuilds, from its stream, the JSON body the API returns without streaming; a
cassette line holds that same body. Both go through the functions here, so replay cannot
drift from a live answer. They read the JSON itself rather than the SDKs' models: replay
(the demo, every offline drain, every test) then never imports the SDKs, whose import
alone takes 2.3 s (``anthropic``) and 1.3 s (``openai``) on the 2 vCPU CI machine, more
than the rest of a drain's start. A body the format does not allow is a malformed answer
(never retried: it would repeat), and usage always comes from the body, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from autopack.errors import LLMError
from autopack.llm.base import LLMResponse, Usage, malformed, token_count, usage_problem

ANTHROPIC = "anthropic"
ANTHROPIC_LABEL = "anthropic"  # how messages name the far end
OPENAI = "openai"
OPENAI_LABEL = "openai-compatible"

_anthropic_malformed = partial(malformed, ANTHROPIC_LABEL, ANTHROPIC)
_openai_malformed = partial(malformed, OPENAI_LABEL, OPENAI)


def anthropic_response(
    data: Mapping[str, Any],
    *,
    request_model: str,
    request_id: str | None,
    latency_ms: float,
    retries: int = 0,
) -> LLMResponse:
    """Normalise one Messages API response body."""
    bad = partial(
        _anthropic_malformed, model=request_model, request_id=request_id, latency_ms=latency_ms
    )
    usage_json = _usage_of(data, ("input_tokens", "output_tokens"), bad)
    content = data.get("content")
    if not isinstance(content, list):
        raise bad("content is not a list")
    text = "".join(
        block["text"]
        for block in content
        if isinstance(block, Mapping)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )
    stop = data.get("stop_reason")
    return _response(
        ANTHROPIC,
        data,
        text,
        "unknown" if stop is None else str(stop),
        "max_tokens",
        anthropic_usage(usage_json),
        bad,
        request_model=request_model,
        request_id=request_id,
        latency_ms=latency_ms,
        retries=retries,
    )


def anthropic_usage(usage: Mapping[str, Any]) -> Usage:
    """Normalised token counts: Anthropic's ``input_tokens`` excludes the cache parts."""
    cache_read = token_count(usage.get("cache_read_input_tokens"))
    cache_write = token_count(usage.get("cache_creation_input_tokens"))
    return Usage(
        input_tokens=token_count(usage.get("input_tokens")) + cache_read + cache_write,
        output_tokens=token_count(usage.get("output_tokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def openai_response(
    data: Mapping[str, Any],
    *,
    request_model: str,
    request_id: str | None,
    latency_ms: float,
    retries: int = 0,
) -> LLMResponse:
    """Normalise one Chat Completions response body.

    ``prompt_tokens`` already includes cached tokens, so it is the normalised input;
    ``prompt_tokens_details.cached_tokens`` / ``cache_write_tokens`` are the cache parts
    when the server reports them.
    """
    bad = partial(
        _openai_malformed, model=request_model, request_id=request_id, latency_ms=latency_ms
    )
    usage_json = _usage_of(data, ("prompt_tokens", "completion_tokens"), bad)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise bad("no choices")
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    finish = choice.get("finish_reason")
    details = usage_json.get("prompt_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    usage = Usage(
        input_tokens=usage_json["prompt_tokens"],
        output_tokens=usage_json["completion_tokens"],
        cache_read_tokens=token_count(details.get("cached_tokens")),
        cache_write_tokens=token_count(details.get("cache_write_tokens")),
    )
    return _response(
        OPENAI,
        data,
        content if isinstance(content, str) else "",
        "unknown" if finish is None else str(finish),
        "length",
        usage,
        bad,
        request_model=request_model,
        request_id=request_id,
        latency_ms=latency_ms,
        retries=retries,
    )


def _usage_of(
    data: Mapping[str, Any], counts: tuple[str, str], bad: Callable[[str], LLMError]
) -> Mapping[str, Any]:
    """The body's ``usage``, once the body is a JSON object whose usage reports ``counts``
    as integers (the server must report usage: never counted as zero)."""
    if not isinstance(data, Mapping):
        raise bad("body is not a JSON object")
    usage = data.get("usage")
    if not isinstance(usage, Mapping) or not all(isinstance(usage.get(k), int) for k in counts):
        raise bad(f"no usage.{'/'.join(counts)} (the server must report usage)")
    return usage


def _response(
    provider: str,
    data: Mapping[str, Any],
    text: str,
    stop_reason: str,
    truncated_by: str,
    usage: Usage,
    bad: Callable[[str], LLMError],
    *,
    request_model: str,
    request_id: str | None,
    latency_ms: float,
    retries: int,
) -> LLMResponse:
    """The normalised answer; ``truncated_by``: the stop reason that means "cut off"."""
    if (problem := usage_problem(usage)) is not None:
        raise bad(problem)
    return LLMResponse(
        text=text,
        stop_reason=stop_reason,
        truncated=stop_reason == truncated_by,
        usage=usage,
        provider=provider,
        model=str(data.get("model") or request_model),
        request_id=request_id,
        latency_ms=latency_ms,
        provider_cost_usd=_reported_cost(data["usage"]),
        raw=dict(data),
        retries=retries,
    )


def _reported_cost(usage: Mapping[str, Any]) -> float | None:
    """A cost the server reported itself (OpenRouter-style ``usage.cost``), if any: only a
    finite, non-negative number (Python's JSON reads ``Infinity`` and ``NaN``, and the
    telemetry row refuses them)."""
    cost = usage.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and 0 <= cost < math.inf:
        return float(cost)
    return None
