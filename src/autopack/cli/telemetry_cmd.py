"""``autopack telemetry report|calibrate``: what the LLM calls cost, and how good the budgets are.

Both read through the control plane's client, like every other command. ``calibrate`` only
*proposes* new estimator coefficients: it prints held-out before/after numbers and a diff,
and writes the file only with ``--write``. Replayed calls (provider ``replay``) show the
cost they would have had as "replayed", never as spending, and ``calibrate`` leaves their
estimation events out unless ``--include-replayed``: a cassette's token counts say what a
model once wrote, not what this estimator should learn from now.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from autopack.cli._common import OK, err, out, print_json, state
from autopack.cli.shown import escape
from autopack.errors import ConfigError

if TYPE_CHECKING:  # the client and estimation stacks load when a command runs
    from rich.status import Status

    from autopack.client import ApiClient
    from autopack.estimation.calibrate import CalibrationResult
    from autopack.telemetry.events import TokenEstimationRow, UsageSummaryRow

app = typer.Typer(help="Report and calibrate from recorded telemetry.", no_args_is_help=True)

RUN = typer.Option(None, "--run", help="Only this run's events.")
JSON = typer.Option(False, "--json", help="Print JSON for scripts.")
SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_JOURNALS = ("-wal", "-shm", "-journal")


def usage_table(usage: list[UsageSummaryRow]) -> Table:
    """The calls per (run, provider, model, role). Provider and model are text a worker
    posted: a model called ``[/]`` ended ``telemetry report`` with a MarkupError traceback,
    one called ``[bold]x[/]`` was shown as ``x``, and control characters reached the
    terminal; escaped as every other table's outside text is."""
    table = Table(
        "run",
        "provider",
        "model",
        "role",
        "calls",
        "failed",
        "input tok",
        "output tok",
        "cost USD",
        title="LLM calls",
    )
    for row in usage:
        unpriced = row.unpriced_calls
        cost = "" if row.cost_usd is None else f"{row.cost_usd:.4f}"
        if row.replayed and cost:
            cost += " replayed"
        if unpriced:
            cost += f" ({unpriced} unpriced)"
        table.add_row(
            escape(row.run_id),
            escape(row.provider),
            escape(row.model),
            row.role,
            str(row.calls),
            str(row.failed_calls),
            str(row.input_tokens),
            str(row.output_tokens),
            cost,
        )
    return table


def print_report(client: ApiClient, run_id: str | None, *, as_json: bool = False) -> None:
    """Usage by run/model/role and the estimator's accuracy per stratum."""
    from autopack.estimation.render import render_report

    if run_id is not None:  # a mistyped id: "not found in database …", not "no telemetry"
        client.get_run(run_id)
    with err.status("summing the recorded calls and scoring the estimator…"):
        summary = client.telemetry_summary(run_id)  # seconds for tens of thousands of rows
    if as_json:
        print_json(summary)
        return
    report = summary.estimation
    if not summary.usage and not report.overall.n:
        where = f"run {run_id}" if run_id else "this database"
        out.print(
            f"no telemetry recorded for {where} ({client.where}); drain with "
            "--telemetry or TELEMETRY_DB_ENABLED=1"
        )
        return
    out.print(usage_table(summary.usage))
    billed = sum(row.cost_usd or 0.0 for row in summary.usage if not row.replayed)
    replayed = sum(row.cost_usd or 0.0 for row in summary.usage if row.replayed)
    unpriced = sum(row.unpriced_calls for row in summary.usage if not row.replayed)
    line = f"billed cost ${billed:.4f}"
    if unpriced:
        line += f" + {unpriced} call(s) of models without a price: cost unknown, not counted"
    if any(row.replayed for row in summary.usage):
        line += f"; replayed calls (not billed) would have cost ${replayed:.4f}"
    out.print(line, highlight=False)
    out.print(render_report(report))


def replayed_attempts(
    client: ApiClient, run_id: str | None, read: Callable[[int], object] = lambda _: None
) -> set[tuple[str, str, int]]:
    """(run, phase, attempt) of every Builder call answered from a cassette; ``read`` is
    told how many usage events were read so far."""
    from autopack.telemetry.events import REPLAY_PROVIDER

    found: set[tuple[str, str, int]] = set()
    last, seen = 0, 0
    while page := client.usage_events(run_id, limit=1000, after_id=last):
        for event in page:
            if event.provider == REPLAY_PROVIDER and event.role == "builder" and event.phase_id:
                found.add((event.run_id, event.phase_id, event.attempt or 0))
        last, seen = page[-1].id, seen + len(page)
        read(seen)
    return found


def _say(status: Status, text: str) -> None:
    """Show ``text`` now (a new spinner is drawn at once; a new text waits for the next
    tick, and a step shorter than a tick was never seen)."""
    status.update(text, spinner="dots")


