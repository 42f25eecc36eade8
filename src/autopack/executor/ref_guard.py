"""The run's refs, put back when a phase's checks moved, deleted or blocked them.

Checks run the LLM's code in a checkout of the repository that holds the run's branch
(or of the executor's cache of the remote that does, with the executor user's
credentials for it), and git lets any process there write any ref. A check that moved the
run's branch to a commit of its own, made on the accepted head, had the branch carry a
commit the control plane never accepted (Autopack found the branch "past" the head it was
asked to reach and left it there); one that deleted the branch and the attempt refs left
the run's completed commits reachable from nothing, for the next ``git gc`` to delete.

So the run's branch and attempt refs are read before the checks and after them: in the
local repository, or on the remote (``git ls-remote``, one round trip each). What the
checks may not do to them, and what is done about it:

* **Move the branch** other than forward to a head the control plane accepted (attempts
  beside this one integrate while its checks run): back to an older accepted head too
  (completed commits then left the branch its summary said was at them). It is put back
  by compare-and-swap (``update-ref NEW OLD``, ``push --force-with-lease``), then brought
  up to the accepted head by the repository's own advance when an attempt beside it had
  moved it there.
* **Make the branch a symbolic ref** naming another (a person's ``main``): git writes
  through one, and Autopack moved ``main`` behind its checkout's files. It is put back as
  a plain ref, and Autopack writes the run's refs with ``--no-deref``.
* **Delete an attempt ref**: written again. A *moved* attempt ref is left: attempts
  publish their rebased commits under their refs while checks run, and the accepted
  commits stay reachable from the branch.
* **Leave a lock file** on one of these refs (``BRANCH.lock``): git refused every later
  write of the ref, the branch's silently and a later attempt's publishing on every try.
  Removed (in a local repository; every process of the checks is gone by then).
* **Check the branch out in one of Autopack's checkouts** (the attempt's own, or one
  beside it: writing its ``HEAD``): Autopack brings a checkout of the branch along when
  it moves it (:mod:`autopack.executor.checkouts`); this one, holding an attempt's files,
  could not follow, so the branch stayed behind for as long as the checkout was kept, and
  the attempt working there failed. The checkout is detached again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from autopack.errors import AutopackError
from autopack.executor.checkouts import checkouts
from autopack.executor.git import GitError, git, out
from autopack.executor.repository import ATTEMPT_REFS, REMOTE, RunRepository
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
    """The refs among them that are symbolic, and the ref each names (local only)."""


def _refs(repository: RunRepository, branch: str, attempts: str) -> _Refs:
    """The run's branch and attempt refs (``attempts`` is their prefix), where they live."""
    found = _Refs({}, {})
    if repository.remote:
        listed = out("ls-remote", REMOTE, branch, f"{attempts}*", cwd=repository.path)
        for sha, ref in (line.split("\t", 1) for line in listed.splitlines()):
            # ls-remote matches a pattern's tail: refs/x/refs/heads/B is not the branch
            if ref == branch or ref.startswith(attempts):
                found.commits[ref] = sha
        return found
    listed = out(
        "for-each-ref",
        "--format=%(objectname) %(refname) %(symref)",
        branch,
        attempts,
        cwd=repository.path,
    )
    # a refname holds no space; the last line of a plain ref ends without one (out strips)
    for sha, ref, *target in (line.split(" ") for line in listed.splitlines()):
        found.commits[ref] = sha
        if any(target):
            found.symbolic[ref] = target[0]
    return found


def _swap(repository: RunRepository, ref: str, new: str, old: str | None) -> str | None:
    """Set ``ref`` (never what it names) to ``new`` if it is at ``old`` (None: absent);
    git's refusal, or None."""
    if repository.remote:
        try:
            repository.require(new)  # a push sends it from here
        except GitError as exc:
            return exc.message
        lease = f"--force-with-lease={ref}:{old or ''}"
        done = git(
            "push", "--quiet", lease, REMOTE, f"{new}:{ref}", cwd=repository.path, check=False
        )
    else:
        done = git(
            "update-ref", "--no-deref", ref, new, old or "", cwd=repository.path, check=False
        )
    return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip()


