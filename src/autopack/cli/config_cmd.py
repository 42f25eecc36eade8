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
    """Print each setting with its value and source (flag, env, .env at <path>, default)."""
    rows = state(ctx).loaded().rows()
    if as_json:
        print_json([{"name": n, "value": v, "source": s} for n, v, s in rows])
        return
    table = Table("setting", "value", "source")
    for name, value, source in rows:
        table.add_row(name, value, source)
    out.print(table)
