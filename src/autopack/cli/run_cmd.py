"""``autopack run``: create runs from files, list them, show one as a tree, cancel, requeue."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from autopack import redact
from autopack.cli._common import OK, err, open_named_repository, out, print_json, state
from autopack.cli.shown import escape
from autopack.clock import utcnow
from autopack.errors import ConfigError, Conflict, InvalidInput
from autopack.states import RunState

if TYPE_CHECKING:  # the contract and run-file models load when a command runs
    from autopack.contract import PhaseView, RunView

app = typer.Typer(help="Create, list, show, cancel runs; requeue phases.", no_args_is_help=True)

STATE_STYLE = {
    "QUEUED": "cyan",
    "RUNNING": "yellow",
    "EXECUTING": "yellow",
    "CI_RUNNING": "yellow",
    "AWAITING_APPROVAL": "magenta",
    "COMPLETE": "green",
    "DONE_SUCCESS": "green",
    "FAILED": "red",
    "SKIPPED": "dim",
    "DONE_CANCELLED": "dim",
}


STATE_HELP = "Only runs in this state: " + ", ".join(RunState) + "."


def styled(state_name: str) -> str:
    style = STATE_STYLE.get(state_name, "red" if state_name.startswith("DONE_FAILED") else "")
    return f"[{style}]{state_name}[/{style}]" if style else state_name


def operator() -> str:
    """Who is at the keyboard, for requeue/approval records (no environment read)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):  # Windows, or no passwd entry (containers)
        return "cli"


def attempts_text(phase: PhaseView) -> str:
    """``attempts 2, 3 left``: the counter holds requeues and attempts that spent no retry
    (interrupted, lost), so "2/3" read as one retry left when three were."""
    return f"attempts {phase.attempts}, {phase.attempts_left} left"


@app.command("create")
def create(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="Run definition (.yaml, .yml or .json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the created run as JSON."),
) -> None:
    """Create a run from a definition file (exit 2 naming the field if it is invalid, or if
    the run already exists). Creates the database if there is none yet, and says so."""
    from autopack.runfile import load_run_file

    with _working(err, f"reading run file {file}", Path(file)):
        definition = load_run_file(Path(file))
    cli = state(ctx)
    cli.expected(create=True)
    client = cli.client()
    try:
        with _working(err, f"creating run {definition.run_id}", Path(file)):
            run = client.create_run(definition)
    except Conflict as exc:
        run_id = definition.run_id
        if "branch" in exc.details:  # another active run's branch, not this run's id
            raise InvalidInput(f"{exc.message}: change `branch` in {file}", **exc.details) from exc
        raise InvalidInput(
            f"{exc.message}: a run id names one run. To run this definition as a new run, "
            f"change run_id in {file}; to run phases of the existing one again, "
            f"`autopack run requeue {run_id} PHASE`; to see it, `autopack run show {run_id}`.",
            run_id=run_id,
        ) from exc
    if as_json:
        print_json(run)
        return
    out.print(
        f"{OK} created run [bold]{escape(run.run_id)}[/bold]: {len(run.tiers)} tier(s), "
        f"{run.phase_count} phase(s), {styled(run.state)} in {escape(client.where)}"
    )
    if run.repository is not None:  # a relative path in the file: next to the file
        shown = redact.text(run.repository)  # a URL's password stays off the screen
        out.print(f"  repository {escape(shown)}", highlight=False, soft_wrap=True)


LARGE_RUN_FILE_BYTES = 1024 * 1024
"""A run file above this size takes seconds to read and to create (a 7 MB file of 40,000
phases: about ten each), which a spinner then shows, so the command does not look hung."""


def _working(console: Console, doing: str, file: Path) -> AbstractContextManager[object]:
    """A spinner saying what a large run file is waiting on (on a terminal only)."""
    try:
        large = file.stat().st_size > LARGE_RUN_FILE_BYTES
    except OSError:  # unreadable, or a pipe: reading it says why, or it is not large
        large = False
    return console.status(f"{doing}…") if large else nullcontext()


