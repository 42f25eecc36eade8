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

The commit is published under ``refs/autopack/attempts/RUN/PHASE/ATTEMPT`` before every
post, so whatever dies when, an accepted commit is reachable. The git branch then follows
the accepted head by compare-and-swap (:meth:`RunRepository.advance`); if the executor is
killed before that, whoever comes next (the next attempt's :func:`base_for`, or
``autopack run export``) fast-forwards it, idempotently.
"""

from __future__ import annotations

import logging

from autopack.contract import Claim, ResultAnswer
from autopack.errors import BranchMoved
from autopack.executor.git import GitError
from autopack.executor.outcome import failed
from autopack.executor.repository import IntegrationConflict, RunRepository, attempt_ref
from autopack.executor.worktrees import Worktree
from autopack.logs import log_event

logger = logging.getLogger("autopack.executor.integration")
MAX_REBASES = 100
"""Rounds an attempt follows a moving branch before giving up. Each round is cheap when
files do not overlap (a rebase, a push, a post), and attempts that finish at the same
moment take turns: one wins each round, so a bound in the tens would fail busy runs."""


def base_for(repository: RunRepository, claim: Claim) -> str:
    """The commit an attempt starts from: the head the control plane accepted last (first
    bringing the git branch up to it, if a killed executor left it behind), or, before
    the run's first accepted commit, the branch's own head."""
    head = claim.run.branch_head
    if head is None:
        return repository.head()
    repository.advance(head)
    return head


class Delivery:
    """One completed attempt's commit on its way to the branch."""

    def __init__(self, repository: RunRepository, claim: Claim, tree: Worktree) -> None:
        self.repository = repository
        self.claim = claim
        self.tree = tree
        self.rebases = 0

    def publish(self, commit: str) -> None:
        """Make the commit durable under the attempt's ref before its result is posted."""
        claim = self.claim
        self.repository.publish(commit, attempt_ref(claim.run_id, claim.phase_id, claim.attempt))

    def rebase(self, moved: BranchMoved) -> tuple[str, list[str]]:
        """Replay the commit on the head named by ``moved``: (new commit, files the branch
        changed meanwhile). Raises :class:`Finish` (``integration_conflict``) when it does
        not apply, or when the branch keeps moving faster than this attempt can follow."""
        self.rebases += 1
        head = str(moved.details.get("branch_head") or "")
        if not head or self.rebases > MAX_REBASES:
            raise failed(
                "integration_conflict",
                error=f"the run's branch moved {self.rebases} times while this attempt was "
                "being integrated",
            )
        self.repository.require(head)
        try:
            upstream = self.tree.rebase(head)
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
            run_id=self.claim.run_id,
            phase_id=self.claim.phase_id,
            attempt=self.claim.attempt,
            onto=head,
        )
        return self.tree.head(), upstream

    def integrated(self, answer: ResultAnswer) -> None:
        """Bring the git branch up to the accepted head; if git fails now, the commit is
        safe under its attempt ref and the next one to come integrates it."""
        if answer.branch_head is None:
            return
        try:
            self.repository.advance(answer.branch_head)
        except GitError as exc:
            log_event(
                logger,
                "branch_sync_deferred",
                logging.WARNING,
                run_id=self.claim.run_id,
                head=answer.branch_head,
                reason=exc.message,
            )
