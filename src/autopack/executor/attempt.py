"""One attempt at one claimed phase, top to bottom as DESIGN.md §6 lists the steps.

claim → worktree at the branch head → context → estimate → Builder call → parse → validate
→ (approval) → write → checks → Auditor → commit → result. Every way an attempt can end is
a :class:`~autopack.executor.outcome.Finish` with a stop reason, posted (with the lease
token as a fencing token and an idempotency key) in one place, :meth:`Attempt._post`; a
completed attempt's commit travels with its result and is accepted onto the run's branch
by the control plane (:mod:`autopack.executor.integration`). A lost lease, however it
shows, is a :class:`~autopack.errors.LeaseLost` caught in one place (:meth:`Attempt.run`).

The attempt works in a worktree of its own (:mod:`autopack.executor.worktrees`): nothing
it writes is seen by another attempt or reaches the branch unless its result is accepted,
and nothing is ever undone in a tree someone else uses; a failed attempt's worktree is
set aside for inspection. The LLM calls and what they cost are
:mod:`autopack.executor.metering`'s, a cut-off answer's continuation
:mod:`autopack.executor.continuation`'s; the lease is :mod:`autopack.executor.lease`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path

from autopack.bounds import clipped, spelled_controls
from autopack.builder.auditor import (
    AUDITOR_SYSTEM,
    audit_rules,
    auditor_prompt,
    bounded_verdict,
    change_diff,
    parse_verdict,
)
from autopack.builder.change import Change, plan_change, recheck, unwritable_deliverable
from autopack.builder.output import BuilderRejected, parse_builder_output
from autopack.builder.prompt import BUILDER_SYSTEM, Feedback, builder_prompt_parts
from autopack.client import patiently
from autopack.contract import (
    MAX_APPROVAL_REASON,
    ApprovalIn,
    AttemptView,
    AuditVerdict,
    CheckResult,
    Claim,
    ResultAnswer,
    ResultIn,
    failed_checks_line,
)
from autopack.errors import ConfigError, LeaseLost, ProviderUnusable, ServerUnavailable
from autopack.estimation.features import extract_features
from autopack.executor.budget import builder_budget, record_estimation
from autopack.executor.checks import (
    ChecksInterrupted,
    CheckUnavailable,
    run_checks,
    within_a_result,
)
from autopack.executor.continuation import builder_answer
from autopack.executor.exhausted import exhaustion, ran_out
from autopack.executor.git import GitError
from autopack.executor.git_guard import git_guarded
from autopack.executor.integration import base_for
from autopack.executor.lease import Lease
from autopack.executor.metering import Meter
from autopack.executor.options import Services
from autopack.executor.outcome import AttemptResult, Finish, Outcome, failed
from autopack.executor.recorded import as_recorded, hand_back, post_result, recorded_attempt
from autopack.executor.workspace import AppliedChange, apply_change, replaced_since
from autopack.executor.worktrees import Worktree
from autopack.llm.base import Message
from autopack.logs import log_event
from autopack.states import PhaseState

logger = logging.getLogger("autopack.executor")

MAX_FEEDBACK_ATTEMPTS = 3


def _feedback(history: list[AttemptView]) -> list[Feedback]:
    earlier = [h for h in history if h.feedback][-MAX_FEEDBACK_ATTEMPTS:]
    return [Feedback(h.attempt, h.stop_reason or "failed", h.feedback or "") for h in earlier]


class Attempt:
    """One claimed phase attempt; :meth:`run` returns how it ended."""

    def __init__(self, services: Services, claim: Claim) -> None:
        self.s = services
        self.o = services.options
        self.claim = claim
        self.task = claim.phase
        self.applied: AppliedChange | None = None
        self.checks: list[CheckResult] = []
        self.verdict: AuditVerdict | None = None
        self.summary = ""

    def _report(
        self,
        outcome: Outcome,
        stop_reason: str,
        *,
        phase_state: str | None = None,
        files_written: tuple[str, ...] = (),
        output_tokens: int = 0,
        detail: str = "",
    ) -> AttemptResult:
        claim = self.claim
        return AttemptResult(
            claim.run_id,
            claim.phase_id,
            claim.attempt,
            outcome,
            stop_reason,
            phase_state=phase_state,
            files_written=files_written,
            output_tokens=output_tokens,
            detail=detail,
        )

    # -- the attempt, step by step ----------------------------------------------------------
    def run(self) -> AttemptResult:
        claim = self.claim
        self.s.events(
            "attempt_started", run_id=claim.run_id, phase_id=claim.phase_id, attempt=claim.attempt
        )
        try:
            with Lease(self.s.client, claim, self.o.lease_seconds) as lease:
                meter = Meter(self.s, claim, lease)
                try:
                    return self._run(lease, meter)
                except LeaseLost as exc:
                    return self._lease_lost(meter, exc)
        except BaseException as exc:  # Ctrl-C, SystemExit, the provider or the API gone
            stop = ran_out(exc, self.s)  # or no room left on this machine
            hand_back(self.s.client, self.claim, stop or exc)
            if stop is not None:
                raise stop from exc
            raise

    def _run(self, lease: Lease, meter: Meter) -> AttemptResult:
        self._refuse_checks()  # before any LLM call, file or command
        ended = self._in_worktree(lease, meter)
        if isinstance(ended, AttemptResult):  # parked for a human's approval
            return ended
        answer, finish = ended
        finish = as_recorded(finish, answer)
        result = self._report(
            finish.outcome,
            finish.stop_reason,
            phase_state=answer.phase_state,
            files_written=tuple(self._files(finish)),
            output_tokens=meter.output_tokens,
            detail=finish.error
            or failed_checks_line(finish.stop_reason, self.checks)
            or finish.feedback
            or "",
        )
        self.s.events("attempt_finished", result=result)
        return result

    def _refuse_checks(self) -> None:
        """A phase with a check this executor does not run (``--allow-check-prefix``) is
        handed back untried (:meth:`run`) and stops the drain. Failed (not retryable), it
        was failed for every executor of a shared fleet, those allowing the check too,
        until an operator requeued it; handed back and claimed on, it would be claimed
        again at once."""
        policy = self.o.check_policy
        refusal = policy.refusal(self.task.checks) if policy is not None else None
        if refusal is not None:
            claim = self.claim
            raise ConfigError(
                f"phase {claim.run_id}/{claim.phase_id}: {refusal}. It is handed back "
                "untried, and this drain stops",
                run_id=claim.run_id,
                phase_id=claim.phase_id,
            )

    def _in_worktree(
        self, lease: Lease, meter: Meter
    ) -> tuple[ResultAnswer, Finish] | AttemptResult:
        """The attempt's work in a worktree of its own, and its posted result."""
        claim = self.claim
        name = f"{claim.run_id}-{claim.phase_id}-{claim.attempt}"
        try:
            with self.s.worktrees.checkout(self._base(), name) as tree:
                ended = self._steps(lease, meter, tree)
                if isinstance(ended, AttemptResult):
                    return ended
                answer, finish = self._deliver(lease, meter, tree, ended)
                tree.keep = answer.phase_state != PhaseState.COMPLETE
                return answer, finish
        except GitError as exc:  # no worktree to work in: record why, never die
            if exhaustion(exc):  # not the phase's: the drain stops (run)
                raise
            self.s.repository.check_present(exc)  # unless it is not the phase's: stop the drain
            finish = failed("git_error", error=exc.message)
            return self._post(lease, meter, finish), finish

    def _base(self) -> str:
        """The commit the attempt starts from: the accepted head, except for an approved
        change, which is applied where it was planned and rebased onto the head like any
        commit. Its files are whole contents planned on that commit: written over a head
        where another phase changed the same file meanwhile, they silently undid that
        phase's completed work; rebased, a real conflict is ``integration_conflict``.
        Before the run's first accepted commit there is no completed work to undo, and the
        control plane would accept a commit on any base: the change goes on the head."""
        approved = self.claim.approved_change
        planned = approved.context.get("base") if approved is not None else None
        if isinstance(planned, str) and planned and self.claim.run.branch_head is not None:
            return planned
        return base_for(self.s.repository, self.claim)

    def _steps(self, lease: Lease, meter: Meter, tree: Worktree) -> Finish | AttemptResult:
        """Build, write, check, audit and commit in the worktree; how the attempt ends."""
        try:
            change = self._approved_change(tree) or self._build(lease, meter, tree)
            if change.needs_approval and not self.claim.approved_change:
                return self._request_approval(lease, meter, change, tree.base)
            lease.check()
            self.applied = apply_change(tree.path, change)
            self._check(lease, tree.path)
            if replaced := replaced_since(tree.path, change):
                self.s.repository.check_present()  # not the checks: the cache was wiped
                raise failed(
                    "files_replaced_by_checks",
                    feedback="The checks removed or replaced (with a symlink or a directory) "
                    "files your answer wrote, or brought back files it deleted: "
                    f"{', '.join(replaced)}. Checks must leave the files they test in place.",
                )
            self._audit(meter, change)
            lease.check()
            tree.make_commit(self.applied.paths, self._message())
            return Finish(PhaseState.COMPLETE, "completed")
        except Finish as exc:
            return exc
        except (LeaseLost, ServerUnavailable, ProviderUnusable):
            raise
        except GitError as exc:  # git's words to the Builder too: the answer may be the cause
            if exhaustion(exc):
                raise
            self.s.repository.check_present(exc)  # (a .gitattributes its files break)
            said = f"git could not record your answer: {clipped(exc.message, 2000)}"
            return failed("git_error", error=exc.message, feedback=said)
        except Exception as exc:  # a bug or an environment failure: record it, don't die
            if exhaustion(exc):
                raise
            log_event(
                logger,
                "attempt_crashed",
                logging.ERROR,
                run_id=self.claim.run_id,
                phase_id=self.claim.phase_id,
                attempt=self.claim.attempt,
                error=repr(exc),
            )
            return failed("executor_error", error=f"{type(exc).__name__}: {exc}")

    def _deliver(
        self, lease: Lease, meter: Meter, tree: Worktree, finish: Finish
    ) -> tuple[ResultAnswer, Finish]:
        """Post the result; a completed attempt's with its commit, rebased and posted again
        while the branch moves under it (:mod:`autopack.executor.integration`)."""
        if tree.commit is None or finish.outcome != PhaseState.COMPLETE:
            return self._post(lease, meter, finish), finish
        try:
            answer = self.s.integrator.deliver(
                self.claim,
                tree,
                post=lambda commit, base: self._post(
                    lease, meter, finish, commit=commit, base=base
                ),
                needs_recheck=self._needs_recheck,
                recheck=lambda: self._check(lease, tree.path),
            )
        except Finish as failure:
            return self._post(lease, meter, failure), failure
        return answer, finish

    def _needs_recheck(self, upstream: list[str]) -> bool:
        """Run the checks again after a rebase? Per the run's policy."""
        rule = self.claim.run.policy.recheck_after_rebase
        if rule == "overlap":
            return bool(set(upstream) & set(self.applied.paths if self.applied else []))
        return rule == "always"

    def _approved_change(self, tree: Worktree) -> Change | None:
        """The change a human approved, checked again on this attempt's checkout."""
        approved = self.claim.approved_change
        if approved is None:
            return None
        log_event(
            logger,
            "applying_approved_change",
            run_id=self.claim.run_id,
            phase_id=self.claim.phase_id,
            approval_id=approved.approval_id,
        )
        try:
            change = Change.from_json(approved.context["change"])
            return recheck(change, self.task.scope, tree.path, gitlinks=tree.gitlinks())
        except BuilderRejected as exc:
            raise failed(exc.stop_reason, feedback=exc.feedback) from exc

    def _build(self, lease: Lease, meter: Meter, tree: Worktree) -> Change:
        """The Builder's answer, as the change it would make to the attempt's worktree."""
        task, workspace, gitlinks = self.task, tree.path, tree.gitlinks()
        if problem := unwritable_deliverable(task.scope, workspace, gitlinks=gitlinks):
            raise failed("deliverable_unwritable", error=problem)  # before any LLM call
        deliverables = list(task.scope.deliverables)
        features = extract_features(task.task_category, task.complexity, deliverables, workspace)
        model_max = self.s.prices.max_output_tokens(self.o.builder_model)
        estimate = self.s.estimator.estimate(
            features,
            model_max_output=model_max,
            model=self.o.builder_model,
            target_truncation=self.o.target_truncation,
        )
        if estimate.exceeds_model_max:  # the truncation target's budget is above the ceiling
            model, claim = self.o.builder_model, self.claim
            sizes = {"phase_id": claim.phase_id, "wanted": estimate.wanted, "model_max": model_max}
            hint = "answers cut off are continued; if they keep being, split this phase"
            log_event(
                logger, "phase_too_large", logging.WARNING, run_id=claim.run_id, **sizes, hint=hint
            )
            assumed = self.s.prices.declared_max_output_tokens(model) is None
            self.s.events("phase_too_large", **sizes, model=model, assumed=assumed)
        max_tokens = builder_budget(meter, estimate, model_max)
        prompt = builder_prompt_parts(
            task, workspace, _feedback(self.claim.history), context_chars=self.o.context_chars
        )
        message = Message("user", prompt.variable, stable_prefix=prompt.stable)
        response = builder_answer(
            meter, self.o.builder_model, BUILDER_SYSTEM, (message,), max_tokens
        )
        lease.check()
        parse_success = False
        try:
            if response.truncated:
                continued = ", even after continuing it" if self.o.max_continuations else ""
                raise failed(
                    "truncated",
                    feedback=f"Your answer was cut off at max_tokens={max_tokens} before it "
                    f"was complete{continued}. The next attempt gets a larger budget; write "
                    "the files without commentary.",
                )
            output = parse_builder_output(response.text, response.stop_reason)
            change = plan_change(
                output,
                task.scope,
                workspace,
                max_file_bytes=self.o.max_file_bytes,
                max_answer_bytes=self.o.max_answer_bytes,
                gitlinks=gitlinks,
            )
            parse_success = True
            self.summary = output.summary
            return change
        except BuilderRejected as exc:
            raise failed(exc.stop_reason, feedback=exc.feedback) from exc
        finally:
            record_estimation(meter, features, estimate, response, parse_success)

    def _request_approval(
        self, lease: Lease, meter: Meter, change: Change, base: str
    ) -> AttemptResult:
        claim = self.claim
        answer = self.s.client.request_approval(
            claim.run_id,
            claim.phase_id,
            ApprovalIn(
                lease_token=lease.token,
                reason=change.approval_reason(MAX_APPROVAL_REASON),
                context={"change": change.to_json(), "attempt": claim.attempt, "base": base},
                timeout_seconds=self.o.approval_timeout_seconds,
            ),
        )
        self.s.events(
            "approval_requested",
            run_id=claim.run_id,
            phase_id=claim.phase_id,
            approval_id=answer.approval_id,
            reason=change.needs_approval,
        )
        return self._report(
            PhaseState.AWAITING_APPROVAL,
            "approval_requested",
            phase_state=PhaseState.AWAITING_APPROVAL,
            output_tokens=meter.output_tokens,
            detail=f"approval {answer.approval_id}: {change.approval_reason(MAX_APPROVAL_REASON)}",
        )

    def _check(self, lease: Lease, workspace: Path) -> None:
        if not self.task.checks:
            return
        lease.renew(state=PhaseState.CI_RUNNING)
        self.s.events("checks_started", run_id=self.claim.run_id, phase_id=self.claim.phase_id)
        # Guarded here, not around one call: the checks run again after a rebase
        # (``recheck_after_rebase``), and git configured then stayed for every later git.
        try:
            with git_guarded(workspace, self.s.repository, self.claim.run_id, self._accepted):
                self.checks = run_checks(
                    self.task.checks, workspace, self.o.check_timeout, stopped=self.s.stopped
                )
        except (CheckUnavailable, ChecksInterrupted) as exc:
            self.checks = exc.results  # recorded with the attempt: what is missing, or ran
            raise
        failures = [c for c in self.checks if not c.passed]
        if failures:
            raise failed(
                "checks_failed",
                feedback="These checks failed after your files were written; fix the code or "
                "tests so they pass:\n"
                + "\n".join(
                    f"$ {c.command} (exit {c.exit_code})\n{c.output_tail[-1500:]}" for c in failures
                ),
            )
        # The Builder's code has run: a stop from now on (the auditor's call) is none of its
        # doing (control.leases.stop_spends_no_retry).
        lease.renew(state=PhaseState.EXECUTING)

    def _accepted(self) -> str | None:
        """The run's accepted head, which decides whether the branch moved by the checks'
        doing: asked as patiently as the result is posted. Given up on after the client's
        ten seconds, a server restarted as the checks ended made the guard move the branch
        back off another phase's accepted commit and fail the attempt
        ``git_refs_changed_by_checks``, posted once the server was back."""
        return patiently(lambda: self.s.client.get_run_brief(self.claim.run_id).branch_head)

    def _audit(self, meter: Meter, change: Change) -> None:
        if self.o.auditor == "off":
            return
        rules = audit_rules(self.task, change)
        if self.o.auditor == "rules":
            self.verdict = rules
        else:
            assert self.applied is not None
            before = {
                path: previous.decode(errors="replace")
                for path, previous in self.applied.previous.items()
                if previous is not None
            }
            prompt = auditor_prompt(self.task, change_diff(change, before), self.checks)
            response = meter.call(
                "auditor", self.o.auditor_model, AUDITOR_SYSTEM, (Message("user", prompt),), 1024
            )
            self.verdict = parse_verdict(response.text, rules)
        if not self.verdict.approved:
            raise failed(
                "audit_rejected",
                feedback="The Auditor rejected the change: " + "; ".join(self.verdict.issues),
            )

    # -- ending ----------------------------------------------------------------------------
    def _files(self, finish: Finish) -> list[str]:
        if self.applied is None or finish.outcome != PhaseState.COMPLETE:
            return []
        return list(self.applied.paths)

    def _post(
        self,
        lease: Lease,
        meter: Meter,
        finish: Finish,
        *,
        commit: str | None = None,
        base: str | None = None,
    ) -> ResultAnswer:
        """Post the result under the lease (a completed one with its commit and the head it
        was made on); retried while the API is unreachable (the idempotency key makes a
        repeat harmless). A refusal raises :class:`LeaseLost` or :class:`BranchMoved`."""
        lease.check()
        result = ResultIn(
            lease_token=lease.token,
            outcome=finish.outcome,
            stop_reason=finish.stop_reason,
            retryable=finish.retryable,
            feedback=clipped(finish.feedback),
            error=clipped(finish.error),
            max_tokens=meter.max_tokens,
            files_written=self._files(finish),
            check_results=within_a_result(self.checks),
            audit_verdict=None if self.verdict is None else bounded_verdict(self.verdict),
            details={"summary": clipped(self.summary, 10_000), "worker_id": self.o.worker_id},
            commit=commit,
            base=base,
        )
        return post_result(self.s.client, self.claim, result)

    def _lease_lost(self, meter: Meter, refusal: LeaseLost) -> AttemptResult:
        """Stop: another attempt owns the phase now. Our worktree is set aside, untouched.

        Refused by the server (its refusal names the phase's state), the attempt is
        reported as the database recorded it (``lease_expired``, ``requeued``,
        ``interrupted``): the summary said ``lease_lost`` for them all. Not read when the
        API is unreachable or serves another database (the lease ran out here)."""
        log_event(
            logger,
            "lease_lost",
            logging.WARNING,
            run_id=self.claim.run_id,
            phase_id=self.claim.phase_id,
            attempt=self.claim.attempt,
        )
        result = self._report("LEASE_LOST", "lease_lost", output_tokens=meter.output_tokens)
        if "phase_state" not in refusal.details:
            return result
        return recorded_attempt(self.s.client, result)

    def _message(self) -> str:
        claim = self.claim
        message = f"autopack: {claim.phase_id} ({claim.run_id}, attempt {claim.attempt})"
        if self.summary:
            # No larger than a file may be, its control characters spelled: a 20 MB summary
            # made a 20 MB commit (only files were bounded), and ESC ] 0 ; or ESC [ 2 J in it
            # retitled or erased the terminal of whoever ran `git log` on the branch.
            kept = clipped(self.summary, self.o.max_file_bytes) or ""
            message += "\n\n" + spelled_controls(kept)
        return (
            f"{message}\n\nAutopack-Run: {claim.run_id}\nAutopack-Phase: {claim.phase_id}\n"
            f"Autopack-Attempt: {claim.attempt}\nAutopack-Worker: {self.o.worker_id}\n"
        )
