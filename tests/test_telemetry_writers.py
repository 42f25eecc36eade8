"""Telemetry writers against the real schema, on both backends, through the real API."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from autopack.client import ApiClient
from autopack.db.telemetry import TABLES
from autopack.errors import Conflict, InvalidInput
from autopack.telemetry.events import (
    EventKind,
    LlmUsageIn,
    TelemetryEvent,
    TokenBudgetEscalationIn,
    TokenEstimationIn,
)
from autopack.telemetry.recorder import TelemetryRecorder
from tests.support import Server, clean_env

EVENTS: dict[str, tuple[type[BaseModel], EventKind]] = {
    "llm_usage_events": (LlmUsageIn, "usage"),
    "token_estimation_v2_events": (TokenEstimationIn, "estimation"),
    "token_budget_escalation_events": (TokenBudgetEscalationIn, "escalation"),
}

USAGE = LlmUsageIn(
    run_id="r1",
    phase_id="p1",
    attempt=1,
    role="builder",
    provider="anthropic",
    model="claude-x",
    input_tokens=1200,
    output_tokens=800,
    cache_read_tokens=200,
    cache_write_tokens=0,
    max_tokens=4096,
    stop_reason="end_turn",
    latency_ms=1234.5,
    ttft_ms=None,
    success=True,
    request_id="req_1",
    cost_usd=0.0123,
    provider_cost_usd=None,
    price_snapshot={"version": "t", "input": 3.0},
)
ESTIMATION = TokenEstimationIn(
    run_id="r1",
    phase_id="p1",
    attempt=1,
    estimator_version="v1",
    category="tests",
    complexity="low",
    deliverable_count=2,
    deliverables_json=["a.py", "b.py"],
    features={"kinds": ["test", "python"]},
    predicted_output_tokens=900,
    predicted_p90_tokens=1400,
    selected_budget=2000,
    budget_decided_by="estimate",
    max_tokens_sent=2000,
    actual_output_tokens=800,
    truncated=False,
    stop_reason="end_turn",
    model="claude-x",
    parse_success=True,
    success=True,
    smape_percent=11.8,
    waste_ratio=2.5,
    underestimated=False,
)
ESCALATION = TokenBudgetEscalationIn(
    run_id="r1",
    phase_id="p1",
    attempt=2,
    reason="truncation",
    factor=1.5,
    old_budget=2000,
    new_budget=3000,
)


@pytest.mark.parametrize("table", sorted(EVENTS))
def test_every_event_field_is_a_column_of_its_table(table: str) -> None:
    model, kind = EVENTS[table]
    assert TABLES[kind].name == table
    columns = set(TABLES[kind].columns.keys())
    assert set(model.model_fields) <= columns, set(model.model_fields) - columns


def test_events_round_trip_through_the_api(database_url: str, tmp_path: Path) -> None:
    with (
        Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server,
        ApiClient(server.url) as client,
    ):
        recorder = TelemetryRecorder(client.post_telemetry, enabled=True)
        for event in (USAGE, ESTIMATION, ESCALATION):
            recorder.record(event)
        assert (recorder.written, recorder.failures) == (3, 0)
        stored: dict[str, Sequence[BaseModel]] = {
            "usage": client.usage_events(run_id="r1"),
            "estimation": client.estimation_events(run_id="r1"),
            "escalation": client.escalation_events(run_id="r1"),
        }
    for kind, event in (("usage", USAGE), ("estimation", ESTIMATION), ("escalation", ESCALATION)):
        [stored_row] = stored[kind]
        row = stored_row.model_dump(mode="json")
        expected = event.model_dump(mode="json", exclude={"ts"})
        assert {k: row[k] for k in expected} == expected


def test_a_retry_is_stored_once_and_a_reused_key_is_refused_and_counted(
    database_url: str, tmp_path: Path
) -> None:
    """Each kind through the API: the same body again (the answer was lost) is the first
    row; another body under the key is a 409 the recorder counts as a failed write."""
    reused: dict[EventKind, TelemetryEvent] = {
        "usage": USAGE.model_copy(update={"output_tokens": 1}),
        "estimation": ESTIMATION.model_copy(update={"actual_output_tokens": 1}),
        "escalation": ESCALATION.model_copy(update={"new_budget": 1}),
    }
    with (
        Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server,
        ApiClient(server.url) as client,
    ):
        kinds: list[tuple[EventKind, TelemetryEvent]] = [
            ("usage", USAGE),
            ("estimation", ESTIMATION),
            ("escalation", ESCALATION),
        ]
        for kind, event in kinds:
            first = client.post_telemetry(event)
            assert client.post_telemetry(event) == first
            with pytest.raises(Conflict, match="idempotency_key"):
                client.post_telemetry(reused[kind])
            recorder = TelemetryRecorder(client.post_telemetry, enabled=True)
            recorder.record(reused[kind])
            assert (recorder.written, recorder.failures) == (0, 1), kind
        assert [e.output_tokens for e in client.usage_events()] == [800]
        assert [e.actual_output_tokens for e in client.estimation_events()] == [800]
        assert [e.new_budget for e in client.escalation_events()] == [3000]


def test_a_retry_of_a_post_without_ts_is_the_first_row(database_url: str, tmp_path: Path) -> None:
    """``ts`` may be left out (the server makes it): an exact retry of such a post under
    its key was a 409 saying a retry must repeat its body, since each post got a new ts."""
    body = USAGE.model_dump(mode="json", exclude={"ts"})
    with (
        Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        first = client.post("/telemetry/llm-usage", json=body)
        again = client.post("/telemetry/llm-usage", json=body)
        assert first.status_code == again.status_code == 201, again.text
        assert again.json() == first.json()
        other = client.post("/telemetry/llm-usage", json={**body, "output_tokens": 1})
        assert other.status_code == 409, other.text
        stored = client.get("/telemetry/events", params={"kind": "usage"}).json()
        assert [event["output_tokens"] for event in stored] == [800]


def test_a_field_the_table_lacks_is_refused_loudly_and_counted(
    database_url: str, tmp_path: Path
) -> None:
    class Drifted(LlmUsageIn):
        not_a_column: int = 1

    with (
        Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server,
        ApiClient(server.url) as client,
    ):
        with pytest.raises(InvalidInput, match="not_a_column"):
            client.post_telemetry(Drifted(**USAGE.model_dump()))
        recorder = TelemetryRecorder(
            lambda event: client.post_telemetry(Drifted(**event.model_dump())),
            enabled=True,
        )
        recorder.record(USAGE)
        assert (recorder.written, recorder.failures) == (0, 1)
        assert client.usage_events() == []


def test_disabled_recorder_writes_nothing() -> None:
    calls: list[TelemetryEvent] = []

    def post(event: TelemetryEvent) -> int:
        calls.append(event)
        return 1

    recorder = TelemetryRecorder(post, enabled=False)
    recorder.record(USAGE)
    assert calls == [] and recorder.written == 0
