"""Shared helpers of the LLM tests: requests, the two wire "flavours", a log collector."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autopack.llm.anthropic_provider import AnthropicProvider
from autopack.llm.base import LLMRequest, Message
from autopack.llm.openai_provider import OpenAIProvider
from tests.fakes.llm_wire import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
)

Live = Callable[[int], AnthropicProvider | OpenAIProvider]
"""The ``live`` fixture: ``live(max_retries)`` is the flavour's real-SDK provider."""


def make_request(
    *,
    model: str = "claude-sonnet-5-5",
    run_id: str = "run-1",
    phase_id: str | None = "phase-1",
    attempt: int | None = 1,
    role: str = "builder",
    max_tokens: int = 256,
    temperature: float | None = None,
) -> LLMRequest:
    return LLMRequest(
        role=role,  # type: ignore[arg-type]
        model=model,
        system="You write code.",
        messages=(Message("user", "Write hello.py"),),
        max_tokens=max_tokens,
        run_id=run_id,
        phase_id=phase_id,
        attempt=attempt,
        temperature=temperature,
    )


@dataclass
class Flavour:
    """Everything that differs between the two wire formats, so one test covers both."""

    name: str
    path: str
    make: Callable[[str, int], AnthropicProvider | OpenAIProvider]
    ok: Callable[..., dict[str, Any]]
    error: Callable[[str, str], dict[str, Any]]
    request_id_header: str
    truncated_stop: str
    model: str

    def body(self, text: str | None = "hello", *, truncated: bool = False, **usage: Any) -> Any:
        """A success body with ``text``; ``usage`` uses the Anthropic keyword names."""
        if self.name == "anthropic":
            stop = self.truncated_stop if truncated else "end_turn"
            return self.ok(text, stop_reason=stop, **usage)
        renamed = {
            "input_tokens": "prompt_tokens",
            "output_tokens": "completion_tokens",
            "cache_read": "cached_tokens",
        }
        return self.ok(
            text,
            finish_reason=self.truncated_stop if truncated else "stop",
            **{renamed.get(k, k): v for k, v in usage.items()},
        )


FLAVOURS = {
    "anthropic": Flavour(
        "anthropic",
        ANTHROPIC_PATH,
        lambda url, retries: AnthropicProvider(
            api_key="test-key", base_url=url, max_retries=retries
        ),
        anthropic_message,
        anthropic_error,
        "request-id",
        "max_tokens",
        "claude-sonnet-5-5",
    ),
    "openai": Flavour(
        "openai",
        OPENAI_PATH,
        lambda url, retries: OpenAIProvider(
            api_key="test-key", base_url=url + "/v1", max_retries=retries
        ),
        openai_completion,
        openai_error,
        "x-request-id",
        "length",
        "gpt-6-luna",
    ),
}


class Records(logging.Handler):
    """Collects records of one logger whatever its propagation settings."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == name]

    @staticmethod
    def fields(record: logging.LogRecord) -> dict[str, Any]:
        """The structured fields :func:`autopack.logs.log_event` attached to ``record``."""
        found: dict[str, Any] = record.__dict__["autopack_fields"]
        return found
