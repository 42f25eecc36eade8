"""Optional OpenTelemetry export of every LLM call (``AUTOPACK_OTEL=1``).

Each call becomes a CLIENT span named ``chat {model}`` with the GenAI semantic-convention
attributes, and feeds the ``gen_ai.client.token.usage`` and
``gen_ai.client.operation.duration`` histograms. The OTLP endpoint comes from the standard
``OTEL_EXPORTER_OTLP_*`` variables, read by the OpenTelemetry SDK itself. Our tracer and
meter providers are private (not the global ones), so an SDK that instruments itself
globally does not produce duplicate spans.

The exporter is an optional dependency: ``pip install 'autopack[otel]'``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from autopack import redact
from autopack.config import Settings
from autopack.errors import ConfigError, LLMError
from autopack.llm.base import LLMProvider, LLMRequest, LLMResponse

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.trace import Tracer

Instrument = Callable[[LLMProvider], LLMProvider]


class InstrumentedProvider:
    """Wraps a provider: same answers, plus a span and metrics per call."""

    def __init__(self, inner: LLMProvider, tracer: Tracer, meter: Meter) -> None:
        self.inner = inner
        self.name = inner.name
        self._tracer = tracer
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration."
        )

    def complete(self, request: LLMRequest) -> LLMResponse:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        common: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self.name,
            "gen_ai.request.model": request.model,
        }
        with self._tracer.start_as_current_span(
            f"chat {request.model}",
            kind=SpanKind.CLIENT,
            # not the SDK's own exception event and status: they export the provider's
            # message unredacted (an echoing proxy's body quotes the key), and its traceback
            record_exception=False,
            set_status_on_exception=False,
            attributes={
                **common,
                "gen_ai.request.max_tokens": request.max_tokens,
                "autopack.run_id": request.run_id,
                "autopack.phase_id": request.phase_id or "",
                "autopack.attempt": request.attempt or 0,
                "autopack.role": request.role,
            },
        ) as span:
            started = time.perf_counter()
            try:
                response = self.inner.complete(request)
            except LLMError as exc:
                span.set_attribute("error.type", exc.error_class)
                span.set_status(Status(StatusCode.ERROR, redact.text(exc.message)))
                self._duration.record(
                    time.perf_counter() - started, {**common, "error.type": exc.error_class}
                )
                raise
            except BaseException as exc:  # no message: nothing vouches it holds no secret
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            common["gen_ai.provider.name"] = response.provider
            common["gen_ai.response.model"] = response.model
            usage = response.usage
            span.set_attributes(
                {
                    "gen_ai.provider.name": response.provider,
                    "gen_ai.response.model": response.model,
                    "gen_ai.response.id": response.request_id or "",
                    "gen_ai.response.finish_reasons": (response.stop_reason,),
                    "gen_ai.usage.input_tokens": usage.input_tokens,
                    "gen_ai.usage.output_tokens": usage.output_tokens,
                    "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
                    "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
                }
            )
            self._tokens.record(usage.input_tokens, {**common, "gen_ai.token.type": "input"})
            self._tokens.record(usage.output_tokens, {**common, "gen_ai.token.type": "output"})
            self._duration.record(time.perf_counter() - started, common)
            return response


@contextmanager
def otel_instrumentation(settings: Settings) -> Iterator[Instrument]:
    """Yield a function that instruments a provider; flush and shut down on exit.

    With ``AUTOPACK_OTEL`` off it yields the identity function and imports nothing.
    """
    if not settings.autopack_otel:
        yield lambda provider: provider
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            "AUTOPACK_OTEL=1 needs the OpenTelemetry SDK: pip install 'autopack[otel]'"
        ) from exc
    resource = Resource.create({"service.name": "autopack"})
    tracers = TracerProvider(resource=resource)
    tracers.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meters = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
    )
    try:
        yield lambda provider: InstrumentedProvider(
            provider, tracers.get_tracer("autopack"), meters.get_meter("autopack")
        )
    finally:
        tracers.shutdown()
        meters.shutdown()
