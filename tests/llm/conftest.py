"""Fixtures for the LLM tests: the wire-format server and both live providers against it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from autopack.llm.anthropic_provider import AnthropicProvider
from autopack.llm.openai_provider import OpenAIProvider
from tests.fakes.llm_wire import WireServer
from tests.llm.support import FLAVOURS, Flavour, Live, Records


@pytest.fixture
def wire() -> Iterator[WireServer]:
    with WireServer() as server:
        yield server


@pytest.fixture(params=sorted(FLAVOURS))
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return FLAVOURS[request.param]


@pytest.fixture
def live(wire: WireServer, flavour: Flavour) -> Iterator[Live]:
    """``live(max_retries)``: the flavour's real-SDK provider pointed at the wire server."""
    made: list[AnthropicProvider | OpenAIProvider] = []

    def make(max_retries: int = 2) -> AnthropicProvider | OpenAIProvider:
        provider = flavour.make(wire.url, max_retries)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


@pytest.fixture
def log_records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("autopack")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)
