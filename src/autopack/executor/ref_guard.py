"""A local workspace's run refs, put back when a phase's checks moved or deleted them.

Checks run the LLM's code in a checkout of the repository that holds the run's branch,
and git lets any process there write any ref. A check that moved the run's branch to a
commit of its own, made on the accepted head, had the branch carry a commit the control
plane never accepted (Autopack found the branch "past" the head it was asked to reach
and left it there); one that deleted the branch and the attempt refs left the run's
completed commits reachable from nothing, for the next ``git gc`` to delete.

So the run's branch and attempt refs are read before the checks and after them. The
branch may have moved meanwhile only forward, to a head the control plane accepted
(attempts beside this one integrate while its checks run); anywhere else, back to an
older accepted head too, or gone, it is put back by compare-and-swap, then brought up to
the accepted head by Autopack's own advance when an attempt beside it had moved it
there. A deleted attempt ref is written again. A moved attempt ref is left: attempts
publish their rebased commits under their refs while checks run, and the accepted
commits stay reachable from the branch. A lock file the checks left on one of these refs
(``BRANCH.lock``) is removed: git refused every later write of that ref, the branch's
silently (it stopped following the accepted head) and a later attempt's publishing of
its commit (the phase failed ``git_error`` as often as it was tried). A branch made a
symbolic ref (``git symbolic-ref``, naming another ref) is put back as a plain one
wherever its target is: git writes through a symbolic ref, and the branch naming the
person's ``main`` had Autopack move ``main`` to each accepted head, behind the files of
the checkout that has it. The attempt's own checkout, detached by Autopack, is detached
again when the checks checked out the branch in it: Autopack brings a checkout of the
branch along when it moves the branch (:mod:`autopack.executor.checkouts`), and this
one, holding the attempt's files, could not follow, so the branch stayed behind as long
as a failed attempt's checkout was kept for inspection (an hour). A remote run's refs
live on the remote, which the cache's copies are fetched from again before use; they are
not guarded here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from autopack.errors import AutopackError
from autopack.executor.git import GitError, git, out
from autopack.executor.repository import ATTEMPT_REFS, RunRepository
from autopack.logs import log_event

logger = logging.getLogger("autopack.executor.ref_guard")
RESTORE_TRIES = 5


@dataclass
class RefChanges:
    """What the checks changed among the run's refs, as sentences (empty: nothing)."""

    changed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Refs:
    """The run's refs as git lists them."""

    commits: dict[str, str]
    """Each of the run's refs and the commit it names (through a symbolic one: its target's)."""
    symbolic: dict[str, str]
    """The refs among them that are symbolic, and the ref each names."""


def _refs(repository: RunRepository, branch: str, attempts: str) -> _Refs:
    listed = out(
        "for-each-ref",
        "--format=%(objectname) %(refname) %(symref)",
        branch,
        attempts,
        cwd=repository.path,
    )
    found = _Refs({}, {})
    # a refname holds no space; the last line of a plain ref ends without one (out strips)
    for sha, ref, *target in (line.split(" ") for line in listed.splitlines()):
        found.commits[ref] = sha
        if any(target):
            found.symbolic[ref] = target[0]
    return found


@contextmanager
def refs_restored(
    repository: RunRepository, run_id: str, accepted: Callable[[], str | None], checkout: Path
) -> Iterator[RefChanges]:
    """Put the run's branch and attempt refs back after the block when it moved the branch
    as Autopack does not, deleted them or left lock files on them, and detach ``checkout``
    (the attempt's) when it checked out the branch there; ``accepted`` asks the control
    plane for the run's accepted head (asked only when the branch moved)."""
    changes = RefChanges()
    if repository.remote:
        yield changes
        return
    branch, attempts = f"refs/heads/{repository.branch}", f"{ATTEMPT_REFS}/{run_id}/"
    before = _refs(repository, branch, attempts).commits
    locks = _locks(repository, branch, attempts)
    try:
        yield changes
    finally:
        if repository.path.is_dir():  # else the repository is gone (check_present says so)
            changes.changed = _unlocked(repository, branch, attempts, locks)
            changes.changed += _put_back(repository, before, branch, attempts, accepted)
            changes.changed += _detached(checkout, branch)


def _locks(repository: RunRepository, branch: str, attempts: str) -> set[Path]:
    """The lock files git holds (or a process left) on the run's refs."""
    common = repository.common_dir()
    return {*(common / attempts).rglob("*.lock"), *common.glob(f"{branch}.lock")}


def _unlocked(
    repository: RunRepository, branch: str, attempts: str, before: set[Path]
) -> list[str]:
    """Remove the lock files on the run's refs that the checks left (every process of
    theirs is gone, and Autopack's own ref writes wait for the repository lock held here);
    what was removed."""
    removed = []
    with repository.locked():
        for lock in sorted(_locks(repository, branch, attempts) - before):
            try:
                lock.unlink()
            except OSError as exc:  # a directory of that name: git fails on it all the same
                removed.append(f"{lock.name} left on a ref (not removed: {exc.strerror})")
                continue
            removed.append(f"{lock.name} left on a ref")
    return removed


