"""The provider seam: one ``complete(request) -> response`` Protocol and its value types.

Everything the executor and telemetry need from a model call is on :class:`LLMResponse`
(or, for a failed call, on :class:`autopack.errors.LLMError`), taken from the provider's
response, never guessed. Implementations live next to this module and are picked by name
in :mod:`autopack.llm.registry`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from autopack.errors import LLMError

Role = Literal["builder", "auditor"]


@dataclass(frozen=True)
class Message:
    """One turn of the conversation (the system prompt travels separately)."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class LLMRequest:
    """What the executor asks for; ``run_id``/``phase_id``/``attempt``/``role`` identify the
    call for replay matching and telemetry."""

    role: Role
    model: str
    system: str
    messages: tuple[Message, ...]
    max_tokens: int
    run_id: str
    phase_id: str | None
    attempt: int | None
    temperature: float | None = None


@dataclass(frozen=True)
class Usage:
    """Token counts of one call.

    ``input_tokens`` INCLUDES cache reads and cache writes (the OpenTelemetry GenAI rule);
    Anthropic reports them apart, so its provider adds them up. Cost math subtracts them
    again to price each kind at its own rate.
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True)
class LLMResponse:
    """A completed call, normalised across providers.

    ``raw`` is the provider's own response JSON, exactly as received: the recorder writes
    it into cassettes and replay parses it back through the same code, so a replayed
    response cannot drift from a live one. ``retries`` is how many times the SDK retried
    (429/5xx/connection) before this answer; ``latency_ms`` is the wall time of the whole
    call, those retries and their backoff included.
    """

    text: str
    stop_reason: str
    truncated: bool
    usage: Usage
    provider: str
    model: str
    request_id: str | None
    latency_ms: float
    ttft_ms: float | None = None
    provider_cost_usd: float | None = None
    raw: dict[str, Any] | None = field(default=None, repr=False, hash=False)
    retries: int = 0


class LLMProvider(Protocol):
    """Anything that answers a request: a live SDK client, a cassette, a recorder.

    ``complete`` must be safe to call from several threads at once (the executor drains
    phases concurrently). Failures raise :class:`autopack.errors.LLMError`.
    """

    name: str

    def complete(self, request: LLMRequest) -> LLMResponse: ...


def retryable_status(status_code: int | None) -> bool:
    """Whether a later attempt may succeed after an HTTP failure.

    Mirrors the SDKs' own retry rule (408 request timeout, 409 lock timeout, 429 rate
    limit, any 5xx including Anthropic's 529 overload): the executor may back off and try
    again at the phase level once the SDK's quick retries are spent. ``None`` (no HTTP
    answer: connection refused, timeout) is retryable too.
    """
    if status_code is None:
        return True
    return status_code in (408, 409, 429) or status_code >= 500


def provider_cost(usage: object) -> float | None:
    """A cost the server reported itself (OpenRouter-style ``usage.cost``), if any."""
    extra = getattr(usage, "model_extra", None) or {}
    cost = extra.get("cost") if isinstance(extra, dict) else None
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        return float(cost)
    return None


def token_count(value: object) -> int:
    """An optional token count from a response (absent or null means none were used)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started``, a :func:`time.perf_counter` reading."""
    return (time.perf_counter() - started) * 1000.0


def malformed(
    label: str, provider: str, reason: str, model: str, request_id: str | None, latency_ms: float
) -> LLMError:
    """A 200 answer the provider's format does not allow (never retried: it would repeat)."""
    return LLMError(
        f"{label} response is malformed: {reason}",
        provider=provider,
        model=model,
        error_class="MalformedResponse",
        status_code=200,
        request_id=request_id,
        latency_ms=latency_ms,
        retryable=False,
    )


def sdk_error(
    exc: Exception, *, label: str, provider: str, model: str, started: float, unreachable: bool
) -> LLMError:
    """An official SDK's exception, raised after its own retries, as an :class:`LLMError`.

    Both SDKs raise the same shapes: ``APIStatusError`` (``status_code``, ``message``,
    ``request_id``), ``APIConnectionError`` (``unreachable``), and their base error.
    """
    common: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "error_class": type(exc).__name__,
        "latency_ms": elapsed_ms(started),
    }
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", str(exc))
    if isinstance(status, int):
        return LLMError(
            f"{label} {status}: {message}",
            status_code=status,
            request_id=getattr(exc, "request_id", None),
            retryable=retryable_status(status),
            **common,
        )
    if unreachable:
        return LLMError(f"{label} unreachable: {message}", retryable=True, **common)
    return LLMError(f"{label} call failed: {exc}", retryable=False, **common)


class _JsonBody(Protocol):
    def json(self, **kwargs: Any) -> Any: ...


class RawResponse(Protocol):
    """What both SDKs' ``with_raw_response`` calls return (the parts read here)."""

    @property
    def http_response(self) -> _JsonBody: ...

    @property
    def request_id(self) -> str | None: ...

    @property
    def retries_taken(self) -> int: ...


def read_raw(
    raw: RawResponse,
    *,
    model: str,
    started: float,
    parse: Callable[..., LLMResponse],
    malformed: Callable[[str, str, str | None, float], LLMError],
) -> LLMResponse:
    """Decode a raw SDK response with the provider's ``parse`` (shared with replay)."""
    try:
        data = raw.http_response.json()
    except ValueError as exc:
        raise malformed(
            f"body is not JSON ({exc})", model, raw.request_id, elapsed_ms(started)
        ) from exc
    return parse(
        data,
        request_model=model,
        request_id=raw.request_id,
        latency_ms=elapsed_ms(started),
        retries=raw.retries_taken,
    )
