"""What every command shares: resolved settings, the database, the API client, consoles.

Settings are resolved once per invocation from the root flags (``--database-url``,
``--api-url``) and the environment; commands never read the environment themselves.
Every command that reads or changes runs, approvals or telemetry does so through
:meth:`CliState.client`: an API client whose server proved it uses this database
(:func:`autopack.connect.connect`), so no command can act on another database.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import typer
from pydantic_core import to_jsonable_python
from rich.console import Console

from autopack import redact
from autopack.client import ApiClient
from autopack.config import LoadedSettings, Settings, load_settings
from autopack.connect import Connection, connect
from autopack.db import Database, open_database
from autopack.logs import configure_logging

PIPED_WIDTH = 160


def _console(*, stderr: bool) -> Console:
    """Rich output; piped into a file or CI log it is not wrapped at 80 columns."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH
    return console


out = _console(stderr=False)
err = _console(stderr=True)

OK = "[green]✔[/green]"
FAIL = "[red]✘[/red]"


@dataclass
class CliState:
    """Root flags, and the settings/database resolved from them on first use."""

    database_url: str | None = None
    api_url: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    _loaded: LoadedSettings | None = field(default=None, repr=False)
    _database: Database | None = field(default=None, repr=False)
    _connection: Connection | None = field(default=None, repr=False)
    _closing: ExitStack = field(default_factory=ExitStack, repr=False)

    def use_flags(self, **flags: Any) -> None:
        """Command-level flags (e.g. ``--telemetry``) that beat the environment too."""
        assert self._loaded is None, "flags must be given before settings are resolved"
        self.flags.update({k: v for k, v in flags.items() if v is not None})

    def loaded(self) -> LoadedSettings:
        if self._loaded is None:
            self._loaded = load_settings(
                **{
                    "database_url": self.database_url,
                    "autopack_api_url": self.api_url,
                    **self.flags,
                }
            )
            settings = self._loaded.settings
            configure_logging(settings.autopack_log_level, settings.autopack_log_format)
        return self._loaded

    @property
    def settings(self) -> Settings:
        return self.loaded().settings

    def database(self) -> Database:
        """The database, schema-guarded (fresh: initialised; partial: exit 3) and logged."""
        if self._database is None:
            self._database = open_database(self.settings.database_url, role="cli")
        return self._database

    def connection(self) -> Connection:
        """The control plane: a client on a server proven to use :meth:`database` (the
        ``--api-url`` one, one on the default port, or one in this process)."""
        if self._connection is None:
            identity = self.database().identity
            self._connection = self._closing.enter_context(
                connect(self.settings, identity, own="thread")
            )
        return self._connection

    def client(self) -> ApiClient:
        return self.connection().client

    def close(self) -> None:
        self._closing.close()
        self._connection = None
        if self._database is not None:
            self._database.close()
            self._database = None


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def print_json(data: Any) -> None:
    """Machine output on stdout: plain JSON (models as the API answers them), no colour,
    no secret (:mod:`autopack.redact`: an attempt's error may quote an echoed header)."""
    plain = redact.data(to_jsonable_python(data, fallback=str))
    sys.stdout.write(json.dumps(plain, indent=2, ensure_ascii=False) + "\n")
