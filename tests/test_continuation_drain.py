"""Cut-off Builder answers are continued, not thrown away: real CLI drains, real SQLite.

With the real SDKs against the wire fakes (both wire formats), a first answer that ran out
of ``max_tokens`` or whose stream broke off is continued where it stopped, the parts are
joined, and the phase completes in ONE attempt; the continuation request carries the
partial answer as the provider expects it, and the telemetry says what happened. Replayed
from a cassette, the recorded continuation is answered in order; when continuation does
not finish the answer, the attempt fails ``truncated`` and only then is the budget raised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autopack.executor.continuation import join, prefill
from autopack.llm.base import CONTINUE_PROMPT
from tests.executor_support import (
    attempts,
    cassette,
    create_run,
    drain,
    env_for,
    files,
    line,
    on_branch,
    phase,
    rows,
    run_file,
)
from tests.fakes.llm_wire import PIECE, Reply, WireServer
from tests.llm.support import FLAVOURS, Flavour

ANSWER = files(mod_py="def answer() -> int:\n    return 42\n")
CUT = ANSWER.index("return") + 3  # inside the file's content, mid-word
VERDICT = json.dumps({"approved": True, "issues": [], "summary": "mod.py answers 42."})


def _provider_env(flavour: Flavour, wire: WireServer) -> dict[str, str]:
    if flavour.name == "anthropic":
        return {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": wire.url}
    return {"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": f"{wire.url}/v1"}


def _drain_live(
    tmp_path: Path, flavour: Flavour, first: Reply, rest: str, *extra: str
) -> tuple[str, Any]:
    """Drain p1 against the wire fake: ``first`` Builder reply, then ``rest`` as the
    continuation, then the Auditor's verdict. Returns the database URL and the requests."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    with WireServer() as wire:
        wire.script(
            flavour.path,
            first,
            Reply(200, flavour.body(rest, input_tokens=900, output_tokens=11, cache_read=800)),
            Reply(200, flavour.body(VERDICT, output_tokens=12)),
        )
        result = drain(
            "phase",
            *("--run-id", "exec-run", "--phase-id", "p1", "--auditor", "llm"),
            *("--workspace", str(tmp_path / "ws")),
            *extra,
            env={**env, **_provider_env(flavour, wire)},
            cwd=tmp_path,
        )
        requests = [seen.body for seen in wire.seen(flavour.path)]
    assert result.returncode == 0, result.stderr[-3000:]
    assert on_branch(tmp_path / "ws", "pkg/mod.py") == "def answer() -> int:\n    return 42\n"
    assert [(a["attempt"], a["outcome"]) for a in attempts(url, "p1")] == [(1, "COMPLETE")]
    return url, requests


def _continuation_turns(flavour: Flavour, request: dict[str, Any], partial: str) -> None:
    """The continuation asks with the same prompt plus the partial answer, the way the
    wire format allows: a prefill (Anthropic) or an assistant turn and a request to go on."""
    turns = request["messages"]
    if flavour.name == "anthropic":
        assert turns[-1] == {"role": "assistant", "content": partial.rstrip()}
        assert turns[0]["content"][0]["cache_control"] == {"type": "ephemeral"}
        assert request["system"][0]["cache_control"] == {"type": "ephemeral"}
    else:
        assert turns[-2:] == [
            {"role": "assistant", "content": partial.rstrip()},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]


@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_truncated_answer_is_continued_and_completes_in_one_attempt(
    name: str, tmp_path: Path
) -> None:
    flavour = FLAVOURS[name]
    partial = ANSWER[:CUT]
    first = Reply(200, flavour.body(partial, truncated=True, input_tokens=800, output_tokens=20))
    url, requests = _drain_live(tmp_path, flavour, first, ANSWER[CUT:])

    assert len(requests) == 3
    original, continued, _audit = requests
    assert continued["messages"][: len(original["messages"])] == original["messages"]
    _continuation_turns(flavour, continued, partial)
    assert continued["max_tokens"] == original["max_tokens"]

    usage = rows(
        url,
        "SELECT attempt, role, stop_reason, output_tokens, cache_read_tokens, max_tokens "
        "FROM llm_usage_events ORDER BY id",
    )
    assert [(u["attempt"], u["role"], u["stop_reason"]) for u in usage] == [
        (1, "builder", flavour.truncated_stop),
        (1, "builder", "end_turn" if name == "anthropic" else "stop"),
        (1, "auditor", "end_turn" if name == "anthropic" else "stop"),
    ]
    assert usage[1]["cache_read_tokens"] == 800  # the continuation read the cached prompt
    budget = usage[0]["max_tokens"]
    [escalation] = rows(url, "SELECT * FROM token_budget_escalation_events")
    assert (escalation["attempt"], escalation["reason"]) == (1, "continuation")
    assert (escalation["old_budget"], escalation["new_budget"]) == (budget, 2 * budget)
    [estimation] = rows(url, "SELECT * FROM token_estimation_v2_events")
    assert estimation["attempt"] == 1 and estimation["max_tokens_sent"] == budget
    assert estimation["actual_output_tokens"] == 20 + 11  # the joined answer's output
    assert not estimation["truncated"] and estimation["parse_success"]


