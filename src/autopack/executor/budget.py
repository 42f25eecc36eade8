"""The Builder's token budget for an attempt, and the row joining it to what was written.

The budget is the estimator's (its quantile at the target truncation rate), raised when
the attempt before was cut off, and that raise is an escalation row; the estimation row
joins the estimate to the output the model really wrote, which is what ``autopack
telemetry calibrate`` learns from. Both belong to the attempt's :class:`Meter`, which
keeps the decided ``max_tokens`` for the attempt's result.
"""

from __future__ import annotations

import math

from autopack.estimation.estimator import Estimate
from autopack.estimation.features import PhaseFeatures
from autopack.estimation.metrics import event_metrics
from autopack.executor.metering import Meter, logger
from autopack.llm.base import LLMResponse
from autopack.logs import log_event
from autopack.states import stopped_from_outside
from autopack.telemetry.events import TokenBudgetEscalationIn, TokenEstimationIn


def builder_budget(meter: Meter, estimate: Estimate, model_max: int) -> int:
    """The Builder's ``max_tokens``: the estimate's budget, raised when the previous
    attempt was cut off (recorded as an escalation event), kept on ``meter``."""
    meter.max_tokens = escalated(meter, estimate, model_max)
    return meter.max_tokens


def escalated(meter: Meter, estimate: Estimate, model_max: int) -> int:
    """``estimate``'s budget, or ``escalation_factor`` times the last cut-off attempt's
    (at most ``model_max``) when that is larger."""
    claim, factor = meter.claim, meter.o.escalation_factor
    # the attempt before this one, passing over those whose executor was stopped: the
    # larger budget a cut-off answer earned was lost with a retry killed on its way
    previous = next(
        (h for h in reversed(claim.history) if not stopped_from_outside(h.outcome, h.stop_reason)),
        None,
    )
    if previous is None or previous.stop_reason != "truncated":
        return estimate.budget
    old = previous.max_tokens or estimate.budget
    new = min(math.ceil(old * factor), model_max)
    if new <= estimate.budget:
        return estimate.budget
    meter.s.telemetry.record(
        TokenBudgetEscalationIn(
            run_id=claim.run_id,
            phase_id=claim.phase_id,
            attempt=claim.attempt,
            reason="truncation",
            factor=factor,
            old_budget=old,
            new_budget=new,
        )
    )
    log_event(
        logger,
        "budget_escalated",
        run_id=claim.run_id,
        phase_id=claim.phase_id,
        attempt=claim.attempt,
        old_budget=old,
        new_budget=new,
    )
    return new


def record_estimation(
    meter: Meter,
    features: PhaseFeatures,
    estimate: Estimate,
    response: LLMResponse,
    parse_success: bool,
) -> None:
    """Join the Builder call's estimate to what the model really wrote."""
    sent = meter.max_tokens or estimate.budget
    actual = response.usage.output_tokens
    measures = event_metrics(
        predicted=estimate.p50, max_tokens=sent, actual=actual, truncated=response.truncated
    )
    claim = meter.claim
    meter.s.telemetry.record(
        TokenEstimationIn(
            run_id=claim.run_id,
            phase_id=claim.phase_id,
            attempt=claim.attempt,
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
