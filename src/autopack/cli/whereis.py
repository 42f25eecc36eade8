"""Where the database is, and which other Autopack databases are nearby.

The legacy probe found nothing because it ran from another directory: a relative
``sqlite:///autopack.db`` became a new, empty file there, and every lookup answered "not
found". Commands that only read never create a file (:func:`autopack.db.open_database`);
when the file is missing they leave with :func:`missing_database`'s message, which says
the path looked for, where that path came from and what it was resolved against, and
every Autopack database in sight: ``.env`` files naming one, from the working directory up
to the repository root, ``autopack.db`` files in every directory above and one
directory down from the working directory and from the repository's root (where
``autopack demo`` puts its own), in the home directory and its projects (and their demos),
every one in the directory the missing file was to be in, and, in a linked worktree, the
one in the repository's main working tree.
"""

from __future__ import annotations

import itertools
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from autopack.config import LoadedSettings, dotenv_values
from autopack.db.engine import sqlite_file
from autopack.dburl import redact_url, resolve_database_url
from autopack.envfile import search_directories
from autopack.errors import ConfigError, DatabaseEmpty, DatabaseMissing
from autopack.executor.git import GitError, git

DEFAULT_FILE = "autopack.db"


@dataclass(frozen=True)
class Nearby:
    """Another database this directory could have meant."""

    url: str
    """Resolved, password hidden."""
    how: str
    """``named by .env at PATH``, ``file`` or ``this repository's main working tree``."""


def is_autopack_database(path: Path) -> bool:
    """Whether ``path`` is a SQLite file with Autopack's identity table (opened read-only,
    so looking never changes or creates anything)."""
    if not path.is_file():
        return False
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        found = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'db_meta'"
        ).fetchone()
    except sqlite3.Error:
        return False
    finally:
        connection.close()
    return found is not None


def nearby_databases(looked_for: str, cwd: Path | None = None) -> list[Nearby]:
    """Autopack databases other than ``looked_for`` (a resolved URL) that the user may mean."""
    start = cwd or Path.cwd()
    found: list[Nearby] = []
    seen = {looked_for}

    def add(url: str, how: str) -> None:
        if url not in seen:
            seen.add(url)
            found.append(Nearby(redact_url(url), how))

    directories = search_directories(start)
    for directory in directories:
        env_file = directory / ".env"
        try:
            raw = dotenv_values(env_file).get("database_url") if env_file.is_file() else None
        except ConfigError:  # unreadable: load_settings names it when it is the one used
            continue
        if raw:
            try:
                url = resolve_database_url(str(raw), cwd=directory)
            except ValueError:
                url = ""
            path = sqlite_file(url) if url else None
            if url and (path is None or is_autopack_database(path)):
                add(url, f"named by .env at {env_file}")
    # One directory down from here and from the project's root: from any subdirectory of
    # a project, `make demo`'s demo/autopack.db at its root is as near as from the root.
    children = [p for base in dict.fromkeys([start, directories[-1]]) for p in _children(base)]
    # Every ancestor, past the repository's root too: from inside a nested repository (a
    # submodule, a clone inside a project) the project's database is further up.
    for directory in [start, *start.parents, *children, *_projects_at_home()]:
        candidate = directory / DEFAULT_FILE
        if is_autopack_database(candidate):
            add(resolve_database_url(f"sqlite:///{candidate}"), "file")
    # The directory the missing file was to be in: a mistyped name (``autopak.db``,
    # ``seed.db`` for ``telemetry_seed.db``) beside the real one, however far from here.
    missing = sqlite_file(looked_for)
    for candidate in _databases_in(missing.parent) if missing is not None else []:
        add(resolve_database_url(f"sqlite:///{candidate}"), "file")
    main = _main_working_tree(directories[-1])
    if main is not None and is_autopack_database(main / DEFAULT_FILE):
        add(
            resolve_database_url(f"sqlite:///{main / DEFAULT_FILE}"),
            "this repository's main working tree",
        )
    return found


def _children(directory: Path) -> list[Path]:
    """The directories in ``directory``, sorted (none when it cannot be listed)."""
    try:
        return sorted(p for p in directory.iterdir() if p.is_dir())
    except OSError:
        return []


def _projects_at_home() -> list[Path]:
    """The home directory, the projects in it and their ``demo/``: from ``/`` or ``/tmp``
    nothing above or below is a project, and "no other Autopack database is in sight"
    left out the one in ``~/project`` (or its demo's)."""
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # no HOME and no password entry
        return []
    projects = _children(home)
    return [home, *projects, *(project / "demo" for project in projects)]


MAX_LOOKED_AT = 50
"""``*.db`` files opened in one directory: ``/tmp`` may hold thousands."""


def _databases_in(directory: Path) -> list[Path]:
    """The Autopack SQLite files among the first ``*.db`` files in ``directory``, sorted."""
    try:
        candidates = list(itertools.islice(directory.glob("*.db"), MAX_LOOKED_AT))
    except OSError:
        return []
    return sorted(p for p in candidates if is_autopack_database(p))


def _main_working_tree(root: Path) -> Path | None:
    """For the root of a linked worktree (``git worktree add``: a ``.git`` *file* there),
    the repository's main working tree, where the project's ``autopack.db`` usually is: a
    worktree beside the project is not below it, so the search upwards never met it."""
    if not (root / ".git").is_file():
        return None
    try:
        found = git(
            "rev-parse", "--path-format=absolute", "--git-common-dir", cwd=root, check=False
        )
    except GitError:  # no git: no worktrees either
        return None
    common = Path(found.stdout.decode().strip())
    # A submodule's common directory is .git/modules/NAME of its superproject: no working tree.
    return common.parent if found.returncode == 0 and common.name == ".git" else None


def missing_database(loaded: LoadedSettings, exc: DatabaseMissing) -> DatabaseMissing:
    """The full story of a missing SQLite file (see the module docstring)."""
    origin = loaded.database
    nearby = nearby_databases(loaded.settings.database_url)
    # Not "this command only reads": a drain, a requeue, `db upgrade` write, into the
    # database the user meant, never a new empty one.
    found = (
        f"{exc.path} is an empty database (no tables at all), and this command does not set one up."
        if isinstance(exc, DatabaseEmpty)
        else f"no database at {exc.path}, and this command does not create one."
    )
    lines = [
        found,
        f"DATABASE_URL is {origin.describe()}.",
    ]
    if nearby:
        lines.append("Autopack databases nearby:")
        lines += [f"  {n.url}  ({n.how})" for n in nearby]
        lines.append(
            f"fix: use one of them, e.g. `autopack --database-url {nearby[0].url} …` (or set "
            "DATABASE_URL, or run from the directory whose .env names it)."
        )
    elif loaded.settings.autopack_api_url:
        lines.append(
            f"AUTOPACK_API_URL is {loaded.settings.autopack_api_url}, but this command works "
            "on the database itself: run it where that server runs, with its DATABASE_URL; "
            "here, `autopack doctor` names the database and instance_id the server serves "
            "(a machine holding only a token never needs the database's credentials)."
        )
    else:
        lines.append(
            "No other Autopack database is in sight. fix: point DATABASE_URL or "
            "--database-url at your database, or set one up there with `autopack db init` "
            "(`autopack demo` makes a demo database of its own)."
        )
    return type(exc)(
        "\n".join(lines),
        path=exc.path,
        source=origin.source,
        resolved_against=str(origin.base) if origin.base else None,
        nearby=[n.url for n in nearby],
    )