@contextmanager
def refs_restored(
    repository: RunRepository, run_id: str, accepted: Callable[[], str | None], checkout: Path
) -> Iterator[RefChanges]:
    """Put the run's branch and attempt refs back after the block as the module says;
    ``accepted`` asks the control plane for the run's accepted head (only when the branch
    moved); ``checkout`` is the attempt's, where the checks ran, in its pool's directory."""
    changes = RefChanges()
    branch, attempts = f"refs/heads/{repository.branch}", f"{ATTEMPT_REFS}/{run_id}/"
    before = _refs(repository, branch, attempts).commits
    locks = _locks(repository, branch, attempts)
    try:
        yield changes
    finally:
        if repository.path.is_dir():  # else the repository is gone (check_present says so)
            # detached first: a checkout holding the branch is one the branch waits for
            changes.changed = _detached(repository, checkout, branch)
            changes.changed += _unlocked(repository, branch, attempts, locks)
            changes.changed += _put_back(repository, before, branch, attempts, accepted)


def _locks(repository: RunRepository, branch: str, attempts: str) -> set[Path]:
    """The lock files git holds (or a process left) on the run's local refs."""
    if repository.remote:  # the remote's own are on its disk, out of reach here
        return set()
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


def _detached(repository: RunRepository, checkout: Path, branch: str) -> list[str]:
    """Detach each of Autopack's checkouts whose HEAD names the branch (the checks' doing:
    Autopack keeps them detached): the attempt's own, and the others of its pool, the
    directory it is in (another attempt's, a kept one). What the checks did, if so. A
    person's work tree is left: the branch follows it (:mod:`~autopack.executor.checkouts`)."""
    pool = Path(os.path.realpath(checkout.parent))
    said = []
    with repository.locked():
        for tree in checkouts(repository.common_dir(), repository.path, repository.branch):
            if not Path(os.path.realpath(tree)).is_relative_to(pool):
                continue
            detached = git("update-ref", "--no-deref", "HEAD", "HEAD", cwd=tree, check=False)
            left = detached.stderr.decode(errors="replace").strip()
            said.append(
                f"{branch} checked out in Autopack's checkout {tree.name}"
                + (f" (left: {left})" if left else "")
            )
    return said


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
            refused = _swap(repository, ref, before[ref], None)
            changed.append(f"{ref} deleted" + (f" (not put back: {refused})" if refused else ""))
    old = before.get(branch)
    if old is not None:  # else no branch before the checks: nothing of the run's to put back
        moved = _branch_back(repository, branch, old, now, accepted)
        if moved:
            changed.append(moved)
            _catch_up(repository, old, accepted)
    return changed


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
            refused = _swap(repository, branch, old, head)
        did = f"{branch} {'deleted' if head is None else f'moved to {head[:12]}'}"
        did += f" (made a symbolic ref to {target})" if target else ""
        if refused is None:
            log_event(logger, "branch_put_back", logging.WARNING, branch=branch, was=head, now=old)
            return did
        now = _refs(repository, branch, branch)
        if (now.commits.get(branch), now.symbolic.get(branch)) == (head, target):
            # not moved meanwhile: git refused (a ref the check left in the way)
            return f"{did} (not put back: {refused})"
    return f"{branch} kept moving (left at {str(now.commits.get(branch))[:12]})"


def _forward(repository: RunRepository, old: str, head: str, last: str | None) -> bool:
    """Whether the branch's move from ``old`` to ``head`` is one Autopack makes: forward, to
    a head on the run's accepted line (at or behind ``last``, the head the control plane
    accepted last)."""
    if last is None:
        return False
    if repository.remote and not repository.has(head):
        with suppress(GitError):  # another machine's head: fetched, it can be judged
            repository.fetch()
    return repository.is_ancestor(old, head) and (
        head == last or repository.is_ancestor(head, last)
    )


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


def _last_accepted(accepted: Callable[[], str | None]) -> str | None:
    """The run's accepted head, or None when there is none or the control plane cannot
    tell (then the head before the checks is the safe one)."""
    try:
        return accepted()
    except AutopackError as exc:
        log_event(logger, "accepted_head_unknown", logging.WARNING, reason=exc.message)
        return None
