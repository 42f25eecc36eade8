"""Usage and answers a hostile or broken provider sends, through a real drain: each call is
billed, recorded and ends its phase cleanly, never an ``executor_error``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopack.llm.base import Usage
from autopack.llm.pricing import cost_of
from tests.executor_support import (
    cassette,
    create_run,
    drain,
    env_for,
    files,
    line,
    phase,
    repository,
    rows,
    run_file,
)
from tests.fakes.llm_wire import Reply, WireServer
from tests.fakes.raw_sse import Raw, a_block_start, a_delta, a_start, o_chunk
from tests.llm.support import FLAVOURS
from tests.llm.test_hostile_streams import ANSWER, OVERLOADED, drain_against

CUT = {
    "anthropic": Raw([a_start(), a_block_start(), a_delta(ANSWER[:20])]),
    "openai": Raw(
        [o_chunk({"role": "assistant", "content": ""}), o_chunk({"content": ANSWER[:20]})]
    ),
}
"""A stream broken off after some text, before the provider said what it wrote (Anthropic
had said its input and message_start's placeholder output of 1)."""


def test_a_call_costing_more_than_one_call_may_fails_its_phase_billed_at_the_bound(
    tmp_path: Path,
) -> None:
    """90 million input tokens at a price file's $9,000 per million cost $810,000, more
    than a usage report takes ($100,000): the report was refused and each of the phase's
    attempts ended executor_error with a pydantic ValidationError, the call unbilled and
    unrecorded (the run's $10 cap never saw it) and asked again. It is now billed and
    recorded at the bound, with its tokens, and the phase fails at once saying why; the
    run's cap then stops the next phase before it calls."""
    flavour = FLAVOURS["anthropic"]
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    dear = {"input": 9000, "output": 9000}
    (tmp_path / "prices.json").write_text(
        json.dumps({"version": "dear", "models": {flavour.model: dear}})
    )
    env = env_for(url, AUTOPACK_PRICE_TABLE=str(tmp_path / "prices.json"))
    phases = [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/b.py"])]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    answer = flavour.body(files(a_py="A = 1\n"), input_tokens=90_000_000)
    with WireServer() as wire:
        wire.script(flavour.path, *[Reply(200, answer)] * 3)
        result = drain(
            *("run", "--run-id", "exec-run", "--auditor", "off"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, "ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": wire.url},
            cwd=tmp_path,
        )
        calls = len(wire.seen(flavour.path))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ValidationError" not in result.stderr
    assert calls == 1
    (attempt,) = rows(url, "SELECT phase_id, stop_reason, error FROM phase_attempts")
    assert (attempt["phase_id"], attempt["stop_reason"]) == ("p1", "llm_error")
    assert "costs $810,000.18 at the prices of claude-sonnet-5-5" in attempt["error"]
    assert "more than the $100,000 one call may cost" in attempt["error"]
    (usage,) = rows(
        url, "SELECT success, error_class, input_tokens, cost_usd FROM llm_usage_events"
    )
    assert usage == {
        "success": 0,
        "error_class": "CostBeyondBound",
        "input_tokens": 90_000_000,
        "cost_usd": 100_000.0,
    }
    (run,) = rows(url, "SELECT cost_usd, tokens_used FROM runs")
    assert run == {"cost_usd": 100_000.0, "tokens_used": 90_000_020}


def test_an_answer_touching_more_files_than_an_approval_holds_is_feedback(
    tmp_path: Path,
) -> None:
    """30,000 empty files and one overwrite of an existing file (which needs approval):
    the change was planned whole, then its approval request refused (more than 100,000
    JSON values in its context) and the attempt ended executor_error with a pydantic
    ValidationError. Too many files is now answer_too_large feedback for the Builder."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    workspace = repository(tmp_path / "ws", {"pkg/old.txt": "old\n"})
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    written = [{"path": f"pkg/f{i}.txt", "content": ""} for i in range(30_000)]
    written += [{"path": "pkg/mod.py", "content": "V = 1\n"}]
    written += [{"path": "pkg/old.txt", "content": "new\n"}]
    answer = json.dumps({"files": written, "summary": "many files"})
    tape = cassette(tmp_path, [line("p1", 1, answer)])
    result = drain(
        *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "off"),
        *("--cassette", str(tape), "--workspace", str(workspace)),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "ValidationError" not in result.stderr
    (attempt,) = rows(url, "SELECT stop_reason, feedback FROM phase_attempts")
    assert attempt["stop_reason"] == "answer_too_large"
    said = "touches 30002 files; one answer may write, edit or delete at most 10000."
    assert said in attempt["feedback"], attempt["feedback"]


@pytest.mark.parametrize("provider", sorted(CUT))
def test_broken_streams_count_their_whole_allowance_in_tokens_and_cost(
    provider: str, tmp_path: Path
) -> None:
    """Anthropic's broken streams counted message_start's placeholder of 1 output token:
    AUTOPACK_CONTINUATION_TOKEN_CAP=50 let continuations of 50, 49 and 48 tokens through,
    and the run's budgets saw 11 tokens a call whatever the model wrote. OpenAI's counted
    their allowance in tokens but $0 in cost, so a cost cap never saw them. Both now count
    the allowance as written, tokens and cost; the rows keep what was reported."""
    url, seen = drain_against(
        tmp_path, provider, *[CUT[provider]] * 4, env={"AUTOPACK_CONTINUATION_TOKEN_CAP": "50"}
    )
    allowances = [body["max_tokens"] for _, body in seen if isinstance(body, dict)]
    assert allowances[1:] == [50], allowances
    model, reported = ("claude-sonnet-5-5", 10) if provider == "anthropic" else ("gpt-6-luna", 0)
    bounds = [cost_of(model, Usage(reported, allowance))[0] or 0 for allowance in allowances]
    (run,) = rows(url, "SELECT tokens_used, cost_usd FROM runs")
    assert run["tokens_used"] == sum(allowances) + reported * len(allowances)
    assert run["cost_usd"] == pytest.approx(sum(bounds)) and run["cost_usd"] > 0
    output = rows(url, "SELECT output_tokens FROM llm_usage_events")
    assert output == [{"output_tokens": 1 if reported else None}] * 2


def test_an_overload_event_after_some_text_is_waited_for_and_billed(tmp_path: Path) -> None:
    """Anthropic's ``overloaded_error`` event arriving after the Builder's first text, on
    every call: the answer was continued at once, into the same overload, until the
    continuations ran out and the phase FAILED ``truncated``, its only try spent. It is
    the busy provider an HTTP 529 is: each broken stream billed as such, then waited for
    (AUTOPACK_LLM_UNREACHABLE_SECONDS), and the phase handed back unspent."""
    overloaded = Raw([a_start(), a_block_start(), a_delta(ANSWER[:20]), OVERLOADED])
    url, seen = drain_against(
        tmp_path, "anthropic", *[overloaded] * 4, env={"AUTOPACK_LLM_UNREACHABLE_SECONDS": "3"}
    )
    assert len(seen) == 3  # after waits of 2 s and 1 s
    assert rows(url, "SELECT state FROM phases") == [{"state": "QUEUED"}]
    tried = rows(url, "SELECT outcome, stop_reason, error FROM phase_attempts")
    assert [(t["outcome"], t["stop_reason"]) for t in tried] == [("FAILED", "interrupted")]
    assert "overloaded_error in the stream" in tried[0]["error"], tried
    # each billed as a broken stream: its row says so, with the input the stream reported
    calls = rows(url, "SELECT error_class, stop_reason, input_tokens FROM llm_usage_events")
    assert (
        calls
        == [{"error_class": "StreamInterrupted", "stop_reason": "interrupted", "input_tokens": 10}]
        * 3
    ), calls
