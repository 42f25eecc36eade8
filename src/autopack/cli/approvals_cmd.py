"""``autopack approvals``: list pending approvals, show one in full, approve or reject one.

Reasons are what a person must read to decide, so they are wrapped, never cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from autopack.cli._common import OK, out, print_json, state
from autopack.cli.run_cmd import operator, styled
from autopack.cli.shown import escape
from autopack.states import ApprovalStatus

if TYPE_CHECKING:  # the contract models load when a command runs
    from autopack.contract import ApprovalView

app = typer.Typer(help="Decide on phases waiting for a human.", no_args_is_help=True)

STATUSES = ("pending", "approved", "rejected", "expired", "cancelled", "all")


@app.command("list")
def list_(
    ctx: typer.Context,
    status: str = typer.Option("pending", help=f"One of {', '.join(STATUSES)}."),
    run_id: str | None = typer.Option(None, "--run-id", help="Only this run's approvals."),
    limit: int = typer.Option(500, help="Page size (1..1000)."),
    offset: int = typer.Option(0, help="Approvals to skip."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Approvals, oldest first (default: pending), a page at a time; says when more exist."""
    if status not in STATUSES:
        raise typer.BadParameter(f"use one of {', '.join(STATUSES)}", param_hint="--status")
    wanted = None if status == "all" else ApprovalStatus(status)
    page = state(ctx).client().list_approvals(wanted, run_id, limit, offset)
    if as_json:
        print_json(page)
        return
    approvals = page.items
    if not page.total:  # an empty table said nothing: nothing waits, or the wrong filter?
        what = "approvals" if status == "all" else f"{status} approvals"
        where = f" for run {escape(run_id)}" if run_id else ""
        other = "" if status == "all" else " (`--status all` lists every one)"
        out.print(f"no {what}{where}{other}", highlight=False)
        return
    table = Table("id", "phase", "attempt", "status", "times out")
    table.add_column("reason", overflow="fold")
    for approval in approvals:
        table.add_row(
            str(approval.id),
            escape(f"{approval.run_id}/{approval.phase_id}"),
            str(approval.attempt),
            approval.status,
            f"{approval.timeout_at:%Y-%m-%d %H:%M:%S}",
            escape(approval.reason),
        )
    out.print(table)
    after = page.offset + len(approvals)
    if after < page.total:  # never a silent cut: say how to see the rest
        out.print(
            f"showing {len(approvals)} of {page.total}"
            + (f" after the first {page.offset}" if page.offset else "")
            + f"; --offset {after} for more"
            # deciding a pending one takes it off this list: the same offset then skips some
            + (
                "; those you decide leave this list, so list again for the rest"
                if status == "pending"
                else ""
            ),
            highlight=False,
        )
    if approvals:
        out.print("[dim]`autopack approvals show ID` shows one with the change it asks for[/dim]")


@app.command("show")
def show(
    ctx: typer.Context,
    approval_id: int = typer.Argument(..., help="Approval id (see `approvals list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """One approval in full: the reason, the files the change writes and deletes, the decision."""
    approval = state(ctx).client().get_approval(approval_id)
    if as_json:
        print_json(approval)
        return
    out.print(_detail(approval), soft_wrap=True)


def _detail(approval: ApprovalView) -> str:
    """The approval as lines to read (markup escaped)."""
    lines = [
        f"[bold]approval {approval.id}[/bold] {approval.status} · phase "
        f"{escape(approval.run_id)}/{escape(approval.phase_id)} attempt {approval.attempt}",
        f"requested {approval.requested_at:%Y-%m-%d %H:%M:%S} · times out "
        f"{approval.timeout_at:%Y-%m-%d %H:%M:%S} (then: {approval.on_timeout})",
        f"reason: {escape(approval.reason)}",
    ]
    change = approval.context.get("change")
    if isinstance(change, dict):
        for write in change.get("writes", []):
            verb = "overwrites" if write.get("existed") else "writes"
            lines.append(f"  {verb} {escape(str(write.get('path')))}")
        lines += [f"  deletes {escape(str(path))}" for path in change.get("deletes", [])]
        if change.get("summary"):
            lines.append(f"  summary: {escape(str(change['summary']))}")
    if approval.responder:
        lines.append(f"decided by {escape(approval.responder)}: {escape(approval.note or '')}")
    elif approval.status == "pending":
        lines.append(
            f"decide: `autopack approvals approve {approval.id}` or "
            f"`autopack approvals reject {approval.id}`"
        )
    return "\n".join(lines)


def _decide(
    ctx: typer.Context,
    approval_id: int,
    *,
    approve: bool,
    responder: str | None,
    note: str | None,
    as_json: bool,
) -> None:
    from autopack.contract import DecisionIn

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
