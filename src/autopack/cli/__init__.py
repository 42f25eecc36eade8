"""The ``autopack`` command line (Typer + Rich).

Every command resolves settings through the root flags and :mod:`autopack.config`, and
every deliberate error leaves with its own exit code: 2 config/identity, 3 schema.
"""

from __future__ import annotations

import sys

import typer

from autopack import __version__, redact
from autopack.cli import approvals_cmd, config_cmd, db_cmd, drain_cmd, run_cmd, telemetry_cmd
from autopack.cli._common import FAIL, err, state
from autopack.cli.demo import demo
from autopack.cli.doctor import doctor
from autopack.cli.probe_cmd import probe
from autopack.cli.serve_cmd import serve
from autopack.errors import AutopackError

app = typer.Typer(
    name="autopack",
    help="Run autonomous LLM coding work reliably, on one database every part agrees on.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(db_cmd.app, name="db")
app.add_typer(run_cmd.app, name="run")
app.add_typer(approvals_cmd.app, name="approvals")
app.add_typer(drain_cmd.app, name="drain")
app.add_typer(telemetry_cmd.app, name="telemetry")
app.command("serve")(serve)
app.command("doctor")(doctor)
app.command("demo")(demo)
app.command("probe")(probe)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autopack {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    database_url: str | None = typer.Option(
        None, "--database-url", help="Database to use (beats DATABASE_URL and .env)."
    ),
    api_url: str | None = typer.Option(
        None, "--api-url", help="API server to attach to (beats AUTOPACK_API_URL)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
    allow_check_prefix: list[str] | None = typer.Option(
        None,
        "--allow-check-prefix",
        help="Executors run only checks starting with one of these (repeatable; beats "
        "AUTOPACK_ALLOW_CHECK_PREFIX); a run file's checks are code.",
    ),
) -> None:
    """Root flags apply to every command."""
    cli = state(ctx)
    cli.database_url = database_url
    cli.api_url = api_url
    if allow_check_prefix:
        cli.use_flags(autopack_allow_check_prefix=";".join(allow_check_prefix))
    ctx.call_on_close(cli.close)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn Autopack errors into their exit codes.

    Typer itself answers usage errors (exit 2 with the usage line) and Ctrl-C (exit 1)
    and ends every command with ``SystemExit``; Autopack errors pass through it and are
    printed here as one line naming the error.
    """
    try:
        app(args=argv, prog_name="autopack")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except AutopackError as exc:
        err.print(
            f"{FAIL} [bold]{exc.__class__.__name__}[/bold]: {redact.text(exc.message)}",
            highlight=False,
            soft_wrap=True,  # never break a path or URL in the middle
        )
        return exc.exit_code
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
