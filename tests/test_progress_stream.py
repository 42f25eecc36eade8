"""The drain display shows a streaming answer's progress and says when one is continued."""

from __future__ import annotations

import io

from rich.console import Console

from autopack.cli.progress import DrainProgress


def test_streamed_text_and_continuations_are_shown() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with DrainProgress(console, total=1) as progress:
        progress("attempt_started", run_id="r", phase_id="p1", attempt=1)
        progress("llm_call", run_id="r", phase_id="p1", role="builder")
        progress("llm_text", run_id="r", phase_id="p1", role="builder", chars=1234)
        # The bar's description is what a terminal shows live.
        assert progress._progress.tasks[0].description == "p1 builder streaming 1,234 chars"
        progress("llm_continue", run_id="r", phase_id="p1", number=1, why="max_tokens")
    assert "↻ p1: answer cut off (max_tokens), continuing #1" in out.getvalue()