@app.command("seed")
def seed(
    ctx: typer.Context,
    name: str = typer.Argument(
        "telemetry-collection-v4", help="A run definition bundled with Autopack."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run as JSON."),
) -> None:
    """Create a bundled run in the database DATABASE_URL resolves to (fully initialised);
    if it already exists, say so and exit 0."""
    from autopack.runfile import bundled_run_file, load_run_file

    cli = state(ctx)
    cli.expected(create=True)
    connection = cli.connection()
    client = connection.client
    definition = load_run_file(bundled_run_file(name))
    where = connection.database.describe()
    try:
        run = client.create_run(definition)
    except Conflict:
        run = client.get_run(definition.run_id)
        if as_json:
            print_json(run)
            return
        out.print(
            f"{OK} run [bold]{escape(run.run_id)}[/bold] already exists in {escape(where)} "
            f"(state {styled(run.state)}); nothing to do"
        )
        return
    if as_json:
        print_json(run)
        return
    out.print(f"{OK} created run [bold]{escape(run.run_id)}[/bold] in {escape(where)}")
    out.print(run_tree(run))


@app.command("list")
def list_(
    ctx: typer.Context,
    state_filter: RunState | None = typer.Option(
        None,
        "--state",
        metavar="STATE",
        help=STATE_HELP,
    ),
    limit: int = typer.Option(50, help="Page size (1..1000)."),
    offset: int = typer.Option(0, help="Runs to skip."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Runs, newest first, with phase counts per state."""
    page = state(ctx).client().list_runs(state_filter, limit, offset)
    if as_json:
        print_json(page)
        return
    table = Table("run", "state", "phases", "tokens", "cost", "created")
    for run in page.items:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(run.counts.items()))
        table.add_row(
            escape(run.run_id),
            styled(run.state),
            counts or "-",
            str(run.tokens_used),
            run.cost(),
            f"{run.created_at:%Y-%m-%d %H:%M:%S}",
        )
    out.print(table)
    out.print(f"{len(page.items)} of {page.total} run(s)", highlight=False)


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    as_json: bool = typer.Option(False, "--json", help="Print the RunView as JSON."),
) -> None:
    """The run as a tree of tiers and phases with their states."""
    run = state(ctx).client().get_run(run_id)
    if as_json:
        print_json(run)
        return
    out.print(run_tree(run))


def _where_branch(run: RunView) -> str:
    """Where the run's branch lives: no other active run may work on it in either (a
    URL's password, which a run's ``repository`` may hold for the executors, redacted)."""
    from autopack.rundef import default_branch

    said = f"branch {run.branch or default_branch(run.run_id)}"
    if run.repository:
        said += f" of {run.repository}"
    if run.drained_in:
        said += f", last drained in {run.drained_in}"
    return redact.text(said)


def run_tree(run: RunView) -> Tree:
    cap, cost_cap = run.budgets.token_cap, run.budgets.cost_cap_usd
    header = (
        f"[bold]{escape(run.run_id)}[/bold] {styled(run.state)}  "
        f"tokens {run.tokens_used}{f'/{cap}' if cap else ''}  "
        f"cost {run.cost()}{f' of ${cost_cap:.2f}' if cost_cap else ''}"
    )
    if run.repository or run.drained_in:
        header += f"\n[dim]{escape(_where_branch(run))}[/dim]"
    if run.failure_reason:
        header += f"\n[red]{escape(run.failure_reason)}[/red]"
    if run.goal:
        header += f"\n[dim]{escape(run.goal)}[/dim]"
    tree = Tree(header)
    for tier in run.tiers:
        branch = tree.add(
            f"[bold]{escape(tier.tier_id)}[/bold] {escape(tier.name)} {styled(tier.state)}"
        )
        for phase in tier.phases:
            line = (
                f"{escape(phase.phase_id)} {styled(phase.state)} "
                f"[dim]{phase.task_category}/{phase.complexity} "
                f"{attempts_text(phase)}[/dim]"
            )
            if phase.depends_on:
                line += f" [dim]after {escape(', '.join(phase.depends_on))}[/dim]"
            if phase.lease_owner:
                line += f" [yellow]held by {escape(phase.lease_owner)}[/yellow]"
                expires = phase.lease_expires_at
                if expires is not None and (ago := (utcnow() - expires).total_seconds()) > 0:
                    # A killed executor's phase: "held by" alone said its holder worked on.
                    line += (
                        f" [red]whose lease expired {ago:.0f}s ago[/red] [dim](reclaimed "
                        "by the next claim or the API server's maintenance)[/dim]"
                    )
            if phase.last_failure_reason and phase.state != "COMPLETE":
                line += f"\n[red]{escape(phase.last_failure_reason)}[/red]"
            branch.add(line)
    return tree


@app.command("phase")
def phase(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    phase_id: str = typer.Argument(..., help="Phase id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """One phase with every attempt (outcome, stop reason, checks, audit, files, error) and
    its approvals."""
    from autopack.cli.attempts_view import attempt_lines

    detail = state(ctx).client().get_phase(run_id, phase_id)
    if as_json:
        print_json(detail)
        return
    out.print(
        f"[bold]{escape(run_id)}/{escape(phase_id)}[/bold] {styled(detail.state)} "
        f"{attempts_text(detail)}"
    )
    table = Table("#", "worker", "outcome")
    table.add_column("stop reason", overflow="fold")
    table.add_column("tokens")
    table.add_column("commit")
    table.add_column("files / error", overflow="fold")  # wrapped, never cut
    for attempt in detail.history:
        info = ", ".join(attempt.files_written) or (attempt.error or "").split("\n")[0]
        table.add_row(
            str(attempt.attempt),
            escape(attempt.worker_id or "-"),
            styled(attempt.outcome),
            escape(attempt.stop_reason or "-"),
            str(attempt.tokens_used),
            (attempt.commit_sha or "-")[:12],
            escape(info),
        )
    out.print(table)
    for attempt in detail.history:
        for line in attempt_lines(attempt):
            out.print(line, highlight=False)
    for approval in detail.approvals:
        out.print(
            f"approval {approval.id} ({approval.status}): {escape(approval.reason)}",
            highlight=False,
        )


@app.command("export")
def export(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    directory: Path = typer.Argument(..., help="Where to write the files (new or empty)."),
    workspace: Path | None = typer.Option(
        None, "--workspace", help="The run's local repository (as given to drain)."
    ),
    repo: str | None = typer.Option(None, "--repo", help="The run's remote repository URL."),
) -> None:
    """Write the run's code (the head of its branch) into DIRECTORY."""
    from autopack.executor.repository import run_branch
    from autopack.executor.source import RepoSource
    from autopack.paths import absolute

    cli = state(ctx)
    run = cli.client().get_run(run_id)
    if run.branch_head is None:
        raise ConfigError(f"run {run_id} has no completed phase yet: its branch holds no work")
    branch = run.branch or run_branch(run_id)
    source = RepoSource.choose(
        run_id, repo=repo, workspace=workspace, run_repository=run.repository
    )
    repository = open_named_repository(  # checked: advance() below moves the branch
        cli.client(), run, source, cache_dir=cli.settings.autopack_cache_dir, create=False
    )
    repository.advance(run.branch_head)  # accepted commits a killed executor left behind
    count = repository.export(run.branch_head, absolute(directory, "export directory"))
    out.print(
        f"{OK} wrote {count} file(s) of run {escape(run_id)} to {escape(str(directory))} "
        f"(branch {escape(branch)} at {run.branch_head[:12]} in {escape(repository.where)})",
        highlight=False,
    )


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    reason: str | None = typer.Option(None, help="Recorded as the run's failure reason."),
) -> None:
    """Cancel a run: waiting phases SKIPPED, executing workers lose their leases."""
    from autopack.contract import CancelIn

    run = state(ctx).client().cancel_run(run_id, CancelIn(reason=reason))
    out.print(f"{OK} run {escape(run_id)} is {styled(run.state)}")


@app.command("requeue")
def requeue(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    phase_id: str = typer.Argument(..., help="Phase id."),
    reason: str | None = typer.Option(None, help="Why (recorded with the attempt)."),
    complete: bool = typer.Option(
        False, "--complete", help="Also a COMPLETE phase: it runs again, its run reopens."
    ),
) -> None:
    """Requeue a FAILED, SKIPPED or stuck phase with a fresh retry window (with --complete,
    a COMPLETE one too)."""
    from autopack.contract import RequeueIn

    request = RequeueIn(requested_by=operator(), reason=reason, complete=complete)
    phase_view = state(ctx).client().requeue_phase(run_id, phase_id, request)
    out.print(
        f"{OK} {escape(run_id)}/{escape(phase_id)} is {styled(phase_view.state)} "
        f"({phase_view.attempts_left} attempts left)"
    )
