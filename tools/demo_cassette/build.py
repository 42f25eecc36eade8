"""Build the bundled replay cassette for ``telemetry-collection-v4`` (the offline demo).

    python -m tools.demo_cassette.build          # rewrites src/autopack/data/cassettes/...

The cassette is *synthesised*, not recorded: no network here. Each line is an Anthropic
Messages API response in the provider's own wire format, answering the Builder (and the
Auditor) for one (run, phase, attempt, role). The files the Builder "writes" are the real,
tested files under ``tools/demo_cassette/solutions/``; token counts are derived from the
exact prompts Autopack builds (system prompt + ``builder_prompt`` over a workspace holding
the phase's read-only context) at ~3.5 characters per token, and latencies from a
70 tokens/s model. Three phases replay the failures the product exists to handle:

* p2: the first answer has an empty ``files`` array (the legacy "T2" failure) → retried;
* p4: the first answer rambles (a 110-year holiday table) and is cut off at the budget the
  estimator chose → continued where it stopped (one more call), completing in one attempt;
* p7: the first tests assert a wrong rounding → the check fails → retried with its output.

The first line says answers may repeat (``repeat_last``): a phase retried more often than
here (an environment failure, a resumed lease) gets its last, good answer again instead of
failing on a missing line. The tests are ``unittest`` modules and the checks run
``python -m unittest``, so the demo works from a plain ``pip install`` without pytest.

A test rebuilds the cassette and compares it with the bundled file, so the two can't drift.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from autopack.builder.auditor import AUDITOR_SYSTEM, auditor_prompt, change_diff
from autopack.builder.change import Change, PlannedWrite
from autopack.builder.prompt import BUILDER_SYSTEM, Feedback, builder_prompt
from autopack.estimation.estimator import TokenEstimator
from autopack.estimation.features import extract_features
from autopack.executor.continuation import join, prefill
from autopack.llm.pricing import load_price_table
from autopack.llm.registry import DEFAULT_MODELS
from autopack.rundef import PhaseDefinition
from autopack.runfile import load_run_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOLUTIONS = HERE / "solutions"
RUN_FILE = REPO / "src/autopack/data/runs/telemetry-collection-v4.yaml"
CASSETTE = REPO / "src/autopack/data/cassettes/telemetry-collection-v4.jsonl"
MODEL = DEFAULT_MODELS["replay"]
CHARS_PER_TOKEN = 3.5
TOKENS_PER_SECOND = 70.0


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def answer(paths: list[str], summary: str, contents: dict[str, str] | None = None) -> str:
    files = [
        {"path": p, "content": (contents or {}).get(p) or (SOLUTIONS / p).read_text()}
        for p in paths
    ]
    return json.dumps({"files": files, "summary": summary}, indent=1)


class Recorder:
    """Turns (prompt, answer) pairs into cassette lines in Anthropic's response format."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.lines: list[dict[str, Any]] = []
        self.system_tokens = tokens(BUILDER_SYSTEM)

    def add(
        self,
        phase_id: str,
        attempt: int,
        role: str,
        prompt: str,
        text: str,
        *,
        stop_reason: str = "end_turn",
        output_tokens: int | None = None,
    ) -> None:
        system = BUILDER_SYSTEM if role == "builder" else AUDITOR_SYSTEM
        total_in = tokens(system) + tokens(prompt)
        out = output_tokens or tokens(text)
        # The Builder's system prompt is cached after the very first call of the run.
        first = not any(line["match"]["role"] == "builder" for line in self.lines)
        cached = self.system_tokens if role == "builder" else 0
        usage = {
            "input_tokens": total_in - cached,
            "output_tokens": out,
            "cache_creation_input_tokens": cached if first else 0,
            "cache_read_input_tokens": 0 if first else cached,
        }
        n = len(self.lines) + 1
        self.lines.append(
            {
                "match": {
                    "run_id": self.run_id,
                    "phase_id": phase_id,
                    "attempt": attempt,
                    "role": role,
                },
                "provider": "anthropic",
                "model": MODEL,
                "latency_ms": round(900 + 1000 * out / TOKENS_PER_SECOND + 37 * (n % 7), 1),
                "request_id": f"req_demo_{n:03d}",
                "response": {
                    "id": f"msg_demo_{n:03d}",
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                },
            }
        )


