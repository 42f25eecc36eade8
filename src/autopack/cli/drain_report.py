"""A drain's summary as a person reads it (tables) or a script does (``--json``), and its
exit code: what each phase ended as, what this drain did for it, what was spent, where
the run's code is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.tree import Tree

from autopack.cli._common import err, out, print_json
from autopack.cli.progress import Spend
from autopack.cli.shown import escape
from autopack.states import PHASE_GAVE_UP, PHASE_TERMINAL

if TYPE_CHECKING:
    from autopack.contract import RunView
    from autopack.executor.executor import DrainSummary
    from autopack.executor.outcome import AttemptResult

DECIDED_LATER = frozenset({"AWAITING_APPROVAL", "LEASE_LOST"})
"""Attempt outcomes after which the control plane, not the attempt, ends the phase."""


def _last_reason(attempt: AttemptResult, phase_state: str, reason: str | None) -> str:
    """The last stop reason of a phase this drain attempted: its last attempt's, unless
    that attempt only asked for approval (or lost its lease) and what failed the phase
    came after it (the approval expired or was rejected): then the phase's own reason.
    A phase that ended after this drain's last attempt left it (another drain completed
    or failed it) says so after that attempt's reason: the attempt's alone read as what
    ended the phase ("checks_failed" beside COMPLETE)."""
    if attempt.outcome in DECIDED_LATER and phase_state == "FAILED" and reason:
        return reason
    last = attempt.stop_reason
    if attempt.outcome != "COMPLETE" and attempt.detail:
        first = attempt.detail.strip().splitlines()[0]
        # The control plane's errors name the reason already ("lease_expired: worker ...").
        last = first if first.startswith(f"{last}:") else f"{last}: {first}"
    return f"{last}; {_ended_after(attempt, phase_state, reason)}".removesuffix("; ")


def _ended_after(attempt: AttemptResult, phase_state: str, reason: str | None) -> str:
    """How ``phase_state`` came after ``attempt``, or "" if the attempt itself ended the
    phase so (the state its result was answered with, or for a lost lease its outcome)."""
    left_it = attempt.phase_state or attempt.outcome
    if phase_state not in PHASE_TERMINAL or phase_state == left_it:
        return ""
    if phase_state == "COMPLETE":
        return "then done by another drain"
    return f"then {phase_state.lower()}" + (f": {reason}" if reason else "")


def _untouched(phase_id: str, phase_state: str, summary: DrainSummary, reason: str | None) -> str:
    """How a phase this drain made no attempt of came to be ``phase_state``: before it,
    by another drain, or SKIPPED meanwhile for ``reason`` (a blocker this drain failed, a
    cancel, a budget): "by another drain" there named a drain that never existed."""
    ended = "done" if phase_state == "COMPLETE" else phase_state.lower()
    if phase_id in summary.done_before | summary.failed_before:
        return f"{ended} before this drain"
    if phase_state == "SKIPPED" and reason:
        return f"{ended} meanwhile: {reason}"
    return f"{ended} by another drain meanwhile"


def report(
    summary: DrainSummary,
    run: RunView,
    as_json: bool,
    *,
    require_complete: bool = True,
    spend: Spend | None = None,
    database: str = "",
) -> int:
    """Print the outcome and return the exit code: 0 when every drained phase is COMPLETE
    (for a batch: when no phase failed), 1 otherwise, 128 + the signal when stopped.

    ``database``: the option naming the database (:meth:`CliState.database_flag`), put in
    every command the report suggests so that it works from any directory."""
    done = summary.all_complete if require_complete else not summary.any_failed
    ok = done and not summary.note
    code = 128 + summary.stopped_by if summary.stopped_by else 0 if ok else 1
    spend = spend or Spend()
    if as_json:
        print_json(
            {
                "run_id": summary.run_id,
                "run_state": summary.run_state,
                "phase_states": summary.phase_states,
                "done_before": sorted(summary.done_before),
                "failed_before": sorted(summary.failed_before),
                "attempts": [a.__dict__ for a in summary.attempts],
                "telemetry_written": summary.telemetry_written,
                "telemetry_failures": summary.telemetry_failures,
                "wall_seconds": summary.wall_seconds,
                "replayed_cost_usd": round(spend.replayed_usd, 6),
                "unpriced_calls": spend.unpriced_calls,
                "stopped_by": summary.stopped_by,
                "note": summary.note or None,
                "branch": summary.branch,
                "branch_head": summary.branch_head,
                "branch_waits": summary.branch_waits,
                "branch_past": summary.branch_past,
                "repository": summary.repository,
                "ok": ok,
            }
        )
        return code
    reasons = {p.phase_id: p.last_failure_reason for p in run.phases()}
    table = Table("phase", "state", "attempts", title=f"run {summary.run_id}: {summary.run_state}")
    table.add_column("last stop reason", overflow="fold")
    table.add_column("files")
    written = Tree("files written")
    for phase_id, phase_state in summary.phase_states.items():
        mine = [a for a in summary.attempts if a.phase_id == phase_id]
        files = sorted({f for a in mine for f in a.files_written})
        style = "green" if phase_state == "COMPLETE" else "red"
        if not mine and phase_state in PHASE_TERMINAL:  # nothing this drain did
            why = _untouched(phase_id, phase_state, summary, reasons.get(phase_id))
            table.add_row(escape(phase_id), f"[{style}]{phase_state}", "-", escape(why), "-")
            continue
        last = _last_reason(mine[-1], phase_state, reasons.get(phase_id)) if mine else ""
        table.add_row(
            escape(phase_id),
            f"[{style}]{phase_state}",
            str(len(mine)),
            escape(last),
            str(len(files)),
        )
        if files:
            branch = written.add(escape(phase_id))
            for path in files:
                branch.add(escape(path))
    out.print(table)
    if written.children:
        out.print(written)
    cost = f"cost ${run.cost_usd:.4f}"
    if spend.replayed_calls:
        cost += f" (replayed calls, not billed: ${spend.replayed_usd:.4f})"
    if run.unpriced_calls:  # the run's, as its cost is: this drain's alone hid earlier ones
        cost += (
            f" + {run.unpriced_calls} call(s) of models without a price: cost unknown, "
            "not counted (AUTOPACK_FREE_MODELS says a model is free, a price file in "
            "AUTOPACK_PRICE_TABLE prices it)"
        )
    out.print(
        f"{len(summary.attempts)} attempt(s) in {summary.wall_seconds:.1f}s · run tokens "
        f"{run.tokens_used} · {cost} · telemetry rows written "
        f"{summary.telemetry_written}, failed {summary.telemetry_failures}",
        highlight=False,
    )
    if summary.branch_head and summary.branch_waits:
        err.print(
            f"[yellow]the branch {escape(summary.branch)} waits[/yellow] behind the run's "
            f"accepted head {summary.branch_head[:12]}: {escape(summary.branch_waits)} (the "
            "accepted commits are kept)",
            highlight=False,
            soft_wrap=True,
        )
    elif summary.branch_head and summary.branch_past:
        err.print(
            f"[yellow]the branch {escape(summary.branch)} is past[/yellow] the run's accepted "
            f"head {summary.branch_head[:12]}: it is at {summary.branch_past[:12]}, with "
            "commits the control plane never accepted (made outside Autopack: by hand, or by "
            "a check that killed its executor before Autopack could put the branch back); "
            f"they are left there. {escape(summary.branch_reset)} puts the branch at the "
            "accepted head; "
            f"`autopack run export {summary.run_id} DIR {escape(summary.repository_flag)}"
            f"{escape(database)}` "
            "writes "
            "the accepted code out.",
            highlight=False,
            soft_wrap=True,
        )
    elif summary.branch_head:
        out.print(
            f"the run's code: branch {summary.branch} at {summary.branch_head[:12]} in "
            f"{escape(summary.repository)} (`autopack run export {summary.run_id} DIR "
            f"{escape(summary.repository_flag)}{escape(database)}` writes it out)",
            highlight=False,
            soft_wrap=True,
        )
    tried = {a.phase_id for a in summary.attempts}
    left = sorted(
        p for p in summary.failed_before - tried if summary.phase_states.get(p) in PHASE_GAVE_UP
    )
    if left:
        err.print(
            f"{len(left)} phase(s) had failed before this drain, which does not retry them: "
            f"`autopack run requeue {summary.run_id} {left[0]}{escape(database)}` queues one "
            f"again (or `autopack drain phase --run-id {summary.run_id} --phase-id {left[0]} "
            f"--force{escape(database)}`); `autopack run phase {summary.run_id} {left[0]}"
            f"{escape(database)}` shows why it failed",
            highlight=False,
            soft_wrap=True,
        )
    if summary.telemetry_failures:
        err.print(
            f"[red]{summary.telemetry_failures} telemetry write(s) failed[/red]: see the "
            "telemetry_write_failed warnings above"
        )
    if summary.note:
        err.print(f"[red]✘[/red] {escape(summary.note)}", highlight=False)
    return code
