"""Which ``.env`` file applies, whether it says what it seems to say, and where a project's
defaults live.

The nearest ``.env`` from the working directory up to the root of the enclosing git
repository applies (only the working directory outside a repository), so ``cd scripts &&
autopack run list`` reads the project's ``.env`` and a stray one in a home directory never
does. :mod:`autopack.config` reads its values with pydantic-settings' own parser, after
:func:`check_dotenv` made sure no line is silently skipped.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from difflib import get_close_matches
from io import StringIO
from pathlib import Path

from autopack.errors import ConfigError
from autopack.paths import is_git_directory


def search_directories(cwd: Path | None = None) -> list[Path]:
    """Where a ``.env`` may be: the working directory, then each parent up to the root of
    the enclosing git repository (a directory holding ``.git``, a run's workspace aside);
    outside a repository only the working directory, so a stray ``.env`` in a home
    directory never applies."""
    start = cwd or Path.cwd()
    chain = [start, *start.parents]
    outside = [start]
    for index, directory in enumerate(chain):
        if _run_workspace(directory):
            outside = chain[: index + 3]  # up to the directory holding autopack-workspaces/
        elif (directory / ".git").exists():
            return chain[: index + 1]
    return outside


def _run_workspace(directory: Path) -> bool:
    """Is ``directory`` a run's default workspace, ``autopack-workspaces/RUN_ID`` (a git
    repository of its own inside the project)? It belongs to the project around it (the
    directory holding ``autopack-workspaces/``, outside a repository): ``autopack`` run
    there, by hand or by a check, means the project's database and ``.env``, not a new
    ``autopack.db`` inside the run's code."""
    return directory.parent.name == "autopack-workspaces" and (directory / ".git").exists()


def project_root(cwd: Path | None = None) -> Path:
    """The directory the defaults live in (``autopack.db``, ``autopack-workspaces/``): the
    root of the enclosing git repository, like ``.git`` for git, so every subdirectory of
    a project means the same database and workspaces; outside a repository, the working
    directory."""
    return search_directories(cwd)[-1]


def outside_cache(base: Path, cache_dir: Path) -> None:
    """Refuse a project root (the default database's directory) inside the cache
    directory: there it is an attempt's worktree (a git worktree, so a root of its own),
    where a check that runs ``autopack`` created or opened an ``autopack.db`` of its own
    instead of the run's."""
    cache = cache_dir.expanduser().resolve()
    if base.resolve().is_relative_to(cache):
        raise ConfigError(
            f"no default database inside Autopack's cache directory {cache} ({base} is an "
            "attempt's worktree or a cached repository): name the database with "
            "DATABASE_URL or --database-url"
        )


def outside_git_directory(base: Path) -> None:
    """Refuse a project root (the default database's directory) in a bare repository or
    another git directory: a writing command made ``autopack.db`` beside ``HEAD`` and
    ``objects/`` (in ``refs/``, among the refs), where it belongs to no project."""
    for directory in (base, *base.parents):
        if is_git_directory(directory):
            raise ConfigError(
                f"no default database inside the git directory {directory} (a bare "
                "repository holds no project): run from a checkout, or name the "
                "database with DATABASE_URL or --database-url"
            )


def dotenv_path(cwd: Path | None = None) -> Path:
    """The ``.env`` that applies (the nearest, see :func:`search_directories`); when there
    is none, where it would be looked for first (the working directory)."""
    directories = search_directories(cwd)
    for directory in directories:
        candidate = directory / ".env"
        if candidate.is_fifo():
            # python-dotenv opens a FIFO: with no writer, every command waited forever,
            # and settings read the .env more than once (one writer's text each time).
            raise ConfigError(
                f"{candidate} is a FIFO (named pipe), not a file: a .env must be a "
                "regular file; replace it with one or move it out of the way",
                env_file=str(candidate),
            )
        if candidate.is_file():
            return candidate
    return directories[0] / ".env"


def hidden_database_dotenv(cwd: Path | None = None) -> Path | None:
    """A farther ``.env`` naming ``DATABASE_URL`` that the nearest one, which names none,
    hides: a ``web/.env`` of another tool made ``cd web && autopack …`` use the default
    database at the repository root while the project's ``.env`` names another, so a
    drain started there and a server started at the root used two databases."""
    found = [d / ".env" for d in search_directories(cwd) if (d / ".env").is_file()]
    if len(found) < 2 or _names_database(found[0]):
        return None
    return next((path for path in found[1:] if _names_database(path)), None)


