"""What every command shares: resolved settings, the database, the API client, consoles.

Settings are resolved once per invocation from the root flags (``--database-url``,
``--api-url``) and the environment; commands never read the environment themselves.
Every command that reads or changes runs, approvals or telemetry does so through
:meth:`CliState.client`: an API client whose server proved it uses this database
(:func:`autopack.connect.connect`), so no command can act on another database.
:meth:`CliState.database` never creates a SQLite file unless the command asks to
(``db init``, ``run create``, ``demo``, ``serve``), and then it says so.

The settings, database and client stacks are imported when first used, not with this
module: a command's ``--help`` needs none of them.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from autopack.errors import DatabaseMissing, InvalidInput

if TYPE_CHECKING:
    from pathlib import Path

    from autopack.client import ApiClient
    from autopack.config import LoadedSettings, Settings
    from autopack.connect import Connection
    from autopack.contract import RunView
    from autopack.db import Database
    from autopack.executor.repository import RunRepository
    from autopack.executor.source import RepoSource
    from autopack.identity import DbIdentity

PIPED_WIDTH = 100_000
"""Piped into a file or a CI log, a line is never wrapped or cut: messages carry paths and
errors a person must read (or grep) whole. Tables still only take the width they need."""


def _console(*, stderr: bool) -> Console:
    """Rich output; on a terminal, wrapped at its width; piped, never wrapped."""
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
            from autopack.config import load_settings
            from autopack.logs import configure_logging

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

    def database(self, *, create: bool = False) -> Database:
        """The database, schema-guarded (partial: exit 3) and logged.

        Unless ``create`` (a command that writes), a missing SQLite file or a database
        without tables is :class:`DatabaseMissing` (exit 2, saying where it looked and
        which databases are nearby); with it, a created file is announced.
        """
        if self._database is None:
            from autopack.db import open_database

            if create:
                self._repository_readable()
            try:
                self._database = open_database(
                    self.settings.database_url,
                    role="cli",
                    create=create,
                    initialise=create,
                    expected_instance_id=self.settings.autopack_expected_instance_id,
                )
            except DatabaseMissing as exc:
                raise self.missing(exc) from exc
            if self._database.initialised:
                err.print(
                    f"{self._made()} {self._database.identity.url}{self._untracked()}"
                    f"{self._others()}",
                    highlight=False,
                    soft_wrap=True,
                )
        return self._database

    def _made(self) -> str:
        """What setting the database up was: a new SQLite file, or Autopack's tables in an
        existing database that had none (``serve`` on a new PostgreSQL one said nothing)."""
        if self._database is not None and self._database.created:
            return "created new database"
        return "set up Autopack's tables in the empty database"

    def _others(self) -> str:
        """The Autopack databases in sight, when the default just made a new one: from a
        linked worktree or a submodule, `run create` made a second, empty database beside
        the project's instead of using it, and said nothing of the one it did not use."""
        if self.loaded().database.source != "default":
            return ""
        from autopack.cli.whereis import nearby_databases

        nearby = nearby_databases(self.settings.database_url)
        if not nearby:
            return ""
        return (
            f"; other Autopack databases are nearby ({', '.join(n.url for n in nearby)}): "
            f"if you meant one, use `--database-url {nearby[0].url}`"
        )

    def _repository_readable(self) -> None:
        """Refuse to create the default database at a repository's root that git cannot
        read (:func:`~autopack.executor.source.unreadable`): `run create` printed git's bare
        "fatal:" line, then a hint that ``git status`` lists the new database, which git
        status could not do."""
        from autopack.db.engine import sqlite_file
        from autopack.errors import ConfigError
        from autopack.executor.git import GitError
        from autopack.executor.source import unreadable

        path = sqlite_file(self.settings.database_url)
        if path is None or path.exists() or self.loaded().database.source != "default":
            return
        try:
            broken = unreadable(path.parent)
        except GitError:  # no git here: nothing to read, nothing lists it
            return
        if broken is not None:
            raise ConfigError(
                f"{path.parent} holds a .git, but its git repository is broken ({broken}): "
                "repair or remove that .git, or name a database elsewhere with "
                "--database-url (nothing was created)"
            )

    def _untracked(self) -> str:
        """A hint when the default database was just made at a repository's root, where
        ``git status`` lists it (and the default workspaces) unless they are ignored."""
        origin = self.loaded().database
        if origin.source != "default" or origin.base is None or not (origin.base / ".git").exists():
            return ""
        import os
        import subprocess

        from autopack.executor.git import local_environment

        try:
            ignored = subprocess.run(
                ["git", "check-ignore", "-q", "autopack.db"],
                cwd=origin.base,
                env=local_environment(os.environ),  # git runs what its config names: no keys
                check=False,
            )
        except OSError:  # no git here: nothing lists it
            return ""
        if ignored.returncode == 0:
            return ""
        return (
            " (git status lists it: add autopack.db* and autopack-workspaces/ to .gitignore "
            "or .git/info/exclude)"
        )

    def names_no_database(self) -> bool:
        """Is this a client told only a server? ``AUTOPACK_API_URL`` is set, ``DATABASE_URL``
        nowhere, and there is no default database file: a worker or operator machine
        holding a token, not the database's credentials. Its database is the one that server
        serves (the one ``AUTOPACK_EXPECTED_INSTANCE_ID`` pins, if set). With a default file,
        that file is the database it names, and the handshake compares the two."""
        loaded = self.loaded()
        if not loaded.settings.autopack_api_url or loaded.database.source != "default":
            return False
        from autopack.db.engine import sqlite_file

        path = sqlite_file(loaded.settings.database_url)
        return path is not None and not path.exists()

    def database_flag(self) -> str:
        """The ``--database-url`` option for the commands a hint prints: a default or
        ``.env`` SQLite path depends on the directory a command runs in, so a hint without
        it failed elsewhere with "no database". Empty for a client naming no database and
        for a server URL (it may hold a password; it names the same database anywhere)."""
        if self.names_no_database():
            return ""
        from autopack.db.engine import sqlite_file

        url = self.settings.database_url
        return f" --database-url {url}" if sqlite_file(url) is not None else ""

    def expected(self, *, create: bool = False) -> DbIdentity | None:
        """The database the API server must prove it serves: ours, opened (created if
        ``create`` and no server is named: a new database is never the one a named server
        serves, and would stay behind); None when this client names none."""
        if self.names_no_database():
            return None
        return self.database(create=create and not self.settings.autopack_api_url).identity

    def child_env(self) -> dict[str, str]:
        """The environment of a child ``autopack`` command (:func:`autopack.config.child_env`).

        A client that names no database hands its child none either: the resolved default
        (``./autopack.db``, which does not exist) would come from the environment there, name
        a database, and be refused as missing. The child is pinned instead to the database
        this client's server proved to serve: it reaches that one or refuses, naming both."""
        from autopack.config import child_env

        env = child_env(self.settings)
        if self.names_no_database():
            del env["DATABASE_URL"]
            env["AUTOPACK_EXPECTED_INSTANCE_ID"] = self.connection().database.instance_id
        return env

    def missing(self, exc: DatabaseMissing) -> DatabaseMissing:
        """``exc`` with where the path came from and the databases nearby."""
        from autopack.cli.whereis import missing_database

        return missing_database(self.loaded(), exc)

    def connection(self) -> Connection:
        """The control plane: a client on a server proven to use :meth:`expected` (the
        ``--api-url`` one, one on the default port, or one in this process)."""
        if self._connection is None:
            from autopack.connect import connect

            self._connection = self._closing.enter_context(
                connect(self.settings, self.expected(), own="thread")
            )
        return self._connection

    def client(self) -> ApiClient:
        return self.connection().client

    def release_connection(self) -> None:
        """Stop using the connection (and the in-process server, if it was ours); the
        database stays open. A drain checks its run in-process, then starts its own."""
        self._closing.close()
        self._connection = None

    def close(self) -> None:
        self._closing.close()
        self._connection = None
        if self._database is not None:
            self._database.close()
            self._database = None


