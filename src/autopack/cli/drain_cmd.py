"""``autopack drain phase|run``: the main job, on a server whose database is proven ours.

Both commands resolve settings (command flags beat the environment), open the database
(schema guard: exit 3), refuse what cannot work before any server starts or any phase is
claimed (an unknown run or phase; no credentials and a cassette with nothing for the
run: exit 2), get an API server through the identity handshake (mismatch: exit 2), and
drain with a progress display. Exit 0 when everything drained is COMPLETE, 1 when some
phase failed or could not run, 128 + the signal when stopped (130 for Ctrl-C, 143 for
SIGTERM), after handing back every lease it held and printing the summary.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from autopack.cli._common import CliState, err, open_named_repository, state
from autopack.cli.drain_report import report
from autopack.cli.progress import DrainProgress
from autopack.cli.shown import escape
from autopack.errors import ConfigError, InvalidInput, NotFound, ServerUnavailable
from autopack.states import PHASE_REQUEUEABLE, PHASE_TERMINAL, PhaseState

if TYPE_CHECKING:  # the executor stack loads when a drain starts, not for --help
    from autopack.builder.auditor import AuditMode
    from autopack.config import Settings
    from autopack.contract import PhaseView
    from autopack.executor.executor import AutonomousExecutor
    from autopack.executor.options import ExecutorOptions
    from autopack.llm.base import LLMProvider
    from autopack.llm.pricing import CapWarnings, PriceTable

app = typer.Typer(help="Drain queued phases with the LLM Builder.", no_args_is_help=True)


@dataclass(frozen=True)
class DrainFlags:
    """The executor flags both drain commands share."""

    workspace: Path | None
    repo: str | None
    lease_seconds: int
    auditor: AuditMode
    escalation_factor: float
    check_timeout: float
    approval_timeout: float | None
    phase_token_cap: int | None
    phase_cost_cap: float | None
    cassette: Path | None
    record: Path | None
    worker_id: str | None
    as_json: bool


def _setup(ctx: typer.Context, options: Mapping[str, Any]) -> tuple[CliState, DrainFlags]:
    """Settings and executor flags from a drain command's options (its ``locals()``).

    Both commands take the same options (Typer needs them spelled out per command); this
    reads them in one place, by the names of :class:`DrainFlags`' fields.
    """
    cli = state(ctx)
    if options["api_url"]:
        cli.api_url = options["api_url"]
    allowed = options["allow_check_prefix"]
    cli.use_flags(
        telemetry_db_enabled=options["telemetry"],
        autopack_replay_speed=options["replay_speed"],
        autopack_allow_check_prefix=";".join(allowed) if allowed else None,
    )
    values = {f.name: options[f.name] for f in fields(DrainFlags)}
    values["auditor"] = _audit_mode(values["auditor"])
    return cli, DrainFlags(**values)


def refuse_unknown(cli: CliState, run_id: str, phase_id: str | None = None) -> list[PhaseView]:
    """Exit 2 for a run (or phase) this database does not hold, asked of the in-process
    server: before a server is spawned or anything is claimed. The phases to drain, as
    they are now."""
    connection = cli.connection()
    client, where = connection.client, connection.database.location
    try:
        try:
            run = client.get_run(run_id)
        except NotFound as exc:
            raise InvalidInput(
                f"nothing to drain: {exc.message}. `autopack run list` shows the runs in "
                f"{where}; `autopack run create FILE` creates one.",
                run_id=run_id,
                phase_id=phase_id,
            ) from exc
        if phase_id is None:
            return run.phases()
        try:
            phase = client.get_phase(run_id, phase_id)
        except NotFound as exc:  # the run exists: its message lists the run's phases
            raise InvalidInput(
                f"nothing to drain: {exc.message}", run_id=run_id, phase_id=phase_id
            ) from exc
        reasons = run.blockers(phase) if phase.state == PhaseState.QUEUED else []
        if reasons:  # it was found after a server was spawned, and exit 1 said it failed
            raise InvalidInput(
                f"phase {phase_id} cannot run yet: {'; '.join(reasons)}. `autopack drain "
                f"run --run-id {run_id}` drains the run's phases in their order",
                run_id=run_id,
                phase_id=phase_id,
            )
        return [phase]
    finally:
        cli.release_connection()


def answering_provider(
    cli: CliState,
    run_id: str,
    *,
    cassette: Path | None = None,
    record: Path | None = None,
    idle: bool = False,
    announce: bool = True,
) -> LLMProvider:
    """The provider for the drain; exit 2 when it is a replay with nothing for this run
    (no credentials: every call would miss, fail the phase and waste its retries), unless
    the drain is ``idle`` (the run has no work left: a finished run's summary needs no LLM).
    ``announce``: see :func:`~autopack.llm.registry.make_provider`."""
    from autopack.llm.registry import ignored_base_url, make_provider, provider_name

    settings = cli.settings
    provider = make_provider(settings, cassette=cassette, record=record, announce=announce)
    if idle or provider_name(settings, cassette=cassette) != "replay":
        return provider
    from autopack.llm.replay import ReplayProvider  # loaded by make_provider already

    assert isinstance(provider, ReplayProvider)
    answers = provider.runs()
    if run_id in answers:
        return provider
    path = provider.path
    chosen = cassette or settings.autopack_replay_cassette
    why = (
        f"the replay cassette {path}"
        if chosen or settings.autopack_llm_provider == "replay"
        else f"no LLM credentials are set, so answers would come from the bundled replay "
        f"cassette ({path}), which"
    )
    has = ", ".join(answers) or "no run at all"
    raise ConfigError(
        f"run {run_id!r} cannot be drained: {why} has nothing for this run (it answers "
        f"{has}). Set ANTHROPIC_API_KEY, or OPENAI_API_KEY / OPENAI_BASE_URL (choose with "
        "AUTOPACK_LLM_PROVIDER), or pass --cassette FILE recorded for this run "
        f"(--record FILE records one against a live provider).{ignored_base_url(settings)}",
        run_id=run_id,
    )


def _idle(phases: list[PhaseView], force: bool) -> bool:
    """Whether a drain of ``phases`` has nothing to do, so calls no LLM: every phase has
    ended, and ``force`` requeues none (it requeues one that gave up, never a COMPLETE one)."""
    requeued = force and any(p.state in PHASE_REQUEUEABLE for p in phases)
    return all(p.state in PHASE_TERMINAL for p in phases) and not requeued


def _check_models(settings: Settings, options: ExecutorOptions) -> None:
    """Before anything is claimed: a model the ``OPENAI_BASE_URL`` server does not list is
    refused, a base URL with no model set is warned about (else the first call's "model
    not found" failed a phase, naming no setting)."""
    from autopack.llm.registry import check_served, model_hint

    called = {"AUTOPACK_BUILDER_MODEL": options.builder_model}
    if options.auditor == "llm":
        called["AUTOPACK_AUDITOR_MODEL"] = options.auditor_model
    try:
        unlisted = check_served(settings, called)
    except ConfigError as exc:  # doctor says the same, where "nothing claimed" means nothing
        raise ConfigError(f"{exc.message} (nothing was claimed)", **exc.details) from None
    if unlisted:
        err.print(f"[yellow]model not listed[/yellow]: {unlisted}", highlight=False)
    elif hint := model_hint(settings):
        err.print(f"[yellow]model not set[/yellow]: {hint}", highlight=False)


@contextmanager
def executor_for(
    cli: CliState,
    run_id: str,
    flags: DrainFlags,
    *,
    total_of: str | None = None,
    force: bool = False,
) -> Iterator[tuple[AutonomousExecutor, DrainProgress]]:
    """Everything an executor needs, opened in order and closed in reverse.

    ``total_of``: a phase id to show progress for one phase; None for the whole run.
    ``force``: that phase is requeued, so it is work even when it is FAILED or SKIPPED
    (not when COMPLETE: what this drain will call is warned about only when it has work).
    """
    settings = cli.settings
    expected = cli.expected()
    phases = refuse_unknown(cli, run_id, total_of)  # before the executor stack even loads

    from autopack.connect import connect, sigterm_unwinds
    from autopack.estimation.estimator import TokenEstimator
    from autopack.executor.check_policy import CheckPolicy
    from autopack.executor.executor import AutonomousExecutor
    from autopack.executor.integration import Integrator
    from autopack.executor.options import ExecutorOptions, Services
    from autopack.executor.source import RepoSource
    from autopack.executor.worktrees import Worktrees
    from autopack.llm.pricing import price_table
    from autopack.llm.registry import model_for
    from autopack.telemetry.otel import otel_instrumentation
    from autopack.telemetry.recorder import TelemetryRecorder

    options = ExecutorOptions(
        worker_id=flags.worker_id or f"{socket.gethostname()}-{os.getpid()}",
        builder_model=model_for(settings, "builder"),
        auditor_model=model_for(settings, "auditor"),
        lease_seconds=flags.lease_seconds,
        auditor=flags.auditor,
        escalation_factor=flags.escalation_factor,
        target_truncation=settings.autopack_target_truncation,
        check_timeout=flags.check_timeout,
        approval_timeout_seconds=flags.approval_timeout,
        phase_token_cap=flags.phase_token_cap,
        phase_cost_cap_usd=flags.phase_cost_cap,
        check_policy=CheckPolicy.parse(settings.autopack_allow_check_prefix),
        max_continuations=settings.autopack_max_continuations,
        continuation_token_cap=settings.autopack_continuation_token_cap,
        prompt_cache=settings.autopack_prompt_cache,
        poll_seconds=settings.autopack_poll_seconds,
        unreachable_seconds=settings.autopack_llm_unreachable_seconds,
    )
    answering = answering_provider(
        cli, run_id, cassette=flags.cassette, record=flags.record, idle=_idle(phases, force)
    )
    estimator = TokenEstimator.load(settings.autopack_estimator_file)
    with (
        sigterm_unwinds(),
        connect(settings, expected, own="process") as connection,
        otel_instrumentation(settings) as instrument,
        ExitStack() as stack,
    ):
        client = connection.client
        provider = instrument(answering)
        run = client.get_run(run_id)
        phases = run.phases()
        if total_of is not None:
            phases = [p for p in phases if p.phase_id == total_of]
        done = sum(p.state in PHASE_TERMINAL for p in phases)
        idle = _idle(phases, force)
        source = RepoSource.choose(
            run_id, repo=flags.repo, workspace=flags.workspace, run_repository=run.repository
        )
        repository = open_named_repository(
            client, run, source, cache_dir=settings.autopack_cache_dir
        )
        worktrees = Worktrees(
            repository,
            settings.autopack_cache_dir / "worktrees",
            keep_failed_minutes=settings.autopack_keep_failed_worktrees_minutes,
        )
        stack.callback(worktrees.close)
        warnings = _cap_warnings(options, run.budgets.cost_cap_usd, price_table(settings))
        _warn(None if idle else warnings.about(_called_models(options)))
        if not settings.telemetry_db_enabled and not idle:
            err.print(
                "[yellow]telemetry is off[/yellow] (TELEMETRY_DB_ENABLED is not set): no "
                "llm_usage_events or token_estimation_v2_events rows will be written. "
                "Use --telemetry or TELEMETRY_DB_ENABLED=1 to record them.",
                highlight=False,
            )
        if not idle and not flags.cassette:
            _check_models(settings, options)
        err.print(
            f"code: branch {repository.branch} in {escape(repository.where)} · "
            f"{escape(connection.where)} ({connection.origin}) · database "
            f"{escape(connection.database.location)} · instance "
            f"{connection.database.instance_id}",
            highlight=False,
        )
        if repository.found_before is not None:
            err.print(
                f"[yellow]branch {escape(repository.branch)} existed before this run[/yellow] (at "
                f"{repository.found_before[:12]}, not where a new branch starts): its phases "
                "build on the commits it holds. To start from HEAD instead, stop here, "
                "delete the branch (or give the run another `branch`) and drain again.",
                highlight=False,
            )
        with DrainProgress(
            err, total=len(phases) or 1, done=done, unpriced=warnings.about
        ) as progress:
            services = Services(
                client=client,
                repository=repository,
                worktrees=worktrees,
                integrator=Integrator(repository),
                provider=provider,
                estimator=estimator,
                prices=price_table(settings),
                telemetry=TelemetryRecorder(
                    client.post_telemetry, enabled=settings.telemetry_db_enabled
                ),
                options=options,
                events=progress,
            )
            try:
                yield AutonomousExecutor(services), progress
            except ServerUnavailable as exc:  # e.g. the API server was killed mid-drain
                raise ServerUnavailable(
                    f"{exc.message}. The drain stopped and nothing is lost: the phases it "
                    f"held are reclaimed when their leases expire (at most "
                    f"{flags.lease_seconds}s); run the same command again to go on.",
                    **exc.details,
                ) from exc


def _cap_warnings(
    options: ExecutorOptions, run_cap: float | None, table: PriceTable
) -> CapWarnings:
    """The drain's warnings about models without a price under its cost caps."""
    from autopack.llm.pricing import CapWarnings

    caps = [] if run_cap is None else [f"the run's cost_cap_usd ${run_cap:g}"]
    if options.phase_cost_cap_usd is not None:
        caps.append(f"--phase-cost-cap ${options.phase_cost_cap_usd:g}")
    return CapWarnings(table, caps)


def _called_models(options: ExecutorOptions) -> list[str]:
    """The models this drain's requests name."""
    return [options.builder_model] + ([options.auditor_model] if options.auditor == "llm" else [])


def _warn(warning: str | None) -> None:
    if warning is not None:
        from autopack.cli.shown import escape  # a model name may hold "[...]"

        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


def check_prefixes(values: list[str] | None) -> list[str] | None:
    """Refuse a prefix that names no command (``--allow-check-prefix ""``, an unset
    ``"$PREFIX"``) or holds the ``;`` that separates them: the list was dropped and every
    check ran, an allow-list failing open."""
    for value in values or []:
        if not value.strip() or ";" in value:
            why = "names no command" if not value.strip() else "holds ';', a shell operator"
            raise typer.BadParameter(f"{value!r} {why}: give a command such as 'python -m pytest'")
    return values


def finite(value: float | None) -> float | None:
    """Refuse ``inf`` (``min=`` already refuses ``nan``): an infinite timeout, cap or
    scale fails every attempt of the phase instead of the command."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value}: give a finite number")
    return value


# Options shared by both commands (Typer needs them spelled out per command).
WORKSPACE = typer.Option(
    None,
    "--workspace",
    help="The local git repository holding the run's branch (created when missing; default "
    "autopack-workspaces/RUN_ID at the root of the git repository you are in, else here; "
    "or the run file's repository).",
)
REPO = typer.Option(
    None,
    "--repo",
    help="A git remote (URL or path) holding the run's branch; cloned into a local cache, "
    "so executors on many machines share one branch.",
)
API_URL = typer.Option(None, "--api-url", help="Use this API server (after the identity check).")
FORCE = typer.Option(False, "--force", help="Requeue the phase first if FAILED, SKIPPED or stuck.")
TELEMETRY = typer.Option(
    None, "--telemetry/--no-telemetry", help="Record telemetry rows (beats TELEMETRY_DB_ENABLED)."
)
LEASE = typer.Option(
    60, "--lease-seconds", min=5, max=3600, help="Lease length; renewed every third of it."
)
AUDITOR = typer.Option("llm", "--auditor", help="Auditor mode: llm, rules or off.")
ESCALATION = typer.Option(
    1.5,
    "--escalation-factor",
    min=1.0,
    callback=finite,
    help="max_tokens multiplier for the retry after a truncated answer.",
)
CHECK_TIMEOUT = typer.Option(
    300.0, "--check-timeout", min=1.0, callback=finite, help="Seconds per check command."
)
APPROVAL_TIMEOUT = typer.Option(
    None,
    "--approval-timeout",
    min=1.0,
    callback=finite,
    help="Seconds an approval request waits for a human (default: the run's policy).",
)
PHASE_TOKENS = typer.Option(
    None, "--phase-token-cap", min=1, help="Stop a phase past this many tokens."
)
PHASE_COST = typer.Option(
    None, "--phase-cost-cap", min=0.0, callback=finite, help="Stop a phase past this cost (USD)."
)
CASSETTE = typer.Option(None, "--cassette", help="Answer from this replay cassette (JSONL).")
RECORD = typer.Option(
    None, "--record", help="Record the live provider's answers to this cassette file."
)
SPEED = typer.Option(
    None, "--replay-speed", min=0.0, callback=finite, help="Replay latency scale (0 = instant)."
)
WORKER = typer.Option(None, "--worker-id", help="Lease owner name (default host-pid).")
ALLOW_CHECKS = typer.Option(
    None,
    "--allow-check-prefix",
    callback=check_prefixes,
    help="Run only checks starting with this command (repeatable; shell operators are "
    "refused); a phase with any other check is handed back untried and the drain stops. "
    "Beats AUTOPACK_ALLOW_CHECK_PREFIX (';'-separated). Default: any check.",
)
JSON = typer.Option(False, "--json", help="Print the summary as JSON.")


@app.command("phase")
def drain_phase(
    ctx: typer.Context,
    run_id: str = typer.Option(..., "--run-id", help="Run holding the phase."),
    phase_id: str = typer.Option(..., "--phase-id", help="Phase to drain."),
    force: bool = FORCE,
    api_url: str | None = API_URL,
    workspace: Path | None = WORKSPACE,
    repo: str | None = REPO,
    telemetry: bool | None = TELEMETRY,
    lease_seconds: int = LEASE,
    auditor: str = AUDITOR,
    escalation_factor: float = ESCALATION,
    check_timeout: float = CHECK_TIMEOUT,
    approval_timeout: float | None = APPROVAL_TIMEOUT,
    phase_token_cap: int | None = PHASE_TOKENS,
    phase_cost_cap: float | None = PHASE_COST,
    cassette: Path | None = CASSETTE,
    record: Path | None = RECORD,
    replay_speed: float | None = SPEED,
    worker_id: str | None = WORKER,
    allow_check_prefix: list[str] | None = ALLOW_CHECKS,
    as_json: bool = JSON,
) -> None:
    """Drain one phase until it is COMPLETE or FAILED (retries included)."""
    cli, flags = _setup(ctx, locals())
    drainer = executor_for(cli, run_id, flags, total_of=phase_id, force=force)
    with drainer as (executor, progress):
        summary = executor.drain_phase(run_id, phase_id, force=force)
        summary.phase_states = {phase_id: summary.phase_states[phase_id]}
        run = executor.client.get_run(run_id)
    if force and phase_id in summary.done_before:  # a --force that did nothing, said once
        err.print(
            f"--force did not requeue {phase_id}: it is COMPLETE, and --force requeues only "
            "a FAILED, SKIPPED or stuck phase (nothing was run)",
            highlight=False,
        )
    database = cli.database_flag()
    raise typer.Exit(report(summary, run, as_json, spend=progress.spend, database=database))


@app.command("run")
def drain_run(
    ctx: typer.Context,
    run_id: str = typer.Option(..., "--run-id", help="Run to drain."),
    concurrency: int = typer.Option(
        1, "--concurrency", "-k", min=1, max=64, help="Phases in flight at once."
    ),
    max_claims: int | None = typer.Option(
        None, "--max-claims", min=1, help="Stop after this many attempts (a batch)."
    ),
    api_url: str | None = API_URL,
    workspace: Path | None = WORKSPACE,
    repo: str | None = REPO,
    telemetry: bool | None = TELEMETRY,
    lease_seconds: int = LEASE,
    auditor: str = AUDITOR,
    escalation_factor: float = ESCALATION,
    check_timeout: float = CHECK_TIMEOUT,
    approval_timeout: float | None = APPROVAL_TIMEOUT,
    phase_token_cap: int | None = PHASE_TOKENS,
    phase_cost_cap: float | None = PHASE_COST,
    cassette: Path | None = CASSETTE,
    record: Path | None = RECORD,
    replay_speed: float | None = SPEED,
    worker_id: str | None = WORKER,
    allow_check_prefix: list[str] | None = ALLOW_CHECKS,
    as_json: bool = JSON,
) -> None:
    """Drain every phase of a run, CONCURRENCY at a time."""
    cli, flags = _setup(ctx, locals())
    with executor_for(cli, run_id, flags) as (executor, progress):
        summary = executor.drain_run(run_id, concurrency=concurrency, max_claims=max_claims)
        run = executor.client.get_run(run_id)
    code = report(
        summary,
        run,
        as_json,
        require_complete=max_claims is None,
        spend=progress.spend,
        database=cli.database_flag(),
    )
    raise typer.Exit(code)


def _audit_mode(value: str) -> AuditMode:
    if value not in ("llm", "rules", "off"):
        raise typer.BadParameter(f"{value!r}: use llm, rules or off", param_hint="--auditor")
    return value  # type: ignore[return-value]