def _names_database(path: Path) -> bool:
    """Does the ``.env`` at ``path`` set ``DATABASE_URL`` (in any case, as it is read)?
    An unreadable file names nothing here: it is refused where it applies."""
    from dotenv import dotenv_values

    try:
        return any(key.upper() == "DATABASE_URL" for key in dotenv_values(path))
    except (OSError, UnicodeDecodeError):
        return False


def check_dotenv(path: Path, *, known: Collection[str]) -> None:
    """Refuse a ``.env`` that would not be read as written (ConfigError naming the file
    and line): python-dotenv skips a line it cannot parse and a setting written without
    ``=``, with a warning at most, so a ``DATABASE_URL`` line with a stray quote silently
    meant the default database; one set twice to different values silently meant the last
    (an appended ``DATABASE_URL`` won); a file that is not UTF-8, or holds a NUL, failed
    later with a traceback; a misspelt ``AUTOPACK_`` name (``AUTOPACK_API_TOKNE``) was
    skipped as another tool's setting, so the server ran without the token it seemed to
    have. That prefix is Autopack's own: another tool's names in a shared ``.env`` are read
    past. ``known``: the settings' names (lower case). A line's text is never shown: it
    may hold a secret."""
    from dotenv.parser import parse_stream

    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    first: dict[str, tuple[int, str | None]] = {}  # a setting's first line and value
    for binding in parse_stream(StringIO(text)):
        line = binding.original.line
        name = (binding.key or "").lower()
        earlier = first.setdefault(name, (line, binding.value)) if name in known else None
        if binding.error:
            problem = f"line {line} cannot be parsed (write NAME=value)"
        elif binding.key and binding.key.lower() in known and binding.value is None:
            problem = f"line {line}: {binding.key} has no value (write {binding.key}=value)"
        elif "\x00" in (binding.value or ""):
            problem = f"line {line}: the value of {binding.key} contains a NUL byte"
        elif name.startswith("autopack_") and name not in known:
            # as written: upper() of the lowered name is another (AUTOPACK_ß read AUTOPACK_SS)
            key = binding.key or ""
            shown = key if len(key) <= 80 else f"{key[:80]}…"
            problem = f"line {line}: {shown} is no Autopack setting{_meant(name, known)}"
        elif earlier is not None and earlier[0] != line and earlier[1] != binding.value:
            # python-dotenv keeps the last: an appended DATABASE_URL silently won
            problem = (
                f"lines {earlier[0]} and {line} both set {binding.key}, to different "
                "values; keep one"
            )
        else:
            continue
        raise ConfigError(
            f"{path}, {problem}; fix it or move it out of the way", env_file=str(path)
        )


def check_environment(environ: Mapping[str, str], *, known: Collection[str]) -> None:
    """Refuse an ``AUTOPACK_`` environment variable spelt near a setting but not one
    (``AUTOPACK_BUILDER_MODLE``): it was ignored, so the drain used the default model, the
    default prices, the default budget, without a word. Only names close to a setting are
    refused: the environment is shared with scripts and checks that set names of their own
    under the prefix (``AUTOPACK_CHECK_ID``, a CI's ``AUTOPACK_TEST_...``)."""
    for variable in sorted(environ):
        name = variable.lower()
        if not name.startswith("autopack_") or name in known:
            continue
        nearest = _nearest(name, known)
        if nearest is not None:
            shown = variable if len(variable) <= 80 else f"{variable[:80]}…"
            raise ConfigError(
                f"the environment variable {shown} is no Autopack setting (did you mean "
                f"{nearest}?): rename it, or unset it",
                variable=shown,
            )


def _meant(name: str, known: Collection[str]) -> str:
    """`` (did you mean X?)`` for the known setting nearest a misspelt ``name``, else
    where the settings are listed."""
    nearest = _nearest(name, known)
    if nearest:
        return f" (did you mean {nearest}?)"
    return " (`autopack config show` lists the settings)"


def _nearest(name: str, known: Collection[str]) -> str | None:
    """The known setting (upper case) nearest a misspelt lower-case ``name``, if one is
    close. Compared without the prefix, and "db" read as "database": ``AUTOPACK_DB_URL``
    was "AUTOPACK_API_URL?" (the prefix and ``_URL`` made them close) where
    ``DATABASE_URL`` was meant."""
    stems = {setting.removeprefix("autopack_"): setting for setting in known}
    stem = re.sub(r"^(db|database)(?=_|$)", "database", name.removeprefix("autopack_"))
    stem = "database_url" if stem == "database" else stem
    nearest = get_close_matches(stem, stems, 1, 0.8)  # the shared prefix made names close
    return stems[nearest[0]].upper() if nearest else None