def live_events(
    client: ApiClient, run_id: str | None, *, include_replayed: bool, status: Status
) -> tuple[list[TokenEstimationRow], int]:
    """Estimation events to calibrate on, and how many replayed ones were left out;
    ``status`` says how far the reading is (tens of thousands of rows take seconds)."""
    events = client.all_estimation_events(
        run_id, lambda n: _say(status, f"reading estimation events… {n:,}")
    )
    if include_replayed:
        return events, 0
    replayed = replayed_attempts(
        client, run_id, lambda n: _say(status, f"finding replayed calls… {n:,} usage events")
    )
    kept = [e for e in events if (e.run_id, e.phase_id, e.attempt) not in replayed]
    return kept, len(events) - len(kept)


def wrote_line(result: CalibrationResult, path: Path) -> str:
    """What ``--write`` did, in words that agree with the verdict and the diff above it:
    ``--write`` writes whatever the verdict (the user decides), but "(no change)" followed
    by a bare "wrote FILE" read as if a new estimator had been written, and a ``wait`` or
    ``keep`` verdict followed by it as if the recommendation had been followed."""
    where = path.absolute()  # the hint must name this file from any directory
    use = f"use it with AUTOPACK_ESTIMATOR_FILE={where}"
    action = result.verdict.action
    if not result.changed:
        return (
            f"wrote {path}: the current estimator unchanged (the fit changed nothing; "
            f"verdict {action}); {use}"
        )
    if action != "write":
        return (
            f"wrote {path} because --write was given, although the verdict is {action} "
            f"(the new estimator is not recommended); {use} only if you want it anyway"
        )
    return f"wrote {path} (verdict write: recommended); {use}"


def refuse_plot_over_estimator(plot: Path, write: Path | None, current: Path | None) -> None:
    """``--plot`` naming the estimator file in use or ``--write``'s path replaced that
    estimator with a PNG (the next drain then refused to start), and one naming no image
    format, or a path no file can be written at, failed after ``--write`` had written: all
    refused before anything is fitted or written."""
    from autopack.estimation.plot import image_format  # matplotlib: only with --plot
    from autopack.paths import absolute, not_a_file

    target = absolute(plot, "--plot")
    problem = not_a_file(target)  # a directory, a FIFO, a file in place of its directory
    if problem is None and not target.parent.is_dir():  # the plot makes no directory
        problem = f"is in {target.parent}, which does not exist"
    if problem is not None:
        raise ConfigError(f"--plot {plot} {problem}: name an image file (nothing written)")
    for name, other in (("--write", write), ("AUTOPACK_ESTIMATOR_FILE", current)):
        if other is not None and absolute(Path(other), name) == target:
            raise ConfigError(
                f"--plot {plot} is the same file as {name} ({other}): the plot would "
                "replace that estimator file; give the plot another name"
            )
    image_format(plot)


def refuse_writing_over_a_database(path: Path, flag: str, database_url: str) -> None:
    """``--write autopack.db`` replaced the SQLite database the command had
    just read, every run and row, with the estimator, exit 0; its ``-wal`` lost the
    commits not yet checkpointed. Refused before anything is fitted or written: the
    database in use and its journals, and any file holding a SQLite database."""
    from autopack.db.engine import sqlite_file
    from autopack.paths import absolute

    target = absolute(path, flag)
    in_use = sqlite_file(database_url)
    if in_use is not None:
        real = absolute(in_use, "the database")
        if target in {real, *(real.with_name(real.name + end) for end in SQLITE_JOURNALS)}:
            raise ConfigError(
                f"{flag} {path} is the database in use or its journal ({in_use}): writing "
                f"would replace it; give {flag} another file (nothing written)"
            )
    try:
        found = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait
    except OSError:
        return  # none yet, unreadable: said when written
    try:
        regular = stat.S_ISREG(os.fstat(found).st_mode)
        head = os.read(found, len(SQLITE_HEADER)) if regular else b""
    except OSError:
        head = b""
    finally:
        os.close(found)
    if head == SQLITE_HEADER:
        raise ConfigError(
            f"{flag} {path} holds a SQLite database: writing would replace it; give {flag} "
            "another file (nothing written)"
        )


def refuse_replacing_with_nothing_new(result: CalibrationResult, path: Path) -> None:
    """With nothing fitted (too few phases) ``--write`` writes the current estimator back:
    over a file holding *another* estimator (an earlier calibration, while
    AUTOPACK_ESTIMATOR_FILE still named the packaged default) that replaced it with the
    default, and the line said "the current estimator unchanged". Refused, nothing written."""
    from autopack.estimation.estimator import TokenEstimator

    if result.changed or not path.is_file():
        return
    try:
        there = TokenEstimator.load(path)
    except ConfigError:  # not an estimator file: --write replaces it as asked
        return
    if there.to_json() != result.prior.to_json():
        raise ConfigError(
            f"--write {path} holds estimator {there.version}, not the current one "
            f"({result.prior.version}), and the fit changed nothing ({result.n_phases} usable "
            f"phases): writing would replace it with {result.prior.version}; nothing written"
        )


@app.command("report")
def report_cmd(ctx: typer.Context, run_id: str | None = RUN, as_json: bool = JSON) -> None:
    """Calls, tokens and cost by model/role/run; estimator accuracy per stratum."""
    print_report(state(ctx).client(), run_id, as_json=as_json)