def _detached(checkout: Path, branch: str) -> list[str]:
    """Detach ``checkout``'s HEAD when it names the branch; what the checks did, if so."""
    if not checkout.is_dir():  # the checks removed it: nothing there holds the branch
        return []
    named = git("symbolic-ref", "--quiet", "HEAD", cwd=checkout, check=False)
    if named.stdout.decode().strip() != branch:
        return []
    detached = git("update-ref", "--no-deref", "HEAD", "HEAD", cwd=checkout, check=False)
    said = detached.stderr.decode(errors="replace").strip()
    return [
        f"{branch} checked out in the attempt's checkout" + (f" (left: {said})" if said else "")
    ]


def _put_back(
    repository: RunRepository,
    before: dict[str, str],
    branch: str,
    attempts: str,
    accepted: Callable[[], str | None],
) -> list[str]:
    now = _refs(repository, branch, attempts)
    changed = []
    with repository.locked():
        for ref in (r for r in before if r not in now.commits and r != branch):
            written = git(
                "update-ref", "--no-deref", ref, before[ref], "", cwd=repository.path, check=False
            )
            said = written.stderr.decode(errors="replace").strip()
            changed.append(f"{ref} deleted" + (f" (not put back: {said})" if said else ""))
    old = before.get(branch)
    if old is not None:  # else no branch before the checks: nothing of the run's to put back
        moved = _branch_back(repository, branch, old, now, accepted)
        if moved:
            changed.append(moved)
            _catch_up(repository, old, accepted)
    return changed


def _catch_up(repository: RunRepository, old: str, accepted: Callable[[], str | None]) -> None:
    """Bring the branch, put back at ``old``, up to the run's accepted head when that
    contains ``old`` (another attempt got it accepted, and moved the branch there, while
    the checks ran): the executor that had moved it there did not look at it again, and
    the drain ended with that commit off the branch its summary said was at it. By the
    repository's own advance, so a person's checkout of the branch follows it (or the
    branch waits for that checkout, and says so)."""
    last = _last_accepted(accepted)
    if last is None or last == old or not repository.has(last):
        return
    if repository.is_ancestor(old, last):
        repository.moved_elsewhere()
        try:
            repository.advance(last)
        except GitError as exc:  # the next advance tries again
            log_event(logger, "branch_sync_deferred", logging.WARNING, reason=exc.message)


def _branch_back(
    repository: RunRepository,
    branch: str,
    old: str,
    now: _Refs,
    accepted: Callable[[], str | None],
) -> str | None:
    """Put the branch back at ``old``, as a plain ref, unless it is one that stayed there
    or moved only as Autopack moves it; what the checks did to it, or None."""
    for _ in range(RESTORE_TRIES):
        head, target = now.commits.get(branch), now.symbolic.get(branch)
        if target is None and head == old:
            return None
        last = _last_accepted(accepted)  # asked again for each head: attempts move it too
        if target is None and head is not None and _forward(repository, old, head, last):
            return None
        with repository.locked():
            swapped = git(
                "update-ref",
                "--no-deref",
                branch,
                old,
                head or "",
                cwd=repository.path,
                check=False,
            )
        did = f"{branch} {'deleted' if head is None else f'moved to {head[:12]}'}"
        did += f" (made a symbolic ref to {target})" if target else ""
        if swapped.returncode == 0:
            log_event(logger, "branch_put_back", logging.WARNING, branch=branch, was=head, now=old)
            return did
        now = _refs(repository, branch, branch)
        if (now.commits.get(branch), now.symbolic.get(branch)) == (head, target):
            # not moved meanwhile: git refused (a ref the check left in the way)
            return f"{did} (not put back: {swapped.stderr.decode(errors='replace').strip()})"
    return f"{branch} kept moving (left at {str(now.commits.get(branch))[:12]})"


def _forward(repository: RunRepository, old: str, head: str, last: str | None) -> bool:
    """Whether the branch's move from ``old`` to ``head`` is one Autopack makes: forward, to
    a head on the run's accepted line (at or behind ``last``, the head the control plane
    accepted last). Autopack never moves it back; a check that did left the completed
    commits past ``head`` off the branch when the drain ended, which its summary said was
    at them."""
    return (
        last is not None
        and repository.is_ancestor(old, head)
        and (head == last or repository.is_ancestor(head, last))
    )


def _last_accepted(accepted: Callable[[], str | None]) -> str | None:
    """The run's accepted head, or None when there is none or the control plane cannot
    tell (then the head before the checks is the safe one)."""
    try:
        return accepted()
    except AutopackError as exc:
        log_event(logger, "accepted_head_unknown", logging.WARNING, reason=exc.message)
        return None
