"""Showing a drain as it happens: a Rich progress bar on a terminal, plain lines otherwise.

The executor reports events (``attempt_started``, ``llm_call``, ``llm_text`` as an answer
streams in, ``llm_continue``, ``llm_usage``,
``checks_started``, ``approval_requested``, ``attempt_finished``, ``waiting``) from its
worker threads; this sink turns them into one line per finished attempt plus a live bar of
finished phases with the tokens and cost spent so far (replayed calls apart: they cost
nothing). Text a person must read (stop reasons, errors) is never cut.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from rich.status import Status

from autopack import redact
from autopack.cli.shown import escape
from autopack.executor.outcome import AttemptResult
from autopack.repoident import without_password
from autopack.states import PHASE_TERMINAL

_STYLE = {
    "COMPLETE": "green",
    "FAILED": "red",
    "AWAITING_APPROVAL": "yellow",
    "LEASE_LOST": "magenta",
}


@dataclass
class Spend:
    """What this drain's LLM calls used: tokens, billed cost, and what replayed calls
    would have cost (never billed)."""

    tokens: int = 0
    billed_usd: float = 0.0
    replayed_usd: float = 0.0
    replayed_calls: int = 0
    unpriced_calls: int = 0
    """Calls of a model the price table does not know: their cost is unknown (NULL), so
    the dollars shown leave them out and must say so, never pass for $0."""

    def text(self) -> str:
        shown = f"{self.tokens:,} tokens · ${self.billed_usd:.4f}"
        if self.replayed_calls:
            shown += f" (+${self.replayed_usd:.4f} replayed)"
        if self.unpriced_calls:
            shown += f" (+{self.unpriced_calls} unpriced)"
        return shown


class DrainProgress:
    """Event sink for :class:`AutonomousExecutor`; use as a context manager."""

    def __init__(
        self,
        console: Console,
        total: int,
        done: int = 0,
        label: str = "phases",
        unpriced: Callable[[list[str]], str | None] | None = None,
    ) -> None:
        """``unpriced``: the warning (or None) for a model an answer came back under that
        has no price (:meth:`autopack.llm.pricing.CapWarnings.about`)."""
        self.console = console
        self._unpriced = unpriced
        self.live = console.is_terminal
        self._lock = threading.Lock()
        self._active: dict[str, str] = {}
        self._told: dict[str, str] = {}
        self.spend = Spend()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[spend]}"),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
            disable=not self.live,
        )
        self._task = self._progress.add_task(
            "", total=total, completed=done, label=label, spend=self.spend.text()
        )

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
            elif event == "llm_text":
                self._active[phase] = f"{data['role']} streaming {data['chars']:,} chars"
            elif event == "llm_continue":
                self._say(
                    f"↻ {phase}: answer cut off ({data['why']}), continuing #{data['number']}"
                )
            elif event == "phase_too_large":
                self._too_large(phase, data)
            elif event == "llm_usage":
                self._spent(data)
            elif event == "checks_started":
                self._active[phase] = "checks"
            elif event == "approval_requested":
                self._active.pop(phase, None)
                self._say(
                    f"[yellow]⏸ {phase}[/yellow] waits for approval "
                    f"{data['approval_id']}: {escape('; '.join(data['reason']))} — "
                    f"`autopack approvals approve {data['approval_id']}`"
                )
            elif event == "attempt_finished":
                self._finished(data["result"])
            elif event == "waiting":
                self._waiting(phase, data)
            self._status()

    def _too_large(self, phase: str, data: dict[str, Any]) -> None:
        """The budget the truncation target asks for is above the model's ceiling: said as
        the upper bound it is, and, when that ceiling is only the default for a model the
        price table does not size, as an assumption with its fix, not as the model's."""
        model = escape(str(data["model"]))
        ceiling = (
            f"the {data['model_max']} assumed for {model} (a price file's max_output_tokens "
            "says its real limit)"
            if data["assumed"]
            else f"{model}'s largest answer ({data['model_max']})"
        )
        self._say(
            f"[yellow]⚠ {phase}[/yellow] may need up to {data['wanted']} output tokens, more "
            f"than {ceiling}: answers cut off are continued; if they keep being, split this phase"
        )

    def _spent(self, data: dict[str, Any]) -> None:
        self.spend.tokens += int(data.get("tokens") or 0)
        cost = float(data.get("cost_usd") or 0.0)
        self.spend.unpriced_calls += bool(data.get("unpriced"))
        warning = (
            self._unpriced([data["model"]]) if self._unpriced and data.get("unpriced") else None
        )
        if warning is not None:
            self._say(f"[yellow]warning:[/yellow] {escape(warning)}")
        if data.get("replayed"):
            self.spend.replayed_usd += cost
            self.spend.replayed_calls += 1
        else:
            self.spend.billed_usd += cost
        self._progress.update(self._task, spend=self.spend.text())

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
            line += f" — {escape(result.detail.splitlines()[0])}"
        self._say(line)
        if result.phase_state in PHASE_TERMINAL:
            self._progress.advance(self._task)


class CloneProgress:
    """A remote's first clone on this machine, shown as it goes (it can take minutes): a
    line saying what is cloned, git's lines that end a step (kept in a log too), its
    updates on a status line of a terminal, and how long it took. Nothing at all when the
    clone is already there (:class:`autopack.executor.git.Progress`)."""

    def __init__(self, console: Console, remote: str) -> None:
        self.console = console
        self.remote = without_password(remote)
        self._status: Status | None = None
        self._started = 0.0

    def update(self, line: str) -> None:
        self._begun().update(escape(line))

    def tell(self, line: str) -> None:
        self._begun()
        self.console.print(escape(line), highlight=False)

    def _begun(self) -> Status:
        if self._status is None:
            self._started = time.monotonic()
            self.console.print(
                f"cloning {escape(self.remote)} into this machine's cache (its first use here; "
                "later drains fetch only what is new)",
                highlight=False,
            )
            self._status = self.console.status("")
            self._status.start()
        return self._status

    def __enter__(self) -> CloneProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._status is None:
            return
        self._status.stop()
        if kind is None:
            took = time.monotonic() - self._started
            self.console.print(f"cloned {escape(self.remote)} in {took:.1f} s", highlight=False)
