"""``autopack approvals``: list pending approvals, approve or reject one."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from autopack.cli._common import OK, out, print_json, state
from autopack.cli.run_cmd import operator, styled
from autopack.contract import DecisionIn
from autopack.states import ApprovalStatus

app = typer.Typer(help="Decide on phases waiting for a human.", no_args_is_help=True)

STATUSES = ("pending", "approved", "rejected", "expired", "cancelled", "all")


@app.command("list")
def list_(
    ctx: typer.Context,
    status: str = typer.Option("pending", help=f"One of {', '.join(STATUSES)}."),
    run_id: str | None = typer.Option(None, "--run-id", help="Only this run's approvals."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Approvals, oldest first (default: pending)."""
    if status not in STATUSES:
        raise typer.BadParameter(f"use one of {', '.join(STATUSES)}", param_hint="--status")
    wanted = None if status == "all" else ApprovalStatus(status)
    approvals = state(ctx).client().list_approvals(wanted, run_id)
    if as_json:
        print_json(approvals)
        return
    table = Table("id", "phase", "attempt", "status", "reason", "times out")
    for approval in approvals:
        table.add_row(
            str(approval.id),
            escape(f"{approval.run_id}/{approval.phase_id}"),
            str(approval.attempt),
            approval.status,
            escape(approval.reason[:80]),
            f"{approval.timeout_at:%Y-%m-%d %H:%M:%S}",
        )
    out.print(table)


def _decide(
    ctx: typer.Context,
    approval_id: int,
    *,
    approve: bool,
    responder: str | None,
    note: str | None,
    as_json: bool,
) -> None:
    decision = DecisionIn(responder=responder or operator(), note=note)
    decided = state(ctx).client().decide(approval_id, approve=approve, decision=decision)
    if as_json:
        print_json(decided)
        return
    out.print(
        f"{OK} approval {approval_id} {decided.status}: phase "
        f"{escape(decided.run_id)}/{escape(decided.phase_id)} is "
        f"{styled(decided.phase_state)}"
    )


@app.command("approve")
def approve(
    ctx: typer.Context,
    approval_id: int = typer.Argument(..., help="Approval id (see `approvals list`)."),
    responder: str | None = typer.Option(None, help="Who decides (default: your login)."),
    note: str | None = typer.Option(None, help="Recorded with the decision."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Approve: the phase is re-queued and its next claim carries the approved change."""
    _decide(ctx, approval_id, approve=True, responder=responder, note=note, as_json=as_json)


@app.command("reject")
def reject(
    ctx: typer.Context,
    approval_id: int = typer.Argument(..., help="Approval id (see `approvals list`)."),
    responder: str | None = typer.Option(None, help="Who decides (default: your login)."),
    note: str | None = typer.Option(None, help="Recorded with the decision."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Reject: the phase FAILS (approval_rejected)."""
    _decide(ctx, approval_id, approve=False, responder=responder, note=note, as_json=as_json)
