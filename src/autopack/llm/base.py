"""The provider seam: one ``complete(request) -> response`` Protocol and its value types.

Everything the executor and telemetry need from a model call is on :class:`LLMResponse`
(or, for a failed call, on :class:`autopack.errors.LLMError`), taken from the provider's
response, never guessed. Implementations live next to this module and are picked by name
in :mod:`autopack.llm.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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
