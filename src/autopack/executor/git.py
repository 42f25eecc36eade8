"""Running git: one function, one error that names the command and git's own message.

Every git command Autopack runs goes through :func:`git`, with prompts disabled (a
missing credential is an error, never a hang), hooks and signing off (Autopack's commits
are machine-made), merges that keep files at the paths attempts wrote, and an identity
of its own when the repository has none. A failure is
a :class:`GitError` whose message names the command and what git said, which the
attempt records as its stop reason: it never deletes work and never leaves a run stuck.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from autopack.errors import AutopackError
from autopack.paths import is_git_directory
from autopack.redact import CREDENTIALS

IDENTITY = ("-c", "user.name=Autopack", "-c", "user.email=autopack@localhost")
_QUIET = ("-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false", "-c", "gc.auto=0")
# The person's end-of-line conversion still applies to what Autopack commits, but not its
# refusal: with ``core.safecrlf=true`` beside ``core.autocrlf=true`` (or an ``eol=crlf``
# attribute) git refused to add any file the Builder wrote with LF endings ("LF would be
# replaced by CRLF"), so every attempt of every phase failed ``git_error`` and the run with
# them, its checks passed and its answers paid for.
_CRLF = ("-c", "core.safecrlf=false")
# A person's global settings that Autopack's clone and pushes must not take:
# ``clone.defaultRemoteName`` named the cache clone's remote something other than the
# ``origin`` every later fetch and push names (each --repo drain: exit 2, "'origin' does not
# appear to be a git repository"), and ``push.gpgSign=true`` asked every remote for a
# signed push most refuse ("the receiving end does not support --signed push"), or a key.
_REMOTES = ("-c", "clone.defaultRemoteName=origin", "-c", "push.gpgSign=false")
# ``submodule.recurse=true`` (a common global setting) made the checkouts of Autopack's
# worktrees recurse into a repository's submodules, which attempts never read or write
# (a file inside one cannot be committed): a reused slot's ``checkout --force --detach``
# failed "not a git repository: …/worktrees/slot-…/modules/NAME", failing attempts
# ``git_error`` at random until phases ran out of them.
_SUBMODULES = ("-c", "submodule.recurse=false")
# A file an attempt adds stays at the path its deliverables contract names, whatever the
# user's git config says: directory-rename detection would move it into the directory's
# new name ("true") or report a conflict a retry under the same contract meets again.
_MERGES = ("-c", "merge.directoryRenames=false")
TIMEOUT_SECONDS = 300.0
# Variables that name a repository other than the directory git runs in (git's own list,
# `git rev-parse --local-env-vars`, less the user's -c settings). Inherited from a git
# hook or an `export GIT_DIR=...`, they made every command of a drain act on that
# repository instead: its HEAD detached, its index and work tree rewritten to the run's
# files.
_REPOSITORY_VARIABLES = frozenset(
    {
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_CONFIG",
        "GIT_DIR",
        "GIT_GRAFT_FILE",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_INTERNAL_SUPER_PREFIX",
        "GIT_NO_REPLACE_OBJECTS",
        "GIT_OBJECT_DIRECTORY",
        "GIT_PREFIX",
        "GIT_REPLACE_REF_BASE",
        "GIT_SHALLOW_FILE",
        "GIT_WORK_TREE",
    }
)


class GitError(AutopackError):
    """A git command failed; the message names the command and git's answer.

    Within an attempt it is the attempt's outcome (``git_error``); one that reaches a
    command's end (a ``--repo`` nothing answers at, a repository gone) stopped the command
    before any phase could fail: exit 2, as for a provider it cannot use, not the 1 that
    says a phase failed."""

    exit_code = 2

    def __init__(self, command: Sequence[str], message: str) -> None:
        shown = " ".join(command)
        super().__init__(f"git {shown}: {message.strip() or 'failed'}", command=shown)
        self.command = shown


def local_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without credentials and without the variables that point git at another
    repository, so git run in a directory (by Autopack, or by a phase's check) means that
    directory's repository and sees no key."""
    return {
        k: v for k, v in environ.items() if k not in _REPOSITORY_VARIABLES and k not in CREDENTIALS
    }


