"""``autopack config show``: every setting, its value (secrets hidden) and where it came from."""

from __future__ import annotations

import typer
from rich.table import Table

from autopack.cli._common import out, print_json, state

app = typer.Typer(help="Inspect the resolved settings.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Print each setting with its value and source (flag, env, .env at <path>, default),
    and what a relative SQLite path was resolved against."""
    loaded = state(ctx).loaded()
    rows = loaded.rows()
    base = loaded.database.base
    if as_json:
        shown = [{"name": n, "value": v, "source": s} for n, v, s in rows]
        for row in shown:
            if row["name"] == "DATABASE_URL" and base is not None:
                row["resolved_against"] = str(base)
        print_json(shown)
        return
    table = Table("setting", "value", "source")
    for name, value, source in rows:
        table.add_row(name, value, source)
    out.print(table)
    out.print(f"DATABASE_URL is {loaded.database.describe()}.", highlight=False, soft_wrap=True)
