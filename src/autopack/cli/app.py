"""The root Typer app, its commands loaded lazily, and the root flags after a command.

The command list of ``autopack --help`` comes from :data:`COMMANDS` (a test keeps its
one-line helps equal to the commands' own), and a command's module is imported only when
that command runs or shows its help, so ``--help`` does not wait for the database and web
stacks. Help is Click's plain layout, which wraps the text and never cuts an option name
at 80 columns. ``--database-url`` and ``--api-url`` are root flags that may also be
written after the command (``autopack serve --database-url …``): :func:`hoist_root_options`
moves them in front of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from difflib import get_close_matches
from importlib import import_module
from typing import Any

import typer
import typer.main
from typer import _click as click
from typer.core import TyperCommand, TyperGroup

COMMANDS: dict[str, tuple[str, str, str]] = {
    "config": ("autopack.cli.config_cmd", "app", "Inspect the resolved settings."),
    "db": (
        "autopack.cli.db_cmd",
        "app",
        "Initialise, upgrade, check and identify the database.",
    ),
    "run": ("autopack.cli.run_cmd", "app", "Create, list, show, cancel runs; requeue phases."),
    "approvals": ("autopack.cli.approvals_cmd", "app", "Decide on phases waiting for a human."),
    "drain": ("autopack.cli.drain_cmd", "app", "Drain queued phases with the LLM Builder."),
    "telemetry": (
        "autopack.cli.telemetry_cmd",
        "app",
        "Report and calibrate from recorded telemetry.",
    ),
    "serve": (
        "autopack.cli.serve_cmd",
        "serve",
        "Serve the control plane API (same as `uvicorn autopack.main:app`).",
    ),
    "doctor": (
        "autopack.cli.doctor",
        "doctor",
        "Check settings, schema, API server identity and token, telemetry flag, estimator "
        "file, price table and LLM credentials.",
    ),
    "demo": (
        "autopack.cli.demo",
        "demo",
        "Drain the bundled run end to end and report its telemetry.",
    ),
    "probe": (
        "autopack.cli.probe_cmd",
        "probe",
        "Drain one phase and check that its telemetry rows grew (exit 0 only then).",
    ),
}
"""Command name -> (module, attribute: a Typer app or a command function, one-line help)."""

ROOT_OPTIONS = ("--database-url", "--api-url")
"""Root flags taking a value that may also follow the command."""


def load_command(name: str) -> click.Command:
    """The Click command (or group) for ``name``, its module imported now."""
    module_name, attribute, _ = COMMANDS[name]
    target = getattr(import_module(module_name), attribute)
    command: click.Command
    if isinstance(target, typer.Typer):  # a group, even with one command (`config show`)
        command = typer.main.get_group(target)
    else:
        single = typer.Typer()
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    # Shell completion is offered by the root app only (where Typer would add it).
    command.params = [p for p in command.params if p.name not in COMPLETION_OPTIONS]
    _plain_help(command)
    return command


COMPLETION_OPTIONS = ("install_completion", "show_completion")


def _plain_help(command: click.Command) -> None:
    """Click's plain help layout for ``command`` and everything under it (Typer's Rich
    panels cut option names and show flags as ``<bool>`` at 80 columns), and command
    lists that wrap each command's first paragraph instead of cutting it at 45 characters."""
    command.rich_markup_mode = None  # type: ignore[attr-defined]
    if command.short_help is None and command.help:
        command.short_help = " ".join(command.help.strip().split("\n\n")[0].split())
    for child in getattr(command, "commands", {}).values():
        _plain_help(child)


def _command_path(args: list[str]) -> tuple[list[str], int]:
    """The command names at the start of ``args`` (root flags skipped) and where the
    command's own arguments begin."""
    path: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word in ROOT_OPTIONS and not path:
            index += 2
            continue
        if word.startswith("-"):
            if path:
                break
            index += 1
            continue
        if not path and word in COMMANDS:
            path.append(word)
        elif len(path) == 1 and COMMANDS[path[0]][1] == "app":
            path.append(word)
            index += 1
            break
        else:
            break
        index += 1
    return path, index