def git(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git ARGS`` in ``cwd``; raise :class:`GitError` on a non-zero exit if ``check``."""
    try:
        result = subprocess.run(
            _command(args),
            cwd=cwd,
            env=_environment(env, cwd),
            # never the user's terminal: `git mktree` (the empty tree of a new workspace)
            # read it, so a drain waited for Ctrl-D and failed on whatever was typed
            input=input if input is not None else b"",
            capture_output=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError as exc:
        raise _not_started(args, cwd) from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(args, f"no answer within {TIMEOUT_SECONDS:g} s") from exc
    if check and result.returncode != 0:
        raise GitError(args, result.stderr.decode(errors="replace") or result.stdout.decode())
    return result


class Progress(Protocol):
    """Where git's progress is shown as it comes."""

    def update(self, line: str) -> None:
        """A line the next one replaces ("Receiving objects:  42% (…)")."""

    def tell(self, line: str) -> None:
        """A line to keep: a step's last ("…, done."), or what Autopack itself says."""


class Unshown:
    """Progress nobody is shown."""

    def update(self, line: str) -> None:
        pass

    def tell(self, line: str) -> None:
        pass


UNSHOWN = Unshown()


def git_with_progress(
    *args: str, cwd: Path, shown: Progress, silent_seconds: float = TIMEOUT_SECONDS
) -> None:
    """``git ARGS`` for work that takes as long as it takes (the first clone of a large
    remote): each line of git's progress is ``shown`` as it comes, and git is given up
    only once it has been silent for ``silent_seconds``. A fixed deadline failed every
    clone slower than it, however steadily it went, and the user saw nothing meanwhile.
    ``ARGS`` must ask for the progress (``--progress``): git prints none into a pipe."""
    try:
        process = subprocess.Popen(
            _command(args),
            cwd=cwd,
            env=_environment(None, cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise _not_started(args, cwd) from exc
    with process:  # its pipe closed, and git waited for, on every way out
        try:
            assert process.stderr is not None
            told = _relay(process.stderr, shown, silent_seconds, args)
        finally:
            if process.poll() is None:
                process.kill()
    if process.returncode != 0:
        raise GitError(args, "\n".join(told))


def _relay(
    stream: IO[bytes], shown: Progress, silent_seconds: float, args: Sequence[str]
) -> list[str]:
    """Each line git writes on ``stream``, ``shown``, until git closes it; the last
    finished ones (not the "…42%\\r" updates), which say what went wrong when git fails."""
    told: deque[str] = deque(maxlen=20)
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while True:
            if not selector.select(silent_seconds):
                raise GitError(args, f"nothing from git for {silent_seconds:g} s")
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return list(told)
            pending += chunk
            for line, end in _LINE.findall(pending):
                text = line.decode(errors="replace").strip()
                if text and end == b"\n":
                    shown.tell(text)
                    told.append(text)
                elif text:
                    shown.update(text)
            pending = _LINE.sub(b"", pending)  # what is left: a line still coming


_LINE = re.compile(rb"([^\r\n]*)([\r\n])")
"""A line of git's progress: ``\r`` ends an update of the same line, ``\n`` its last."""


def _command(args: Sequence[str]) -> list[str]:
    return ["git", *IDENTITY, *_QUIET, *_CRLF, *_REMOTES, *_SUBMODULES, *_MERGES, *args]


def _environment(env: Mapping[str, str] | None, cwd: Path) -> dict[str, str]:
    """git's environment for a command in ``cwd``. A bare repository (the cache's clone
    of a ``--repo``) is named in ``GIT_DIR``: found from the working directory instead, a
    person's ``safe.bareRepository=explicit`` (a hardening setting) refused it, and
    every --repo drain with it."""
    bare = {"GIT_DIR": str(cwd)} if is_git_directory(cwd) else {}
    return {
        **local_environment(os.environ),
        **bare,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "LC_ALL": "C",
        # Objects as they are: a check can write ``refs/replace/`` (``git replace HEAD
        # X``), and Autopack's next commit, made from the head's tree, took X's instead.
        "GIT_NO_REPLACE_OBJECTS": "1",
        # ... nor grafts (``info/grafts``, parents rewritten): one a check wrote made every
        # later rebase of the run's attempts fail. A path no file can be at.
        "GIT_GRAFT_FILE": os.path.join(os.devnull, "grafts"),
        **(env or {}),
    }


def _not_started(args: Sequence[str], cwd: Path) -> GitError:
    if not cwd.is_dir():  # subprocess says the same for a missing cwd as for no git
        return GitError(
            args,
            f"the directory {cwd} does not exist (removed while this executor used it? "
            "an executor's cache must outlive its drains)",
        )
    return GitError(args, "git is not installed (no `git` on PATH)")


def out(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> str:
    """``git ARGS``'s standard output, stripped."""
    return git(*args, cwd=cwd, env=env).stdout.decode().strip()
