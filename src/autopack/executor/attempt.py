"""One attempt at one claimed phase, top to bottom as DESIGN.md §6 lists the steps.

claim → context → estimate → Builder call → parse → validate → (approval) → write → checks
→ Auditor → result. Every way an attempt can end is a :class:`_Finish` carrying a typed
:class:`AttemptResult` with a stop reason; the result is posted (with the lease token as a
fencing token and an idempotency key) in exactly one place, at the end. A lost lease stops
the attempt at once and undoes anything it wrote.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autopack.builder.auditor import (
    AUDITOR_SYSTEM,
    AuditMode,
    Verdict,
    audit_rules,
    auditor_prompt,
    change_diff,
    parse_verdict,
)
from autopack.builder.contract import Change, plan_change
from autopack.builder.output import BuilderRejected, parse_builder_output
from autopack.builder.prompt import BUILDER_SYSTEM, Feedback, PhaseTask, builder_prompt
from autopack.client import ApiClient
from autopack.errors import AutopackError, LeaseLost, LLMError, ServerUnavailable
from autopack.estimation.estimator import Estimate, TokenEstimator
from autopack.estimation.features import PhaseFeatures, extract_features
from autopack.estimation.metrics import event_metrics
from autopack.executor.checks import CheckResult, run_checks
from autopack.executor.workspace import AppliedChange, apply_change, commit_phase
from autopack.llm.base import LLMProvider, LLMRequest, LLMResponse, Message, Role
from autopack.llm.pricing import PriceTable
from autopack.logs import log_event
from autopack.telemetry.events import LlmUsageIn, TokenBudgetEscalationIn, TokenEstimationIn
from autopack.telemetry.recorder import TelemetryRecorder

logger = logging.getLogger("autopack.executor")

Outcome = Literal["COMPLETE", "FAILED", "AWAITING_APPROVAL", "LEASE_LOST"]
EventSink = Callable[..., None]
MAX_FEEDBACK_ATTEMPTS = 3
RESULT_POST_ATTEMPTS = 5


@dataclass(frozen=True)
class ExecutorOptions:
    """How an executor works; every field is a CLI flag of the drain commands."""

    worker_id: str
    workspace: Path
    builder_model: str
    auditor_model: str
    lease_seconds: int = 60
    auditor: AuditMode = "llm"
    escalation_factor: float = 1.5
    check_timeout: float = 300.0
    max_file_bytes: int = 256 * 1024
    context_chars: int = 120_000
    approval_timeout_seconds: float | None = None
    phase_token_cap: int | None = None
    phase_cost_cap_usd: float | None = None
    poll_seconds: float = 1.0


@dataclass
class Services:
    """What an attempt talks to; shared by every attempt of one executor."""

    client: ApiClient
    provider: LLMProvider
    estimator: TokenEstimator
    prices: PriceTable
    telemetry: TelemetryRecorder
    options: ExecutorOptions
    events: EventSink = field(default=lambda *args, **kwargs: None)


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt ended, as the executor reports it."""

    run_id: str
    phase_id: str
    attempt: int
    outcome: Outcome
    stop_reason: str
    phase_state: str | None = None
    files_written: tuple[str, ...] = ()
    output_tokens: int = 0
    detail: str = ""


class _Finish(Exception):
    """Raised by any step to end the attempt with a result to post."""

    def __init__(
        self,
        outcome: Literal["COMPLETE", "FAILED"],
        stop_reason: str,
        *,
        feedback: str | None = None,
        error: str | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(stop_reason)
        self.outcome = outcome
        self.stop_reason = stop_reason
        self.feedback = feedback
        self.error = error
        self.retryable = retryable


class _LeaseGone(Exception):
    """The lease was lost: stop at once, write nothing, post nothing."""


class Heartbeat:
    """Renews the lease in the background; remembers when it is lost."""

    def __init__(self, client: ApiClient, claim: Mapping[str, Any], lease_seconds: int) -> None:
        self._client = client
        self._run_id, self._phase_id = claim["run_id"], claim["phase_id"]
        self._token = claim["lease_token"]
        self._lease_seconds = lease_seconds
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._expires = time.monotonic() + lease_seconds
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self, state: str | None = None) -> None:
        try:
            self._client.heartbeat(
                self._run_id,
                self._phase_id,
                self._token,
                lease_seconds=self._lease_seconds,
                state=state,
            )
            self._expires = time.monotonic() + self._lease_seconds
        except LeaseLost:
            self.lost.set()
        except ServerUnavailable as exc:  # keep trying until the lease would have expired
            log_event(logger, "heartbeat_failed", logging.WARNING, reason=exc.message)
            if time.monotonic() > self._expires:
                self.lost.set()

    def _loop(self) -> None:
        interval = max(self._lease_seconds / 3, 0.2)
        while not self._stop.wait(interval) and not self.lost.is_set():
            self.beat()

    def check(self) -> None:
        if self.lost.is_set():
            raise _LeaseGone


