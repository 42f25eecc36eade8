"""Anthropic Messages API through the official SDK.

The live call and replay share :func:`anthropic_response`: it turns the response JSON into
the SDK's own ``Message`` object exactly the way the SDK does for a live answer (its
lenient ``construct``, not a stricter validation that would refuse answers the SDK
accepts) and then normalises that object. A cassette line therefore goes through the very
code a live response goes through.

Retries are the SDK's: ``max_retries`` extra attempts on 408/409/429/5xx (529 overload
included) and connection errors, waiting what ``retry-after-ms``/``retry-after`` asks, else
0.5 s doubling up to 8 s with jitter. Only then does an :class:`LLMError` surface.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import anthropic
from anthropic.types import AssistantMessageParam, MessageParam, UserMessageParam
from anthropic.types import Message as SdkMessage

from autopack.llm.base import (
    LLMRequest,
    LLMResponse,
    Usage,
    malformed,
    provider_cost,
    read_raw,
    sdk_error,
    token_count,
)

PROVIDER = "anthropic"
LABEL = "anthropic"  # how messages name the far end
DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MAX_RETRIES = 2


_malformed = partial(malformed, LABEL, PROVIDER)


def anthropic_response(
    data: Mapping[str, Any],
    *,
    request_model: str,
    request_id: str | None,
    latency_ms: float,
    retries: int = 0,
) -> LLMResponse:
    """Normalise one Messages API response body (the live path and replay both call this)."""
    if not isinstance(data, Mapping):
        raise _malformed("body is not a JSON object", request_model, request_id, latency_ms)
    usage_json = data.get("usage")
    if not isinstance(usage_json, Mapping) or not all(
        isinstance(usage_json.get(key), int) for key in ("input_tokens", "output_tokens")
    ):
        raise _malformed(
            "no usage.input_tokens/output_tokens", request_model, request_id, latency_ms
        )
    if not isinstance(data.get("content"), list):
        raise _malformed("content is not a list", request_model, request_id, latency_ms)
    message = SdkMessage.construct(**dict(data))
    usage = message.usage
    cache_read = token_count(usage.cache_read_input_tokens)
    cache_write = token_count(usage.cache_creation_input_tokens)
    text = "".join(
        str(getattr(block, "text", ""))
        for block in message.content
        if getattr(block, "type", None) == "text"
    )
    stop_reason = str(message.stop_reason) if message.stop_reason is not None else "unknown"
    return LLMResponse(
        text=text,
        stop_reason=stop_reason,
        truncated=stop_reason == "max_tokens",
        usage=Usage(
            input_tokens=usage.input_tokens + cache_read + cache_write,
            output_tokens=usage.output_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
        ),
        provider=PROVIDER,
        model=str(data.get("model") or request_model),
        request_id=request_id,
        latency_ms=latency_ms,
        provider_cost_usd=provider_cost(usage),
        raw=dict(data),
        retries=retries,
    )


class AnthropicProvider:
    """``anthropic.Anthropic`` behind the :class:`~autopack.llm.base.LLMProvider` seam."""

    name = PROVIDER

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        # Every argument is explicit so the SDK never consults the environment or a
        # credentials profile on its own (config.py is the one reader of settings).
        # An explicit timeout also opts out of the SDK's refusal of long non-streaming calls.
        self._client = anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url or DEFAULT_BASE_URL,
            max_retries=max_retries,
            timeout=timeout,
        )

    def close(self) -> None:
        """Release the SDK client's connection pool."""
        self._client.close()

    def complete(self, request: LLMRequest) -> LLMResponse:
        messages: list[MessageParam] = [
            UserMessageParam(role="user", content=message.content)
            if message.role == "user"
            else AssistantMessageParam(role="assistant", content=message.content)
            for message in request.messages
        ]
        # This SDK no longer has a temperature argument (current models reject sampling
        # parameters); a caller that sets one still gets it sent, for models that take it.
        extra_body = None if request.temperature is None else {"temperature": request.temperature}
        started = time.perf_counter()
        try:
            raw = self._client.messages.with_raw_response.create(
                model=request.model,
                max_tokens=request.max_tokens,
                system=request.system or anthropic.omit,
                messages=messages,
                extra_body=extra_body,
            )
        except anthropic.AnthropicError as exc:
            raise sdk_error(
                exc,
                label=LABEL,
                provider=PROVIDER,
                model=request.model,
                started=started,
                unreachable=isinstance(exc, anthropic.APIConnectionError),
            ) from exc
        return read_raw(
            raw,
            model=request.model,
            started=started,
            parse=anthropic_response,
            malformed=_malformed,
        )
