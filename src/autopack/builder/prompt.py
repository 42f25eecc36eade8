"""The Builder's prompt: the task, the deliverables contract, bounded context, and feedback.

The corrections the legacy tool learnt the hard way ("T1/T2 fixes") are in the system
prompt from the first attempt, not only after a failure: paths are relative to the
workspace root and keep the scope's directory prefix; every deliverable appears; an empty
``files`` array is never an answer. Feedback from earlier attempts (parse errors, missing
deliverables, failing checks, the Auditor's issues) is appended so a retry fixes exactly
what went wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from autopack import paths
from autopack.rundef import Scope

DEFAULT_CONTEXT_CHARS = 120_000
"""About 30k tokens of context at ~4 characters per token; enough for a phase's files."""

BUILDER_SYSTEM = """\
You are the Builder of Autopack. You write the files of ONE coding phase of a larger run.

Answer with exactly one JSON object and nothing else (no prose, no Markdown fence):
{"files": [{"path": "<path relative to the workspace root>", "content": "<the COMPLETE file>"}],
 "edits": [{"path": "<existing file>", "search": "<exact text, occurring once>",
            "replace": "<new text>"}],
 "delete": [],
 "summary": "<one sentence: what you wrote>"}
"edits" and "delete" are optional; prefer full files in "files".

Rules (answers that break them are rejected and retried):
1. Paths are relative to the workspace root and keep the scope's directory prefix exactly:
   write "examples/pkg/mod.py", never "mod.py", "./mod.py" or an absolute path.
2. Every deliverable listed in the task appears in your answer with its complete content.
3. Never answer with an empty "files" array.
4. Write only under the allowed paths. Do not rewrite or delete files that are not deliverables.
5. Files are complete and working: no placeholders, no "..." elisions, no TODO stubs.
   Tests must pass when the listed checks run from the workspace root.
"""


class PhaseTask(Protocol):
    """What the prompt needs to know about a phase: a claimed phase
    (:class:`~autopack.contract.PhaseView`) or its definition in a run file."""

    @property
    def phase_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def task_category(self) -> str: ...
    @property
    def complexity(self) -> str: ...
    @property
    def scope(self) -> Scope: ...
    @property
    def checks(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Feedback:
    """One earlier attempt's failure, as the Builder should read it."""

    attempt: int
    stop_reason: str
    text: str


def _context_files(workspace: Path, entries: Sequence[str]) -> list[str]:
    """Files named by ``read_only_context`` (a directory, ``docs`` or ``docs/`` as run
    files may spell it, means the files inside it)."""
    found: list[str] = []
    for entry in entries:
        try:
            relative = paths.normalize(entry, directory_ok=True).rstrip("/")
        except paths.UnsafePath:
            continue
        if paths.resolved(workspace, relative) is None:
            continue  # a symlink out of the workspace (``docs -> /``): the whole disk walked
        target = workspace / relative
        if target.is_dir():
            found += sorted(
                str(p.relative_to(workspace))
                for p in target.rglob("*")
                if _is_file(p) and not any(part.startswith(".") for part in p.parts)
            )
        elif target.is_file():
            found.append(relative)
    return [path for path in found if _readable(workspace, path)]


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that says no where it may not look (a symlink into another user's
    ``/proc/PID/cwd`` raised ``PermissionError`` and ended the attempt as a crash)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _readable(workspace: Path, path: str) -> bool:
    """Is ``path`` a file that stays inside the workspace when resolved? A symlink in the
    repository (``ctx -> /proc/self/environ``, ``-> ~/.aws/credentials``) would otherwise
    send what it points at to the LLM provider."""
    return _is_file(workspace / path) and paths.resolved(workspace, path) is not None


def _file_block(path: str, text: str, budget: list[int]) -> str:
    if budget[0] <= 0:
        return f"### {path}\n(omitted: context budget exhausted)\n"
    if len(text) > budget[0]:
        text = text[: budget[0]] + "\n[... truncated: context budget exhausted ...]"
    budget[0] -= len(text)
    return f"### {path}\n```\n{text}\n```\n"


@dataclass(frozen=True)
class BuilderPrompt:
    """The Builder's user message in two parts.

    ``stable`` (the task, its deliverables, checks and the files it reads) is the same on
    every attempt and continuation of the phase while the branch does not move, so it is
    sent first and marked for the provider's prompt cache; ``variable`` (the earlier
    attempts' feedback and the closing instruction) follows it. ``text`` is the message.
    """

    stable: str
    variable: str

    @property
    def text(self) -> str:
        return self.stable + self.variable


def builder_prompt_parts(
    task: PhaseTask,
    workspace: Path,
    feedback: Sequence[Feedback] = (),
    *,
    context_chars: int = DEFAULT_CONTEXT_CHARS,
) -> BuilderPrompt:
    """The user message for one Builder call, split where it starts to vary."""
    scope = task.scope
    budget = [context_chars]
    lines = [
        f"# Phase {task.phase_id}: {task.name}",
        f"Category: {task.task_category}. Complexity: {task.complexity}.",
        "",
        "## Task",
        task.description.strip() or task.name,
        "",
        "## Deliverables (each must appear in your answer, full path)",
    ]
    existing: list[str] = []
    for deliverable in scope.deliverables:
        target = workspace / deliverable
        if _readable(workspace, deliverable):
            existing.append(deliverable)
            lines.append(f"- {deliverable} (exists, {target.stat().st_size} bytes, shown below)")
        elif target.is_symlink():
            lines.append(f"- {deliverable} (a symlink out of the workspace or to nothing)")
        else:
            lines.append(f"- {deliverable} (new file)")
    lines += ["", "## Allowed paths", *[f"- {p}" for p in scope.paths]]
    if task.checks:
        lines += ["", "## Checks run from the workspace root after your files are written"]
        lines += [f"- `{check}`" for check in task.checks]
    blocks = [_file_block(p, (workspace / p).read_text(errors="replace"), budget) for p in existing]
    if blocks:
        lines += ["", "## Current content of existing deliverables", *blocks]
    context = [p for p in _context_files(workspace, scope.read_only_context) if p not in existing]
    blocks = [_file_block(p, (workspace / p).read_text(errors="replace"), budget) for p in context]
    if blocks:
        lines += ["", "## Read-only context (do not rewrite these)", *blocks]
    tail = [""]
    if feedback:
        tail += ["## Earlier attempts failed: fix exactly these problems"]
        tail += [f"- attempt {f.attempt} ({f.stop_reason}): {f.text}" for f in feedback]
        tail += [""]
    tail += ["Answer with the JSON object only."]
    return BuilderPrompt("\n".join(lines) + "\n", "\n".join(tail))


def builder_prompt(
    task: PhaseTask,
    workspace: Path,
    feedback: Sequence[Feedback] = (),
    *,
    context_chars: int = DEFAULT_CONTEXT_CHARS,
) -> str:
    """The user message for one Builder call, as one text."""
    return builder_prompt_parts(task, workspace, feedback, context_chars=context_chars).text
