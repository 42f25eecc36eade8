"""A loopback HTTP server speaking the Anthropic and OpenAI wire formats, for the REAL SDKs.

Tests point ``anthropic.Anthropic`` / ``openai.OpenAI`` (through Autopack's providers) at
it, so the SDK's own request building, retry loop, error classes and response parsing all
run for real; only the far end is scripted::

    with WireServer() as wire:
        wire.script(ANTHROPIC_PATH, Reply(429, anthropic_error(...), RETRY_NOW), Reply(200, ...))
        ...
        assert len(wire.seen(ANTHROPIC_PATH)) == 2

A request asking for a stream (``"stream": true``) gets a 200 body as the API streams it:
Server-Sent Events built from the same response body (:func:`anthropic_events`,
:func:`openai_chunks`), sent with chunked encoding, optionally cut off mid-answer
(``Reply.cut_after``). Each POST takes the next scripted :class:`Reply` for its path. A
request with nothing scripted gets a 500 marked ``x-should-retry: false``, so a test that
asks more than it scripted fails loudly instead of hanging in SDK retries.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"
RETRY_NOW = {"retry-after-ms": "1", "retry-after": "0"}
"""Headers that make the SDKs retry after 1 ms instead of their 0.5 s+ backoff."""


@dataclass
class Reply:
    """One scripted answer: status, JSON (dict) or raw (str/bytes) body, headers, delay."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    echo_headers: bool = False
    """Answer with an error body quoting the request's headers (a careless proxy does)."""
    cut_after: int | None = None
    """For a streamed answer: drop the connection once this many characters of its text
    were sent (mid chunked body, so the client sees a broken stream, not an end)."""
    end_early: bool = False
    """For a streamed answer: end the stream cleanly but before its stop event."""
    gate: threading.Event | None = None
    """Answer only once this is set (at most 60 s): the test decides when the call ends,
    e.g. after it stopped the executor mid-call."""
    pace_s: float = 0.0
    """For a streamed answer: seconds between its events (a model writing at that pace)."""
    writing: threading.Event = field(default_factory=threading.Event)
    """Set once a streamed answer's first text is sent."""
    left: threading.Event = field(default_factory=threading.Event)
    """Set when the client closed a streamed answer before its end."""


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class WireServer(LoopbackServer):
    """Both wire formats on a loopback port (:class:`LoopbackServer`)."""

    def __init__(self) -> None:
        self._replies: dict[str, deque[Reply]] = defaultdict(deque)
        self.respond: Callable[[Seen], Reply] | None = None
        """Answers what nothing was scripted for, computed from the request (a benchmark
        replaying a whole run); called from the server's threads."""
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self.models: list[str] | None = None
        """What ``GET /v1/models`` lists; None: it answers 404, as some servers do."""
        self.models_status: int | None = None
        """What ``GET /v1/models`` answers instead, with an error body (401: the key is
        refused, as every call would be)."""
        self.models_refusal = "invalid x-api-key"
        """The error message of that answer."""
        super().__init__(self._handler_class())

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._replies[path].extend(replies)

    def seen(self, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if path is None or s.path == path]

    def _take(self, seen: Seen) -> Reply:
        with self._lock:
            self._seen.append(seen)
            queue = self._replies.get(seen.path)
            if queue:
                return queue.popleft()
        if self.respond is not None:
            return self.respond(seen)
        return Reply(
            500,
            {"error": {"type": "api_error", "message": f"nothing scripted for {seen.path}"}},
            {"x-should-retry": "false"},
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5  # idle keep-alive connections end instead of pinning a thread

            def do_GET(self) -> None:
                listed = server.models
                found = listed is not None and self.path.split("?", 1)[0] == "/v1/models"
                data = [
                    {"id": m, "object": "model", "created": 0, "owned_by": "me"}
                    for m in listed or []
                ]
                payload = json.dumps({"object": "list", "data": data} if found else {}).encode()
                status = 200 if found else 404
                if server.models_status is not None:
                    status = server.models_status
                    refused = {"type": "authentication_error", "message": server.models_refusal}
                    payload = json.dumps({"type": "error", "error": refused}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                data = self.rfile.read(length)
                try:
                    body: Any = json.loads(data) if data else None
                except ValueError:
                    body = data.decode("utf-8", "replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                path = self.path.split("?", 1)[0]
                reply = server._take(Seen("POST", path, headers, body))
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.gate is not None:
                    reply.gate.wait(60)
                if (
                    isinstance(body, dict)
                    and body.get("stream")
                    and reply.status == 200
                    and isinstance(reply.body, dict)
                ):
                    self._stream(reply)
                    return
                if reply.echo_headers:
                    quoted = json.dumps(headers)
                    payload = json.dumps(
                        {
                            "type": "error",
                            "error": {
                                "type": "invalid_request_error",
                                "message": f"bad request, headers were: {quoted}",
                            },
                        }
                    ).encode()
                elif isinstance(reply.body, bytes):
                    payload = reply.body
                elif isinstance(reply.body, str):
                    payload = reply.body.encode()
                else:
                    payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, reply: Reply) -> None:
                assert isinstance(reply.body, dict)
                events = (
                    anthropic_events(reply.body)
                    if "content" in reply.body
                    else openai_chunks(reply.body)
                )
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                sent = 0
                for text, event in events:
                    stops = (
                        event.startswith("event: message_delta") or '"finish_reason": "' in event
                    )
                    if reply.end_early and stops:
                        break
                    try:
                        self._chunk(event.encode())
                    except OSError:  # the client went away mid-answer
                        reply.left.set()
                        self.close_connection = True
                        return
                    sent += len(text)
                    if sent:
                        reply.writing.set()
                    time.sleep(reply.pace_s)
                    if reply.cut_after is not None and sent >= reply.cut_after:
                        self.wfile.flush()
                        self.close_connection = True
                        return  # no terminating chunk: the body is broken off
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def anthropic_message(
    text: str = "hello",
    *,
    model: str = "claude-sonnet-5-5",
    stop_reason: str = "end_turn",
    input_tokens: int = 10,
    output_tokens: int = 20,
    cache_read: int | None = None,
    cache_write: int | None = None,
    usage_extra: dict[str, Any] | None = None,
    message_id: str = "msg_01",
) -> dict[str, Any]:
    """A Messages API response body as the API sends it."""
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if cache_read is not None:
        usage["cache_read_input_tokens"] = cache_read
    if cache_write is not None:
        usage["cache_creation_input_tokens"] = cache_write
    usage.update(usage_extra or {})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def openai_completion(
    text: str | None = "hello",
    *,
    model: str = "gpt-6-luna",
    finish_reason: str = "stop",
    prompt_tokens: int = 10,
    completion_tokens: int = 20,
    cached_tokens: int | None = None,
    cache_write_tokens: int | None = None,
    cost: float | None = None,
) -> dict[str, Any]:
    """A Chat Completions response body as the API (or a compatible server) sends it."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    details: dict[str, Any] = {}
    if cached_tokens is not None:
        details["cached_tokens"] = cached_tokens
    if cache_write_tokens is not None:
        details["cache_write_tokens"] = cache_write_tokens
    if details:
        usage["prompt_tokens_details"] = details
    if cost is not None:
        usage["cost"] = cost
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_780_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage,
    }


def openai_error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "code": None, "param": None}}


PIECE = 7
"""Characters of text per streamed delta."""


def _pieces(text: str, size: int = PIECE) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def anthropic_events(message: dict[str, Any]) -> list[tuple[str, str]]:
    """The Messages API event stream of ``message``: (text it carries, SSE event) pairs.

    message_start carries the input usage (and one output token, as the API reports),
    text arrives in small deltas, message_delta carries the stop reason and final output
    usage.
    """
    usage = message.get("usage")
    start_usage = None if usage is None else {**usage, "output_tokens": 1}
    text = "".join(b.get("text", "") for b in message["content"] if b.get("type") == "text")
    start = {**message, "content": [], "stop_reason": None, "usage": start_usage}
    events = [("", _sse({"type": "message_start", "message": start}, "message_start"))]
    events.append(
        (
            "",
            _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            ),
        )
    )
    for piece in _pieces(text):
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }
        events.append((piece, _sse(delta, "content_block_delta")))
    events.append(("", _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")))
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]} if usage else None,
    }
    events.append(("", _sse(final, "message_delta")))
    events.append(("", _sse({"type": "message_stop"}, "message_stop")))
    return events


def openai_chunks(completion: dict[str, Any]) -> list[tuple[str, str]]:
    """The Chat Completions chunk stream of ``completion`` with ``include_usage``: a role
    chunk, text chunks, a finish chunk, a usage chunk with no choices, then ``[DONE]``."""
    head: dict[str, Any] = {k: completion[k] for k in ("id", "created", "model") if k in completion}
    head["object"] = "chat.completion.chunk"
    choice = completion["choices"][0]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse(
            {
                **head,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }
        )

    text = choice["message"]["content"] or ""
    events = [("", chunk({"role": "assistant", "content": ""}))]
    events += [(piece, chunk({"content": piece})) for piece in _pieces(text)]
    events.append(("", chunk({}, choice["finish_reason"])))
    if "usage" in completion:  # a server that ignores include_usage sends none
        events.append(("", _sse({**head, "choices": [], "usage": completion["usage"]})))
    events.append(("", "data: [DONE]\n\n"))
    return events


@dataclass
class ContextLimited:
    """A local server whose model has a ``context`` of tokens, as :attr:`WireServer.respond`:
    a request whose prompt (counted as ``prompt_tokens``) and ``max_tokens`` do not both
    fit is answered 400 as ``server`` words it, anything else with ``answer``.

    ``vllm`` (0.10+) and ``vllm-old`` name both numbers; ``llama.cpp`` refuses only a
    prompt filling the context (it never refuses ``max_tokens``), with both in the body.
    """

    context: int
    prompt_tokens: int
    answer: Callable[[Seen], dict[str, Any]]
    server: str = "vllm"

    def __call__(self, seen: Seen) -> Reply:
        asked = int(seen.body.get("max_tokens") or 0)
        room = self.context - self.prompt_tokens
        if self.server == "llama.cpp" and room <= 0:
            return Reply(400, {"error": self._llama_cpp()})
        if self.server != "llama.cpp" and asked > room:
            return Reply(400, self._vllm(asked))
        return Reply(200, self.answer(seen))

    def _vllm(self, asked: int) -> dict[str, Any]:
        n, p = self.context, self.prompt_tokens
        message = (
            f"This model's maximum context length is {n} tokens. However, you requested "
            f"{p + asked} tokens ({p} in the messages, {asked} in the completion). Please "
            "reduce the length of the messages or completion."
            if self.server == "vllm-old"
            else f"'max_tokens' or 'max_completion_tokens' is too large: {asked}. This model's "
            f"maximum context length is {n} tokens and your request has {p} input tokens "
            f"({asked} > {n} - {p}). None"
        )
        return {
            "object": "error",
            "message": message,
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }

    def _llama_cpp(self) -> dict[str, Any]:
        return {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": self.prompt_tokens,
            "n_ctx": self.context,
        }
