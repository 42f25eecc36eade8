"""A loopback server answering each POST with scripted raw bytes, for hostile streams.

:mod:`tests.fakes.llm_wire` speaks both wire formats correctly; this one sends exactly
the bytes a test gives it (bad JSON, invalid UTF-8, events out of place, pings with a
pause between chunks), in HTTP chunked encoding, so the official SDKs' stream parsers
meet them as they would from a broken or hostile server.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer

Chunks = Iterable[str | bytes] | Callable[[], Iterable[str | bytes]]


@dataclass
class Raw:
    """One scripted answer: its chunks (or a function making them), sent ``gap`` s apart."""

    chunks: Chunks
    status: int = 200
    content_type: str = "text/event-stream"
    gap: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


NOTHING_SCRIPTED = Raw(
    [b'{"error":{"type":"api_error","message":"nothing scripted"}}'],
    500,
    "application/json",
    headers={"x-should-retry": "false"},
)


class RawServer(LoopbackServer):
    """``with RawServer() as server: server.replies.append(Raw([...]))``."""

    def __init__(self) -> None:
        self.replies: deque[Raw] = deque()
        self.seen: list[tuple[dict[str, str], Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                outer.seen.append((dict(self.headers), json.loads(body) if body else None))
                reply = outer.replies.popleft() if outer.replies else NOTHING_SCRIPTED
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                self.send_header("transfer-encoding", "chunked")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                chunks = reply.chunks() if callable(reply.chunks) else reply.chunks
                try:
                    for chunk in chunks:
                        data = chunk.encode() if isinstance(chunk, str) else chunk
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                        if reply.gap:
                            time.sleep(reply.gap)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up (what a stall test wants it to do)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(Handler)


def sse(data: object, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def a_start(usage: dict[str, Any] | None = None, model: str = "claude-sonnet-5-5") -> str:
    message: dict[str, object] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage if usage is not None else {"input_tokens": 10, "output_tokens": 1},
    }
    return sse({"type": "message_start", "message": message}, "message_start")


def a_block_start() -> str:
    block = {"type": "text", "text": ""}
    return sse(
        {"type": "content_block_start", "index": 0, "content_block": block}, "content_block_start"
    )


def a_delta(text: str) -> str:
    delta = {"type": "text_delta", "text": text}
    return sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")


def a_end(stop: str = "end_turn", usage: object = None) -> list[str]:
    delta = {"stop_reason": stop, "stop_sequence": None}
    return [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse(
            {
                "type": "message_delta",
                "delta": delta,
                "usage": usage if usage is not None else {"output_tokens": 20},
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]


def a_stream(
    text: str = "hello",
    stop: str = "end_turn",
    start_usage: dict[str, Any] | None = None,
    end_usage: object = None,
) -> list[str]:
    return [a_start(start_usage), a_block_start(), a_delta(text), *a_end(stop, end_usage)]


HEAD = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1780000000,
    "model": "gpt-6-luna",
}


def o_chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}
    return sse({**HEAD, "choices": [choice]})


def o_stream(text: str = "hello", finish: str = "stop", usage: object = None) -> list[str]:
    usage = usage if usage is not None else {"prompt_tokens": 10, "completion_tokens": 20}
    return [
        o_chunk({"role": "assistant", "content": ""}),
        o_chunk({"content": text}),
        o_chunk({}, finish),
        sse({**HEAD, "choices": [], "usage": usage}),
        "data: [DONE]\n\n",
    ]