@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_a_stream_broken_off_mid_answer_is_continued(name: str, tmp_path: Path) -> None:
    flavour = FLAVOURS[name]
    # The fake sends whole deltas and breaks the connection once CUT characters are out.
    received = -(-CUT // PIECE) * PIECE
    partial, rest = ANSWER[:received], ANSWER[received:]
    first = Reply(200, flavour.body(ANSWER, input_tokens=800, output_tokens=99), cut_after=CUT)
    url, requests = _drain_live(tmp_path, flavour, first, rest)

    _continuation_turns(flavour, requests[1], partial)
    usage = rows(
        url,
        "SELECT role, success, error_class, stop_reason, input_tokens, output_tokens "
        "FROM llm_usage_events ORDER BY id",
    )
    broken = usage[0]
    assert (broken["role"], bool(broken["success"]), broken["error_class"]) == (
        "builder",
        False,
        "StreamInterrupted",
    )
    assert broken["stop_reason"] == "interrupted"
    # What the provider had reported when the stream broke: Anthropic's message_start
    # (the input, one output token); OpenAI reports usage only at the end.
    known = (800, 1) if name == "anthropic" else (None, None)
    assert (broken["input_tokens"], broken["output_tokens"]) == known
    [escalation] = rows(url, "SELECT reason FROM token_budget_escalation_events")
    assert escalation["reason"] == "continuation"
    [estimation] = rows(
        url, "SELECT truncated, actual_output_tokens FROM token_estimation_v2_events"
    )
    assert not estimation["truncated"]
    assert estimation["actual_output_tokens"] == (known[1] or 0) + 11


def test_a_live_run_recorded_with_a_continuation_replays_the_same_way(tmp_path: Path) -> None:
    """``--record`` writes the cut-off answer and its continuation as two lines of the
    phase; a drain of a fresh database replaying that cassette continues the same way."""
    flavour = FLAVOURS["anthropic"]
    tape = tmp_path / "recorded.jsonl"
    first = Reply(200, flavour.body(ANSWER[:CUT], truncated=True, output_tokens=20))
    live_dir, replay_dir = tmp_path / "live", tmp_path / "replay"
    live_dir.mkdir()
    replay_dir.mkdir()
    _drain_live(live_dir, flavour, first, ANSWER[CUT:], "--record", str(tape))
    recorded = [json.loads(line) for line in tape.read_text().splitlines()]
    assert [(r["match"]["role"], r["response"]["stop_reason"]) for r in recorded] == [
        ("builder", "max_tokens"),
        ("builder", "end_turn"),
        ("auditor", "end_turn"),
    ]

    url = f"sqlite:///{replay_dir / 'autopack.db'}"
    env = env_for(url)
    create_run(run_file(replay_dir, [phase("p1", ["pkg/mod.py"])]), env, replay_dir)
    result = drain(
        "phase",
        *("--run-id", "exec-run", "--phase-id", "p1", "--auditor", "llm"),
        *("--cassette", str(tape), "--workspace", str(replay_dir / "ws")),
        env=env,
        cwd=replay_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(a["attempt"], a["outcome"]) for a in attempts(url, "p1")] == [(1, "COMPLETE")]
    assert on_branch(replay_dir / "ws", "pkg/mod.py") == "def answer() -> int:\n    return 42\n"
    [escalation] = rows(url, "SELECT reason FROM token_budget_escalation_events")
    assert escalation["reason"] == "continuation"


def test_a_recorded_continuation_replays_and_a_failed_one_escalates(tmp_path: Path) -> None:
    """From a cassette: p1's cut-off answer and its recorded continuation replay in order
    (one attempt); p2's continuation is cut off too (one allowed), so its attempt fails
    ``truncated`` and the retry gets an escalated budget."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = {**env_for(url), "AUTOPACK_MAX_CONTINUATIONS": "1"}
    other = files(mod_py="VALUE = 1\n").replace("pkg/mod.py", "pkg/other.py")
    create_run(
        run_file(tmp_path, [phase("p1", ["pkg/mod.py"]), phase("p2", ["pkg/other.py"])]),
        env,
        tmp_path,
    )
    tape = cassette(
        tmp_path,
        [
            line("p1", 1, ANSWER[:CUT], stop_reason="max_tokens", output_tokens=20),
            line("p1", 1, ANSWER[CUT:], output_tokens=11),
            line("p2", 1, other[:30], stop_reason="max_tokens", output_tokens=20),
            line("p2", 1, other[30:40], stop_reason="max_tokens", output_tokens=20),
            line("p2", 2, other),
        ],
    )
    result = drain(
        "run",
        *("--run-id", "exec-run", "--cassette", str(tape), "--auditor", "rules"),
        *("--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(a["attempt"], a["outcome"]) for a in attempts(url, "p1")] == [(1, "COMPLETE")]
    assert [(a["attempt"], a["stop_reason"]) for a in attempts(url, "p2")] == [
        (1, "truncated"),
        (2, "completed"),
    ]
    escalations = rows(
        url,
        "SELECT phase_id, attempt, reason FROM token_budget_escalation_events ORDER BY id",
    )
    assert [(e["phase_id"], e["attempt"], e["reason"]) for e in escalations] == [
        ("p1", 1, "continuation"),
        ("p2", 1, "continuation"),
        ("p2", 2, "truncation"),
    ]
    estimations = rows(
        url,
        "SELECT phase_id, attempt, truncated, actual_output_tokens "
        "FROM token_estimation_v2_events ORDER BY phase_id, attempt",
    )
    assert [
        (e["phase_id"], e["attempt"], bool(e["truncated"]), e["actual_output_tokens"])
        for e in estimations
    ] == [("p1", 1, False, 31), ("p2", 1, True, 40), ("p2", 2, False, len(other) // 4)]


@pytest.mark.parametrize(
    ("partial", "more", "joined"),
    [
        ('{"a": "def f():\\n    ', "return 1", '{"a": "def f():\\n    return 1'),  # put back
        ('{"a": "def f():\\n    ', "    return 1", '{"a": "def f():\\n    return 1'),  # rewritten
        ('{"files": [{"pa', 'th": 1', '{"files": [{"path": 1'),  # mid-word
        ("hello ", "world", "hello world"),
    ],
)
def test_join_puts_back_the_whitespace_the_prefill_left_off(
    partial: str, more: str, joined: str
) -> None:
    assert not prefill(partial)[-1:].isspace()
    assert join(partial, more) == joined


@pytest.mark.parametrize(
    ("partial", "more", "joined"),
    [
        (ANSWER[:CUT], ANSWER[CUT - 30 :], ANSWER),  # restarted the line it was on
        (ANSWER[:CUT], ANSWER[: CUT + 5], ANSWER[: CUT + 5]),  # repeated it all, then on
        ('{"a": "xyxyxyxy', 'xyxy"}', '{"a": "xyxyxyxyxyxy"}'),  # short: the answer's own
    ],
)
def test_join_writes_a_repeated_end_of_the_partial_answer_once(
    partial: str, more: str, joined: str
) -> None:
    assert join(partial, more) == joined


ROW = "\n    [0, 0, 0, 0, 0, 0, 0, 0],"
RULE = "=" * 40
PERIODIC = files(mod_py=f"GRID = [{ROW * 6}\n]\n# {RULE * 2}\n")
ROWS = json.dumps(ROW * 3)[1:-1]  # as the answer's JSON has them


@pytest.mark.parametrize(
    "cut",
    [
        PERIODIC.index(ROWS) + len(ROWS),  # after 3 of 6 equal rows
        PERIODIC.index(RULE) + len(RULE),  # in the middle of a rule of 80 '='
    ],
)
def test_join_keeps_an_answer_whose_own_next_text_equals_the_end_before_the_cut(
    cut: int,
) -> None:
    """Text that repeats itself (equal rows, a long rule) goes on with what the partial
    answer ended with: a continuation that starts that way is no repeat to drop."""
    assert join(PERIODIC[:cut], PERIODIC[cut:]) == PERIODIC


@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_a_continuation_repeating_the_end_of_the_partial_answer_is_joined_once(
    name: str, tmp_path: Path
) -> None:
    """Asked to continue, a model often starts again at the line it was on: the file on
    the run's branch must hold that line once (``_drain_live`` checks the file)."""
    flavour = FLAVOURS[name]
    first = Reply(200, flavour.body(ANSWER[:CUT], truncated=True, output_tokens=20))
    _drain_live(tmp_path, flavour, first, ANSWER[CUT - 30 :])


def test_the_continuation_token_cap_bounds_what_continuations_may_write(tmp_path: Path) -> None:
    """With a 30-token cap, the first continuation may write 30 tokens, the second only
    what is left (5), then none: the attempt fails ``truncated`` and is retried."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = {**env_for(url), "AUTOPACK_CONTINUATION_TOKEN_CAP": "30"}
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    cut = "max_tokens"
    tape = cassette(
        tmp_path,
        [
            line("p1", 1, ANSWER[:20], output_tokens=20, stop_reason=cut),
            line("p1", 1, ANSWER[20:30], output_tokens=25, stop_reason=cut),
            line("p1", 1, ANSWER[30:35], output_tokens=5, stop_reason=cut),
            line("p1", 2, ANSWER),
        ],
    )
    result = drain(
        "phase",
        *("--run-id", "exec-run", "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "rules", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [a["stop_reason"] for a in attempts(url, "p1")] == ["truncated", "completed"]
    sent = rows(url, "SELECT attempt, max_tokens FROM llm_usage_events ORDER BY id")
    budget = sent[0]["max_tokens"]
    assert [(s["attempt"], s["max_tokens"]) for s in sent[:3]] == [(1, budget), (1, 30), (1, 5)]
    escalations = rows(
        url,
        "SELECT attempt, reason, old_budget, new_budget FROM token_budget_escalation_events "
        "ORDER BY id",
    )
    assert [(e["attempt"], e["reason"], e["old_budget"], e["new_budget"]) for e in escalations][
        :2
    ] == [(1, "continuation", budget, budget + 30), (1, "continuation", budget + 30, budget + 35)]
    assert escalations[2]["reason"] == "truncation" and escalations[2]["attempt"] == 2


def test_a_refused_continuation_leaves_the_answer_truncated_and_the_retry_escalates(
    tmp_path: Path,
) -> None:
    """A model that refuses the continuation (some reject an assistant prefill with a 400)
    does not fail the attempt as an LLM error: the answer stays cut off, the attempt ends
    ``truncated`` and the retry gets the escalated budget."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    refused = {
        "match": {"run_id": "exec-run", "phase_id": "p1", "attempt": 1, "role": "builder"},
        "provider": "anthropic",
        "model": "claude-sonnet-5-5",
        "error": {
            "status": 400,
            "error_class": "BadRequestError",
            "message": "assistant message prefill is not supported",
        },
    }
    tape = cassette(
        tmp_path,
        [
            line("p1", 1, ANSWER[:CUT], stop_reason="max_tokens", output_tokens=20),
            refused,
            line("p1", 2, ANSWER),
        ],
    )
    result = drain(
        "phase",
        *("--run-id", "exec-run", "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "rules", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [a["stop_reason"] for a in attempts(url, "p1")] == ["truncated", "completed"]
    usage = rows(url, "SELECT attempt, success, error_class FROM llm_usage_events ORDER BY id")
    assert [(u["attempt"], bool(u["success"]), u["error_class"]) for u in usage] == [
        (1, True, None),
        (1, False, "BadRequestError"),
        (2, True, None),
    ]
    reasons = rows(url, "SELECT attempt, reason FROM token_budget_escalation_events ORDER BY id")
    assert [(r["attempt"], r["reason"]) for r in reasons] == [
        (1, "continuation"),
        (2, "truncation"),
    ]
