"""Anthropic Messages API through the official SDK.

The live call and replay share one normaliser of the response body
(:func:`~autopack.llm.responses.normalise`), so a cassette line goes through the
very code a live response goes through. Calls stream (``messages.stream``): answers longer than
the non-streaming limits finish, ``on_text`` shows them arriving, ``ttft_ms`` is measured,
and the SDK's final message is dumped back into the body the API would have sent without
streaming, so ``raw`` and cassettes keep one format. A stream broken off after some text
raises :class:`~autopack.llm.base.StreamInterrupted` with that text.

Retries are the SDK's: ``max_retries`` extra attempts on 408/409/429/5xx (529 overload
included) and connection errors, waiting what ``retry-after-ms``/``retry-after`` asks (up
to a minute: :mod:`autopack.llm.retry_after`), else 0.5 s doubling up to 8 s with
jitter. Only then does an :class:`LLMError` surface.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from functools import partial

import anthropic
from anthropic.types import (
    AssistantMessageParam,
    CacheControlEphemeralParam,
    MessageParam,
    TextBlockParam,
    UserMessageParam,
)
from anthropic.types import Message as SdkMessage

from autopack.llm.base import (
    STREAM_BROKEN,
    STREAM_FAILED,
    LLMRequest,
    LLMResponse,
    Message,
    StreamInterrupted,
    StreamStalled,
    StreamText,
    Usage,
    elapsed_ms,
    listing_refusal,
    malformed,
    not_a_stream,
    retries_taken,
    sdk_error,
    stream_failure,
)
from autopack.llm.responses import ANTHROPIC, LABELS, anthropic_usage, normalise
from autopack.llm.retry_after import http_client

PROVIDER, LABEL = ANTHROPIC, LABELS[ANTHROPIC]
DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_TIMEOUT_S = 600.0
"""For a provider built directly; the registry passes AUTOPACK_LLM_TIMEOUT_SECONDS."""
DEFAULT_MAX_RETRIES = 2

_malformed = partial(malformed, LABEL, PROVIDER)

# The SDK's stream accumulator dumps its snapshot itself, and a usage count that is no
# integer (5.5, 1e30) made pydantic print a UserWarning with its own source lines on the
# user's terminal; the answer is refused as malformed anyway, naming the count.
warnings.filterwarnings("ignore", message="Pydantic serializer warnings", category=UserWarning)


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
            http_client=http_client(anthropic.DefaultHttpxClient),
        )
        self._timeout = timeout

    def close(self) -> None:
        """Release the SDK client's connection pool."""
        self._client.close()

    def check_usable(self) -> bool:
        """Ask the model list (``GET /v1/models``, one model) before anything is claimed:
        :class:`LLMError` when nothing answers at the address or the key is refused (401),
        which fail every call. A drain went on to fail each phase of its run with them.
        Any other answer (a server of one's own without that endpoint: 404) says nothing
        about the calls, and a timeout only that the server is slow: both pass. Whether the
        list answered."""
        started = time.perf_counter()
        try:
            self._client.with_options(max_retries=0, timeout=10).models.list(limit=1)
            return True
        except (anthropic.AuthenticationError, anthropic.APIConnectionError) as exc:
            refusal = listing_refusal(
                exc,
                slow=anthropic.APITimeoutError,
                absent=anthropic.APIConnectionError,
                label=LABEL,
                provider=PROVIDER,
                started=started,
            )
            if refusal is None:
                return False
            raise refusal from exc
        except (anthropic.AnthropicError, ValueError, TypeError, AttributeError):
            return False

    def complete(self, request: LLMRequest) -> LLMResponse:
        """Stream the answer (long answers finish, the display sees it arrive) and rebuild
        the response body the non-streaming API would have sent, for ``raw`` and replay."""
        # This SDK no longer has a temperature argument (current models reject sampling
        # parameters); a caller that sets one still gets it sent, for models that take it.
        extra_body = None if request.temperature is None else {"temperature": request.temperature}
        text = StreamText(request, stall_seconds=self._timeout)
        snapshot: SdkMessage | None = None
        fail = partial(
            sdk_error, label=LABEL, provider=PROVIDER, model=request.model, started=text.started
        )
        try:
            with self._client.messages.stream(
                model=request.model,
                max_tokens=request.max_tokens,
                system=_system(request),
                messages=[_message(m, request.prompt_cache) for m in request.messages],
                extra_body=extra_body,
            ) as stream:
                request_id, retries = stream.request_id, retries_taken(stream.response)
                answered = stream.response
                try:
                    with text.watchdog(stream.close):
                        for event in stream:
                            if event.type == "message_start":
                                snapshot = stream.current_message_snapshot
                                if getattr(snapshot, "usage", None) is None:
                                    raise _malformed(
                                        "no usage in message_start",
                                        request.model,
                                        request_id,
                                        elapsed_ms(text.started),
                                    )
                            elif event.type == "text":
                                text.add(event.text)
                            else:
                                text.add(None)
                    if snapshot is not None:
                        snapshot = stream.current_message_snapshot
                except (anthropic.AnthropicError, STREAM_BROKEN, StreamStalled) as exc:
                    if not text.chars:
                        raise
                    usage = None if snapshot is None else _known_usage(snapshot)
                    raise text.interrupted(
                        label=LABEL,
                        provider=PROVIDER,
                        model=request.model,
                        reason=str(exc) or type(exc).__name__,
                        usage=usage,
                    ) from exc
        except StreamInterrupted:
            raise
        except anthropic.AnthropicError as exc:
            raise fail(exc, unreachable=isinstance(exc, anthropic.APIConnectionError)) from exc
        except STREAM_FAILED as exc:
            raise stream_failure(
                exc, label=LABEL, provider=PROVIDER, model=request.model, started=text.started
            ) from exc
        if snapshot is None:
            raise _malformed(
                f"no message_start event ({not_a_stream(answered)})",
                request.model,
                request_id,
                elapsed_ms(text.started),
            )
        message = snapshot
        if message.stop_reason is None and text.chars:
            raise text.interrupted(
                label=LABEL,
                provider=PROVIDER,
                model=request.model,
                reason="the stream ended without a stop reason",
                usage=_known_usage(message),
            )
        response = normalise(
            PROVIDER,
            message.model_dump(mode="json", exclude_unset=True, warnings=False),
            request_model=request.model,
            request_id=request_id,
            latency_ms=elapsed_ms(text.started),
            retries=retries,
        )
        return dataclasses.replace(response, ttft_ms=text.ttft_ms)


