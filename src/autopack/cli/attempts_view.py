"""``autopack run phase`` as a person reads it: why each attempt ended, not only that it did.

The table used to show an attempt's files or the first line of its error, so an attempt
that failed its checks or its audit (no files committed, no error) showed an empty cell:
which check failed, what it printed and what the Auditor objected to were in ``--json``
only. Below the table, each attempt now says how its checks and audit went, with the
failing checks' output tails and the audit's issues (a wider table wrapped every cell into
a column of single words at 80 columns).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autopack.cli.shown import escape

if TYPE_CHECKING:
    from autopack.contract import AttemptView, AuditVerdict, CheckResult

OUTPUT_LINES = 12
"""Lines of a failing check's output shown; ``--json`` has the whole recorded tail."""


def _checks(results: list[CheckResult]) -> str | None:
    if not results:
        return None
    passed = sum(1 for result in results if result.passed)
    style = "green" if passed == len(results) else "red"
    return f"checks [{style}]{passed}/{len(results)} passed[/{style}]"


def _audit(verdict: AuditVerdict | None) -> str | None:
    if verdict is None:
        return None
    word = "[green]approved[/green]" if verdict.approved else "[red]rejected[/red]"
    summary = f": {escape(verdict.summary)}" if verdict.summary and not verdict.approved else ""
    return f"audit ({escape(verdict.mode)}) {word}{summary}"


def _check_lines(result: CheckResult) -> list[str]:
    how = "timed out" if result.timed_out else f"exit {result.exit_code}"
    lines = [f"  [red]failed ({how}):[/red] {escape(result.command)}"]
    if result.output_tail.strip():
        tail = result.output_tail.rstrip().split("\n")[-OUTPUT_LINES:]
        lines += [f"    [dim]{escape(line)}[/dim]" for line in tail]
    return lines


def attempt_lines(attempt: AttemptView) -> list[str]:
    """Rich markup lines saying how one attempt's checks and audit went, with the failing
    checks' output and the audit's issues; for a failed attempt with neither and no error
    (an empty answer, a missing deliverable), the first line of what its retry was told."""
    parts = (_checks(attempt.check_results), _audit(attempt.audit_verdict))
    said = [part for part in parts if part]
    if not said and not attempt.error and attempt.feedback and attempt.feedback.strip():
        said.append(escape(attempt.feedback.strip().split("\n")[0]))
    if not said:
        return []
    lines = [f"attempt {attempt.attempt}: " + "; ".join(said)]
    for result in attempt.check_results:
        if not result.passed:
            lines += _check_lines(result)
    verdict = attempt.audit_verdict
    if verdict is not None:
        if not verdict.approved:
            lines += [f"  - {escape(issue)}" for issue in verdict.issues]
        if verdict.error:
            lines.append(f"  [yellow]audit note:[/yellow] {escape(verdict.error)}")
    return lines
