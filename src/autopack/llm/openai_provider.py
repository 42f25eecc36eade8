"""OpenAI Chat Completions through the official SDK, for OpenAI and compatible servers.

``OPENAI_BASE_URL`` points it at Ollama, vLLM, llama.cpp server, LM Studio or OpenRouter;
those often need no key, so a placeholder is sent. Like the Anthropic provider, the live
call and replay share one normaliser of the response body
(:func:`~autopack.llm.responses.normalise`), so replay cannot drift from reality. Calls
stream with ``include_usage``; the chunks are accumulated back into the ``ChatCompletion``
body a non-streaming call returns (``raw``), and a stream broken off after some text
raises :class:`~autopack.llm.base.StreamInterrupted` with that text.

Token accounting: ``prompt_tokens`` already includes cached tokens, so it is the
normalised input; ``prompt_tokens_details.cached_tokens`` / ``cache_write_tokens`` are the
cache parts when the server reports them. ``usage.cost`` (OpenRouter) is passed through.

Retries are the SDK's: ``max_retries`` extra attempts on 408/409/429/5xx and connection
errors, honouring ``retry-after-ms``/``retry-after`` up to a minute (a longer ask fails the call
at once: :mod:`autopack.llm.retry_after`), else 0.5 s doubling up to 8 s with jitter.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from autopack.llm.base import (
    CONTINUE_PROMPT,
    NO_USAGE,
    STREAM_BROKEN,
    STREAM_FAILED,
    LLMRequest,
    LLMResponse,
    StreamInterrupted,
    StreamStalled,
    StreamText,
    elapsed_ms,
    listing_refusal,
    malformed,
    not_a_stream,
    sdk_error,
    stream_failure,
)
from autopack.llm.responses import LABELS, OPENAI, normalise
from autopack.llm.retry_after import http_client

PROVIDER, LABEL = OPENAI, LABELS[OPENAI]
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_S = 600.0
"""For a provider built directly; the registry passes AUTOPACK_LLM_TIMEOUT_SECONDS."""
DEFAULT_MAX_RETRIES = 2
# Local servers need no key, but the SDK refuses to start without one.
PLACEHOLDER_API_KEY = "not-needed"

TokenParameter = Literal["max_tokens", "max_completion_tokens"]


def token_parameter_for(base_url: str | None) -> TokenParameter:
    """Which request field carries the output budget.

    OpenAI's own API wants ``max_completion_tokens`` (its reasoning models reject
    ``max_tokens``); compatible servers (Ollama, llama.cpp, LM Studio, older vLLM) all
    understand ``max_tokens`` and not always the newer name.
    """
    host = urlsplit(base_url or DEFAULT_BASE_URL).hostname or ""
    return "max_completion_tokens" if host == "api.openai.com" else "max_tokens"


_malformed = partial(malformed, LABEL, PROVIDER)


class OpenAIProvider:
    """``openai.OpenAI`` (Chat Completions) behind the provider seam."""

    name = PROVIDER

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: float = DEFAULT_TIMEOUT_S,
        token_parameter: TokenParameter | None = None,
    ) -> None:
        # Explicit key and URL: the SDK must not fall back to the environment on its own.
        self._client = openai.OpenAI(
            api_key=api_key or PLACEHOLDER_API_KEY,
            base_url=base_url or DEFAULT_BASE_URL,
            max_retries=max_retries,
            timeout=timeout,
            http_client=http_client(openai.DefaultHttpxClient),
        )
        self._timeout = timeout
        self._refused_hint = (
            "" if api_key else "OPENAI_API_KEY is not set, so a placeholder was sent: set it"
        )
        self.token_parameter = token_parameter or token_parameter_for(base_url)

    def served_models(self) -> list[str] | None:
        """The models the server lists (``GET /models``); None when it cannot say (not
        every compatible server implements it, and that is no reason to stop a drain).

        :class:`LLMError` when the answer says no call can succeed: nothing answers at the
        address (a stopped Ollama) or the key is refused (401). Let through, the first
        call failed its phase, then every other phase of the run, each needing a requeue.
        """
        started = time.perf_counter()
        try:
            page = self._client.with_options(max_retries=0, timeout=10).models.list()
            return [model.id for model in page.data]
        except (openai.AuthenticationError, openai.APIConnectionError) as exc:
            refusal = listing_refusal(
                exc,
                slow=openai.APITimeoutError,
                absent=openai.APIConnectionError,
                label=LABEL,
                provider=PROVIDER,
                started=started,
                refused_hint=self._refused_hint,
            )
            if refusal is None:
                return None
            raise refusal from exc
        except (openai.OpenAIError, ValueError, TypeError, AttributeError):
            return None

    def close(self) -> None:
        """Release the SDK client's connection pool."""
        self._client.close()

    def complete(self, request: LLMRequest) -> LLMResponse:
        """Stream the answer (with a final usage chunk) and rebuild the ``ChatCompletion``
        body the non-streaming API would have sent, for ``raw`` and replay."""
        new_name = self.token_parameter == "max_completion_tokens"
        text = StreamText(request, stall_seconds=self._timeout)
        fail = partial(
            sdk_error,
            label=LABEL,
            provider=PROVIDER,
            model=request.model,
            started=text.started,
            refused_hint=self._refused_hint,
        )
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=request.model,
                messages=_messages(request),
                temperature=(openai.omit if request.temperature is None else request.temperature),
                max_tokens=openai.omit if new_name else request.max_tokens,
                max_completion_tokens=request.max_tokens if new_name else openai.omit,
                stream=True,
                stream_options={"include_usage": True},
            )
            body = _Accumulated()
            with raw.parse() as stream:
                try:
                    with text.watchdog(stream.close):
                        for chunk in stream:
                            text.add(body.add(chunk), reasoning=body.reasoning)
                except (openai.OpenAIError, STREAM_BROKEN, StreamStalled) as exc:
                    if not text.chars:
                        raise
                    raise text.interrupted(
                        label=LABEL,
                        provider=PROVIDER,
                        model=request.model,
                        reason=str(exc) or type(exc).__name__,
                        usage=None,
                    ) from exc
        except StreamInterrupted:
            raise
        except openai.OpenAIError as exc:
            raise fail(exc, unreachable=isinstance(exc, openai.APIConnectionError)) from exc
        except STREAM_FAILED as exc:
            raise stream_failure(
                exc, label=LABEL, provider=PROVIDER, model=request.model, started=text.started
            ) from exc
        if body.finish_reason is None and text.chars:
            raise text.interrupted(
                label=LABEL,
                provider=PROVIDER,
                model=request.model,
                reason="the stream ended without a finish reason",
                usage=None,
            )
        if body.empty:
            raise _malformed(
                f"no chunk of a Chat Completions stream ({not_a_stream(raw.http_response)})",
                request.model,
                raw.request_id,
                elapsed_ms(text.started),
            )
        if body.usage is None:
            raise _malformed(
                "the stream carried no usage chunk (the server ignored "
                "stream_options.include_usage; Ollama sends it from 0.5.2, vLLM and llama.cpp "
                "do too: upgrade the server); usage comes from the server, never a guess",
                request.model,
                raw.request_id,
                elapsed_ms(text.started),
                error_code=NO_USAGE,
            )
        response = normalise(
            PROVIDER,
            body.completion(text.text),
            request_model=request.model,
            request_id=raw.request_id,
            latency_ms=elapsed_ms(text.started),
            retries=raw.retries_taken,
        )
        return dataclasses.replace(response, ttft_ms=text.ttft_ms)


