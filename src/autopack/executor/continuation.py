"""A Builder answer cut off mid-way is continued where it stopped, not thrown away.

An answer that ran out of ``max_tokens``, or whose stream broke off after some text
(:class:`~autopack.llm.base.StreamInterrupted`, which :meth:`Meter.call` hands back as a
truncated partial answer), is sent back to the model as its own unfinished turn: Anthropic
continues an assistant prefill, OpenAI-compatible servers get it as an assistant turn plus
"continue exactly where you stopped" (the provider decides, see
:attr:`~autopack.llm.base.LLMRequest.continues`). The parts are joined and only then
parsed. Each continuation is a metered call (budget checks, usage under the lease, a usage
row) and a ``token_budget_escalation_events`` row with reason ``continuation``; up to
``max_continuations`` of them, within ``continuation_token_cap`` output tokens in all. The
prompt is the same every time, so with prompt caching a continuation pays for it once.

Only when the joined answer is still cut off (continuations used up, or a continuation
call failed) does the attempt end ``truncated``, and only then is the next attempt's
budget raised (:func:`~autopack.executor.budget.builder_budget`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging

from autopack.executor.metering import INTERRUPTED, Meter
from autopack.executor.outcome import Finish
from autopack.llm.base import LLMResponse, Message, Usage
from autopack.logs import log_event
from autopack.telemetry.events import TokenBudgetEscalationIn

logger = logging.getLogger("autopack.executor")


def prefill(partial: str) -> str:
    """The partial answer as the model's unfinished turn: Anthropic refuses an assistant
    turn that ends in whitespace, so trailing whitespace is left off (and restored by
    :func:`join` when the model does not write it again)."""
    return partial.rstrip()


REPEAT_MIN = 24
"""A continuation that begins with at least this many characters the partial answer ended
with wrote them again (models asked to "continue" often restart the line they were on);
a shorter match is as likely to be the answer's own next text."""
REPEAT_MAX = 4096


def repeated(cut: str, more: str) -> int:
    """How many characters ``more`` begins with that ``cut`` already ends with (0 when
    fewer than :data:`REPEAT_MIN`): the longest such overlap.

    Also 0 when a shorter overlap of :data:`REPEAT_MIN` or more matches too: the text
    repeats itself there (equal rows, a rule of ``=``), and an answer going on with its
    own next row is as likely as a repeat; dropping it would lose rows of the file.
    """
    sizes = range(min(len(cut), len(more), REPEAT_MAX), REPEAT_MIN - 1, -1)
    found = list(itertools.islice((size for size in sizes if cut.endswith(more[:size])), 2))
    return found[0] if len(found) == 1 else 0


def join(partial: str, more: str) -> str:
    """``partial`` continued by ``more``, which the model wrote after :func:`prefill`.

    A continuation that starts by repeating the end of the partial answer is joined
    after the repeat, so a file does not get its last line twice. If ``more`` starts
    with whitespace the model wrote the cut whitespace itself; if not, the whitespace
    left off the prefill is put back (inside a JSON string, indentation before the cut
    is part of a file).
    """
    cut = prefill(partial)
    again = repeated(cut, more)
    if again:
        return cut + more[again:]
    if more[:1].isspace():
        return cut + more
    return partial + more


def _summed(first: Usage, second: Usage) -> Usage:
    return Usage(
        input_tokens=first.input_tokens + second.input_tokens,
        output_tokens=first.output_tokens + second.output_tokens,
        cache_read_tokens=first.cache_read_tokens + second.cache_read_tokens,
        cache_write_tokens=first.cache_write_tokens + second.cache_write_tokens,
    )


def builder_answer(
    meter: Meter, model: str, system: str, messages: tuple[Message, ...], max_tokens: int
) -> LLMResponse:
    """The Builder's whole answer: the first call, continued while it is cut off.

    The result is the last part's response with the joined text, the parts' usage added
    up and ``truncated`` saying whether the joined answer is still cut off; that is what
    the estimation event records (the output the phase really needed).
    """
    options = meter.o
    answer = meter.call("builder", model, system, messages, max_tokens, continuable=True)
    spent = 0  # output tokens of the continuations so far
    allowed = max_tokens  # output tokens the answer may have had so far
    for number in range(1, options.max_continuations + 1):
        if not answer.truncated or not prefill(answer.text):
            break
        cap = options.continuation_token_cap
        budget = max_tokens if cap is None else min(max_tokens, cap - spent)
        if budget <= 0:
            break
        _record(meter, number, allowed, budget, answer.stop_reason)
        allowed += budget
        try:
            more = meter.call(
                "builder",
                model,
                system,
                (*messages, Message("assistant", prefill(answer.text))),
                budget,
                continuable=True,
            )
        except Finish as failure:
            if failure.stop_reason != "llm_error":
                raise  # a budget or cap: the attempt ends here
            # A model that refuses to continue (some reject an assistant prefill) or a
            # failed call: the answer stays cut off, so the attempt ends ``truncated``
            # and the next one gets a larger budget instead.
            log_event(
                logger,
                "continuation_failed",
                logging.WARNING,
                run_id=meter.claim.run_id,
                phase_id=meter.claim.phase_id,
                attempt=meter.claim.attempt,
                error=failure.error,
            )
            break
        # Output the provider never reported (a stream cut before its usage: nothing from
        # OpenAI, message_start's placeholder of 1 from Anthropic) counts as the
        # continuation's whole allowance: the cap must hold either way.
        spent += budget if more.stop_reason == INTERRUPTED else more.usage.output_tokens or budget
        answer = dataclasses.replace(
            more, text=join(answer.text, more.text), usage=_summed(answer.usage, more.usage)
        )
        if not more.text:
            break  # nothing new came back: asking again would only repeat this
    return answer


def _record(meter: Meter, number: int, allowed: int, budget: int, why: str) -> None:
    """One continuation: an escalation row (the answer's output allowance grows by the
    continuation's budget) and a progress event."""
    claim = meter.claim
    meter.s.telemetry.record(
        TokenBudgetEscalationIn(
            run_id=claim.run_id,
            phase_id=claim.phase_id,
            attempt=claim.attempt,
            reason="continuation",
            factor=(allowed + budget) / allowed,
            old_budget=allowed,
            new_budget=allowed + budget,
        )
    )
    log_event(
        logger,
        "answer_continued",
        run_id=claim.run_id,
        phase_id=claim.phase_id,
        attempt=claim.attempt,
        continuation=number,
        stop_reason=why,
        max_tokens=budget,
    )
    meter.s.events(
        "llm_continue", run_id=claim.run_id, phase_id=claim.phase_id, number=number, why=why
    )
