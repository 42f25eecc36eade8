"""``GET /metrics``: Prometheus exposition of runs, phases, approvals and LLM usage.

Values are read from the database at scrape time (no state lives in an API process), so
every replica behind a load balancer reports the same numbers. A scraper sends either
token (the worker token is enough).
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from autopack.api.auth import WORKER
from autopack.api.deps import DatabaseDep
from autopack.bounds import MAX_PAGE
from autopack.control import approvals, runs, telemetry
from autopack.db import Database
from autopack.states import RunState

router = APIRouter(tags=["metrics"])


class _DatabaseCollector:
    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        listed = runs.list_runs(self.database, limit=MAX_PAGE).items
        run_states = GaugeMetricFamily("autopack_runs", "Runs by state.", labels=["state"])
        phases = GaugeMetricFamily(
            "autopack_phases", "Phases by run and state.", labels=["run_id", "state"]
        )
        for run in listed:  # one label per run: the newest MAX_PAGE (older ones are done)
            for phase_state, count in run.counts.items():
                phases.add_metric([run.run_id, phase_state], count)
        for run_state in RunState:  # every run counted, however many
            counted = runs.list_runs(self.database, state=run_state, limit=1).total
            if counted:
                run_states.add_metric([run_state], counted)
        pending = GaugeMetricFamily("autopack_approvals_pending", "Approvals waiting.")
        pending.add_metric([], approvals.list_approvals(self.database, limit=1).total)
        usage = telemetry.usage_summary(self.database)
        labels = ["run_id", "model", "role"]
        calls = CounterMetricFamily("autopack_llm_calls", "LLM calls.", labels=[*labels, "outcome"])
        tokens = CounterMetricFamily("autopack_llm_tokens", "LLM tokens.", labels=[*labels, "type"])
        cost = CounterMetricFamily(
            "autopack_llm_cost_usd", "Priced LLM cost (replayed calls excluded).", labels=labels
        )
        for u in usage:
            key = [u.run_id, u.model, u.role]
            calls.add_metric([*key, "success"], u.calls - u.failed_calls)
            calls.add_metric([*key, "failure"], u.failed_calls)
            tokens.add_metric([*key, "input"], u.input_tokens)
            tokens.add_metric([*key, "output"], u.output_tokens)
            # An unpriced model has no cost, not $0; a replayed call cost nothing.
            if u.cost_usd is not None and not u.replayed:
                cost.add_metric(key, u.cost_usd)
        yield from (run_states, phases, pending, calls, tokens, cost)


@router.get("/metrics", include_in_schema=False, dependencies=[WORKER])
def metrics(database: DatabaseDep) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DatabaseCollector(database))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