def _messages(request: LLMRequest) -> list[ChatCompletionMessageParam]:
    """System first, then each turn with its stable prefix leading, so the prefix the
    server's automatic prompt caching matches is the same on every call of a phase; a
    final partial answer is followed by :data:`CONTINUE_PROMPT` (no prefill here)."""
    messages: list[ChatCompletionMessageParam] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        content = message.stable_prefix + message.content
        if message.role == "user":
            messages.append({"role": "user", "content": content})
        else:
            messages.append({"role": "assistant", "content": content})
    if request.continues:
        messages.append({"role": "user", "content": CONTINUE_PROMPT})
    return messages


class _Accumulated:
    """The parts of a ``ChatCompletion`` body that a chunk stream carries."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.reasoning: str | None = None
        """The last chunk's reasoning (vLLM's and llama.cpp's ``reasoning_content``,
        Ollama's ``reasoning``): not the answer, but progress toward it."""

    def add(self, chunk: ChatCompletionChunk) -> str | None:
        """Take one chunk in; its new text, if any. Local servers may leave out ``id``,
        ``created`` or ``model`` (the SDK's lenient parse allows it); so does the body."""
        for key in ("id", "created", "model"):
            value = getattr(chunk, key, None)
            if value is not None:
                self.head[key] = value
        usage = getattr(chunk, "usage", None)
        if usage is not None:  # as sent (unvalidated, so no serializer warnings): read later
            self.usage = usage.model_dump(mode="json", exclude_unset=True, warnings=False)
        # The one choice asked for: a server streaming others too (n > 1 by its own
        # default) had their text mixed into the answer.
        choices = getattr(chunk, "choices", None) or ()
        choice = next((c for c in choices if getattr(c, "index", 0) == 0), None)
        self.reasoning = None
        if choice is None:
            return None
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason
        delta = getattr(choice, "delta", None)
        for field in ("reasoning_content", "reasoning"):
            if isinstance(thought := getattr(delta, field, None), str) and thought:
                self.reasoning = thought
        content = getattr(delta, "content", None)
        return content if isinstance(content, str) else None

    @property
    def empty(self) -> bool:
        """No chunk arrived: nothing said an id, a model, a finish reason or usage."""
        return not self.head and self.finish_reason is None and self.usage is None

    def completion(self, text: str) -> dict[str, Any]:
        """The body as ``chat.completions.create`` without streaming returns it."""
        return {
            **self.head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
            **({} if self.usage is None else {"usage": self.usage}),
        }
