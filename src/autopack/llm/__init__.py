"""LLM providers: the only part of Autopack that talks to model APIs.

``registry.make_provider(settings)`` returns an ``LLMProvider`` (anthropic,
openai-compatible, or replay of a recorded cassette); ``provider.complete(request)``
returns an ``LLMResponse`` or raises ``autopack.errors.LLMError``; ``pricing`` reads the
versioned price table. Import from the modules: an SDK is imported only when its provider
is chosen, so commands that never call a model start fast.
"""