def _holidays() -> Iterator[str]:
    """The rambling first answer of p4: fixed-date holidays of 110 years."""
    for year in range(1990, 2100):
        for month, day in ((1, 1), (7, 4), (11, 11), (12, 25), (12, 26), (5, 1)):
            yield date(year, month, day).isoformat()
        yield (date(year, 9, 1) + timedelta(days=(7 - date(year, 9, 1).weekday()) % 7)).isoformat()


def build() -> list[dict[str, Any]]:
    run = load_run_file(RUN_FILE)
    recorder = Recorder(run.run_id)
    with tempfile.TemporaryDirectory() as scratch:
        for tier in run.tiers:
            for phase in tier.phases:
                _record_phase(recorder, phase, Path(scratch))
    return recorder.lines


def _record_phase(recorder: Recorder, phase: PhaseDefinition, workspace: Path) -> None:
    """The Builder answers (a scripted failure first, where the demo shows a retry) and verdict."""
    for context in phase.scope.read_only_context:  # dependencies are complete by now
        target = workspace / context
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((SOLUTIONS / context).read_text())
    deliverables = list(phase.scope.deliverables)
    feedback: list[Feedback] = []
    attempt = 1

    def builder(text: str, **kwargs: Any) -> None:
        prompt = builder_prompt(phase, workspace, feedback)
        recorder.add(phase.phase_id, attempt, "builder", prompt, text, **kwargs)

    if phase.phase_id == "telemetry-p2-number-util":
        builder(json.dumps({"files": [], "summary": "number_util.py is ready."}))
        feedback.append(Feedback(1, "empty_files", 'Your "files" array was empty.'))
        attempt = 2
    elif phase.phase_id == "telemetry-p4-date-util":
        budget = (
            TokenEstimator.load()
            .estimate(
                extract_features(phase.task_category, phase.complexity, deliverables, None),
                model_max_output=load_price_table().max_output_tokens(MODEL),
            )
            .budget
        )
        table = ",\n    ".join(f'"{d}"' for d in _holidays())
        ramble = (SOLUTIONS / deliverables[0]).read_text() + (
            "\n\n# Public holidays, so add_business_days can skip them later.\n"
            f"HOLIDAYS: frozenset[str] = frozenset({{\n    {table}\n}})\n"
        )
        text = answer(deliverables, "", {deliverables[0]: ramble})
        cut = text[: math.ceil(budget * CHARS_PER_TOKEN * 0.9)]
        builder(cut, stop_reason="max_tokens", output_tokens=budget)
        # Continued where it stopped (the prefill leaves trailing whitespace off): the
        # rest of the same answer, asked with the cut part as the model's own turn.
        rest = text[len(prefill(cut)) :]
        assert join(cut, rest) == text
        prompt = builder_prompt(phase, workspace, feedback)
        recorder.add(phase.phase_id, attempt, "builder", prompt + prefill(cut), rest)
    elif phase.phase_id == "telemetry-p7-number-tests":
        path = deliverables[0]
        wrong = (
            (SOLUTIONS / path)
            .read_text()
            .replace(
                "self.assertEqual(percent(1, 3), 33.3)", "self.assertEqual(percent(2, 3), 66.6)"
            )
        )
        builder(answer(deliverables, "Tests for number_util.", {path: wrong}))
        assert "66.6" in wrong, "the scripted failure no longer applies to the solution"
        feedback.append(Feedback(1, "checks_failed", "AssertionError: 66.7 != 66.6"))
        attempt = 2
    if phase.phase_id != "telemetry-p4-date-util":  # its continued answer is complete
        builder(answer(deliverables, f"Wrote {', '.join(deliverables)}."))
    writes = tuple(
        PlannedWrite(p, (SOLUTIONS / p).read_text(), existed=False) for p in deliverables
    )
    diff = change_diff(Change(writes, (), (), ""), {})
    verdict = json.dumps(
        {
            "approved": True,
            "issues": [],
            "summary": f"{phase.name}: every deliverable is complete and matches the task.",
        }
    )
    recorder.add(phase.phase_id, attempt, "auditor", auditor_prompt(phase, diff, []), verdict)


HEADER = {"cassette": {"repeat_last": True}}


def render(lines: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(line, sort_keys=True) + "\n" for line in [HEADER, *lines])


if __name__ == "__main__":
    CASSETTE.parent.mkdir(parents=True, exist_ok=True)
    CASSETTE.write_text(render(build()))
    print(f"wrote {CASSETTE.relative_to(REPO)}")