def state(ctx: typer.Context) -> CliState:
    """The invocation's state, made on first use from the root flags (closed with the
    root context)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        flags = root.meta.get("autopack.root", {})
        root.obj = CliState(database_url=flags.get("database_url"), api_url=flags.get("api_url"))
        root.call_on_close(root.obj.close)
    return root.obj


def print_json(data: Any) -> None:
    """Machine output on stdout: plain JSON (models as the API answers them), no colour,
    no secret (:mod:`autopack.redact`: an attempt's error may quote an echoed header)."""
    from pydantic_core import to_jsonable_python

    from autopack import redact

    plain = redact.data(to_jsonable_python(data, fallback=str))
    sys.stdout.write(json.dumps(plain, indent=2, ensure_ascii=False) + "\n")


def check_named_repository(client: ApiClient, run: RunView, source: RepoSource) -> None:
    """Exit 2 when ``--repo``/``--workspace`` name a repository in which another active run
    works on this run's branch. Run creation checks only the run's ``repository``; a drain
    naming another one (or the only one, for a run that names none) would move a branch
    another run's compare-and-swap also moves, and one run's commits end on no branch.
    The path is resolved here (symlinks): the server cannot see this machine's files."""
    from autopack.errors import Conflict
    from autopack.repoident import resolve_local
    from autopack.states import RUN_ACTIVE

    if source.default:  # autopack-workspaces/RUN_ID: this run's own directory
        return
    if run.state not in RUN_ACTIVE:  # nothing to drain; its branch may be another's now
        return
    flag = "--repo" if source.remote is not None else "--workspace"
    named = source.remote if source.remote is not None else resolve_local(str(source.workspace))
    if named == run.repository and run.drained_in is None:  # checked at its creation
        return  # (else asked: the server forgets the other one, where it no longer drains)
    try:
        client.check_branch(run.run_id, named)
    except Conflict as exc:
        raise InvalidInput(
            f"{flag} {named}: {exc.message}; or drain this run in another repository",
            **exc.details,
        ) from exc


def open_named_repository(
    client: ApiClient, run: RunView, source: RepoSource, *, cache_dir: Path, create: bool = True
) -> RunRepository:
    """The run's repository as ``--repo``/``--workspace`` name it, and its branch check.

    A check records the repository as the one the run drains in (``drained_in``). Asked
    first, a drain given a repository without the run's accepted work (a stray
    ``--workspace``) stopped just after the record said the run was there, while its
    executors went on in the other: another run was let onto the branch there, and one
    run's commits ended on no branch. So a run with accepted work is opened (a local
    repository must hold its head, a remote's clone is fetched until it does) before the
    server is asked; opening one that holds the head creates nothing another run could
    hold there. A run without any is asked first, before a repository or branch is made."""
    from autopack.cli.progress import CloneProgress
    from autopack.executor.repository import RunRepository, run_branch

    def opened() -> RunRepository:
        with CloneProgress(err, source.remote or "") as shown:
            return RunRepository.open(
                source,
                branch=run.branch or run_branch(run.run_id),
                cache_dir=cache_dir,
                create=create,
                head=run.branch_head,
                shown=shown,
            )

    if run.branch_head is None:
        check_named_repository(client, run, source)
        return opened()
    repository = opened()
    repository.require(run.branch_head)
    check_named_repository(client, run, source)
    return repository