@app.command("calibrate")
def calibrate_cmd(
    ctx: typer.Context,
    run_id: str | None = RUN,
    holdout: float = typer.Option(
        0.2, "--holdout", min=0.05, max=0.5, help="Share of the latest phases judged, not fitted."
    ),
    target_truncation: float | None = typer.Option(
        None,
        "--target-truncation",
        min=0.001,
        max=0.2,
        help="Truncation rate the budgets aim at (default: the estimator's, else 0.02).",
    ),
    margin_sd: float = typer.Option(
        0.5,
        "--margin-sd",
        min=0.0,
        max=5.0,  # what an estimator file may hold (predictive.MARGIN_SD_MAX)
        help="Standard errors added to the budget quantile.",
    ),
    min_phases: int = typer.Option(
        10, "--min-phases", min=1, help="Phases a stratum needs before it is fitted on its own."
    ),
    min_model_phases: int = typer.Option(
        50, "--min-model-phases", min=1, help="Phases a model needs for a fit of its own."
    ),
    min_holdout_phases: int = typer.Option(
        20, "--min-holdout-phases", min=1, help="Held-out phases needed for a verdict."
    ),
    flag_sd: float = typer.Option(
        3.0,
        "--flag-sd",
        min=0.0,
        max=1000.0,  # inf was taken, and --json then printed "flag_sd": Infinity (not JSON)
        help="Report moves beyond this many prior standard deviations.",
    ),
    write: Path | None = typer.Option(
        None,
        "--write",
        help="Write the new estimator file here (without it nothing is written).",
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write the fit as an image (PNG; SVG or PDF by the suffix)."
    ),
    include_replayed: bool = typer.Option(
        False, "--include-replayed", help="Also learn from calls answered by a replay cassette."
    ),
    as_json: bool = JSON,
) -> None:
    """Refit the estimator on the recorded phases (truncated ones as lower bounds), judge it
    on the latest ones against the current estimator, and say whether to write it.

    Replayed calls are left out unless --include-replayed. Exit 0 whatever the verdict;
    nothing is written without --write.
    """
    from autopack.estimation.calibrate import DEFAULT_MODEL_MAX_OUTPUT, calibrate
    from autopack.estimation.estimator import TokenEstimator
    from autopack.estimation.render import render_calibration, render_diff
    from autopack.llm.pricing import price_table
    from autopack.paths import absolute

    cli = state(ctx)
    settings = cli.settings
    if write is not None:
        absolute(write, "--write")  # a path no file can have: exit 2 naming it, up front
        refuse_writing_over_a_database(write, "--write", settings.database_url)
    if plot is not None:
        refuse_plot_over_estimator(plot, write, settings.autopack_estimator_file)
    client = cli.client()
    # On a terminal a spinner says which step tens of thousands of rows are at (27,000
    # took 23 s with nothing on the screen); elsewhere it draws nothing.
    with err.status("reading estimation events…") as status:
        kept, left_out = live_events(
            client, run_id, include_replayed=include_replayed, status=status
        )
        if run_id is not None and not kept and not left_out:
            client.get_run(run_id)  # a mistyped id: "not found in database …", not "0 phases"
        events = [event.model_dump() for event in kept]
        prior = TokenEstimator.load(settings.autopack_estimator_file)
        prices = price_table(settings)
        limits = {event["model"]: prices.max_output_tokens(event["model"]) for event in events}
        _say(status, f"fitting on {len(events):,} estimation events and judging the latest…")
        result = calibrate(
            events,
            prior,
            holdout=holdout,
            target_truncation=target_truncation,
            margin_sd=margin_sd,
            min_phases=min_phases,
            min_model_phases=min_model_phases,
            min_holdout_phases=min_holdout_phases,
            flag_sd=flag_sd,
            model_max_output=limits or DEFAULT_MODEL_MAX_OUTPUT,
        )
    if left_out:
        err.print(
            f"left out {left_out} replayed estimation event(s) (answered from a cassette; "
            "--include-replayed uses them)",
            highlight=False,
        )
    if as_json:
        print_json(result.to_json())
    else:
        out.print(render_calibration(result))
        out.print(render_diff(result))
    said = err if as_json else out  # --json: stdout holds the JSON document alone
    if write is not None:
        refuse_replacing_with_nothing_new(result, write)
        result.write(write)
        said.print(f"{OK} {wrote_line(result, write)}", highlight=False)
    else:  # the diff above ended the output: a new user did not know how to use it
        said.print(
            "nothing written: `--write FILE` writes this estimator, and "
            "AUTOPACK_ESTIMATOR_FILE=FILE makes drains use it",
            highlight=False,
        )
    if plot is not None:
        from autopack.estimation.plot import plot_predicted_vs_actual  # matplotlib: only here

        try:
            with err.status(f"drawing {plot}…"):
                points = plot_predicted_vs_actual(
                    events,
                    plot,
                    old=prior,
                    new=result.fitted,
                    model_max_output=limits or DEFAULT_MODEL_MAX_OUTPUT,
                )
        except OSError as exc:
            raise ConfigError(f"cannot write --plot {plot}: {exc.strerror or exc}") from None
        said.print(f"{OK} wrote {plot} ({points} points)")
