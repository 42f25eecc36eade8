"""``autopack probe``: drain one phase and prove its telemetry landed in the right database.

The legacy probe printed a 404 and "NO INCREASE" and left the user to guess why. This one
prints the database it uses, counts the phase's telemetry rows, drains the phase in a
child process (which receives the database URL and the telemetry flag explicitly), counts
again, and gives a verdict with the reason. Exit 0 only when the phase is COMPLETE, both
``token_estimation_v2_events`` and ``llm_usage_events`` grew, and no write was lost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import typer

from autopack.cli._common import FAIL, OK, err, out, print_json, state
from autopack.client import ApiClient
from autopack.config import child_env
from autopack.errors import NotFound
from autopack.identity import DbIdentity

REQUIRED_TABLES = ("token_estimation_v2_events", "llm_usage_events")


@dataclass
class Verdict:
    ok: bool
    lines: list[tuple[bool, str]]
    report: dict[str, Any]


def _counts(client: ApiClient, run_id: str, phase_id: str) -> dict[str, int]:
    return client.telemetry_counts(run_id, phase_id).model_dump()


def _usage(client: ApiClient, run_id: str, phase_id: str, after_id: int) -> tuple[int, int]:
    """(builder output tokens of this phase's calls after ``after_id``, the last usage id)."""
    tokens, last = 0, after_id
    while True:
        page = client.usage_events(run_id, limit=1000, after_id=last)
        for event in page:
            if event.phase_id == phase_id and event.role == "builder":
                tokens += event.output_tokens or 0
        if not page:
            return tokens, last
        last = page[-1].id


def probe(
    ctx: typer.Context,
    run_id: str = typer.Option(..., "--run-id", help="Run holding the phase."),
    phase_id: str = typer.Option(..., "--phase-id", help="Phase to drain and check."),
    api_url: str | None = typer.Option(None, "--api-url", help="API server for the drain."),
    force: bool = typer.Option(False, "--force", help="Requeue the phase first if FAILED."),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
) -> None:
    """Drain one phase and check that its telemetry rows grew (exit 0 only then)."""
    cli = state(ctx)
    if api_url:
        cli.api_url = api_url
    settings = cli.settings
    identity = cli.database().identity
    err.print(
        f"[bold]probe[/bold] database {identity.url} (instance_id {identity.instance_id}, "
        f"schema {identity.schema_revision}); TELEMETRY_DB_ENABLED="
        f"{int(settings.telemetry_db_enabled)}",
        highlight=False,
    )
    verdict = _probe(
        settings.telemetry_db_enabled,
        cli.client(),
        identity,
        run_id,
        phase_id,
        force,
        child_env(settings),
    )
    if as_json:
        print_json(verdict.report)
    else:
        for good, text in verdict.lines:
            (out if good else err).print(f"{OK if good else FAIL} {text}", highlight=False)
    raise typer.Exit(0 if verdict.ok else 1)


def _probe(
    telemetry_on: bool,
    client: ApiClient,
    identity: DbIdentity,
    run_id: str,
    phase_id: str,
    force: bool,
    env: dict[str, str],
) -> Verdict:
    report: dict[str, Any] = {
        "run_id": run_id,
        "phase_id": phase_id,
        "database": identity.url,
        "instance_id": identity.instance_id,
        "telemetry_enabled": telemetry_on,
    }
    lines: list[tuple[bool, str]] = []
    try:
        before_phase = client.get_phase(run_id, phase_id)
    except NotFound as exc:
        lines.append((False, f"phase not found: {exc.message}"))
        return Verdict(False, lines, {**report, "phase_found": False})
    lines.append((True, f"phase found: {phase_id} ({before_phase.state}) in {identity.url}"))
    before = _counts(client, run_id, phase_id)
    _, last_usage = _usage(client, run_id, phase_id, 0)
    command = [
        sys.executable,
        "-m",
        "autopack",
        "drain",
        "phase",
        "--run-id",
        run_id,
        "--phase-id",
        phase_id,
        "--json",
    ] + (["--force"] if force else [])
    drained = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    summary: dict[str, Any] = json.loads(drained.stdout) if drained.stdout.strip() else {}
    after = _counts(client, run_id, phase_id)
    state_after = client.get_phase(run_id, phase_id).state
    deltas = {table: after[table] - before[table] for table in after}
    attempts = summary.get("attempts", [])
    empty = [a for a in attempts if a["stop_reason"] == "empty_files"]
    failures = int(summary.get("telemetry_failures") or 0)
    tokens, _ = _usage(client, run_id, phase_id, last_usage)
    complete = state_after == "COMPLETE" and drained.returncode == 0
    lines.append(
        (
            complete,
            f"executor outcome: phase {state_after}, drain exit code "
            f"{drained.returncode}, {len(attempts)} attempt(s)",
        )
    )
    lines.append((True, f"builder output tokens: {tokens}"))
    lines.append(
        (
            True,
            "empty files answers: "
            + (f"{len(empty)} (corrected by retry)" if empty and complete else str(len(empty))),
        )
    )
    for table, delta in deltas.items():
        required = table in REQUIRED_TABLES
        lines.append(
            (delta > 0 or not required, f"{table}: {before[table]} → {after[table]} ({delta:+d})")
        )
    lines.append((failures == 0, f"telemetry writes lost: {failures}"))
    grew = all(deltas[table] > 0 for table in REQUIRED_TABLES)
    if not telemetry_on and not grew:
        lines.append(
            (
                False,
                "nothing was recorded because TELEMETRY_DB_ENABLED is not set: "
                "run again with TELEMETRY_DB_ENABLED=1",
            )
        )
    elif before_phase.state == "COMPLETE" and not attempts:
        lines.append((False, "nothing ran: the phase was already COMPLETE before the probe"))
    ok = complete and grew and failures == 0
    report.update(
        phase_found=True,
        phase_state=state_after,
        drain_exit_code=drained.returncode,
        attempts=len(attempts),
        output_tokens=tokens,
        empty_files=len(empty),
        before=before,
        after=after,
        deltas=deltas,
        telemetry_failures=failures,
        ok=ok,
    )
    return Verdict(ok, lines, report)
