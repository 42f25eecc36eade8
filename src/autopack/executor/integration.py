"""A completed attempt's commit onto the run's branch: exactly once, in order, fenced.

The control plane is the one place that orders integration. A completed attempt's result
carries its commit and the head it was made on; the result is accepted only under a valid
lease *and* only if the run's accepted head is still that base (a compare-and-swap in the
same transaction, :func:`autopack.control.results.post_result`). So:

* accepted commits form one chain, each made on the head before it, and every completed
  phase's commit is on the branch exactly once;
* a stale executor's result is refused (its lease is gone) and its commit, published only
  under its attempt ref, never reaches the branch;
* when another phase was accepted meanwhile, the result is refused with
  :class:`~autopack.errors.BranchMoved`: the attempt rebases its commit onto the new head
  (re-running its checks when the branch changed files it changed too, or as the run's
  policy says) and posts again; a real conflict fails the attempt with
  ``integration_conflict`` and the phase is retried from the new head.

The attempts of one executor take turns (:class:`Integrator`): each rebases onto the head
the executor last saw accepted *before* it posts, so they do not race each other and
lose, only executors on other machines can still move the branch under them. Rebasing is
done on trees (``git merge-tree``), in milliseconds on any repository.

The commit is published under ``refs/autopack/attempts/RUN/PHASE/ATTEMPT`` before every
post, so whatever dies when, an accepted commit is reachable. The git branch then follows
the accepted head by compare-and-swap (:meth:`RunRepository.advance`); if the executor is
killed before that, whoever comes next (the next attempt's :func:`base_for`, or
``autopack run export``) fast-forwards it, idempotently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from autopack.contract import Claim, ResultAnswer
from autopack.errors import BranchMoved
from autopack.executor.git import GitError
from autopack.executor.outcome import failed
from autopack.executor.repository import IntegrationConflict, RunRepository, attempt_ref
from autopack.executor.worktrees import Worktree
from autopack.logs import log_event

logger = logging.getLogger("autopack.executor.integration")
MAX_ROUNDS = 100
"""Times an attempt follows a branch that other executors keep moving before giving up."""


class AttemptKey(Protocol):
    """Which attempt (a :class:`~autopack.contract.Claim` is one)."""

    @property
    def run_id(self) -> str: ...
    @property
    def phase_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...


Post = Callable[[str, str], ResultAnswer]
"""Post the completed result with (commit, base); raises BranchMoved or LeaseLost."""
NeedsRecheck = Callable[[list[str]], bool]
"""Whether the files the branch changed meanwhile call for running the checks again."""
Recheck = Callable[[], None]
"""Run the checks again on the rebased commit (raises Finish when they fail)."""


def base_for(repository: RunRepository, claim: Claim) -> str:
    """The commit an attempt starts from: the head the control plane accepted last (first
    bringing the git branch up to it, if a killed executor left it behind), or, before
    the run's first accepted commit, the branch's own head.

    The attempt needs the accepted head, not the git branch: when the branch cannot move
    (a ref lock a killed git left behind), that is a warning, and the attempt goes on.
    Failing it failed every later attempt of the run the same way."""
    head = claim.run.branch_head
    if head is None:
        return repository.head()
    try:
        repository.advance(head)
    except GitError as exc:
        repository.require(head)
        log_event(logger, "branch_sync_deferred", logging.WARNING, head=head, reason=exc.message)
    return head


class Integrator:
    """One executor's attempts at integrating, one at a time, and the head they last saw."""

    def __init__(self, repository: RunRepository) -> None:
        self.repository = repository
        self.head: str | None = None
        """The last head the control plane named to this executor (accepted or moved to)."""
        self._turn = threading.Lock()
        self._advancing = threading.Lock()
        self._bases: dict[str, str] = {}
        """Each commit this executor got accepted, and the head it was made on."""

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._turn:
            yield

    def deliver(
        self,
        attempt: AttemptKey,
        tree: Worktree,
        post: Post,
        needs_recheck: NeedsRecheck,
        recheck: Recheck,
    ) -> ResultAnswer:
        """Publish, post and, while the branch has moved, rebase and post again.

        Raises :class:`~autopack.executor.outcome.Finish` (``integration_conflict``) when
        the commit does not apply on the new head, or when the branch keeps moving faster
        than this attempt can follow; ``LeaseLost`` when the lease is gone.
        """
        ref = attempt_ref(attempt.run_id, attempt.phase_id, attempt.attempt)
        for _ in range(MAX_ROUNDS):
            with self.turn():
                upstream = self._rebase(attempt, tree, self.head)
                if upstream is None or not needs_recheck(upstream):
                    assert tree.commit is not None
                    self.repository.publish(tree.commit, ref)
                    try:
                        answer = post(tree.commit, tree.base)
                    except BranchMoved as moved:
                        self.head = str(moved.details.get("branch_head") or "") or None
                        continue
                    self.head = answer.branch_head
                    if answer.branch_head is not None:
                        self._bases[answer.branch_head] = tree.base
                    break
            # The branch changed files this attempt changed too: check again outside our
            # turn (checks take long, the others need not wait), then offer it again.
            tree.sync()
            recheck()
        else:
            raise failed(
                "integration_conflict",
                error=f"the run's branch kept moving: not integrated after {MAX_ROUNDS} rounds",
            )
        self._advance(attempt)
        return answer

    def _rebase(self, attempt: AttemptKey, tree: Worktree, head: str | None) -> list[str] | None:
        """Rebase onto ``head`` if the commit is not on it: the files the branch changed
        meanwhile, or None when there was nothing to do."""
        if head is None or head == tree.base:
            return None
        self.repository.require(head)
        try:
            upstream = tree.rebase(head)
        except IntegrationConflict as exc:
            raise failed(
                "integration_conflict",
                error=exc.message,
                feedback=f"Another phase changed the same lines meanwhile ({exc.message}). "
                "The next attempt starts from the branch as it is now; keep its changes.",
            ) from exc
        log_event(
            logger,
            "attempt_rebased",
            run_id=attempt.run_id,
            phase_id=attempt.phase_id,
            attempt=attempt.attempt,
            onto=head,
        )
        return upstream

    def _advance(self, attempt: AttemptKey) -> None:
        """Bring the git branch up to the newest accepted head, outside the turn.

        One thread at a time does it, for everyone: a thread that finds another at it
        leaves it its head (the branch only moves forward, so the newest head covers the
        older ones), and the one at it looks again after letting go, so no head is left
        behind. If git fails now, the commit is safe under its attempt ref and the next
        one to come integrates it.
        """
        while (head := self.head) is not None:
            if not self._advancing.acquire(blocking=False):
                return  # the thread advancing looks at self.head again when it is done
            try:
                self.repository.advance(head, on=self._bases.pop(head, None))
            except GitError as exc:
                log_event(
                    logger,
                    "branch_sync_deferred",
                    logging.WARNING,
                    run_id=attempt.run_id,
                    head=head,
                    reason=exc.message,
                )
                return
            finally:
                self._advancing.release()
            if self.head == head:
                return