def _feedback(history: list[Mapping[str, Any]]) -> list[Feedback]:
    earlier = [h for h in history if h.get("feedback")][-MAX_FEEDBACK_ATTEMPTS:]
    return [
        Feedback(h["attempt"], h.get("stop_reason") or "failed", h["feedback"]) for h in earlier
    ]


class Attempt:
    """One claimed phase attempt; :meth:`run` returns how it ended."""

    def __init__(self, services: Services, claim: Mapping[str, Any]) -> None:
        self.s = services
        self.o = services.options
        self.claim = claim
        self.run_id: str = claim["run_id"]
        self.phase_id: str = claim["phase_id"]
        self.number: int = claim["attempt"]
        self.phase: Mapping[str, Any] = claim["phase"]
        self.task = PhaseTask.from_json(self.phase)
        self.history: list[Mapping[str, Any]] = list(claim.get("history") or [])
        self.budget: Mapping[str, Any] = claim.get("run") or {}
        self.tokens = 0
        self.cost = 0.0
        self.max_tokens: int | None = None
        self.output_tokens = 0
        self.applied: AppliedChange | None = None
        self.checks: list[CheckResult] = []
        self.verdict: Verdict | None = None
        self.summary = ""

    # -- the attempt, step by step ----------------------------------------------------------
    def run(self) -> AttemptResult:
        try:
            return self._run()
        except BaseException:  # Ctrl-C or SystemExit mid-attempt: leave nothing half-done
            if self.applied is not None:
                self.applied.revert()
            self._hand_back()
            raise

    def _run(self) -> AttemptResult:
        self.s.events(
            "attempt_started", run_id=self.run_id, phase_id=self.phase_id, attempt=self.number
        )
        with Heartbeat(self.s.client, self.claim, self.o.lease_seconds) as heartbeat:
            try:
                change = self._approved_change() or self._build(heartbeat)
                if change.needs_approval and not self.claim.get("approved_change"):
                    return self._request_approval(change)
                heartbeat.check()
                self.applied = apply_change(self.o.workspace, change)
                self._check(heartbeat)
                self._audit(change)
                heartbeat.check()
                finish = _Finish("COMPLETE", "completed")
            except _LeaseGone:
                return self._lease_lost()
            except _Finish as exc:
                finish = exc
            except Exception as exc:  # a bug or an environment failure: record it, don't die
                log_event(
                    logger,
                    "attempt_crashed",
                    logging.ERROR,
                    run_id=self.run_id,
                    phase_id=self.phase_id,
                    attempt=self.number,
                    error=repr(exc),
                )
                finish = _Finish(
                    "FAILED", "executor_error", error=f"{type(exc).__name__}: {exc}", feedback=None
                )
            if finish.outcome != "COMPLETE" and self.applied is not None:
                self.applied.revert()
            return self._post(finish, heartbeat)

    def _approved_change(self) -> Change | None:
        approved = self.claim.get("approved_change")
        if not approved:
            return None
        log_event(
            logger,
            "applying_approved_change",
            run_id=self.run_id,
            phase_id=self.phase_id,
            approval_id=approved.get("approval_id"),
        )
        return Change.from_json(approved["context"]["change"])

    def _build(self, heartbeat: Heartbeat) -> Change:
        features = extract_features(
            self.task.task_category,
            self.task.complexity,
            list(self.task.scope.deliverables),
            self.o.workspace,
        )
        model_max = self.s.prices.max_output_tokens(self.o.builder_model)
        estimate = self.s.estimator.estimate(features, model_max_output=model_max)
        self.max_tokens = self._escalated(estimate, model_max)
        prompt = builder_prompt(
            self.task, self.o.workspace, _feedback(self.history), context_chars=self.o.context_chars
        )
        response = self._call(
            "builder", self.o.builder_model, BUILDER_SYSTEM, prompt, self.max_tokens
        )
        heartbeat.check()
        parse_success = False
        try:
            if response.truncated:
                raise _Finish(
                    "FAILED",
                    "truncated",
                    feedback=f"Your answer was cut off at max_tokens={self.max_tokens} before it "
                    "was complete. The next attempt gets a larger budget; write the files "
                    "without commentary.",
                )
            output = parse_builder_output(response.text)
            change = plan_change(
                output, self.task.scope, self.o.workspace, max_file_bytes=self.o.max_file_bytes
            )
            parse_success = True
            self.summary = output.summary
            return change
        except BuilderRejected as exc:
            raise _Finish("FAILED", exc.stop_reason, feedback=exc.feedback) from exc
        finally:
            self._record_estimation(features, estimate, response, parse_success)

    def _escalated(self, estimate: Estimate, model_max: int) -> int:
        """The estimate's budget, raised when the previous attempt was cut off."""
        previous = self.history[-1] if self.history else None
        if not previous or previous.get("stop_reason") != "truncated":
            return estimate.budget
        old = int(previous.get("max_tokens") or estimate.budget)
        new = min(math.ceil(old * self.o.escalation_factor), model_max)
        if new <= estimate.budget:
            return estimate.budget
        self.s.telemetry.record(
            TokenBudgetEscalationIn(
                run_id=self.run_id,
                phase_id=self.phase_id,
                attempt=self.number,
                reason="truncation",
                factor=self.o.escalation_factor,
                old_budget=old,
                new_budget=new,
            )
        )
        log_event(
            logger,
            "budget_escalated",
            run_id=self.run_id,
            phase_id=self.phase_id,
            attempt=self.number,
            old_budget=old,
            new_budget=new,
        )
        return new

    def _request_approval(self, change: Change) -> AttemptResult:
        answer = self.s.client.request_approval(
            self.run_id,
            self.phase_id,
            lease_token=self.claim["lease_token"],
            reason="; ".join(change.needs_approval),
            context={"change": change.to_json(), "attempt": self.number},
            timeout_seconds=self.o.approval_timeout_seconds,
        )
        self.s.events(
            "approval_requested",
            run_id=self.run_id,
            phase_id=self.phase_id,
            approval_id=answer.get("approval_id"),
            reason=change.needs_approval,
        )
        return AttemptResult(
            self.run_id,
            self.phase_id,
            self.number,
            "AWAITING_APPROVAL",
            "approval_requested",
            phase_state="AWAITING_APPROVAL",
            output_tokens=self.output_tokens,
            detail=f"approval {answer.get('approval_id')}: " + "; ".join(change.needs_approval),
        )

    def _check(self, heartbeat: Heartbeat) -> None:
        if not self.task.checks:
            return
        heartbeat.beat(state="CI_RUNNING")
        heartbeat.check()
        self.s.events("checks_started", run_id=self.run_id, phase_id=self.phase_id)
        self.checks = run_checks(self.task.checks, self.o.workspace, self.o.check_timeout)
        failed = [c for c in self.checks if not c.passed]
        if failed:
            raise _Finish(
                "FAILED",
                "checks_failed",
                feedback="These checks failed after your files were written; fix the code or "
                "tests so they pass:\n"
                + "\n".join(
                    f"$ {c.command} (exit {c.exit_code})\n{c.output_tail[-1500:]}" for c in failed
                ),
            )

    def _audit(self, change: Change) -> None:
        if self.o.auditor == "off":
            return
        rules = audit_rules(self.task, change)
        if self.o.auditor == "rules":
            self.verdict = rules
        else:
            assert self.applied is not None
            before = {
                path: previous.decode(errors="replace")
                for path, previous in self.applied.previous.items()
                if previous is not None
            }
            prompt = auditor_prompt(self.task, change_diff(change, before), self.checks)
            response = self._call("auditor", self.o.auditor_model, AUDITOR_SYSTEM, prompt, 1024)
            self.verdict = parse_verdict(response.text, rules)
        if not self.verdict.approved:
            raise _Finish(
                "FAILED",
                "audit_rejected",
                feedback="The Auditor rejected the change: " + "; ".join(self.verdict.issues),
            )

    # -- the LLM, budgets and telemetry ------------------------------------------------------
    def _check_budget(self) -> None:
        run = self.budget
        if run.get("budget_exhausted"):
            raise _Finish(
                "FAILED", "budget_exhausted", error=str(run.get("reason")), retryable=False
            )
        phase_tokens = int(self.phase.get("tokens_used") or 0) + self.tokens
        phase_cost = float(self.phase.get("cost_usd") or 0.0) + self.cost
        if self.o.phase_token_cap is not None and phase_tokens >= self.o.phase_token_cap:
            raise _Finish(
                "FAILED",
                "phase_token_cap",
                retryable=False,
                error=f"phase used {phase_tokens} tokens, cap {self.o.phase_token_cap}",
            )
        if self.o.phase_cost_cap_usd is not None and phase_cost >= self.o.phase_cost_cap_usd:
            raise _Finish(
                "FAILED",
                "phase_cost_cap",
                retryable=False,
                error=f"phase cost ${phase_cost:.4f}, cap ${self.o.phase_cost_cap_usd}",
            )

    def _call(
        self, role: Role, model: str, system: str, prompt: str, max_tokens: int
    ) -> LLMResponse:
        """One LLM call: budget check before, usage accounting and telemetry after."""
        self._check_budget()
        request = LLMRequest(
            role=role,
            model=model,
            system=system,
            messages=(Message("user", prompt),),
            max_tokens=max_tokens,
            run_id=self.run_id,
            phase_id=self.phase_id,
            attempt=self.number,
        )
        self.s.events("llm_call", run_id=self.run_id, phase_id=self.phase_id, role=role)
        # What every usage row of this call says, failed or not.
        call: dict[str, Any] = {
            "run_id": self.run_id,
            "phase_id": self.phase_id,
            "attempt": self.number,
            "role": role,
            "max_tokens": max_tokens,
        }
        try:
            response = self.s.provider.complete(request)
        except LLMError as exc:
            self.s.telemetry.record(
                LlmUsageIn(
                    **call,
                    provider=exc.provider,
                    model=exc.model or model,
                    latency_ms=exc.latency_ms,
                    success=False,
                    error_class=exc.error_class,
                    error_message=exc.message[:2000],
                    request_id=exc.request_id,
                )
            )
            raise _Finish(
                "FAILED", "llm_error", error=exc.message, retryable=exc.retryable
            ) from exc
        usage = response.usage
        cost, snapshot = self.s.prices.cost_of(response.model or model, usage)
        tokens = usage.input_tokens + usage.output_tokens
        self.tokens += tokens
        self.cost += cost or 0.0
        if role == "builder":
            self.output_tokens += usage.output_tokens
        self.budget = self.s.client.report_usage(
            self.run_id,
            self.phase_id,
            self.claim["lease_token"],
            tokens=tokens,
            cost_usd=cost or 0.0,
        )["run"]
        self.s.telemetry.record(
            LlmUsageIn(
                **call,
                provider=response.provider,
                model=response.model or model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                stop_reason=response.stop_reason,
                latency_ms=response.latency_ms,
                ttft_ms=response.ttft_ms,
                success=True,
                request_id=response.request_id,
                cost_usd=cost,
                provider_cost_usd=response.provider_cost_usd,
                price_snapshot=snapshot,
            )
        )
        return response

    def _record_estimation(
        self,
        features: PhaseFeatures,
        estimate: Estimate,
        response: LLMResponse,
        parse_success: bool,
    ) -> None:
        sent = self.max_tokens or estimate.budget
        actual = response.usage.output_tokens
        measures = event_metrics(
            predicted=estimate.p50, max_tokens=sent, actual=actual, truncated=response.truncated
        )
        self.s.telemetry.record(
            TokenEstimationIn(
                run_id=self.run_id,
                phase_id=self.phase_id,
                attempt=self.number,
                estimator_version=estimate.version,
                category=features.category,
                complexity=features.complexity,
                deliverable_count=features.deliverable_count,
                deliverables_json=[d.path for d in features.deliverables],
                features=features.to_json(),
                predicted_output_tokens=estimate.p50,
                predicted_p90_tokens=estimate.p90,
                selected_budget=estimate.budget,
                budget_decided_by=estimate.decided_by,
                max_tokens_sent=sent,
                actual_output_tokens=actual,
                truncated=response.truncated,
                stop_reason=response.stop_reason,
                model=response.model,
                parse_success=parse_success,
                success=parse_success and not response.truncated,
                smape_percent=measures.smape_percent,
                waste_ratio=measures.waste_ratio,
                underestimated=measures.underestimated,
            )
        )

    # -- ending ----------------------------------------------------------------------------
    def _hand_back(self) -> None:
        """Interrupted (Ctrl-C, SIGTERM): re-queue the phase now rather than at lease expiry.

        Best effort: if the API does not answer, the lease still expires and the phase is
        reclaimed then.
        """
        try:
            self.s.client.post_result(
                self.run_id,
                self.phase_id,
                lease_token=self.claim["lease_token"],
                idempotency_key=f"{self.run_id}:{self.phase_id}:{self.number}",
                outcome="FAILED",
                stop_reason="interrupted",
                retryable=True,
                error="the executor was interrupted (Ctrl-C or SIGTERM) mid-attempt",
            )
        except AutopackError as exc:
            log_event(logger, "hand_back_failed", logging.WARNING, reason=exc.message)

    def _lease_lost(self) -> AttemptResult:
        if self.applied is not None:
            self.applied.revert()
        log_event(
            logger,
            "lease_lost",
            logging.WARNING,
            run_id=self.run_id,
            phase_id=self.phase_id,
            attempt=self.number,
        )
        return AttemptResult(
            self.run_id,
            self.phase_id,
            self.number,
            "LEASE_LOST",
            "lease_lost",
            output_tokens=self.output_tokens,
        )

    def _post(self, finish: _Finish, heartbeat: Heartbeat) -> AttemptResult:
        files = tuple(self.applied.paths) if self.applied and finish.outcome == "COMPLETE" else ()
        body: dict[str, Any] = {
            "outcome": finish.outcome,
            "stop_reason": finish.stop_reason,
            "retryable": finish.retryable,
            "feedback": finish.feedback,
            "error": finish.error,
            "max_tokens": self.max_tokens,
            "files_written": list(files),
            "check_results": [c.to_json() for c in self.checks],
            "audit_verdict": self.verdict.to_json() if self.verdict else None,
            "details": {"summary": self.summary, "worker_id": self.o.worker_id},
        }
        if heartbeat.lost.is_set():
            return self._lease_lost()
        answer: Mapping[str, Any] | None = None
        for attempt in range(RESULT_POST_ATTEMPTS):  # safe to repeat: the key makes it idempotent
            try:
                answer = self.s.client.post_result(
                    self.run_id,
                    self.phase_id,
                    lease_token=self.claim["lease_token"],
                    idempotency_key=f"{self.run_id}:{self.phase_id}:{self.number}",
                    **body,
                )
                break
            except LeaseLost:
                return self._lease_lost()
            except ServerUnavailable:
                if attempt == RESULT_POST_ATTEMPTS - 1:
                    # Unrecorded work is undone: the phase is redone after its lease expires.
                    if self.applied is not None:
                        self.applied.revert()
                    raise
                time.sleep(2**attempt * 0.2)
        assert answer is not None
        if finish.outcome == "COMPLETE" and self.applied is not None:
            self._commit()
        result = AttemptResult(
            self.run_id,
            self.phase_id,
            self.number,
            finish.outcome,
            finish.stop_reason,
            phase_state=answer.get("phase_state"),
            files_written=files,
            output_tokens=self.output_tokens,
            detail=finish.error or finish.feedback or "",
        )
        self.s.events("attempt_finished", result=result)
        return result

    def _commit(self) -> None:
        assert self.applied is not None
        message = f"autopack: {self.phase_id} ({self.run_id}, attempt {self.number})"
        if self.summary:
            message += f"\n\n{self.summary}"
        try:
            commit_phase(self.o.workspace, self.applied.paths, message)
        except (OSError, RuntimeError, AutopackError) as exc:
            log_event(
                logger,
                "git_commit_failed",
                logging.WARNING,
                phase_id=self.phase_id,
                reason=str(exc),
            )
