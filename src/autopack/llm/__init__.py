"""LLM providers: the only part of Autopack that talks to model APIs.

``make_provider(settings)`` returns an :class:`LLMProvider` (anthropic, openai-compatible,
or replay of a recorded cassette); ``provider.complete(LLMRequest(...))`` returns an
:class:`LLMResponse` or raises :class:`autopack.errors.LLMError`. ``cost_of`` and
``max_output_tokens`` read the versioned price table. Importing this package reads no
file and no environment variable.
"""

from __future__ import annotations

from autopack.errors import CassetteMiss, LLMError
from autopack.llm.base import LLMProvider, LLMRequest, LLMResponse, Message, Role, Usage
from autopack.llm.pricing import PriceTable, cost_of, max_output_tokens, price_table
from autopack.llm.registry import (
    DEFAULT_MODELS,
    PROVIDERS,
    bundled_cassette,
    make_provider,
    model_for,
    provider_name,
)
from autopack.llm.replay import RecordingProvider, ReplayProvider

__all__ = [
    "DEFAULT_MODELS",
    "PROVIDERS",
    "CassetteMiss",
    "LLMError",
    "LLMProvider",
    "LLMRequest",
    "LLMResponse",
    "Message",
    "PriceTable",
    "RecordingProvider",
    "ReplayProvider",
    "Role",
    "Usage",
    "bundled_cassette",
    "cost_of",
    "make_provider",
    "max_output_tokens",
    "model_for",
    "price_table",
    "provider_name",
]
