"""The provider seam: one ``complete(request) -> response`` Protocol and its value types.

Everything the executor and telemetry need from a model call is on :class:`LLMResponse`
(or, for a failed call, on :class:`autopack.errors.LLMError`), taken from the provider's
response, never guessed. Implementations live next to this module and are picked by name
in :mod:`autopack.llm.registry`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx2

from autopack.contract import USAGE_TOKENS_MAX
from autopack.errors import LLMError
from autopack.llm.context_room import output_room
from autopack.llm.retry_after import RETRY_AFTER_MAX_S, refused_wait

Role = Literal["builder", "auditor"]


CONTINUE_PROMPT = "Continue exactly where you stopped; do not repeat anything."
"""What a provider without assistant prefill asks after a partial answer (see
:attr:`LLMRequest.continues`)."""

TextProgress = Callable[[int], None]
"""Called with the characters received so far while an answer streams in."""


@dataclass(frozen=True)
class Message:
    """One turn of the conversation (the system prompt travels separately).

    ``stable_prefix`` is text that leads this turn and stays the same across a phase's
    attempts and continuations (the task and its read-only context). It is sent first, as
    a block of its own, so a provider's prompt cache can reuse it: Anthropic gets it as a
    content block marked ``cache_control`` (when the request asks for caching), OpenAI as
    the start of the turn, where its automatic prefix caching finds it.
    """

    role: Literal["user", "assistant"]
    content: str
    stable_prefix: str = ""


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
    prompt_cache: bool = False
    """Mark the system prompt and stable prefixes for the provider's prompt cache."""
    on_text: TextProgress | None = field(default=None, compare=False, repr=False)
    """Streaming progress for a live display; never affects the answer."""
    given_up: Callable[[], str | None] | None = field(default=None, compare=False, repr=False)
    """Why the caller no longer wants the answer, once it does not (its lease lost: the run
    cancelled, another executor holding the phase); asked as the answer streams. A stream
    whose text has started is then closed and raised as interrupted, with the usage known
    so far: read to its end, an answer no one could use was written and billed in full."""

    @property
    def continues(self) -> bool:
        """A request ending with the assistant's own partial answer asks the model to go on
        from there: Anthropic as an assistant prefill, OpenAI with :data:`CONTINUE_PROMPT`
        as one more user turn (it has no prefill)."""
        return bool(self.messages) and self.messages[-1].role == "assistant"


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


def token_count(value: object) -> int:
    """An optional token count from a response (absent or null means none were used; a
    whole float such as ``1500.0`` is that count). Anything else present raises
    ``ValueError``: a count of ``1e30`` or ``"12"`` read as zero billed the call short."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{value!r} is not a token count")


def usage_problem(usage: Usage) -> str | None:
    """Why a reported usage cannot be true, if it cannot: counts are stored and billed, so
    a negative one, one beyond what the control plane accepts, or more cached tokens than
    input tokens is refused as a malformed answer instead of crashing the accounting."""
    counts = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    for name, value in counts.items():
        if not 0 <= value <= USAGE_TOKENS_MAX:
            return f"usage {name}={value} is outside 0..{USAGE_TOKENS_MAX}"
    if usage.cache_read_tokens + usage.cache_write_tokens > usage.input_tokens:
        return (
            f"usage reports {usage.cache_read_tokens + usage.cache_write_tokens} cached tokens "
            f"of {usage.input_tokens} input tokens"
        )
    return None


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started``, a :func:`time.perf_counter` reading."""
    return (time.perf_counter() - started) * 1000.0


NO_USAGE = "stream_without_usage"
"""The ``error_code`` of a stream that ended without the usage ``include_usage`` asks for:
the server's doing (an old Ollama, a proxy dropping it), so every answer lacks it alike."""


def malformed(
    label: str,
    provider: str,
    reason: str,
    model: str,
    request_id: str | None,
    latency_ms: float,
    *,
    error_code: str | None = None,
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
        error_code=error_code,
    )


