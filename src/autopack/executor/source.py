"""Where a run's code lives, made ready to be opened (:class:`RunRepository.open`).

A local repository is used in place: created when missing or empty, refused when it is
not a repository's root or lacks the run's accepted head (never a guess at what to commit,
nor a new branch started without the run's completed work). A remote is cloned once per
machine into the cache, shared by the executors there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from autopack.envfile import project_root, search_directories
from autopack.errors import ConfigError
from autopack.executor.git import TIMEOUT_SECONDS, Progress, git, git_with_progress, out
from autopack.executor.recall import holds
from autopack.executor.signs import shows_life, sign_of_life
from autopack.logs import log_event
from autopack.paths import absolute, cache_directory, not_a_directory
from autopack.rundef import repository_option

logger = logging.getLogger("autopack.executor.repository")


def is_repository(path: Path) -> bool:
    return git("rev-parse", "--git-dir", cwd=path, check=False).returncode == 0


def unreadable(root: Path) -> str | None:
    """What git says is wrong with the repository whose ``.git`` is at ``root`` (an empty
    ``.git`` file, a ``gitdir:`` to nowhere, a corrupt HEAD, HEAD's objects missing); None
    when git reads it, or there is no ``.git``. Git looks no higher than ``root`` (it
    answered for a repository around it instead) and takes no lock there."""
    if not (root / ".git").exists():
        return None
    status = git(
        *("--no-optional-locks", "status", "--porcelain", "--untracked-files=no"),
        cwd=root,
        env={"GIT_CEILING_DIRECTORIES": str(root.parent)},
        check=False,
    )
    if status.returncode == 0:
        return None
    return status.stderr.decode(errors="replace").strip() or f"git status exit {status.returncode}"


def refuse_unreadable(workspace: Path, looked_for: str = "the run's branch") -> None:
    """Refuse a workspace whose repository git cannot read (:func:`unreadable`), in git's
    words: it was said to lack the run's work ("its completed work is elsewhere"), or not
    to be a repository at all (`git init` there, which does not repair it)."""
    broken = unreadable(workspace)
    if broken is not None:
        raise ConfigError(
            f"the git repository at {workspace} could not be read ({broken}), so "
            f"{looked_for} cannot be looked for there: repair it, or give the repository "
            "that holds the run's work with --workspace DIR (or --repo URL)"
        )


@dataclass(frozen=True)
class RepoSource:
    """Where a run's code lives: a local repository used in place, or a remote URL."""

    workspace: Path | None = None
    remote: str | None = None
    run_id: str | None = None
    """The run whose local repository this machine remembers once opened
    (:mod:`autopack.executor.recall`)."""
    default: bool = False
    """``workspace`` is only the default (nothing named a repository): a remembered
    repository holding the run's accepted head stands in for it."""

    def describe(self) -> str:
        return self.remote or str(self.workspace)

    @classmethod
    def choose(
        cls, run_id: str, *, repo: str | None, workspace: Path | None, run_repository: str | None
    ) -> RepoSource:
        """``--repo``, else ``--workspace``, else the run file's ``repository``, else
        ``autopack-workspaces/RUN_ID`` at the project's root, next to its default database
        (:func:`~autopack.envfile.project_root`: a drain from any subdirectory finds the
        run's code). ``--repo``: :func:`~autopack.rundef.repository_option`."""
        if repo:
            return cls(remote=repository_option(repo))
        if workspace is not None:
            return cls(workspace=absolute(workspace, "--workspace"), run_id=run_id)
        if run_repository:
            return cls(remote=run_repository)
        default = (project_root() / "autopack-workspaces" / run_id).resolve()
        return cls(workspace=default, run_id=run_id, default=True)


def require_local(workspace: Path, commit: str, branch: str) -> None:
    """Refuse a local workspace without the run's accepted head, before anything is made
    there. The default workspace moved (from ``autopack-workspaces/RUN_ID`` in the working
    directory to the project's root): a drain found the new one missing, started the
    branch anew without the run's completed work and reported the run's code there. Names
    a workspace of the old default (from here up to the project's root) that holds it."""
    if holds(workspace, commit):
        return
    # not a sign the work is elsewhere: it may be right here
    refuse_unreadable(workspace, f"the run's accepted head {commit[:12]} (branch {branch})")
    _refuse_lost_objects(workspace, commit, branch)
    candidates = [d / "autopack-workspaces" / workspace.name for d in search_directories()]
    found = next((c for c in candidates if c != workspace and holds(c, commit)), None)
    hint = (
        f"it is in {found}: add --workspace {found}"
        if found is not None
        else "give the repository that holds it with --workspace DIR (or --repo URL)"
    )
    raise ConfigError(
        f"the run's accepted head {commit[:12]} (branch {branch}) is not in {workspace}"
        f"{'' if workspace.exists() else ' (no such directory)'}: its completed work is "
        f"elsewhere; {hint}"
    )


def _refuse_lost_objects(workspace: Path, commit: str, branch: str) -> None:
    """The run's branch here names its accepted head, but git cannot read that commit (its
    objects lost or corrupt while HEAD's are whole, so ``git status`` passes): the work
    was said to be "elsewhere" when it is here, damaged."""
    if not workspace.is_dir():
        return
    named = git("rev-parse", "-q", "--verify", f"refs/heads/{branch}", cwd=workspace, check=False)
    if named.stdout.decode().strip() != commit:
        return
    said = git("cat-file", "-t", commit, cwd=workspace, check=False).stderr.decode().strip()
    raise ConfigError(
        f"the run's branch {branch} in {workspace} names its accepted head {commit[:12]}, "
        f"but git cannot read that commit ({said or 'missing objects'}): the repository is "
        "damaged (`git fsck` there names what is lost). Repair it, or give a repository "
        "that holds the run's work with --workspace DIR (or --repo URL)"
    )


def local_repository(workspace: Path) -> Path:
    """A local repository used in place: created when missing or empty, refused when it is
    a directory with files that is not a repository's root (Autopack never guesses what to
    commit, nor adopts the repository around a directory: an empty
    ``autopack-workspaces/RUN`` inside a project became the project's own repository)."""
    workspace = absolute(workspace, "--workspace")
    if (why := not_a_directory(workspace)) is not None:  # a file, a FIFO, a long name
        raise ConfigError(f"--workspace {workspace} {why}")
    if workspace.is_dir() and is_repository(workspace):
        if out("rev-parse", "--is-bare-repository", cwd=workspace) == "true":
            # it has no work tree to be the root of: `rev-parse --show-toplevel` failed,
            # and the drain ended in a GitError (exit 1) instead of saying what to give
            raise ConfigError(
                f"--workspace {workspace} is a bare repository (no work tree): give it as "
                f"--repo {workspace}, which clones it like any remote"
            )
        top = Path(out("rev-parse", "--show-toplevel", cwd=workspace) or workspace)
        if top.resolve() == workspace.resolve():
            return top
        if any(workspace.iterdir()):
            raise ConfigError(
                f"--workspace {workspace} is a directory inside the git repository {top}, not "
                f"its root: give --workspace {top} to keep the run's branch there, or a new "
                "or empty directory for a repository of the run's own."
            )
    elif workspace.is_dir() and any(workspace.iterdir()):
        refuse_unreadable(workspace)
        raise ConfigError(
            f"--workspace {workspace} holds files but is not a git repository. Autopack keeps "
            "a run's code on a git branch: make it one (`git init && git add -A && git commit "
            "-m start` there), or give a new or empty directory."
        )
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # no permission, a read-only file system
        raise ConfigError(
            f"--workspace {workspace} cannot be created: {exc.strerror or exc}"
        ) from None
    git("init", "--quiet", cwd=workspace)
    log_event(logger, "repository_created", path=workspace)
    return workspace


def cache_path(remote: str, cache_dir: Path) -> Path:
    digest = hashlib.sha256(remote.encode()).hexdigest()[:16]
    return cache_dir / "repos" / f"{digest}.git"


def cache_clone(remote: str, cache_dir: Path, *, shown: Progress) -> Path:
    """This machine's bare clone of ``remote`` (made on first use, shared by executors).

    The first clone of a large remote takes minutes: git's progress is ``shown`` as it
    comes. A clone that fails or is stopped leaves nothing behind (each one killed by the
    old fixed deadline left its half-received objects in the cache for good), and what a
    killed executor's clone left is removed by the next clone on the machine."""
    path = cache_path(remote, cache_dir)
    if path.exists():
        return path
    repos = cache_directory(path.parent, "its clones of remote repositories")
    _remove_half_clones(repos)
    _wait_for_another_clone(path, shown)
    if path.exists():
        return path
    partial = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    with _cloning(partial):
        try:
            git_with_progress(
                "clone", "--bare", "--progress", "--", remote, str(partial), cwd=repos, shown=shown
            )
            partial.rename(path)
        except OSError:  # another executor on this machine cloned it first
            shutil.rmtree(partial, ignore_errors=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    log_event(logger, "repository_cached", remote=remote, path=path)
    return path


_CLONING = ".cloning"


def _marker(partial: Path) -> Path:
    """The sign of life of the clone being made into ``partial``."""
    return partial.with_name(partial.name + _CLONING)


@contextmanager
def _cloning(partial: Path) -> Iterator[None]:
    """``PARTIAL.cloning``, a sign of life (:mod:`autopack.executor.signs`) for as long as
    this process clones into ``partial``: what a killed executor's clone left is told apart
    from another executor's clone in progress by it alone."""
    marker = _marker(partial)
    fd = sign_of_life(marker)
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)
        os.close(fd)


def _wait_for_another_clone(path: Path, shown: Progress) -> None:
    """Wait while another executor on this machine clones the same remote: executors
    started together each cloned it, and all but one clone were thrown away (a fleet's
    machine starting four fetched a large remote four times). Not once that clone has
    written nothing for :data:`~autopack.executor.git.TIMEOUT_SECONDS` (its executor
    stopped, or its remote silent): this one clones then, as before."""
    told = False
    while not path.exists():
        others = [
            partial
            for partial in path.parent.glob(f"{path.name}.*")
            if not partial.name.endswith(_CLONING) and shows_life(_marker(partial))
        ]
        if not others or time.time() - _last_write(others) > TIMEOUT_SECONDS:
            return
        if not told:
            shown.tell("another executor on this machine is cloning it: waiting for that clone")
            told = True
        time.sleep(WAIT_SECONDS)


WAIT_SECONDS = 0.5


def _last_write(partials: list[Path]) -> float:
    """When any of these clones in progress, or a file in it, last changed (git writes
    the pack it receives as it comes; a clone just begun holds no file yet)."""
    times = [0.0]
    for partial in partials:
        with contextlib.suppress(OSError):
            times.append(partial.stat().st_mtime)
        for entry in partial.rglob("*"):
            with contextlib.suppress(OSError):  # renamed or removed meanwhile
                times.append(entry.stat().st_mtime)
    return max(times)


_HALF_CLONE = re.compile(r"[0-9a-f]{16}\.git\.[0-9]+\.[0-9]+(\.cloning)?")
"""What :func:`cache_clone` names a clone in progress (``partial``) and its marker; a
marker being made is hidden (a dot first) and matches neither."""


def _remove_half_clones(repos: Path) -> None:
    """Remove what clones of killed executors left (``NAME.git.PID.NS`` and its marker):
    each kept gigabytes of half-received objects for good. A clone whose marker shows life
    is another executor's, in progress. Markers being made (hidden) are left be."""
    for entry in repos.glob("*.git.*"):
        if not _HALF_CLONE.fullmatch(entry.name):
            continue  # not a clone's (a `mine.git.bak` of a cache set to a user's directory)
        partial = entry.with_name(entry.name.removesuffix(_CLONING))
        if not shows_life(_marker(partial)):
            shutil.rmtree(partial, ignore_errors=True)
            _marker(partial).unlink(missing_ok=True)
