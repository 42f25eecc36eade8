"""The run's refs, put back when a phase's checks moved or deleted them.

Checks run the LLM's code in a checkout of the repository that holds the run's branch
(or of the executor's cache of the remote that does, with the executor user's
credentials for it), and git lets any process there write any ref. A check that moved the
run's branch to a commit of its own, made on the accepted head, had the branch carry a
commit the control plane never accepted (Autopack found the branch "past" the head it was
asked to reach and left it there); one that deleted the branch and the attempt refs left
the run's completed commits reachable from nothing, for the next ``git gc`` to delete.

So the run's branch and attempt refs are read before the checks and after them: in the
local repository, or on the remote (``git ls-remote``: one round trip each). The branch
may have moved meanwhile only to a head the control plane accepted (attempts beside this
one integrate while its checks run); anywhere else, or gone, it is put back by
compare-and-swap (``update-ref NEW OLD``, ``push --force-with-lease``). A deleted attempt
ref is written again. A moved attempt ref is left: attempts publish their rebased commits
under their refs while checks run, and the accepted commits stay reachable from the
branch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from autopack.errors import AutopackError
from autopack.executor.git import GitError, git, out
from autopack.executor.repository import ATTEMPT_REFS, REMOTE, RunRepository
from autopack.logs import log_event

logger = logging.getLogger("autopack.executor.ref_guard")
RESTORE_TRIES = 5


@dataclass
class RefChanges:
    """What the checks changed among the run's refs, as sentences (empty: nothing)."""

    changed: list[str] = field(default_factory=list)


def _refs(repository: RunRepository, branch: str, attempts: str) -> dict[str, str]:
    """The run's branch and attempt refs (``attempts`` is their prefix), where they live."""
    if repository.remote:
        listed = out("ls-remote", REMOTE, branch, f"{attempts}*", cwd=repository.path)
        pairs = [line.split("\t", 1) for line in listed.splitlines()]
    else:
        listed = out(
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            branch,
            attempts,
            cwd=repository.path,
        )
        pairs = [line.split(" ", 1) for line in listed.splitlines()]
    # ls-remote matches a pattern's tail: refs/x/refs/heads/B is not the branch
    return {ref: sha for sha, ref in pairs if ref == branch or ref.startswith(attempts)}


def _swap(repository: RunRepository, ref: str, new: str, old: str | None) -> str | None:
    """Set ``ref`` to ``new`` if it is at ``old`` (None: absent); git's refusal, or None."""
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
        done = git("update-ref", ref, new, old or "", cwd=repository.path, check=False)
    return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip()


@contextmanager
def refs_restored(
    repository: RunRepository, run_id: str, accepted: Callable[[], str | None]
) -> Iterator[RefChanges]:
    """Put the run's branch and attempt refs back after the block when it moved the branch
    off the accepted line or deleted them; ``accepted`` asks the control plane for the
    run's accepted head (asked only when the branch moved)."""
    changes = RefChanges()
    branch, attempts = f"refs/heads/{repository.branch}", f"{ATTEMPT_REFS}/{run_id}/"
    before = _refs(repository, branch, attempts)
    try:
        yield changes
    finally:
        if repository.path.is_dir():  # else the repository is gone (check_present says so)
            changes.changed = _put_back(repository, before, branch, attempts, accepted)


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
        for ref in (r for r in before if r not in now and r != branch):
            refused = _swap(repository, ref, before[ref], None)
            changed.append(f"{ref} deleted" + (f" (not put back: {refused})" if refused else ""))
    old = before.get(branch)
    if old is not None:  # else no branch before the checks: nothing of the run's to put back
        moved = _branch_back(repository, branch, old, now.get(branch), accepted)
        changed += [moved] if moved else []
    return changed


def _branch_back(
    repository: RunRepository,
    branch: str,
    old: str,
    head: str | None,
    accepted: Callable[[], str | None],
) -> str | None:
    """Put the branch back at ``old`` unless it is there or on the accepted line; what the
    checks did to it, or None."""
    for _ in range(RESTORE_TRIES):
        if head == old or (head is not None and _accepted(repository, head, accepted)):
            return None
        with repository.locked():
            refused = _swap(repository, branch, old, head)
        did = f"{branch} {'deleted' if head is None else f'moved to {head[:12]}'}"
        if refused is None:
            log_event(logger, "branch_put_back", logging.WARNING, branch=branch, was=head, now=old)
            return did
        now = _refs(repository, branch, branch).get(branch)
        if now == head:  # not moved meanwhile: git refused (a lock the check left)
            return f"{did} (not put back: {refused})"
        head = now  # it moved meanwhile: judge the new head
    return f"{branch} kept moving (left at {str(head)[:12]})"


def _accepted(repository: RunRepository, head: str, accepted: Callable[[], str | None]) -> bool:
    """Whether the branch at ``head`` is on the run's accepted line (at or behind the head
    the control plane accepted last): where Autopack itself moves it."""
    try:
        last = accepted()
    except AutopackError as exc:  # cannot tell: the head before the checks is safe
        log_event(logger, "accepted_head_unknown", logging.WARNING, reason=exc.message)
        return False
    if last is None:
        return False
    if head != last and repository.remote and not repository.has(head):
        with suppress(GitError):  # another machine's head: fetched, it can be judged
            repository.fetch()
    return head == last or repository.is_ancestor(head, last)