def hoist_root_options(args: list[str]) -> list[str]:
    """Move ``--database-url``/``--api-url`` written after the command in front of it,
    unless that command has an option of the same name (``db identity --api-url`` checks
    a server; it does not choose one)."""
    path, start = _command_path(args)
    if not path:
        return args
    command = load_command(path[0])
    if len(path) > 1:
        command = getattr(command, "commands", {}).get(path[1], command)
    own = {opt for param in command.params for opt in getattr(param, "opts", [])}
    hoisted: list[str] = []
    rest = args[:start]
    tail = args[start:]
    index = 0
    while index < len(tail):
        word = tail[index]
        name = word.split("=", 1)[0]
        if word == "--":
            rest += tail[index:]
            break
        if name in ROOT_OPTIONS and name not in own:
            if "=" in word:
                hoisted.append(word)
                index += 1
                continue
            if index + 1 < len(tail):
                hoisted += tail[index : index + 2]
                index += 2
                continue
        rest.append(word)
        index += 1
    _given_once(hoisted + args[:start])
    return hoisted + rest


def _given_once(root_words: list[str]) -> None:
    """Refuse a root flag given twice with different values: Click kept the last one, so
    ``autopack --database-url PROD run cancel R --database-url TEST`` (an alias, then a
    flag after the command) cancelled R in PROD without a word."""
    values: dict[str, list[str]] = {}
    index = 0
    while index < len(root_words):
        name, equals, value = root_words[index].partition("=")
        if name in ROOT_OPTIONS:
            if not equals and index + 1 < len(root_words):
                index += 1
                value = root_words[index]
            values.setdefault(name, []).append(value)
        index += 1
    for name, given in values.items():
        if len(set(given)) > 1:
            from autopack.errors import InvalidInput

            shown = " and ".join(repr(value) for value in dict.fromkeys(given))
            raise InvalidInput(f"{name} is given more than once, as {shown}: give it once")


@contextmanager
def _redacted_usage_errors() -> Iterator[None]:
    """Click's usage errors quote the arguments they refuse: a database URL given without
    its flag (``autopack run list postgresql://u:PASSWORD@host/db``) was printed back in
    "Got unexpected extra argument(s)" or "No such command"; the CLI's errors are redacted.
    They come before any settings are read, so the keys and tokens the environment holds
    are remembered here: one given as an argument (``drain run $ANTHROPIC_API_KEY``) was
    quoted back whole, having no shape the redaction knows."""
    try:
        yield
    except click.ClickException as exc:
        from autopack import redact

        redact.add_secrets(os.environ.get(name) for name in redact.CREDENTIALS)
        exc.message = redact.text(exc.message)
        raise


class LazyGroup(TyperGroup):
    """Lists commands from :data:`COMMANDS`; imports one only to run it or show its help
    (listing them uses the one-line helps in the table)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _redacted_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _redacted_usage_errors():  # every command's own parsing happens in here
            return super().invoke(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if ctx.resilient_parsing or ctx.meta.get(LISTING, False):
            summary = COMMANDS[cmd_name][2]
            return TyperCommand(cmd_name, help=summary, short_help=summary)
        return load_command(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """``autopack drian``: "Did you mean 'drain'?", as every command group says. Typer
        suggests from the commands it holds, and a lazy group holds none."""
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.UsageError as exc:
            matches = get_close_matches(args[0], list(COMMANDS)) if args else []
            if matches and "Did you mean" not in exc.message:
                shown = ", ".join(repr(match) for match in matches)
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {shown}?"
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        ctx.meta[LISTING] = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            ctx.meta[LISTING] = False


LISTING = "autopack.listing"
"""Context flag: commands are being listed for help (their one-line help is enough)."""


def make_app() -> typer.Typer:
    """The root app: root flags and the lazily loaded commands."""
    app = typer.Typer(
        name="autopack",
        cls=LazyGroup,
        help="Run autonomous LLM coding work reliably, on one database every part agrees on.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        add_completion=False,
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        database_url: str | None = typer.Option(
            None,
            "--database-url",
            help="Database to use (beats DATABASE_URL and .env); also after the command.",
        ),
        api_url: str | None = typer.Option(
            None,
            "--api-url",
            help="API server to attach to (beats AUTOPACK_API_URL); also after the command.",
        ),
        version: bool = typer.Option(False, "--version", help="Show the version and exit."),
    ) -> None:
        """Root flags apply to every command."""
        if version:
            from autopack import __version__

            typer.echo(f"autopack {__version__}")
            raise typer.Exit()
        ctx.meta["autopack.root"] = {"database_url": database_url, "api_url": api_url}

    return app
