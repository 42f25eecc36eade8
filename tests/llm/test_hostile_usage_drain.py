"""Usage a hostile or broken provider reports, through a real drain: each call is billed,
recorded and ends its phase cleanly, never an ``executor_error`` with the call unrecorded."""

from __future__ import annotations

import json
from pathlib import Path

from tests.executor_support import create_run, drain, env_for, files, phase, rows, run_file
from tests.fakes.llm_wire import Reply, WireServer
from tests.llm.support import FLAVOURS


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
