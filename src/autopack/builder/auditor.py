"""The Auditor: a second opinion on a change before the phase is called complete.

Three modes: ``llm`` (a model reviews the diff against the phase), ``rules`` (cheap static
checks: Python parses, no placeholder bodies, test files contain tests, nothing empty) and
``off``. An LLM verdict that cannot be parsed never passes or fails work by accident: it is
recorded with its error, and the rules verdict decides.
"""

from __future__ import annotations

import ast
import difflib
import json
import threading
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Literal

from autopack.bounds import TEXT_MAX, clipped
from autopack.builder.change import Change
from autopack.builder.output import BuilderRejected, extract_json_object
from autopack.builder.prompt import PhaseTask
from autopack.contract import AuditVerdict, CheckResult

AuditMode = Literal["llm", "rules", "off"]

_PARSING = threading.Lock()
"""One ``ast.parse`` at a time in this process. CPython 3.11 counts the AST constructor's
depth in per-interpreter state: a parse in another thread, switched to while a garbage
collection ran finalizers mid-construction, failed an attempt of the demo with
``SystemError: AST constructor recursion depth mismatch`` (gh-106905). Attempts run in
threads (``--concurrency``); a parse takes milliseconds."""

AUDITOR_SYSTEM = """\
You are the Auditor of Autopack. You review one phase's change before it is accepted.
Approve when the change does what the task asks, every deliverable is complete and
plausible, and nothing is a placeholder. Reject only for real defects, and say what to fix.
Answer with exactly one JSON object and nothing else:
{"approved": true|false,
 "issues": ["<specific defect and how to fix it>", ...],
 "summary": "<one sentence>"}
"""


def _placeholder_functions(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = [
                s
                for s in node.body
                if not (
                    isinstance(s, ast.Expr)
                    and isinstance(s.value, ast.Constant)
                    and isinstance(s.value.value, str)
                )
            ]
            only_stub = len(body) == 1 and (
                (
                    isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and body[0].value.value is Ellipsis
                )
                or (isinstance(body[0], ast.Raise) and "NotImplementedError" in ast.dump(body[0]))
            )
            if only_stub:
                names.append(node.name)
    return names


def audit_rules(task: PhaseTask, change: Change) -> AuditVerdict:
    """Static checks that need no model."""
    issues: list[str] = []
    for write in change.writes:
        path = PurePosixPath(write.path)
        if not write.content.strip() and path.name != "__init__.py":
            issues.append(f"{write.path} is empty")
            continue
        if path.suffix != ".py":
            continue
        try:
            with _PARSING:
                tree = ast.parse(write.content, filename=write.path)
        except SyntaxError as exc:
            issues.append(f"{write.path} does not parse: line {exc.lineno}: {exc.msg}")
            continue
        stubs = _placeholder_functions(tree)
        if stubs:
            issues.append(f"{write.path} has placeholder bodies: {', '.join(stubs)}")
        is_test = path.name.startswith("test_") or path.name.endswith("_test.py")
        if (
            is_test
            and "test" in task.task_category
            and not any(
                isinstance(n, ast.FunctionDef) and n.name.startswith("test") for n in ast.walk(tree)
            )
        ):
            issues.append(f"{write.path} contains no test functions")
    return AuditVerdict(
        mode="rules",
        approved=not issues,
        issues=issues,
        summary="static checks passed" if not issues else f"{len(issues)} issue(s)",
    )


def change_diff(change: Change, before: dict[str, str]) -> str:
    """A unified diff of the change (``before`` holds previous contents of existing files)."""
    chunks: list[str] = []
    for write in change.writes:
        old = before.get(write.path, "")
        chunks += difflib.unified_diff(
            old.splitlines(keepends=True),
            write.content.splitlines(keepends=True),
            fromfile=f"a/{write.path}" if write.existed else "/dev/null",
            tofile=f"b/{write.path}",
        )
    chunks += [f"deleted: {path}\n" for path in change.deletes]
    return "".join(chunks)


def auditor_prompt(task: PhaseTask, diff: str, checks: Sequence[CheckResult]) -> str:
    """The user message for the Auditor call."""
    lines = [
        f"# Phase {task.phase_id}: {task.name} ({task.task_category}, {task.complexity})",
        "## Task",
        task.description.strip() or task.name,
        "## Deliverables",
        *[f"- {d}" for d in task.scope.deliverables],
    ]
    if checks:
        lines.append("## Checks")
        lines += [f"- `{c.command}`: {'passed' if c.passed else 'FAILED'}" for c in checks]
    lines += ["## Change (unified diff)", "```diff", diff.rstrip(), "```", "Answer with JSON only."]
    return "\n".join(lines)


def parse_verdict(text: str, fallback: AuditVerdict) -> AuditVerdict:
    """The LLM's verdict, or ``fallback`` (the rules verdict) carrying the parse error."""
    try:
        raw = extract_json_object(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("approved"), bool):
            raise ValueError('no boolean "approved" field')
        issues = raw.get("issues") or []
        return AuditVerdict(
            mode="llm",
            approved=raw["approved"],
            issues=[str(i) for i in issues] if isinstance(issues, list) else [str(issues)],
            summary=str(raw.get("summary", "")),
        )
    except (BuilderRejected, ValueError) as exc:
        error = exc.feedback if isinstance(exc, BuilderRejected) else str(exc)
        return AuditVerdict(
            mode="llm",
            approved=fallback.approved,
            issues=fallback.issues,
            summary="auditor answer unusable; rules verdict applied",
            error=error,
            details={"raw": text[:2000], "fallback": fallback.model_dump(mode="json")},
        )


VERDICT_ISSUES_MAX = TEXT_MAX // 4
"""Characters a verdict's issues may take as JSON (each one clipped to 2,000 first). A
result's ``audit_verdict`` holds ``TEXT_MAX`` as JSON: the rules naming each of 30,000
placeholder functions made the executor's own result a 422, the phase handed back and
the drain stopped at every try."""


def bounded_verdict(verdict: AuditVerdict) -> AuditVerdict:
    """``verdict`` as a result can hold it: its first issues (clipped) up to
    :data:`VERDICT_ISSUES_MAX`, then how many more there were; its texts clipped, and
    its details (an unusable answer's, with the rules verdict) likewise."""
    issues: list[str] = []
    size = 0
    for index, issue in enumerate(verdict.issues):
        shown = clipped(issue, 2000) or ""
        size += len(json.dumps(shown)) + 2
        if size > VERDICT_ISSUES_MAX:
            issues.append(f"... and {len(verdict.issues) - index} more issue(s)")
            break
        issues.append(shown)
    details = verdict.details
    if len(json.dumps(details)) > VERDICT_ISSUES_MAX:
        details = {"cut": "more than a result holds"}
    return verdict.model_copy(
        update={
            "issues": issues,
            "summary": clipped(verdict.summary, 10_000),
            "error": clipped(verdict.error, 10_000),
            "details": details,
        }
    )