def _missing_scope(exc: Exception) -> bool:
    """A 401 that refuses the model list only, not the key: an OpenAI restricted key
    without the models scope ("Missing scopes: api.model.read") still makes calls."""
    message = str(getattr(exc, "message", exc)).lower()
    return getattr(exc, "status_code", None) == 401 and (
        "scope" in message or "permission" in message
    )


def listing_refusal(
    exc: Exception,
    *,
    slow: type[Exception],
    absent: type[Exception],
    label: str,
    provider: str,
    started: float,
    refused_hint: str = "",
) -> LLMError | None:
    """What a model list's refusal (a 401, or nothing answering: ``absent``, the SDK's
    connection error) says of every call: the :class:`LLMError` each would meet, or None
    when it says nothing of them (``slow``, the SDK's timeout: the calls wait longer; a
    key refused the list only)."""
    if isinstance(exc, slow) or _missing_scope(exc):
        return None
    return sdk_error(
        exc,
        label=label,
        provider=provider,
        model="",
        started=started,
        unreachable=isinstance(exc, absent),
        refused_hint=refused_hint,
    )


def sdk_error(
    exc: Exception,
    *,
    label: str,
    provider: str,
    model: str,
    started: float,
    unreachable: bool,
    refused_hint: str = "",
) -> LLMError:
    """An official SDK's exception, raised after its own retries, as an :class:`LLMError`.

    ``refused_hint`` ends a 401/403's message: what the caller knows about its credentials
    (an OpenAI-compatible server sent a placeholder key) that the server's "unauthorized"
    does not say.

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
    in_stream = error_event_status(getattr(exc, "body", None))
    if in_stream is not None and status in (None, 200):
        # An error event inside a 200 stream (an overload mid-answer): as retryable as
        # the same error sent as an HTTP status would be.
        status, kind = in_stream
        message = f"{kind} in the stream: {message}"
    url = getattr(getattr(exc, "request", None), "url", None)
    at = f" at {url}" if url else ""
    if isinstance(status, int):
        # A 404 is often the address itself (OPENAI_BASE_URL without Ollama's /v1 answers
        # "404 page not found"): the URL shows it, as for an unreachable server. So does a
        # body that is not JSON: not the API answering but a web server or proxy, whose
        # page OpenAI's SDK left out ("Error code: 405" alone).
        page = getattr(exc, "body", None)
        page = " ".join(page.split())[:300] if isinstance(page, str) else ""
        if page and page not in " ".join(message.split()):
            message = f"{message} - {page}"
        refused = status in (401, 403)
        shown = at if status == 404 or refused or page else ""
        if refused and refused_hint:
            message = f"{message} ({refused_hint})"
        wait = refused_wait(exc)
        if wait is not None:
            message += (
                f" (the server asked to wait {wait:.0f} s, longer than the "
                f"{RETRY_AFTER_MAX_S:.0f} s a call waits)"
            )
        return LLMError(
            f"{label} {status}{shown}: {message}",
            status_code=status,
            request_id=getattr(exc, "request_id", None),
            retryable=retryable_status(status),
            retry_after_s=wait,
            error_code=code if isinstance(code := getattr(exc, "code", None), str) else None,
            output_room=output_room(status, message, getattr(exc, "body", None)),
            **common,
        )
    if unreachable:
        # The SDK says only "Connection error.": the address shows a mistyped *_BASE_URL,
        # and the cause what went wrong there (a redirect loop, TLS spoken to a plain-HTTP
        # port or the reverse, a certificate refused, a server hanging up).
        cause = exc.__cause__
        why = f" ({type(cause).__name__}: {cause})" if cause is not None and str(cause) else ""
        return LLMError(f"{label} unreachable{at}: {message}{why}", retryable=True, **common)
    return LLMError(f"{label} call failed: {exc}", retryable=False, **common)


STREAM_ERROR_STATUS = {
    "overloaded_error": 529,
    "api_error": 500,
    "rate_limit_error": 429,
    "timeout_error": 504,
    "server_error": 500,
    "rate_limit_exceeded": 429,
}
"""HTTP statuses of the error types a provider can send as an event inside a stream
(Anthropic's ``event: error``, an OpenAI-compatible ``{"error": ...}`` chunk)."""


def error_event_status(body: object) -> tuple[int, str] | None:
    """The status an in-stream error event stands for, and its type, if it names one
    (Anthropic's SDK keeps the whole event as the body, OpenAI's only its ``error``)."""
    if not isinstance(body, dict):
        return None
    error = body.get("error", body)
    if not isinstance(error, dict):
        return None
    code, kind = error.get("code"), error.get("type")
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code, str(kind or code)
    if isinstance(kind, str) and kind in STREAM_ERROR_STATUS:
        return STREAM_ERROR_STATUS[kind], kind
    return None


class StreamInterrupted(LLMError):
    """The answer stopped mid-stream (the connection dropped, or the stream ended without
    a stop reason) after some text had arrived.

    ``partial`` is the text received and ``usage`` what the provider had reported by then
    (Anthropic reports the input at the start of a stream; OpenAI only at its end, so
    None). The executor continues it like an answer cut off at ``max_tokens`` instead of
    throwing the text away.
    """

    def __init__(self, message: str, *, partial: str, usage: Usage | None, **kwargs: Any) -> None:
        super().__init__(message, error_class="StreamInterrupted", retryable=True, **kwargs)
        self.partial = partial
        self.usage = usage


STREAM_BROKEN = httpx2.TransportError
"""What both SDKs let through when the connection fails while a stream is being read
(their own errors cover only the request and ``error`` events)."""

STREAM_MALFORMED = (ValueError, TypeError, LookupError, AttributeError, RecursionError)
"""What the SDKs' stream parsers raise on a stream the wire format does not allow (bad
JSON or UTF-8, an event of the wrong shape, JSON nested deeper than Python's parser
recurses): a malformed answer, not a crash."""

CHARS_PER_TOKEN_MAX = 64
"""More characters than this per token of ``max_tokens`` is a server ignoring the limit:
the stream is refused instead of growing without bound."""


class StreamTooLong(ValueError):
    """A stream sent far more text than its ``max_tokens`` allows."""


class StreamStalled(Exception):
    """A stream kept sending events (pings, empty chunks) but no text for too long, or
    ran past its whole-call deadline (:data:`SECONDS_PER_TOKEN_MAX`)."""


SECONDS_PER_TOKEN_MAX = 1.0
"""A call may last its timeout plus this many seconds per token of ``max_tokens`` (the
slowest useful model, a large one on a CPU, writes about a token a second). The timeout
bounds each read and each wait for text, so a server dripping a character just inside it
would otherwise hold the call, and the phase's lease, for days."""


STREAM_FAILED = (STREAM_BROKEN, StreamStalled, *STREAM_MALFORMED)
"""Everything reading a stream can raise besides the SDK's own errors."""


def stream_failure(
    exc: BaseException, *, label: str, provider: str, model: str, started: float
) -> LLMError:
    """A stream that failed before any text arrived: broken or stalled (retryable, like a
    lost connection), or unreadable (malformed: asking again would repeat it)."""
    if isinstance(exc, STREAM_MALFORMED):
        reason = f"the stream could not be read ({type(exc).__name__}: {exc})"
        return malformed(label, provider, reason, model, None, elapsed_ms(started))
    assert isinstance(exc, Exception)
    return sdk_error(
        exc, label=label, provider=provider, model=model, started=started, unreachable=True
    )


class StreamText:
    """The text of one streamed answer as it arrives: time to first text, progress."""

    def __init__(self, request: LLMRequest, *, stall_seconds: float) -> None:
        max_tokens = request.max_tokens
        on_text = request.on_text
        self._given_up = request.given_up
        self.started = time.perf_counter()
        self.ttft_ms: float | None = None
        self.parts: list[str] = []
        self.chars = 0
        self._reasoning_chars = 0
        self._on_text = on_text
        self._max_chars = max_tokens * CHARS_PER_TOKEN_MAX
        self._stall_seconds = stall_seconds
        self._last_text = self.started
        self._allowed_s = stall_seconds + max_tokens * SECONDS_PER_TOKEN_MAX

    def add(self, piece: str | None, *, reasoning: str | None = None) -> None:
        """Take the text of one event (None or "" for an event without text), and the
        ``reasoning`` a thinking model streams before it (not the answer's text, but as
        much progress: it counts toward the size ``max_tokens`` allows, whose tokens it
        spends, and toward the timeout without text, which cut off a local model
        thinking longer than that as stalled, on every attempt alike).

        Raises :class:`StreamTooLong` past the size ``max_tokens`` allows, and
        :class:`StreamStalled` when events keep coming without text for longer than the
        call's timeout (the SDK's timeout is per read, so pings would hold it forever) or
        the call outlasts its deadline.
        """
        now = time.perf_counter()
        if (late := self._late(now)) is not None:
            raise StreamStalled(late)
        if reasoning:
            self._last_text = now
            self._reasoning_chars += len(reasoning)
        if not piece:
            self._check_size()
            return
        self._last_text = now
        if self.ttft_ms is None:
            self.ttft_ms = elapsed_ms(self.started)
        self.parts.append(piece)
        self.chars += len(piece)
        self._check_size()
        if self._on_text is not None:
            self._on_text(self.chars)

    def _check_size(self) -> None:
        if self.chars + self._reasoning_chars > self._max_chars:
            raise StreamTooLong(
                f"more than {self._max_chars} characters for max_tokens "
                f"{self._max_chars // CHARS_PER_TOKEN_MAX}"
            )

    def _late(self, now: float) -> str | None:
        """Why the stream has gone on too long, if it has: no text for the timeout, or
        past the whole call's deadline."""
        if self.chars and self._given_up is not None and (why := self._given_up()):
            return f"given up: {why}"  # before text, the usage so far is not known yet
        if now - self._last_text > self._stall_seconds:
            return f"no text for {self._stall_seconds:g} s"
        if now - self.started > self._allowed_s:
            return (
                f"the answer took over {self._allowed_s:g} s (the timeout and "
                f"{SECONDS_PER_TOKEN_MAX:g} s per token of max_tokens)"
            )
        return None

    @contextmanager
    def watchdog(self, close: Callable[[], None]) -> Iterator[None]:
        """Close the stream (``close``) once no text came for the call's timeout or the
        call outlasted its deadline, and raise :class:`StreamStalled` in place of
        whatever reading it then raised.

        :meth:`add` only sees the events the SDK yields; SSE comments (``: keep-alive``)
        are swallowed by its parser, so a server sending nothing else would hold the
        call, and the phase's lease, forever: each comment is a read within the timeout.
        """
        done = threading.Event()
        fired: list[str] = []
        period = min(self._stall_seconds / 4, 1.0)

        def watch() -> None:
            while not done.wait(period):
                if (late := self._late(time.perf_counter())) is not None:
                    fired.append(late)
                    close()
                    return

        threading.Thread(target=watch, name="stream-watchdog", daemon=True).start()
        try:
            yield
        except Exception:
            if not fired:
                raise
        finally:
            done.set()
        if fired:
            raise StreamStalled(fired[0])

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def interrupted(
        self, *, label: str, provider: str, model: str, reason: str, usage: Usage | None
    ) -> StreamInterrupted:
        """The answer so far, as the error a caller can continue from."""
        return StreamInterrupted(
            f"{label} stream interrupted after {self.chars} characters: {reason}",
            partial=self.text,
            usage=usage,
            provider=provider,
            model=model,
            latency_ms=elapsed_ms(self.started),
        )


def not_a_stream(http_response: httpx2.Response) -> str:
    """Where a 200 answer that carried none of the wire format's events came from and what
    it said it was: a ``*_BASE_URL`` at a web page, a proxy's login form or a server not
    streaming answers ``text/html`` or an empty body, and only the address shows which."""
    kind = http_response.headers.get("content-type") or "no content-type"
    return f"{http_response.url} answered 200, {kind}, with none of the API's events"


def retries_taken(http_response: httpx2.Response) -> int:
    """How many times the SDK retried before this response: both SDKs number each try in
    the ``x-stainless-retry-count`` request header (a stream has no other record of it)."""
    value = http_response.request.headers.get("x-stainless-retry-count", "0")
    return int(value) if value.isdigit() else 0
