"""``autopack db``: initialise, upgrade, check and identify the database."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from autopack.cli._common import FAIL, OK, err, out, print_json, state
from autopack.client import ApiClient
from autopack.db import schema
from autopack.db.engine import make_engine
from autopack.db.identity import row_counts
from autopack.errors import AutopackError, SchemaOutOfDate

app = typer.Typer(
    help="Initialise, upgrade, check and identify the database.", no_args_is_help=True
)


@app.command("init")
def init(ctx: typer.Context) -> None:
    """Create every table (migrate to head) and the database's identity; safe to repeat."""
    _upgrade(ctx, verb="initialised")


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Migrate to the code's revision and re-create missing tables, keeping every row."""
    _upgrade(ctx, verb="upgraded")


def _upgrade(ctx: typer.Context, verb: str) -> None:
    settings = state(ctx).settings
    engine = make_engine(settings.database_url)
    try:
        status = schema.upgrade(engine)
    finally:
        engine.dispose()
    identity = state(ctx).database().identity
    out.print(
        f"{OK} {verb} {identity.url}: revision {status.db_revision}, "
        f"instance_id {identity.instance_id}"
    )


@app.command("check")
def check(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Compare the schema with the code (read-only). Exit 0 in sync, 3 otherwise."""
    settings = state(ctx).settings
    engine = make_engine(settings.database_url)
    try:
        status = schema.check(engine)
    finally:
        engine.dispose()
    if as_json:
        print_json(
            {
                "in_sync": status.in_sync,
                "db_revision": status.db_revision,
                "code_revision": status.code_revision,
                "missing_tables": status.missing_tables,
                "missing_columns": status.missing_columns,
                "problem": status.problem() or None,
            }
        )
    elif status.in_sync:
        out.print(f"{OK} schema at revision {status.db_revision} (matches the code)")
    else:
        err.print(f"{FAIL} {status.problem()}")
    if not status.in_sync:
        raise typer.Exit(SchemaOutOfDate.exit_code)


@app.command("identity")
def identity(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    api_url: str | None = typer.Option(
        None, "--api-url", help="Also check that this API server uses the same database."
    ),
) -> None:
    """Show which database this resolves to: backend, URL, instance_id, revisions, row counts.

    With --api-url: exit 0 when the server uses the same database, 2 when it does not.
    """
    raise typer.Exit(show_identity(ctx, as_json=as_json, api_url=api_url))


def show_identity(ctx: typer.Context, *, as_json: bool, api_url: str | None) -> int:
    """Print the identity report (shared with ``scripts/db_identity_check.py``)."""
    database = state(ctx).database()
    report: dict[str, Any] = database.identity.model_dump(exclude={"public_url"})
    report["row_counts"] = row_counts(database.engine)
    exit_code = 0
    if api_url:
        server: dict[str, Any] = {"api_url": api_url}
        try:
            with ApiClient(api_url) as client:
                health = client.verify_identity(database.identity)
                server["database"] = health.database.model_dump()
            server["same_database"] = True
        except AutopackError as exc:
            server.update(same_database=False, error=exc.message, **exc.details)
            exit_code = exc.exit_code
        report["server"] = server
    if as_json:
        print_json(report)
        return exit_code
    table = Table(show_header=False)
    for key in ("backend", "url", "instance_id", "fingerprint"):
        table.add_row(key, str(report[key]))
    table.add_row(
        "schema revision", f"{report['schema_revision']} (code: {report['code_revision']})"
    )
    for name, count in report["row_counts"].items():
        table.add_row(name, str(count))
    out.print(table)
    if api_url:
        server = report["server"]
        if server["same_database"]:
            out.print(f"{OK} API server {api_url} uses this database")
        else:
            err.print(f"{FAIL} {server['error']}")
    return exit_code
