"""``autopack db``: initialise, upgrade, check and identify the database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from autopack.cli._common import FAIL, OK, CliState, err, out, print_json, state
from autopack.errors import AutopackError, DatabaseMissing, SchemaOutOfDate

if TYPE_CHECKING:  # the database stack loads when a command runs, not for --help
    from sqlalchemy import Engine

app = typer.Typer(
    help="Initialise, upgrade, check and identify the database.", no_args_is_help=True
)


@app.command("init")
def init(ctx: typer.Context) -> None:
    """Create the database (a SQLite file if none exists), every table and its identity;
    safe to repeat."""
    _upgrade(ctx, verb="initialised", create=True)


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Migrate to the code's revision and re-create missing tables, keeping every row."""
    _upgrade(ctx, verb="upgraded", create=False)


def _engine(cli: CliState, *, create: bool = False) -> Engine:
    """A bare engine (schema commands work on partial schemas, which ``database()`` refuses);
    a missing SQLite file is the same exit 2 as everywhere else unless ``create``."""
    from autopack.db.engine import make_engine

    try:
        return make_engine(cli.settings.database_url, create=create)
    except DatabaseMissing as exc:
        raise cli.missing(exc) from exc


def _upgrade(ctx: typer.Context, verb: str, *, create: bool) -> None:
    from sqlalchemy.exc import DBAPIError

    from autopack.db import cannot_open, schema
    from autopack.db.engine import sqlite_file

    cli = state(ctx)
    path = sqlite_file(cli.settings.database_url)
    new = path is not None and not path.exists()
    engine = _engine(cli, create=create)
    try:
        status = schema.upgrade(engine)
    except DBAPIError as exc:
        raise cannot_open(cli.settings.database_url, exc) from exc
    finally:
        engine.dispose()
    if new:
        err.print(f"created new database {path}", highlight=False)
    identity = cli.database().identity
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
    from sqlalchemy.exc import DBAPIError

    from autopack.db import cannot_open, schema

    cli = state(ctx)
    engine = _engine(cli)
    try:
        status = schema.check(engine)
    except DBAPIError as exc:
        raise cannot_open(cli.settings.database_url, exc) from exc
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

    With an API server (--api-url, before or after the command, or AUTOPACK_API_URL): exit
    0 when it uses the same database, 2 when it does not.
    """
    raise typer.Exit(show_identity(ctx, as_json=as_json, api_url=api_url))


def show_identity(ctx: typer.Context, *, as_json: bool, api_url: str | None) -> int:
    """Print the identity report (shared with ``scripts/db_identity_check.py``)."""
    from autopack.client import ApiClient
    from autopack.db.identity import row_counts

    cli = state(ctx)
    database = cli.database()
    # the server however it is named (``--api-url`` before the command, AUTOPACK_API_URL):
    # only the option after it was checked, and the rest said nothing beside another database
    api_url = api_url or cli.settings.autopack_api_url
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
        from rich.markup import escape

        from autopack import redact

        # AUTOPACK_API_URL (a .env line) may hold a password: --json redacted it, these not
        server = report["server"]
        if server["same_database"]:
            out.print(f"{OK} API server {escape(redact.text(api_url))} uses this database")
        else:
            err.print(f"{FAIL} {escape(redact.text(server['error']))}")
    return exit_code
