"""How a failed LLM call's provider stands, when the failure is not the phase's doing.

After the SDK's own retries, three kinds of answer say no call can succeed now, whatever
the phase: nothing answers at the address (:data:`UNREACHABLE`), the provider says it is
busy (:data:`BUSY`: rate limited, overloaded), or it refuses what every call sends
(:data:`REFUSED`: the key, its permissions, the model's name; a server that reports no
usage, :data:`~autopack.llm.base.NO_USAGE`, or cannot load the model, :data:`UNLOADABLE`;
one that cut the prompt to its context, :func:`cut_prompt`).
Each failed every phase of a run on its tries, one after another.
:class:`~autopack.executor.metering.Meter` waits out the first two for
``AUTOPACK_LLM_UNREACHABLE_SECONDS`` (:func:`patience_pauses`) and then stops the drain
(:func:`gave_up`); a refusal stops it at once (:func:`refused`). In each case the phase
is handed back without spending a retry.
"""

from __future__ import annotations

from autopack.errors import (
    LLMError,
    ProviderBusy,
    ProviderRefused,
    ProviderUnreachable,
    ProviderUnusable,
)
from autopack.llm.base import NO_USAGE
from autopack.llm.replay import REPLAY

UNREACHABLE = "APIConnectionError"
"""The SDKs' error when nothing answered at the address (refused, no route, no name),
after their own retries: the provider's absence, not an answer to this phase."""
BUSY = frozenset({429, 502, 503, 504, 529})
"""Statuses saying the provider (or its gateway) cannot take calls now: rate limits,
overload (Anthropic's 529, Ollama's 503), a proxy without its upstream. After the SDK's
own retries they are waited for like an unreachable provider: ten executors sharing one
key hit its rate limit, and each phase failed its tries for it and the run with them."""
REFUSED = {
    401: "the key was refused (revoked, expired or out of credit): set a working API key",
    403: "the key may not do this (its permissions, or the model's): use a key that may",
    404: "the model or the address is unknown there: check the model's name and *_BASE_URL",
}
"""Statuses refusing what every call of a drain sends (the key, the model's name, the
address), with what to fix: no phase's doing, so each would fail all its tries alike."""
UNLOADABLE = ("requires more system memory",)
"""Words of a server that cannot load the model at all (Ollama's 500 "model requires more
system memory (21.3 GiB) than is available (14.2 GiB)", for a model pulled too large for
the machine): every call fails alike, and each phase failed all its tries on it."""
OUT_OF_CREDIT = "insufficient_quota"
"""OpenAI's code for a 429 that is no rate limit but an account without credit: no wait
ends it, so it is refused, not waited for."""


def waited_for(exc: LLMError) -> bool:
    """Whether the failure is the provider's absence or business, to be waited out."""
    busy = exc.status_code in BUSY and exc.error_code != OUT_OF_CREDIT
    return exc.error_class == UNREACHABLE or busy


def patience_pauses(patience: float) -> list[float]:
    """Waits between tries at an unreachable or busy provider, doubling from 2 s, summing
    to ``patience`` (the last one shortened)."""
    pauses: list[float] = []
    while (left := patience - sum(pauses)) > 0:
        pauses.append(min(2.0 * 2 ** len(pauses), 30.0, left))
    return pauses


def refused(exc: LLMError, phase_id: str) -> ProviderRefused | None:
    """The drain's stop for a refusal of what every call sends, or None (the phase's)."""
    fix = REFUSED.get(exc.status_code or 0)
    if exc.error_code == OUT_OF_CREDIT:
        fix = "the account is out of credit (insufficient_quota): add credit or use another key"
    if exc.status_code == 500 and any(words in exc.message for words in UNLOADABLE):
        fix = "the server cannot load the model: use a smaller one (or a smaller quantisation)"
    if exc.error_code == NO_USAGE:
        fix = "upgrade the server (or the proxy before it) to one that reports usage"
    if fix is None:
        return None
    if exc.provider == REPLAY:  # no key was sent: the recording's was refused
        fix = f"the replay cassette recorded this refusal ({fix}); record it again"
    return ProviderRefused(
        f"{exc.message}. Every call would be refused alike, so the drain stopped and handed "
        f"phase {phase_id} back without spending a retry: {fix}, then run the same command "
        "again.",
        provider=exc.provider,
        status_code=exc.status_code,
    )


def no_room(exc: LLMError, phase_id: str) -> ProviderRefused | None:
    """The drain's stop for a prompt that fills the model's context on that server (no
    ``max_tokens`` makes it fit: :mod:`autopack.llm.context_room`), or None. A server
    configured with a small context refuses the prompts of phase after phase alike."""
    if exc.output_room is None or exc.output_room > 0:
        return None
    return ProviderRefused(
        f"{exc.message}. The model's context on that server has no room for an answer to "
        f"this prompt, so the drain stopped and handed phase {phase_id} back without "
        "spending a retry: give the model a larger context (vLLM --max-model-len; "
        "llama-server --ctx-size, which --parallel divides among its slots; Ollama "
        "OLLAMA_CONTEXT_LENGTH) or the phase less read-only context, then run the same "
        "command again.",
        provider=exc.provider,
        status_code=exc.status_code,
    )


def cut_prompt(exc: LLMError, phase_id: str) -> ProviderRefused:
    """The drain's stop for an answer to a prompt the server cut to its context
    (:mod:`autopack.llm.prompt_read`): a server set to a small context answers the
    prompts of phase after phase alike, each failing later for a reason hiding this."""
    return ProviderRefused(
        f"{exc.message}. The drain stopped and handed phase {phase_id} back without "
        "spending a retry: give the model a larger context on the server (Ollama: "
        "OLLAMA_CONTEXT_LENGTH=N in the server's environment, or PARAMETER num_ctx N in a "
        "Modelfile and that model's name; another server: its context length setting) "
        "or the phase less read-only context, then run the same command again.",
        provider=exc.provider,
        status_code=exc.status_code,
    )


def gave_up(
    exc: LLMError,
    phase_id: str,
    patience_s: float,
    *,
    asked_longer: bool = False,
    stopping: bool = False,
) -> ProviderUnusable:
    """Why the drain stops: its patience with the provider ran out, the provider asked for
    a longer wait than the patience left, or the drain was stopping as it waited."""
    patience = f"{patience_s:g}s (AUTOPACK_LLM_UNREACHABLE_SECONDS)"
    cls: type[ProviderUnusable] = ProviderBusy
    if stopping:
        cls = ProviderBusy if exc.status_code in BUSY else ProviderUnreachable
        why = "The drain was stopping (Ctrl-C, or another phase's call refused) as it waited"
        then = "once the provider answers"
    elif asked_longer:
        why, then = f"That is longer than the drain waits, {patience}", "after that wait"
    elif exc.status_code in BUSY:
        why = f"It stayed busy for {patience} more"
        then = "later (a fleet sharing one key may raise that setting)"
    else:
        cls, why = ProviderUnreachable, f"Nothing answered there for {patience} more"
        then = "once the provider answers"
    return cls(
        f"{exc.message}. {why}: the drain stopped and handed phase {phase_id} back without "
        f"spending a retry; run the same command again {then}.",
        provider=exc.provider,
        status_code=exc.status_code,
    )
