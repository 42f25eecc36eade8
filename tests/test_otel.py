"""OpenTelemetry GenAI export, checked with the SDK's in-memory exporter and reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from autopack.config import Settings
from autopack.errors import LLMError
from autopack.llm.base import LLMRequest, Message
from autopack.llm.replay import ReplayProvider
from autopack.telemetry.otel import InstrumentedProvider, otel_instrumentation
from tests.executor_support import cassette, line


def _request(phase_id: str) -> LLMRequest:
    return LLMRequest(
        role="builder",
        model="claude-sonnet-5-5",
        system="s",
        messages=(Message("user", "u"),),
        max_tokens=2048,
        run_id="exec-run",
        phase_id=phase_id,
        attempt=1,
    )


@pytest.fixture
def instrumented(
    tmp_path: Path,
) -> tuple[InstrumentedProvider, InMemorySpanExporter, InMemoryMetricReader]:
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    replay = ReplayProvider(cassette(tmp_path, [line("p1", 1, '{"files": []}', output_tokens=7)]))
    provider = InstrumentedProvider(replay, tracers.get_tracer("t"), meters.get_meter("t"))
    return provider, spans, reader


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def test_a_call_is_a_span_with_genai_attributes_and_metrics(instrumented: Any) -> None:
    provider, spans, reader = instrumented
    provider.complete(_request("p1"))
    [span] = spans.get_finished_spans()
    attributes = dict(span.attributes)
    assert span.name == "chat claude-sonnet-5-5"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "replay"  # a cassette, not Anthropic
    assert attributes["gen_ai.request.model"] == "claude-sonnet-5-5"
    assert attributes["gen_ai.usage.input_tokens"] == 500
    assert attributes["gen_ai.usage.output_tokens"] == 7
    assert attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    points = _points(reader)
    tokens = {p.attributes["gen_ai.token.type"]: p.sum for p in points["gen_ai.client.token.usage"]}
    assert tokens == {"input": 500, "output": 7}
    assert [p.count for p in points["gen_ai.client.operation.duration"]] == [1]


def test_a_failed_call_is_an_error_span(instrumented: Any) -> None:
    provider, spans, reader = instrumented
    with pytest.raises(LLMError):
        provider.complete(_request("not-in-the-cassette"))
    [span] = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "CassetteMiss"
    [duration] = _points(reader)["gen_ai.client.operation.duration"]
    assert duration.attributes["error.type"] == "CassetteMiss"


def test_off_means_untouched() -> None:
    sentinel = object()
    with otel_instrumentation(Settings(autopack_otel=False)) as instrument:
        assert instrument(sentinel) is sentinel  # type: ignore[arg-type]
