"""``autopack demo``: the main job end to end, on the embedded default.

In a directory of its own it creates a SQLite database, creates the bundled
``telemetry-collection-v4`` run, drains it (the offline replay model unless an API key is
set), and prints the outcome of every phase, the files written, and the telemetry report.
It needs nothing beyond a plain ``pip install``: the run's checks use ``python -m
unittest``, and replayed calls are shown as replayed, never as money spent.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from autopack.cli._common import OK, err, out, state
from autopack.cli.drain_cmd import DrainFlags, executor_for, finite
from autopack.cli.drain_report import report
from autopack.cli.telemetry_cmd import print_report
from autopack.errors import ConfigError, Conflict
from autopack.paths import file_kind

if TYPE_CHECKING:
    from autopack.config import Settings

RUN_NAME = "telemetry-collection-v4"
MARKER = ".autopack-demo"
LOCK = ".autopack-demo.lock"
PREVIOUS = "previous"


@contextmanager
def _alone(directory: Path) -> Iterator[None]:
    """Hold ``directory`` for this demo: a second ``autopack demo`` there while one runs
    (``make demo`` in two terminals) moved the running one's database and repository to
    ``previous/`` under it, and it failed every write for the rest of its drain. Refused
    instead (exit 2, naming the demo holding it); the lock ends with its process."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        held = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:  # a file on the way, no permission, a symlink (never followed)
        raise ConfigError(
            f"--dir {directory} cannot hold the demo: {exc.strerror or exc}"
        ) from None
    try:
        if not stat.S_ISREG(kind := os.fstat(held).st_mode):  # a FIFO: truncating it raised
            raise ConfigError(
                f"--dir {directory} cannot hold the demo: {directory / LOCK} is "
                f"{file_kind(kind)}, not a regular file (remove it)"
            )
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(held, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"another `autopack demo` (pid {holder}) is running in {directory}: wait for "
                "it to end, or give this one another --dir"
            ) from None
        os.ftruncate(held, 0)
        os.pwrite(held, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(held)


def _refuse_theirs(directory: Path) -> None:
    """Refuse a directory holding files no demo made (``--dir .`` in a project), before
    anything is written there: the demo marked it as its own, and the next two demos moved
    its ``autopack.db`` (its real runs) and ``workspace/`` to ``previous/``, deleting a
    ``previous/`` of its own, and then deleted them."""
    try:
        if os.path.lexists(directory / MARKER) or not directory.is_dir():
            return  # a demo's own, or none yet (what is in the way: said by _alone)
        theirs = sorted(entry.name for entry in directory.iterdir() if entry.name != LOCK)
    except OSError:
        return  # unreadable: _alone says why
    if theirs:
        shown = ", ".join(theirs[:3]) + (", …" if len(theirs) > 3 else "")
        raise ConfigError(
            f"--dir {directory} holds files no `autopack demo` made ({shown}): give the "
            "demo a new or empty directory"
        )


def _fresh(directory: Path) -> None:
    """Start over in a directory a previous demo made (and only in such a directory). The
    previous demo's database and repository move to ``previous/`` (the one before that is
    deleted): the demo's last line invites running it again for real, and a run a live
    model was paid for was deleted by the next ``make demo``."""
    try:
        candidates = [*directory.glob("autopack.db*"), directory / "workspace"]
        # A demo that made nothing (refused, stopped at once) leaves previous/ alone: two
        # of them in a row deleted the demo before, a run a live model was paid for.
        stales = [stale for stale in candidates if os.path.lexists(stale)]
        if _marked(directory) and stales:
            previous = directory / PREVIOUS
            shutil.rmtree(previous, ignore_errors=True)
            previous.mkdir()
            for stale in stales:
                stale.rename(previous / stale.name)
            out.print(f"the previous demo is kept in {previous}", highlight=False)
        directory.mkdir(parents=True, exist_ok=True)
        _mark(directory)
    except OSError as exc:  # a file there or on the way, no permission
        raise ConfigError(
            f"--dir {directory} cannot hold the demo: {exc.strerror or exc}"
        ) from None


def _marked(directory: Path) -> bool:
    """Does ``directory`` hold a demo's marker? Anything but a file there (a check of a run
    drained there can write the directory) is refused before the previous demo is moved:
    through a symlink ``write_text`` truncated whatever file it led to, and a FIFO waited
    for a reader for ever."""
    path = directory / MARKER
    try:
        found = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(found):
        raise ConfigError(
            f"--dir {directory} cannot hold the demo: {path} is {file_kind(found)}, not a "
            "regular file (remove it)"
        )
    return True


def _mark(directory: Path) -> None:
    """Write the marker saying a demo made ``directory`` (:func:`_marked`)."""
    path = directory / MARKER
    # O_NOFOLLOW, O_NONBLOCK: a symlink or FIFO put there since is an error, not a write
    # through it or a wait
    marker = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    with os.fdopen(marker, "w") as written:
        if stat.S_ISREG(os.fstat(marker).st_mode):
            written.truncate(0)
            written.write("made by `autopack demo`; safe to delete\n")


def demo(
    ctx: typer.Context,
    directory: Path = typer.Option(
        Path("demo"),
        "--dir",
        help="Where the database and the workspace go (a previous demo there moves to "
        "DIR/previous).",
    ),
    concurrency: int = typer.Option(
        4, "--concurrency", "-k", min=1, max=64, help="Phases in flight at once."
    ),
    speed: float = typer.Option(
        0.15,
        "--replay-speed",
        min=0.0,
        callback=finite,
        help="Offline replay: fraction of the recorded latencies to wait (0 = instant).",
    ),
) -> None:
    """Drain the bundled run end to end and report its telemetry."""
    from autopack.paths import absolute

    directory = absolute(directory, "--dir")
    _refuse_theirs(directory)
    with _alone(directory):
        _demo(ctx, directory, concurrency, speed)


def _demo(ctx: typer.Context, directory: Path, concurrency: int, speed: float) -> None:
    from autopack.runfile import bundled_run_file, load_run_file

    cli = state(ctx)
    if cli.database_url is None:
        cli.database_url = f"sqlite:///{directory / 'autopack.db'}"
        if cli.api_url is None:
            # A database of its own, so its own server: a server (or pinned database) the
            # environment names for a machine's real work can only serve another one.
            cli.use_flags(autopack_api_url="", autopack_expected_instance_id="")
    cli.use_flags(telemetry_db_enabled=True, autopack_replay_speed=speed)
    cli.settings  # noqa: B018 (a setting it refuses: said before the previous demo moves)
    _fresh(directory)
    database = cli.database(create=True)
    client = cli.client()
    try:
        client.create_run(load_run_file(bundled_run_file(RUN_NAME)))
        out.print(f"{OK} created run {RUN_NAME} in {database.identity.url}")
    except Conflict:
        out.print(f"{OK} run {RUN_NAME} already exists in {database.identity.url}")
    workspace = directory / "workspace"
    flags = DrainFlags(
        workspace=workspace,
        repo=None,
        lease_seconds=60,
        auditor="llm",
        escalation_factor=1.5,
        check_timeout=300.0,
        approval_timeout=None,
        phase_token_cap=None,
        phase_cost_cap=None,
        cassette=None,
        record=None,
        worker_id=None,
        as_json=False,
    )
    with executor_for(cli, RUN_NAME, flags) as (executor, progress):
        summary = executor.drain_run(RUN_NAME, concurrency=concurrency)
        run = executor.client.get_run(RUN_NAME)
    code = report(summary, run, as_json=False, spend=progress.spend, database=cli.database_flag())
    print_report(cli.client(), RUN_NAME)  # the drain released the first connection
    url = f"sqlite:///{directory / 'autopack.db'}"
    err.print(
        f"\nrepository: {workspace} (branch {summary.branch})   database: "
        f"{database.identity.url}\n"
        f"next: `autopack run export {RUN_NAME} DIR --workspace {workspace} --database-url "
        f"{url}` for the code; {_calibrate_hint(cli.settings, url)}",
        highlight=False,
        soft_wrap=True,  # a path or a command is never broken across lines
    )
    raise typer.Exit(code)


def _calibrate_hint(settings: Settings, url: str) -> str:
    """The demo's last words on calibration: a replayed demo needs ``--include-replayed``
    and invites a live one; a live demo told its user to go live and to count replayed
    calls it never made, as if nothing had been called."""
    from autopack.llm.registry import provider_name

    if provider_name(settings) != "replay":
        return f"`autopack telemetry calibrate --plot calibration.png --database-url {url}`."
    return (
        f"`autopack telemetry calibrate --include-replayed --plot calibration.png "
        f"--database-url {url}` (replayed calls are left out of calibration unless asked); "
        "or set ANTHROPIC_API_KEY / OPENAI_BASE_URL and run the demo again for real."
    )
