"""Telemetry: event definitions, the executor-side recorder, OpenTelemetry export, reports."""
