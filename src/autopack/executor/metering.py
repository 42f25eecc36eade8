"""Every LLM call of an attempt, metered: budgets before, usage and telemetry after.

:meth:`Meter.call` checks the run's and the phase's budgets before each call, makes it,
reports its tokens and cost to the control plane under the lease (whose answer carries
the run's budget for the next check), and records a usage row, failed calls included.
The Builder's token budget and its estimation row are in :mod:`autopack.executor.budget`.
A replayed answer costs nothing: its usage row keeps what the recorded call would have
cost (provider ``replay``), but the run is billed $0 for it.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

from autopack.bounds import COST_MAX_USD, storable_text
from autopack.contract import Claim, UsageIn, ordered_usage_key
from autopack.errors import LeaseLost, LLMError, ProviderUnusable
from autopack.executor.lease import Lease
from autopack.executor.options import Services
from autopack.executor.outcome import Finish, failed
from autopack.executor.provider_state import (
    BUSY,
    cut_prompt,
    gave_up,
    no_room,
    patience_pauses,
    refused,
    waited_for,
)
from autopack.llm.base import (
    LLMRequest,
    LLMResponse,
    Message,
    Role,
    StreamInterrupted,
    Usage,
    error_event_status,
    usage_problem,
)
from autopack.llm.prompt_read import unread_prompt
from autopack.logs import log_event
from autopack.telemetry.events import REPLAY_PROVIDER, LlmUsageIn

logger = logging.getLogger("autopack.executor")

INTERRUPTED = "interrupted"
"""The stop reason of a partial answer whose stream broke (:meth:`Meter.call`)."""


class _BusyMidStream(LLMError):
    """A stream an overload (or rate limit) event broke off after some text, billed."""


def _token_columns(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }


def _impossible_usage(exc: StreamInterrupted) -> LLMError | None:
    """A malformed answer in place of a broken stream whose usage so far cannot be true
    (Anthropic reports the input in ``message_start``, a cassette line records it): its
    counts would be billed and stored, and the control plane refuses them, so the attempt
    ended ``executor_error`` with no usage row. A complete answer is checked the same way
    (:func:`autopack.llm.base.usage_problem`)."""
    problem = None if exc.usage is None else usage_problem(exc.usage)
    if problem is None:
        return None
    return LLMError(
        f"{exc.message}; the usage it reported cannot be true: {problem}",
        provider=exc.provider,
        model=exc.model,
        error_class="MalformedResponse",
        status_code=200,
        request_id=exc.request_id,
        latency_ms=exc.latency_ms,
        retryable=False,
    )


def _cost_beyond_bound(
    response: LLMResponse, cost: float | None, snapshot: dict[str, Any] | None
) -> LLMError | None:
    """Why a call's cost cannot be billed as it is, if it cannot: more than the
    ``COST_MAX_USD`` a usage report and a usage row take (a price file pricing per token
    what it meant per million, or a provider reporting tens of millions of tokens). The
    report was refused and the attempt ended ``executor_error`` with the call unbilled
    and unrecorded, three times over. It is billed at that bound instead, so the run's
    cost cap stops further spending, recorded with its tokens, and fails the phase: asking
    again would cost as much."""
    if cost is None or cost <= COST_MAX_USD or snapshot is None:
        return None
    usage = response.usage
    return LLMError(
        f"the call's usage ({usage.input_tokens} input, {usage.output_tokens} output tokens) "
        f"costs ${cost:,.2f} at the prices of {snapshot['model']} in table "
        f"{snapshot['table_version']}, more than the ${COST_MAX_USD:,.0f} one call may cost: "
        "the price table or the provider's usage report is wrong; billed and recorded as "
        f"${COST_MAX_USD:,.0f}",
        provider=response.provider,
        model=response.model,
        error_class="CostBeyondBound",
        status_code=200,
        request_id=response.request_id,
        latency_ms=response.latency_ms,
        retryable=False,
    )


class Meter:
    """The LLM calls of one attempt and what they cost."""

    def __init__(self, services: Services, claim: Claim, lease: Lease) -> None:
        self.s = services
        self.o = services.options
        self.claim = claim
        self.lease = lease
        self.budget_exhausted: str | None = None
        """Why the run may not spend more (the last usage report's answer), if it may not."""
        self.tokens = 0
        self.cost = 0.0
        self.output_tokens = 0
        self.max_tokens: int | None = None
        """The Builder's ``max_tokens`` for this attempt, once decided."""
        self._usage_nonce = uuid.uuid4().hex
        self._usage_reports = 0

    def _check_budget(self) -> None:
        if self.budget_exhausted is not None:
            raise failed("budget_exhausted", error=self.budget_exhausted, retryable=False)
        phase_tokens = self.claim.phase.tokens_used + self.tokens
        phase_cost = self.claim.phase.cost_usd + self.cost
        if self.o.phase_token_cap is not None and phase_tokens >= self.o.phase_token_cap:
            raise failed(
                "phase_token_cap",
                retryable=False,
                error=f"phase used {phase_tokens} tokens, cap {self.o.phase_token_cap}",
            )
        if self.o.phase_cost_cap_usd is not None and phase_cost >= self.o.phase_cost_cap_usd:
            raise failed(
                "phase_cost_cap",
                retryable=False,
                error=f"phase cost ${phase_cost:.4f}, cap ${self.o.phase_cost_cap_usd}",
            )

    def call(
        self,
        role: Role,
        model: str,
        system: str,
        messages: tuple[Message, ...],
        max_tokens: int,
        *,
        continuable: bool = False,
    ) -> LLMResponse:
        """One LLM call: budget check before, usage accounting and telemetry after.

        ``continuable``: a stream broken off mid-answer comes back as a truncated answer
        holding its partial text (stop reason ``interrupted``, what usage is known), for
        the caller to continue; otherwise it fails the attempt like any LLM error.
        """
        self._check_budget()
        claim = self.claim
        request = LLMRequest(
            role=role,
            model=model,
            system=system,
            messages=messages,
            max_tokens=max_tokens,
            run_id=claim.run_id,
            phase_id=claim.phase_id,
            attempt=claim.attempt,
            prompt_cache=self.o.prompt_cache,
            given_up=self.lease.lost,
            on_text=lambda chars: self.s.events(
                "llm_text", run_id=claim.run_id, phase_id=claim.phase_id, role=role, chars=chars
            ),
        )
        self.s.events("llm_call", run_id=claim.run_id, phase_id=claim.phase_id, role=role)
        # What every usage row of this call says, failed or not.
        call: dict[str, Any] = {
            "run_id": claim.run_id,
            "phase_id": claim.phase_id,
            "attempt": claim.attempt,
            "role": role,
            "max_tokens": max_tokens,
        }
        pauses = patience_pauses(self.o.unreachable_seconds)
        for tried in range(len(pauses) + 1):
            try:
                return self._complete(call, model, request, continuable=continuable)
            except LLMError as exc:  # the provider absent or busy: not this phase's doing
                if not isinstance(exc, _BusyMidStream):  # its row is recorded, with its usage
                    self.s.telemetry.record(LlmUsageIn(**self._error_row(call, model, exc)))
                left = pauses[tried:]
                if (exc.retry_after_s or 0.0) > sum(left):  # a day's quota spent
                    raise self._gave_up(exc, asked_longer=True) from exc
                if not left or self.s.stopping.wait(left[0]):
                    raise self._gave_up(exc, stopping=self.s.stopping.is_set()) from exc
                pause = left[0]
                busy = exc.status_code in BUSY
                event = "llm_busy" if busy else "llm_unreachable"
                log_event(logger, event, logging.WARNING, wait_s=pause, status=exc.status_code)
                self.lease.check()
        raise AssertionError("unreachable")

    def _gave_up(
        self, exc: LLMError, *, asked_longer: bool = False, stopping: bool = False
    ) -> ProviderUnusable:
        return gave_up(
            exc,
            self.claim.phase_id,
            self.o.unreachable_seconds,
            asked_longer=asked_longer,
            stopping=stopping,
        )

    def _complete(
        self,
        call: dict[str, Any],
        model: str,
        request: LLMRequest,
        *,
        continuable: bool,
        clipped: bool = False,
    ) -> LLMResponse:
        """The call made once: its answer (or a stream broken off mid-answer, as a
        truncated one when ``continuable``), or the attempt's end as a :class:`Finish`.
        A budget the server's context has no room for is clipped once (``clipped``): a
        server naming a smaller room each time had the call made again for every token
        of the budget, recursing until Python's limit failed the phase.
        An :class:`LLMError` saying nothing answered at all, or that the provider is busy,
        is raised for :meth:`call` to wait out;
        a refusal of what every call sends stops the drain (:class:`ProviderRefused`)."""
        try:
            return self._read_whole(call, model, request, self.s.provider.complete(request))
        except StreamInterrupted as exc:
            if (impossible := _impossible_usage(exc)) is not None:
                raise self._failed(call, model, impossible) from exc
            partial = LLMResponse(
                text=exc.partial,
                stop_reason=INTERRUPTED,
                truncated=True,
                usage=exc.usage or Usage(0, 0),
                provider=exc.provider,
                model=exc.model or model,
                request_id=exc.request_id,
                latency_ms=exc.latency_ms,
            )
            busy = error_event_status(getattr(exc.__cause__, "body", None))
            if busy is not None and busy[0] in BUSY:
                # An overload event after some text: billed as the broken stream it is,
                # then waited for as busy (continued at once, it failed the phase).
                self._account(call, model, partial, error=exc, usage_known=bool(exc.usage))
                raise _BusyMidStream(
                    f"{exc.message} ({busy[1]} in the stream)",
                    provider=exc.provider,
                    model=exc.model or model,
                    error_class=exc.error_class,
                    status_code=busy[0],
                    request_id=exc.request_id,
                ) from exc
            if not continuable:
                raise self._failed(call, model, exc) from exc
            self._account(call, model, partial, error=exc, usage_known=bool(exc.usage))
            self.lease.check()  # given up on, the lease lost: nothing to continue for
            return partial
        except LLMError as exc:
            if waited_for(exc):
                raise
            # A continuation's prompt holds the answer so far: that it fills the context is
            # this answer's length (it stays cut off), not a server every phase would meet.
            full = None if request.continues else no_room(exc, self.claim.phase_id)
            refusal = refused(exc, self.claim.phase_id) or full
            if refusal is not None:
                self.s.telemetry.record(LlmUsageIn(**self._error_row(call, model, exc)))
                raise refusal from exc
            room = exc.output_room
            if room is not None and 0 < room < request.max_tokens and not clipped:
                # The server's context holds this prompt and `room` tokens of answer: the
                # same call within them, not a phase failed for a budget no call can have.
                self.s.telemetry.record(LlmUsageIn(**self._error_row(call, model, exc)))
                log_event(
                    logger,
                    "llm_budget_clipped",
                    logging.WARNING,
                    model=model,
                    max_tokens=request.max_tokens,
                    clipped_to=room,
                    why="the model's context on the server has no room for more",
                )
                within = dataclasses.replace(request, max_tokens=room)
                return self._complete(
                    {**call, "max_tokens": room},
                    model,
                    within,
                    continuable=continuable,
                    clipped=True,
                )
            raise self._failed(call, model, exc) from exc

    def _read_whole(
        self, call: dict[str, Any], model: str, request: LLMRequest, response: LLMResponse
    ) -> LLMResponse:
        """The answer, accounted; one to a prompt the server cut (run and billed all the
        same, so recorded with its tokens) stops the drain: :mod:`autopack.llm.prompt_read`."""
        cut = unread_prompt(request, response)
        self._account(call, model, response, error=cut)
        if cut is not None:
            raise cut_prompt(cut, self.claim.phase_id)
        return response

    def _error_row(self, call: dict[str, Any], model: str, exc: LLMError) -> dict[str, Any]:
        message = storable_text(exc.message)  # a provider's text, stored as TEXT
        return {
            **call,
            "provider": exc.provider[:40],
            "model": (exc.model or model)[:200],
            "latency_ms": exc.latency_ms,
            "success": False,
            "error_class": exc.error_class[:200],
            "error_message": message[:2000],
            "request_id": exc.request_id[:200] if exc.request_id else None,
        }

    def _failed(self, call: dict[str, Any], model: str, exc: LLMError) -> Finish:
        """A failed call: its usage row, and how the attempt ends."""
        row = self._error_row(call, model, exc)
        self.s.telemetry.record(LlmUsageIn(**row))
        return failed("llm_error", error=row["error_message"], retryable=exc.retryable)

    def _account(
        self,
        call: dict[str, Any],
        model: str,
        response: LLMResponse,
        *,
        error: LLMError | None = None,
        usage_known: bool = True,
    ) -> LLMResponse:
        """Report a call's tokens under the lease and record its usage row (an interrupted
        stream's row says so, with the tokens the provider had reported; none reported
        are NULL on the row, never a guessed zero)."""
        claim = self.claim
        role = call["role"]
        usage = response.usage
        interrupted = isinstance(error, StreamInterrupted)
        cost, snapshot = (
            self.s.prices.cost_of(response.model or model, usage) if usage_known else (None, None)
        )
        beyond = _cost_beyond_bound(response, cost, snapshot)
        if beyond is not None:
            cost, error = COST_MAX_USD, beyond
        replayed = response.provider == REPLAY_PROVIDER
        billed = 0.0 if replayed else cost or 0.0
        tokens = usage.input_tokens + usage.output_tokens
        if interrupted:
            # The stream broke before the provider said what it wrote (OpenAI reports usage
            # at its end; Anthropic's output count is message_start's placeholder, 1): the
            # budgets count the whole allowance as written, tokens and cost, an upper
            # bound, never the placeholder or a guessed zero. The usage row keeps what was
            # reported (NULL when nothing was).
            allowance = dataclasses.replace(
                usage, output_tokens=max(usage.output_tokens, call["max_tokens"])
            )
            tokens = allowance.input_tokens + allowance.output_tokens
            bound, _ = self.s.prices.cost_of(response.model or model, allowance)
            billed = 0.0 if replayed else min(bound or 0.0, COST_MAX_USD)
        self.tokens += tokens
        self.cost += billed
        if role == "builder":
            self.output_tokens += usage.output_tokens
        self._usage_reports += 1
        try:
            answer = self.s.client.report_usage(
                claim.run_id,
                claim.phase_id,
                UsageIn(
                    lease_token=self.lease.token,
                    tokens=tokens,
                    cost_usd=billed,
                    idempotency_key=ordered_usage_key(self._usage_nonce, self._usage_reports),
                ),
            )
        except LeaseLost:
            # The call was made (and billed by the provider) although the lease ran out
            # meanwhile (an executor stopped past it): its usage row is still written, or
            # the telemetry said fewer calls, tokens and dollars than were spent.
            self._record_usage(call, model, response, error, usage_known, cost, snapshot)
            raise
        self.budget_exhausted = answer.run.reason if answer.run.budget_exhausted else None
        self.s.events(
            "llm_usage",
            run_id=claim.run_id,
            phase_id=claim.phase_id,
            role=role,
            model=response.model or model,
            tokens=tokens,
            cost_usd=cost or 0.0,
            replayed=replayed,
            unpriced=cost is None,
        )
        self._record_usage(call, model, response, error, usage_known, cost, snapshot)
        if beyond is not None:
            raise failed("llm_error", error=beyond.message, retryable=False)
        return response

    def _record_usage(
        self,
        call: dict[str, Any],
        model: str,
        response: LLMResponse,
        error: LLMError | None,
        usage_known: bool,
        cost: float | None,
        snapshot: dict[str, Any] | None,
    ) -> None:
        """The call's usage row (:meth:`_account`)."""
        usage = response.usage
        row = {**call, "success": True} if error is None else self._error_row(call, model, error)
        self.s.telemetry.record(
            LlmUsageIn(
                **{
                    **row,
                    "provider": response.provider,
                    "model": response.model or model,
                    "request_id": response.request_id,
                    "latency_ms": response.latency_ms,
                },
                **(_token_columns(usage) if usage_known else {}),
                stop_reason=response.stop_reason,
                ttft_ms=response.ttft_ms,
                cost_usd=cost,
                provider_cost_usd=response.provider_cost_usd,
                price_snapshot=snapshot,
            )
        )
