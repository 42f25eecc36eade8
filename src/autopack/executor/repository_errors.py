"""Why git failed when the phase is not the cause: the repository gone, its remote
silent, the run's head missing here, a required filter with no driver. Each stops the
drain with the phase handed back (its attempt spends no try), where an attempt's
``git_error`` would fail attempt after attempt until the phase had used its tries: the
next drain, or an executor that can, does the phase."""

from __future__ import annotations

import re
from pathlib import Path

from autopack.executor.git import GitError, git


class RepositoryGone(GitError):
    """The repository this executor works in was removed under it (a wiped cache): not the
    phase's failure. Every attempt after it failed ``git_error`` until the phase had used
    its tries and the rest of the run was SKIPPED; the drain stops instead, handing its
    phases back, and the next drain clones again (or names the missing workspace)."""


class RemoteUnreachable(RepositoryGone):
    """The run's remote does not answer (its host down, the network gone, the repository
    moved). Not the phase's failure either: every attempt failed ``git_error`` at once, a
    few seconds of outage spent every phase's tries and the run ended
    DONE_FAILED_PHASES, a completed attempt's work with it. The drain stops and hands the
    phase back; the next drain goes on once the remote answers."""


class HeadElsewhere(RepositoryGone):
    """A commit the control plane accepted is not in this executor's repository, nor on
    its remote: another executor completed a phase in a repository this one does not
    share (``--workspace`` on two machines, or two workspaces on one). Not the phase's
    failure either: each attempt here failed ``git_error``, spending the phase's tries
    until it FAILED while an executor working in the run's repository could have done
    it. The drain stops and hands the phase back, naming the problem."""


class FilterMissing(RepositoryGone):
    """The repository's configuration requires a git filter (``filter.NAME.required``: git
    LFS, git-crypt) that this machine has no driver for, so git can neither store nor
    check out the files it covers. Not the phase's failure: each attempt failed
    ``git_error`` after paying for an answer, until the phase had used its tries. The
    drain stops and hands the phase back, naming the filter; a machine with the driver
    installed does the phase."""


_FILTER_FAILED = re.compile(r"(?:clean|smudge) filter '([^'\n]+)' failed")


def refused_by_remote(message: str) -> bool:
    """Did the remote itself refuse a push (its pre-receive or update hook, a server's
    branch rule: ``! [remote rejected] REF (pre-receive hook declined)``), rather than find
    the ref moved? Read as a move, a refusal was pushed again and again: the branch was
    never created (every phase failed "no branch") or never advanced (the drain ended
    saying "the branch kept moving"), git's reason nowhere. A ref updated meanwhile on the
    remote side is ``(failed to update ref)`` (``failed to lock`` from older gits): a move,
    retried."""
    return any(
        "[remote rejected]" in line
        and "failed to update ref" not in line
        and "failed to lock" not in line
        for line in message.splitlines()
    )


def missing_filter(failure: GitError, path: Path) -> str | None:
    """The filter ``failure`` says failed when the repository at ``path`` has no driver
    for it (no ``filter.NAME.clean``, ``.smudge`` or ``.process``), else None: a driver
    that is configured and failed may have failed on the answer's files, the phase's
    failure, told to the Builder."""
    found = _FILTER_FAILED.search(failure.message)
    if found is None:
        return None
    name = found.group(1)
    pattern = rf"^filter\.{re.escape(name)}\.(clean|smudge|process)$"
    drivers = git("config", "--get-regexp", pattern, cwd=path, check=False)
    return None if drivers.returncode == 0 and drivers.stdout.strip() else name
