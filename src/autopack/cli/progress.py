"""Showing a drain as it happens: a Rich progress bar on a terminal, plain lines otherwise.

The executor reports events (``attempt_started``, ``llm_call``, ``checks_started``,
``approval_requested``, ``attempt_finished``, ``waiting``) from its worker threads; this
sink turns them into one line per finished attempt plus a live bar of finished phases.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from autopack import redact
from autopack.executor.outcome import AttemptResult
from autopack.states import PHASE_TERMINAL

_STYLE = {
    "COMPLETE": "green",
    "FAILED": "red",
    "AWAITING_APPROVAL": "yellow",
    "LEASE_LOST": "magenta",
}


class DrainProgress:
    """Event sink for :class:`AutonomousExecutor`; use as a context manager."""

    def __init__(self, console: Console, total: int, done: int = 0, label: str = "phases") -> None:
        self.console = console
        self.live = console.is_terminal
        self._lock = threading.Lock()
        self._active: dict[str, str] = {}
        self._told: dict[str, str] = {}
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
            disable=not self.live,
        )
        self._task = self._progress.add_task("", total=total, completed=done, label=label)

    def __enter__(self) -> DrainProgress:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def _say(self, text: str) -> None:
        text = redact.text(text)  # a failure's detail may quote an echoed header
        if self.live:
            self._progress.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False, soft_wrap=True)

    def _status(self) -> None:
        shown = ", ".join(f"{p} {s}" for p, s in sorted(self._active.items())[:4])
        more = len(self._active) - 4
        self._progress.update(self._task, description=shown + (f" +{more}" if more > 0 else ""))

    def __call__(self, event: str, **data: Any) -> None:
        with self._lock:
            phase = str(data.get("phase_id", ""))
            if event == "attempt_started":
                self._active[phase] = f"#{data['attempt']} building"
                if not self.live:
                    self._say(f"→ {phase} attempt {data['attempt']} started")
            elif event == "llm_call":
                self._active[phase] = f"{data['role']} call"
            elif event == "phase_too_large":
                self._say(
                    f"[yellow]⚠ {phase}[/yellow] needs about {data['wanted']} output tokens, "
                    "more than the model's largest answer: split this phase"
                )
            elif event == "checks_started":
                self._active[phase] = "checks"
            elif event == "approval_requested":
                self._active.pop(phase, None)
                self._say(
                    f"[yellow]⏸ {phase}[/yellow] waits for approval "
                    f"{data['approval_id']}: {'; '.join(data['reason'])} — "
                    f"`autopack approvals approve {data['approval_id']}`"
                )
            elif event == "attempt_finished":
                self._finished(data["result"])
            elif event == "waiting":
                self._waiting(phase, data)
            self._status()

    def _waiting(self, phase: str, data: dict[str, Any]) -> None:
        """Say once per (phase, state) why nothing is claimable; stay quiet for our own work."""
        state = data.get("state")
        if state == "QUEUED" or phase in self._active or self._told.get(phase) == state:
            return
        self._told[phase] = str(state)
        if state == "AWAITING_APPROVAL":
            self._say(
                f"[yellow]⏸ {phase}[/yellow] is waiting for a human decision "
                "(`autopack approvals list`)"
            )
        elif data.get("holder"):
            self._say(f"… {phase} is {state}, held by {data['holder']}; waiting")

    def _finished(self, result: AttemptResult) -> None:
        self._active.pop(result.phase_id, None)
        style = _STYLE.get(result.outcome, "white")
        line = (
            f"[{style}]{'✔' if result.outcome == 'COMPLETE' else '✘'} {result.phase_id}"
            f"[/{style}] attempt {result.attempt}: {result.stop_reason}"
        )
        if result.files_written:
            line += f" — {len(result.files_written)} file(s)"
        if result.outcome == "FAILED" and result.phase_state == "QUEUED":
            line += " (will retry)"
        elif result.detail and result.outcome != "COMPLETE":
            line += f" — {result.detail.splitlines()[0][:160]}"
        self._say(line)
        if result.phase_state in PHASE_TERMINAL:
            self._progress.advance(self._task)