CACHE_CONTROL: CacheControlEphemeralParam = {"type": "ephemeral"}


def _known_usage(message: SdkMessage) -> Usage | None:
    """What a broken stream's snapshot reported of its usage; ``None`` when a count in it
    is no count (the SDK builds the snapshot without validating it), as for no usage."""
    try:
        return anthropic_usage(message.usage.model_dump(warnings=False))
    except ValueError:
        return None


def _system(request: LLMRequest) -> str | list[TextBlockParam] | anthropic.Omit:
    """The system prompt; a cacheable block when the request asks for prompt caching."""
    if not request.system:
        return anthropic.omit
    if not request.prompt_cache:
        return request.system
    return [{"type": "text", "text": request.system, "cache_control": CACHE_CONTROL}]


def _message(message: Message, cache: bool) -> MessageParam:
    """One turn; a stable prefix goes first as a block of its own, cacheable when asked.

    A final assistant turn is a prefill the model continues (the executor strips its
    trailing whitespace: the API refuses a prefill ending in whitespace).
    """
    if not message.stable_prefix:
        content: str | list[TextBlockParam] = message.content
    else:
        prefix: TextBlockParam = {"type": "text", "text": message.stable_prefix}
        if cache:
            prefix["cache_control"] = CACHE_CONTROL
        content = [prefix]
        if message.content:
            content.append({"type": "text", "text": message.content})
    if message.role == "user":
        return UserMessageParam(role="user", content=content)
    return AssistantMessageParam(role="assistant", content=content)
