"""``autopack telemetry report|calibrate``: what the LLM calls cost, and how good the budgets are.

Both read through the control plane's client, like every other command. ``calibrate`` only
*proposes* new estimator coefficients: it prints held-out before/after numbers and a diff,
and writes the file only with ``--write``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from autopack.cli._common import OK, out, print_json, state
from autopack.client import ApiClient
from autopack.estimation.calibrate import calibrate, render_calibration
from autopack.estimation.estimator import TokenEstimator
from autopack.estimation.report import render
from autopack.llm.pricing import price_table
from autopack.telemetry.events import UsageSummaryRow

app = typer.Typer(help="Report and calibrate from recorded telemetry.", no_args_is_help=True)

RUN = typer.Option(None, "--run", help="Only this run's events.")
JSON = typer.Option(False, "--json", help="Print JSON for scripts.")


def usage_table(usage: list[UsageSummaryRow]) -> Table:
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
        unpriced = row.calls - row.priced_calls
        cost = "" if row.cost_usd is None else f"{row.cost_usd:.4f}"
        if unpriced:
            cost += f" ({unpriced} unpriced)"
        table.add_row(
            row.run_id,
            row.provider,
            row.model,
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
    summary = client.telemetry_summary(run_id)
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
    out.print(render(report))


@app.command("report")
def report_cmd(ctx: typer.Context, run_id: str | None = RUN, as_json: bool = JSON) -> None:
    """Calls, tokens and cost by model/role/run; estimator accuracy per stratum."""
    print_report(state(ctx).client(), run_id, as_json=as_json)


@app.command("calibrate")
def calibrate_cmd(
    ctx: typer.Context,
    run_id: str | None = RUN,
    min_samples: int = typer.Option(
        5, "--min-samples", min=1, help="Events a coefficient needs before it moves."
    ),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds."),
    write: Path | None = typer.Option(
        None,
        "--write",
        help="Write the refitted coefficients here (without it nothing is written).",
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Write a predicted-vs-actual PNG."),
    as_json: bool = JSON,
) -> None:
    """Refit the estimator from successful events (truncated ones as lower bounds)."""
    cli = state(ctx)
    settings = cli.settings
    events = [event.model_dump() for event in cli.client().all_estimation_events(run_id)]
    prior = TokenEstimator.load(settings.autopack_estimator_file)
    models = {event["model"] for event in events}
    ceiling = max((price_table(settings).max_output_tokens(m) for m in models), default=128_000)
    result = calibrate(
        events, prior, min_samples=min_samples, folds=folds, model_max_output=ceiling
    )
    if as_json:
        print_json(result.to_json())
    else:
        out.print(render_calibration(result))
        out.print(result.diff() or "(no change to the coefficients)", highlight=False)
    if write is not None:
        result.write(write)
        out.print(f"{OK} wrote {write} (use it with AUTOPACK_ESTIMATOR_FILE={write})")
    if plot is not None:
        from autopack.estimation.plot import plot_predicted_vs_actual  # matplotlib: only here

        points = plot_predicted_vs_actual(events, plot)
        out.print(f"{OK} wrote {plot} ({points} points)")
