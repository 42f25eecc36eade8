"""Pick the provider and models from settings: names map to implementations in one table.

``AUTOPACK_LLM_PROVIDER=auto`` (the default) chooses, in order: ``anthropic`` when
``ANTHROPIC_API_KEY`` is set; ``openai`` when ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` is
set; else ``replay`` with the bundled cassette, announced by one WARNING line, because
"offline" must never look like "live".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from autopack.config import Settings
from autopack.errors import ConfigError, LLMError
from autopack.llm.base import LLMProvider, Role
from autopack.logs import log_event

logger = logging.getLogger(__name__)

BUNDLED_CASSETTE = "data/cassettes/telemetry-collection-v4.jsonl"
"""The offline default, relative to the ``autopack`` package."""

DEFAULT_MODELS: dict[str, str] = {
    "anthropic": "claude-sonnet-5-5",
    "openai": "gpt-6-luna",
    # Replay answers with whatever the cassette recorded; requests name the model the
    # bundled cassette was recorded with, so estimates and budgets match it.
    "replay": "claude-sonnet-5-5",
}
"""Default model per provider (both roles), overridable by AUTOPACK_BUILDER_MODEL /
AUTOPACK_AUDITOR_MODEL. Local OpenAI-compatible servers need the model set explicitly."""


def bundled_cassette() -> Path:
    """Where the cassette shipped with the package lives (it may not exist in a dev tree)."""
    return Path(str(resources.files("autopack").joinpath(BUNDLED_CASSETTE)))


def _secret(value: object) -> str | None:
    getter = getattr(value, "get_secret_value", None)
    text = getter() if callable(getter) else value
    return text if isinstance(text, str) and text else None


def provider_name(settings: Settings, *, cassette: Path | None = None) -> str:
    """The concrete provider ``settings`` select (``auto`` resolved); a cassette means replay."""
    if cassette is not None:
        return "replay"
    chosen = settings.autopack_llm_provider
    if chosen != "auto":
        return chosen
    if _secret(settings.anthropic_api_key):
        return "anthropic"
    if _secret(settings.openai_api_key) or settings.openai_base_url:
        return "openai"
    return "replay"


def ignored_base_url(settings: Settings) -> str:
    """Why ``ANTHROPIC_BASE_URL`` alone does not choose anthropic ("" when it does not
    apply): told only "no LLM credentials are set", its user saw the setting ignored."""
    if settings.anthropic_base_url and not _secret(settings.anthropic_api_key):
        return (
            f" ANTHROPIC_BASE_URL is set ({settings.anthropic_base_url}) but anthropic needs "
            "ANTHROPIC_API_KEY too (any value, for a server that checks none)."
        )
    return ""


def _checked_base_url(name: str, value: str | None) -> str | None:
    """``value`` if it is an http(s) URL: ``localhost:11434/v1`` without its scheme failed
    every attempt of the first phase as "unreachable", then the phase, instead of the
    drain refusing to start (exit 2) naming the setting."""
    try:
        if value:
            urlsplit(value).port  # noqa: B018 (parsing it is the check)
    except ValueError as exc:  # "http://[::1" or a port that is no number: a traceback
        raise ConfigError(f"{name}={value!r} is not a URL: {exc}") from None
    if value and urlsplit(value).scheme not in ("http", "https"):
        raise ConfigError(
            f"{name}={value!r} is not an http:// or https:// URL "
            f"(e.g. http://127.0.0.1:11434/v1 for Ollama)"
        )
    return value


# The factories import their SDK when called: anthropic alone costs a second at start-up.
def _anthropic(settings: Settings, cassette: Path | None) -> LLMProvider:
    from autopack.llm.anthropic_provider import AnthropicProvider

    key = _secret(settings.anthropic_api_key)
    if key is None:
        raise ConfigError("AUTOPACK_LLM_PROVIDER=anthropic needs ANTHROPIC_API_KEY")
    return AnthropicProvider(
        api_key=key,
        base_url=_checked_base_url("ANTHROPIC_BASE_URL", settings.anthropic_base_url),
        timeout=settings.autopack_llm_timeout_seconds,
    )


def _openai(settings: Settings, cassette: Path | None) -> LLMProvider:
    from autopack.llm.openai_provider import OpenAIProvider

    key = _secret(settings.openai_api_key)
    if key is None and not settings.openai_base_url:
        raise ConfigError(
            "AUTOPACK_LLM_PROVIDER=openai needs OPENAI_API_KEY, or OPENAI_BASE_URL for a "
            "local OpenAI-compatible server (Ollama, vLLM, llama.cpp, LM Studio)"
        )
    return OpenAIProvider(
        api_key=key,
        base_url=_checked_base_url("OPENAI_BASE_URL", settings.openai_base_url),
        timeout=settings.autopack_llm_timeout_seconds,
    )


def check_served(settings: Settings, wanted: Mapping[str, str]) -> str:
    """Before anything is claimed (ConfigError: exit 2), refuse settings no call can
    succeed with: a base URL nothing answers at and a key the server refuses (401), for
    both providers (:func:`_unusable`), and a model the ``OPENAI_BASE_URL`` server does
    not list, naming the setting that chose it: a mistyped ``qwen2.5-codr`` was a 404 at
    the first call, and the phase FAILED. ``NAME`` is ``NAME:latest`` (Ollama's default
    tag). A server listing one model only is warned about, not refused (the returned
    text): llama.cpp serves its one model under any name. A server that lists nothing
    passes; so does any model of a hosted API, whose aliases its list leaves out."""
    name = provider_name(settings)
    if name == "anthropic":
        _check_anthropic(settings)
        return ""
    if name != "openai":
        return ""
    from autopack.llm.openai_provider import DEFAULT_BASE_URL

    key = _secret(settings.openai_api_key)
    base_url = _checked_base_url("OPENAI_BASE_URL", settings.openai_base_url)
    try:
        served = _served(key, base_url)
    except LLMError as exc:
        raise _unusable(exc, "OPENAI", base_url or DEFAULT_BASE_URL, base_url is None) from None
    if served is None and base_url and not urlsplit(base_url).path.strip("/"):
        _refuse_without_v1(key, base_url)
    listed = served or []
    missing = [
        (setting, model)
        for setting, model in wanted.items()
        if base_url and listed and model not in listed and f"{model}:latest" not in listed
    ]
    if not missing:
        return ""
    setting, model = missing[0]
    shown = ", ".join(listed[:20]) + (f" and {len(listed) - 20} more" * (len(listed) > 20))
    problem = f"{setting}={model!r}: the server at {base_url} lists no such model, only {shown}"
    if len(listed) == 1:
        return f'{problem} (if its calls fail with "model not found", set {setting})'
    raise ConfigError(problem)


def _served(key: str | None, base_url: str | None) -> list[str] | None:
    from autopack.llm.openai_provider import OpenAIProvider

    server = OpenAIProvider(api_key=key, base_url=base_url)
    try:
        return server.served_models()
    finally:
        server.close()


def _refuse_without_v1(key: str | None, base_url: str) -> None:
    """``OPENAI_BASE_URL=http://127.0.0.1:11434`` (Ollama's OpenAI API is under ``/v1``):
    every call was a 404 and every phase of the run FAILED. A server that lists its models
    only under ``/v1`` is refused, naming the URL to set."""
    fixed = base_url.rstrip("/") + "/v1"
    try:
        found = _served(key, fixed)
    except LLMError:
        return
    if found is not None:
        raise ConfigError(
            f"OPENAI_BASE_URL={base_url!r} lacks the API's path: the server answers it at "
            f"{fixed} (as Ollama, vLLM, llama.cpp and LM Studio do); set "
            f"OPENAI_BASE_URL={fixed}."
        )


def _check_anthropic(settings: Settings) -> None:
    from autopack.llm.anthropic_provider import DEFAULT_BASE_URL

    key = _secret(settings.anthropic_api_key)
    if key is None:  # make_provider names the missing key
        return
    base_url = _checked_base_url("ANTHROPIC_BASE_URL", settings.anthropic_base_url)
    try:
        listed = _lists(key, base_url)
    except LLMError as exc:
        raise _unusable(exc, "ANTHROPIC", base_url or DEFAULT_BASE_URL, base_url is None) from None
    if listed or not base_url or not base_url.rstrip("/").endswith("/v1"):
        return
    # http://host/v1: the SDK adds /v1 itself, so every call was a 404 at /v1/v1/messages
    # and every phase of the run FAILED. Refused when the server answers without it.
    fixed = base_url.rstrip("/").removesuffix("/v1")
    try:
        answers = _lists(key, fixed)
    except LLMError:
        return
    if answers:
        raise ConfigError(
            f"ANTHROPIC_BASE_URL={base_url!r} ends in /v1, which the Anthropic SDK adds "
            f"itself (every call went to {base_url.rstrip('/')}/v1/messages); set "
            f"ANTHROPIC_BASE_URL={fixed}."
        )


def _lists(key: str, base_url: str | None) -> bool:
    from autopack.llm.anthropic_provider import AnthropicProvider

    server = AnthropicProvider(api_key=key, base_url=base_url)
    try:
        return server.check_usable()
    finally:
        server.close()


def _unusable(exc: LLMError, prefix: str, base_url: str, default: bool) -> ConfigError:
    """What the model list's failure says of the settings, naming the one to fix: every
    call would fail alike, so a drain that went on failed each phase of its run (and a
    drain never retries a FAILED phase: one requeue per phase, after fixing it)."""
    if exc.status_code == 401:
        return ConfigError(
            f"{prefix}_API_KEY is refused by the server at {base_url}, so no call can "
            f"succeed. Set {prefix}_API_KEY to a key it takes: "
            f"{exc.message}"
        )
    if default:
        where, fix = f"{prefix}_BASE_URL is not set: {base_url}", "Check the network"
    else:
        where = f"{prefix}_BASE_URL={base_url!r}"
        fix = f"Start the server there (e.g. `ollama serve`) or fix {prefix}_BASE_URL"
    return ConfigError(
        f"{where}: nothing answers there, so no call can succeed. {fix}: {exc.message}"
    )


def _replay(settings: Settings, cassette: Path | None) -> LLMProvider:
    from autopack.llm.replay import ReplayProvider

    path = cassette or settings.autopack_replay_cassette or bundled_cassette()
    return ReplayProvider(path, speed=settings.autopack_replay_speed)


PROVIDERS: dict[str, Callable[[Settings, Path | None], LLMProvider]] = {
    "anthropic": _anthropic,
    "openai": _openai,
    "replay": _replay,
}
"""Provider name -> factory. Adding a provider is one entry here."""


def make_provider(
    settings: Settings,
    *,
    cassette: Path | None = None,
    record: Path | None = None,
    announce: bool = True,
) -> LLMProvider:
    """The provider ``settings`` ask for.

    ``cassette`` replays that file whatever the provider setting says. ``record`` wraps
    the (live) provider in a :class:`RecordingProvider` writing that file; recording a
    replay would only copy a cassette, so it is refused. ``announce``: say loudly that no
    live model answers (not for a check whose drain, a process of its own, says it).
    """
    name = provider_name(settings, cassette=cassette)
    provider = PROVIDERS[name](settings, cassette)
    offline = name == "replay" and settings.autopack_llm_provider == "auto" and cassette is None
    if offline and announce:
        log_event(
            logger,
            "llm_offline_replay",
            logging.WARNING,
            message=(
                "NO LLM CREDENTIALS: answering from a recorded cassette, not a live model. "
                "Set ANTHROPIC_API_KEY, OPENAI_API_KEY or OPENAI_BASE_URL for real work."
                + ignored_base_url(settings)
            ),
            cassette=str(getattr(provider, "path", "")),
        )
    if record is not None:
        if name == "replay":
            raise ConfigError(
                "--record needs a live provider (set ANTHROPIC_API_KEY, OPENAI_API_KEY or "
                "OPENAI_BASE_URL); recording a replay would only copy the cassette"
            )
        from autopack.llm.replay import RecordingProvider

        provider = RecordingProvider(provider, record)
    return provider


def model_for(settings: Settings, role: Role) -> str:
    """The model a role's requests name: the per-role setting, else the provider default.

    On a compatible server (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``: Ollama, vLLM, a
    proxy) a role without a setting of its own uses the other role's model: the provider's
    default name means nothing there, so ``AUTOPACK_BUILDER_MODEL=qwen2.5-coder:32b`` alone
    had every LLM Auditor call answered "model gpt-6-luna not found" and the phase failed.
    """
    builder, auditor = settings.autopack_builder_model, settings.autopack_auditor_model
    own, other = (builder, auditor) if role == "builder" else (auditor, builder)
    provider = provider_name(settings)
    base_url = {"openai": settings.openai_base_url, "anthropic": settings.anthropic_base_url}
    return own or (base_url.get(provider) and other) or DEFAULT_MODELS[provider]


def model_hint(settings: Settings) -> str:
    """A compatible server (Ollama, vLLM, a proxy) named by a base URL serves models of its
    own: with no model setting every call names the provider's default, which such a server
    answers with "model not found" on the first drain, after doctor had said all was well.
    ``autopack doctor`` and every drain that calls a live model say it."""
    provider = provider_name(settings)
    base_url = {"openai": settings.openai_base_url, "anthropic": settings.anthropic_base_url}
    if not base_url.get(provider) or settings.autopack_builder_model:
        return ""
    if settings.autopack_auditor_model:
        return ""
    return (
        f"{provider.upper()}_BASE_URL names a server of its own: unless it serves "
        f"{DEFAULT_MODELS[provider]}, set AUTOPACK_BUILDER_MODEL to a model it has "
        "(e.g. qwen2.5-coder:32b; the auditor uses the same unless AUTOPACK_AUDITOR_MODEL)"
    )
