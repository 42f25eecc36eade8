"""Provider response bodies to :class:`~autopack.llm.base.LLMResponse`: one normaliser,
shared by the live providers and replay, with one reader per wire format.

A live call rebuilds, from its stream, the JSON body the API returns without streaming; a
cassette line holds that same body. Both go through :func:`normalise`, so replay cannot
drift from a live answer. It reads the JSON itself rather than the SDKs' models: replay
(the demo, every offline drain, every test) then never imports the SDKs, whose import
alone takes 2.3 s (``anthropic``) and 1.3 s (``openai``) on the 2 vCPU CI machine, more
than the rest of a drain's start. A body the format does not allow is a malformed answer
(never retried: it would repeat), and usage always comes from the body, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from autopack.bounds import COST_MAX_USD
from autopack.errors import LLMError
from autopack.llm.base import LLMResponse, Usage, malformed, token_count, usage_problem

ANTHROPIC = "anthropic"
OPENAI = "openai"
LABELS = {ANTHROPIC: "anthropic", OPENAI: "openai-compatible"}
"""Wire format -> how messages name the far end."""

Malformed = Callable[[str], LLMError]


@dataclass(frozen=True)
class _Read:
    """What a wire format's reader finds in a body."""

    text: str
    stop_reason: str
    truncated: bool
    usage: Usage


def normalise(
    provider: str,
    data: Mapping[str, Any],
    *,
    request_model: str,
    request_id: str | None,
    latency_ms: float,
    retries: int = 0,
) -> LLMResponse:
    """Normalise one response body of ``provider``'s wire format (:data:`WIRE_FORMATS`)."""
    bad: Malformed = partial(
        malformed,
        LABELS[provider],
        provider,
        model=request_model,
        request_id=request_id,
        latency_ms=latency_ms,
    )
    if not isinstance(data, Mapping):
        raise bad("body is not a JSON object")
    try:
        read = _READERS[provider](data, bad)
    except ValueError as exc:  # an optional usage count that is no count
        raise bad(f"usage: {exc}") from exc
    if (problem := usage_problem(read.usage)) is not None:
        raise bad(problem)
    return LLMResponse(
        text=read.text,
        stop_reason=read.stop_reason,
        truncated=read.truncated,
        usage=read.usage,
        provider=provider,
        model=_text(data.get("model"), "model", 200, bad) or request_model,
        request_id=request_id,
        latency_ms=latency_ms,
        provider_cost_usd=_reported_cost(data["usage"]),
        raw=dict(data),
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


def _anthropic(data: Mapping[str, Any], bad: Malformed) -> _Read:
    """A Messages API body: text blocks joined, ``max_tokens`` means cut off."""
    usage = _usage_of(data, ("input_tokens", "output_tokens"), bad)
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
    stop_reason = _text(data.get("stop_reason"), "stop_reason", 40, bad) or "unknown"
    return _Read(text, stop_reason, stop_reason == "max_tokens", anthropic_usage(usage))


def _openai(data: Mapping[str, Any], bad: Malformed) -> _Read:
    """A Chat Completions body: the first choice, ``length`` means cut off.

    ``prompt_tokens`` already includes cached tokens, so it is the normalised input;
    ``prompt_tokens_details.cached_tokens`` / ``cache_write_tokens`` are the cache parts
    when the server reports them.
    """
    usage = _usage_of(data, ("prompt_tokens", "completion_tokens"), bad)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise bad("no choices")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    stop_reason = _text(choices[0].get("finish_reason"), "finish_reason", 40, bad) or "unknown"
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    counts = Usage(
        input_tokens=usage["prompt_tokens"],
        output_tokens=usage["completion_tokens"],
        cache_read_tokens=token_count(details.get("cached_tokens")),
        cache_write_tokens=token_count(details.get("cache_write_tokens")),
    )
    text = content if isinstance(content, str) else ""
    return _Read(text, stop_reason, stop_reason == "length", counts)


_READERS: dict[str, Callable[[Mapping[str, Any], Malformed], _Read]] = {
    ANTHROPIC: _anthropic,
    OPENAI: _openai,
}
WIRE_FORMATS = tuple(_READERS)
"""The provider names a cassette line may carry."""


def _usage_of(
    data: Mapping[str, Any], counts: tuple[str, str], bad: Malformed
) -> Mapping[str, Any]:
    """The body's ``usage``, once it reports ``counts`` as integers (the server must report
    usage: it is never counted as zero)."""
    usage = data.get("usage")
    if not isinstance(usage, Mapping) or not all(k in usage for k in counts):
        raise bad(f"no usage.{'/'.join(counts)} (the server must report usage)")
    for key in counts:  # reported, but as no count (1e30, NaN, "12", true): said as such
        value = usage[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad(f"usage.{key} is not a token count (got {str(value)[:40]!r})")
    return usage


def _text(value: object, name: str, limit: int, bad: Malformed) -> str | None:
    """An optional short text field of the body, as the telemetry row can store it."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise bad(f"{name} is not text of at most {limit} characters")
    return value


def _reported_cost(usage: Mapping[str, Any]) -> float | None:
    """A cost the server reported itself (OpenRouter-style ``usage.cost``), if any: only a
    finite, non-negative number a usage row holds (Python's JSON reads ``Infinity``,
    ``NaN`` and integers too large for a float; the telemetry row refuses them, and any
    cost above ``COST_MAX_USD``: a server saying 1e9 ended every attempt executor_error)."""
    cost = usage.get("cost")
    if not isinstance(cost, int | float) or isinstance(cost, bool):
        return None
    try:
        value = float(cost)
    except OverflowError:  # an integer of hundreds of digits: JSON allows it
        return None
    return value if math.isfinite(value) and 0 <= value <= COST_MAX_USD else None
