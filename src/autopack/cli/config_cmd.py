"""``autopack config show``: every setting, its value (secrets hidden) and where it came from."""

from __future__ import annotations

import typer
from rich.table import Table

from autopack.cli._common import out, print_json, state
from autopack.cli.shown import escape

app = typer.Typer(help="Inspect the resolved settings.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Print each setting with its value and source (flag, env, .env at <path>, default),
    and what a relative SQLite path was resolved against."""
    cli = state(ctx)
    loaded = cli.loaded()
    rows = loaded.rows()
    base = loaded.database.base
    # A token-only machine's default names a file that does not exist: printing it as
    # "the" database would send the user looking for a file no command uses.
    served = (
        f"the one {loaded.settings.autopack_api_url} serves (`autopack doctor` names it)"
        if cli.names_no_database()
        else None
    )
    if as_json:
        shown: list[dict[str, str]] = [{"name": n, "value": v, "source": s} for n, v, s in rows]
        for row in shown:
            if row["name"] == "DATABASE_URL" and base is not None:
                row["resolved_against"] = str(base)
            if row["name"] == "DATABASE_URL" and served:
                row["used_instead"] = served
        print_json(shown)
        return
    table = Table("setting", "value", "source")
    for name, value, source in rows:  # values come from .env files and the environment:
        table.add_row(name, escape(value), escape(source))  # shown, never obeyed as markup
    out.print(table)
    if served:
        text = (
            f"DATABASE_URL names no database here ({loaded.database.describe()}, no such "
            f"file): commands use {served}."
        )
    else:
        text = f"DATABASE_URL is {loaded.database.describe()}."
    out.print(escape(text), highlight=False, soft_wrap=True)
