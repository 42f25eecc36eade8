"""``autopack probe``: drain one phase and prove its telemetry landed in the right database.

The legacy probe printed a 404 and "NO INCREASE" and left the user to guess why. This one
prints the database it uses and checks, before anything runs, that the probe can prove
something: telemetry must be on and the phase must be there and not already COMPLETE
(``--force`` requeues it, COMPLETE included, and probes again); otherwise it exits 2 with
the fix and touches nothing. Then it counts the phase's telemetry rows, drains the phase
in a child process (which receives the database URL and the telemetry flag explicitly),
counts again, and gives a verdict with the reason. Exit 0 only when the phase is COMPLETE,
both ``token_estimation_v2_events`` and ``llm_usage_events`` grew, and no write was lost.
Figures are shown only for what happened: no ✔ for the tokens of a call never made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import typer

from autopack.cli._common import FAIL, OK, CliState, err, out, print_json, state
from autopack.errors import ConfigError, InvalidInput, NotFound

if TYPE_CHECKING:  # the client stack loads when the probe runs, not for --help
    from autopack.client import ApiClient
    from autopack.contract import PhaseDetail

REQUIRED_TABLES = ("token_estimation_v2_events", "llm_usage_events")
Mark = Literal["ok", "fail", "info"]
MARKS: dict[Mark, str] = {"ok": OK, "fail": FAIL, "info": "·"}


@dataclass
class Verdict:
    ok: bool
    lines: list[tuple[Mark, str]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 1


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
    force: bool = typer.Option(
        False,
        "--force",
        help="Requeue the phase first (FAILED, SKIPPED, stuck or COMPLETE) and probe again.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
) -> None:
    """Drain one phase and check that its telemetry rows grew (exit 0 only then)."""
    cli = state(ctx)
    if api_url:
        cli.api_url = api_url
    settings = cli.settings
    identity = cli.connection().database
    err.print(
        f"[bold]probe[/bold] database {identity.location} (instance_id {identity.instance_id}, "
        f"schema {identity.schema_revision}); TELEMETRY_DB_ENABLED="
        f"{int(settings.telemetry_db_enabled)}",
        highlight=False,
    )
    before = _preflight(cli, run_id, phase_id, force)
    verdict = _probe(cli, before, run_id, phase_id)
    if as_json:
        print_json(verdict.report)
    else:
        for mark, text in verdict.lines:
            (err if mark == "fail" else out).print(f"{MARKS[mark]} {text}", highlight=False)
    raise typer.Exit(verdict.exit_code)


def _preflight(cli: CliState, run_id: str, phase_id: str, force: bool) -> PhaseDetail:
    """Refuse (exit 2, nothing changed) what could only end in "nothing was recorded";
    with ``force``, requeue the phase (COMPLETE included). The phase as it now is."""
    from autopack.contract import RequeueIn
    from autopack.states import PHASE_REQUEUEABLE, PhaseState

    loaded = cli.loaded()
    client = cli.client()  # the server proves it uses our database before anything else
    if not loaded.settings.telemetry_db_enabled:
        source = loaded.sources["telemetry_db_enabled"]
        raise ConfigError(
            f"telemetry is off (TELEMETRY_DB_ENABLED from {source}): the probe would drain "
            f"{run_id}/{phase_id} and record nothing to check. Run it with "
            "TELEMETRY_DB_ENABLED=1 (the phase was not touched).",
            run_id=run_id,
            phase_id=phase_id,
        )
    try:
        phase = client.get_phase(run_id, phase_id)
    except NotFound as exc:
        raise InvalidInput(
            f"nothing to probe: {exc.message}. `autopack run show {run_id}` lists its phases.",
            run_id=run_id,
            phase_id=phase_id,
        ) from exc
    if phase.state == PhaseState.COMPLETE and not force:
        raise InvalidInput(
            f"phase {run_id}/{phase_id} is already COMPLETE: nothing would run, so nothing "
            "new would be recorded. `--force` requeues it and probes again.",
            run_id=run_id,
            phase_id=phase_id,
        )
    if force and (phase.state in PHASE_REQUEUEABLE or phase.state == PhaseState.COMPLETE):
        from autopack.cli.drain_cmd import answering_provider
        from autopack.cli.run_cmd import operator

        # the drain would refuse: before the phase is touched (the drain warns, not this)
        answering_provider(cli, run_id, announce=False)

        request = RequeueIn(requested_by=operator(), reason="probe --force", complete=True)
        client.requeue_phase(run_id, phase_id, request)
        err.print(f"requeued {run_id}/{phase_id} (was {phase.state})", highlight=False)
        phase = client.get_phase(run_id, phase_id)
    return phase


def _probe(cli: CliState, before_phase: PhaseDetail, run_id: str, phase_id: str) -> Verdict:
    client = cli.client()
    identity = cli.connection().database
    report: dict[str, Any] = {
        "run_id": run_id,
        "phase_id": phase_id,
        "database": identity.location,
        "instance_id": identity.instance_id,
        "telemetry_enabled": True,
        "phase_found": True,
    }
    verdict = Verdict(False, report=report)
    lines = verdict.lines
    lines.append(("ok", f"phase found: {phase_id} ({before_phase.state}) in {identity.location}"))
    before = _counts(client, run_id, phase_id)
    _, last_usage = _usage(client, run_id, phase_id, 0)
    command = [sys.executable, "-m", "autopack", "drain", "phase"]
    command += ["--run-id", run_id, "--phase-id", phase_id, "--json"]
    drained = subprocess.run(
        command, env=cli.child_env(), stdout=subprocess.PIPE, text=True, check=False
    )
    summary: dict[str, Any] = json.loads(drained.stdout) if drained.stdout.strip() else {}
    after = _counts(client, run_id, phase_id)
    state_after = client.get_phase(run_id, phase_id).state
    deltas = {table: after[table] - before[table] for table in after}
    attempts = summary.get("attempts", [])
    failures = int(summary.get("telemetry_failures") or 0)
    complete = state_after == "COMPLETE" and drained.returncode == 0
    grew = all(deltas[table] > 0 for table in REQUIRED_TABLES)
    verdict.ok = complete and grew and failures == 0
    verdict.exit_code = 0 if verdict.ok else 2 if drained.returncode == 2 else 1
    lines.append(
        (
            "ok" if complete else "fail",
            f"executor outcome: phase {state_after}, drain exit code "
            f"{drained.returncode}, {len(attempts)} attempt(s)",
        )
    )
    if drained.returncode == 2:
        lines.append(("fail", "the drain refused to start: its reason is printed above"))
    tokens = 0
    if attempts:  # figures only for what happened
        tokens, _ = _usage(client, run_id, phase_id, last_usage)
        empty = sum(a["stop_reason"] == "empty_files" for a in attempts)
        lines.append(("info", f"builder output tokens: {tokens}"))
        if empty:
            fixed = " (corrected by a retry)" if complete else ""
            lines.append(("info", f"empty files answers: {empty}{fixed}"))
    for table, delta in deltas.items():
        mark: Mark = "info" if table not in REQUIRED_TABLES else "ok" if delta > 0 else "fail"
        lines.append((mark, f"{table}: {before[table]} → {after[table]} ({delta:+d})"))
    lines.append(("ok" if failures == 0 else "fail", f"telemetry writes lost: {failures}"))
    report.update(
        phase_state=state_after,
        drain_exit_code=drained.returncode,
        attempts=len(attempts),
        output_tokens=tokens,
        before=before,
        after=after,
        deltas=deltas,
        telemetry_failures=failures,
        ok=verdict.ok,
    )
    return verdict
