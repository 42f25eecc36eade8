"""Replay cassettes: matching, misses that name what was asked, speed, threads, and the
record -> replay round trip through the real SDK providers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autopack.errors import CassetteMiss, ConfigError, LLMError
from autopack.llm.anthropic_provider import AnthropicProvider
from autopack.llm.base import LLMResponse, StreamInterrupted, Usage
from autopack.llm.openai_provider import OpenAIProvider
from autopack.llm.replay import RecordingProvider, ReplayProvider
from autopack.llm.responses import ANTHROPIC, normalise
from tests.fakes.llm_wire import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    RETRY_NOW,
    Reply,
    WireServer,
    anthropic_error,
    anthropic_message,
    openai_completion,
)
from tests.llm.support import make_request


def line(
    text: str,
    *,
    run_id: str = "run-1",
    phase_id: str | None = "phase-1",
    attempt: int | None = 1,
    role: str = "builder",
    latency_ms: float = 1234.0,
    **usage: Any,
) -> dict[str, Any]:
    return {
        "match": {"run_id": run_id, "phase_id": phase_id, "attempt": attempt, "role": role},
        "provider": "anthropic",
        "model": "claude-sonnet-5-5",
        "latency_ms": latency_ms,
        "response": anthropic_message(text, **usage),
    }


def write(path: Path, *lines: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in lines), encoding="utf-8")
    return path


def test_replay_answers_the_matching_line_through_the_live_parser(tmp_path: Path) -> None:
    body = anthropic_message("builder answer", input_tokens=7, output_tokens=9, cache_read=3)
    entry = line("x")
    entry["response"] = body
    entry["request_id"] = "req_recorded"
    cassette = write(
        tmp_path / "c.jsonl",
        line("auditor answer", role="auditor"),
        entry,
        line("attempt 2", attempt=2),
    )

    response = ReplayProvider(cassette).complete(make_request())

    # Exactly what the live provider makes of the same body, reported as a replay.
    expected = normalise(
        ANTHROPIC,
        body,
        request_model="claude-sonnet-5-5",
        request_id="req_recorded",
        latency_ms=1234.0,
    )
    assert response == dataclasses.replace(expected, provider="replay")
    assert response.model == "claude-sonnet-5-5"  # the recorded model is kept
    assert response.text == "builder answer"
    assert response.usage.input_tokens == 10  # normalised like a live answer
    assert response.latency_ms == 1234.0  # the recorded latency, whatever the speed


def test_replay_never_imports_a_provider_sdk(tmp_path: Path) -> None:
    """Importing ``anthropic`` alone took 2.3 s and ``openai`` 1.3 s on the CI machine:
    every offline drain (the demo, the tests) paid both, for answers it already had."""
    openai_line = {**line("from openai", phase_id="phase-2"), "provider": "openai"}
    openai_line["response"] = openai_completion("from openai", cost=0.25)
    cassette = write(tmp_path / "c.jsonl", line("from anthropic"), openai_line)
    script = (
        "import sys\n"
        "from autopack.llm.base import LLMRequest, Message\n"
        "from autopack.llm.replay import ReplayProvider\n"
        "def ask(phase):\n"
        "    return LLMRequest(role='builder', model='m', system='s', max_tokens=9,\n"
        "        messages=(Message('user', 'u'),), run_id='run-1', phase_id=phase, attempt=1)\n"
        f"provider = ReplayProvider({str(cassette)!r})\n"
        "first = provider.complete(ask('phase-1'))\n"
        "second = provider.complete(ask('phase-2'))\n"
        "print(first.text, '|', second.text, second.provider_cost_usd)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'anthropic', 'openai'}))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["from anthropic | from openai 0.25", "[]"]


@pytest.mark.parametrize("cost", [float("inf"), float("nan"), -1.0, True, "0.5"])
def test_a_reported_cost_that_cannot_be_true_is_dropped(tmp_path: Path, cost: object) -> None:
    """Python's JSON reads ``Infinity`` and ``NaN``: a cassette (or a server) saying so
    must not reach the telemetry row, which refuses them (the attempt would crash)."""
    entry = line("answer")
    entry["response"]["usage"]["cost"] = cost
    response = ReplayProvider(write(tmp_path / "c.jsonl", entry)).complete(make_request())
    assert response.text == "answer" and response.provider_cost_usd is None
    reported = line("answer")
    reported["response"]["usage"]["cost"] = 0.5
    kept = ReplayProvider(write(tmp_path / "k.jsonl", reported)).complete(make_request())
    assert kept.provider_cost_usd == 0.5


def test_lines_with_the_same_key_answer_successive_calls_then_miss(tmp_path: Path) -> None:
    cassette = write(tmp_path / "c.jsonl", line("first"), line("second"))
    provider = ReplayProvider(cassette)

    assert provider.complete(make_request()).text == "first"
    assert provider.complete(make_request()).text == "second"
    with pytest.raises(CassetteMiss) as caught:
        provider.complete(make_request())
    assert "call #3 of role builder for phase 'phase-1' of run 'run-1'" in caught.value.message
    assert "builder: 2 answer(s) (recorded at attempt 1, 1)" in caught.value.message
    assert "does not repeat answers" in caught.value.message


def test_calls_match_by_order_skipping_answers_recorded_for_earlier_attempts(
    tmp_path: Path,
) -> None:
    """Executors each replay a cassette of their own: one whose first call of a phase is
    its attempt 2 (another executor made attempt 1) gets what attempt 2 was answered, not
    attempt 1's deliberate failure again (a phase drained by three executors could fail
    on its third try). A phase retried more often than recorded, or a cassette numbering
    every line 1, is answered in order, not "no answer for attempt=2"."""
    cassette = write(tmp_path / "c.jsonl", line("first", attempt=1), line("second", attempt=2))
    first, second = ReplayProvider(cassette), ReplayProvider(cassette)
    assert first.complete(make_request(attempt=1)).text == "first"
    assert second.complete(make_request(attempt=2)).text == "second"
    with pytest.raises(CassetteMiss):
        second.complete(make_request(attempt=3))

    unnumbered = write(tmp_path / "u.jsonl", line("first"), line("second"), line("third"))
    resumed = ReplayProvider(unnumbered)
    assert resumed.complete(make_request(attempt=2)).text == "first"
    assert resumed.complete(make_request(attempt=3)).text == "second"

    repeating = write(
        tmp_path / "r.jsonl", {"cassette": {"repeat_last": True}}, line("only", attempt=1)
    )
    provider = ReplayProvider(repeating)
    assert [provider.complete(make_request(attempt=n)).text for n in (1, 2, 3)] == ["only"] * 3
    with pytest.raises(CassetteMiss):  # repeating never crosses to another phase or role
        provider.complete(make_request(role="auditor"))


def test_a_cassette_header_is_the_first_line_only(tmp_path: Path) -> None:
    late = write(tmp_path / "c.jsonl", line("a"), {"cassette": {"repeat_last": True}})
    with pytest.raises(ConfigError, match=r"c\.jsonl:2: the cassette header must be the first"):
        ReplayProvider(late)
    odd = write(tmp_path / "d.jsonl", {"cassette": {"repeat": "yes"}})
    with pytest.raises(ConfigError, match=r"d\.jsonl:1: a header line is"):
        ReplayProvider(odd)


def test_unmatched_request_names_the_request_the_cassette_and_what_it_has(tmp_path: Path) -> None:
    cassette = write(
        tmp_path / "c.jsonl",
        line("a"),
        line("b", role="auditor"),
        line("c", phase_id="phase-2"),
    )
    provider = ReplayProvider(cassette)

    assert provider.complete(make_request(attempt=3, role="builder")).text == "a"
    with pytest.raises(CassetteMiss) as caught:
        provider.complete(make_request(attempt=4, role="builder"))
    message = caught.value.message
    assert str(cassette) in message
    assert "call #2 of role builder for phase 'phase-1' of run 'run-1' (attempt 4)" in message
    assert "auditor: 1 answer(s) (recorded at attempt 1)" in message
    assert "builder: 1 answer(s) (recorded at attempt 1)" in message
    assert caught.value.retryable is False
    assert caught.value.provider == "replay"
    assert isinstance(caught.value, LLMError)  # the executor records it like any failed call

    with pytest.raises(CassetteMiss) as caught:
        provider.complete(make_request(phase_id="phase-9"))
    assert "nothing for that phase" in caught.value.message
    assert "phase-1, phase-2" in caught.value.message


def test_speed_scales_the_recorded_latency_and_zero_never_sleeps(tmp_path: Path) -> None:
    cassette = write(tmp_path / "c.jsonl", line("a", latency_ms=1000.0), line("b", attempt=2))
    slept: list[float] = []

    instant = ReplayProvider(cassette, speed=0.0, sleep=slept.append)
    instant.complete(make_request())
    instant.complete(make_request(attempt=2))
    assert slept == []

    half = ReplayProvider(cassette, speed=0.5, sleep=slept.append)
    half.complete(make_request())
    half.complete(make_request(attempt=2))
    assert slept == [pytest.approx(0.5), pytest.approx(0.617)]


def test_replay_is_thread_safe_each_answer_served_exactly_once(tmp_path: Path) -> None:
    phases, per_key, threads = 5, 8, 16
    lines = [
        line(f"{phase}:{n}", phase_id=f"p{phase}")
        for phase in range(phases)
        for n in range(per_key)
    ]
    provider = ReplayProvider(write(tmp_path / "c.jsonl", *lines))
    served: list[str] = []
    misses: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work(worker: int) -> None:
        start.wait()
        for call in range(per_key):  # 16 workers x 8 calls = 128 asks for 40 answers
            phase = (worker + call) % phases
            try:
                text = provider.complete(make_request(phase_id=f"p{phase}")).text
            except CassetteMiss as miss:
                with lock:
                    misses.append(miss.message)
            else:
                with lock:
                    served.append(text)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)

    assert Counter(served) == Counter(f"{p}:{n}" for p in range(phases) for n in range(per_key))
    assert len(misses) == threads * per_key - phases * per_key


def test_error_lines_replay_as_llm_errors(tmp_path: Path) -> None:
    entry = line("unused")
    del entry["response"]
    entry["error"] = {"status": 429, "error_class": "RateLimitError", "message": "slow down"}
    cassette = write(tmp_path / "c.jsonl", entry, line("after the error"))
    provider = ReplayProvider(cassette)

    with pytest.raises(LLMError) as caught:
        provider.complete(make_request())
    assert (caught.value.status_code, caught.value.error_class) == (429, "RateLimitError")
    assert caught.value.retryable is True
    assert caught.value.latency_ms == 1234.0
    assert provider.complete(make_request()).text == "after the error"


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda e: e.update(provider="gemini"), "provider must be one of"),
        (lambda e: e["response"].pop("usage"), "usage"),
        (lambda e: e["match"].update(role="reviewer"), "match.role"),
        (lambda e: e.update(error={"status": 500}), "exactly one of"),
        (lambda e: e.update(latency_ms=-1), "latency_ms"),
    ],
)
def test_a_broken_cassette_fails_at_load_with_its_line_number(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], object], complaint: str
) -> None:
    bad = line("b")
    mutate(bad)
    cassette = write(tmp_path / "c.jsonl", line("a"), bad)
    with pytest.raises(ConfigError) as caught:
        ReplayProvider(cassette)
    assert f"{cassette}:2" in caught.value.message
    assert complaint in caught.value.message


def test_missing_or_non_json_cassette_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        ReplayProvider(tmp_path / "absent.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"match": \n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: not JSON"):
        ReplayProvider(tmp_path / "bad.jsonl")


def test_record_then_replay_gives_identical_responses_and_errors(tmp_path: Path) -> None:
    cassette = tmp_path / "recorded" / "run.jsonl"
    with WireServer() as wire:
        wire.script(
            ANTHROPIC_PATH,
            Reply(429, anthropic_error("rate_limit_error", "slow"), RETRY_NOW),
            Reply(
                200,
                anthropic_message("built", cache_read=4, cache_write=2),
                {"request-id": "req_1"},
            ),
            Reply(400, anthropic_error("invalid_request_error", "no"), {"request-id": "req_2"}),
        )
        wire.script(OPENAI_PATH, Reply(200, openai_completion("audited", cost=0.5)))
        anthropic_live = AnthropicProvider(api_key="k", base_url=wire.url, max_retries=1)
        openai_live = OpenAIProvider(api_key="k", base_url=wire.url + "/v1", max_retries=0)
        builder = RecordingProvider(anthropic_live, cassette)
        auditor = RecordingProvider(openai_live, cassette)
        try:
            live: list[LLMResponse | LLMError] = [
                builder.complete(make_request()),
                auditor.complete(make_request(role="auditor", model="gpt-6-luna")),
            ]
            with pytest.raises(LLMError) as caught:
                builder.complete(make_request(attempt=2))
            live.append(caught.value)
        finally:
            anthropic_live.close()
            openai_live.close()
    assert builder.name == "anthropic"
    assert len(cassette.read_text().splitlines()) == 3

    replay = ReplayProvider(cassette)
    replayed: list[LLMResponse | LLMError] = [
        replay.complete(make_request()),
        replay.complete(make_request(role="auditor", model="gpt-6-luna")),
    ]
    with pytest.raises(LLMError) as caught:
        replay.complete(make_request(attempt=2))
    replayed.append(caught.value)

    assert isinstance(live[0], LLMResponse) and live[0].retries == 1
    assert isinstance(live[1], LLMResponse) and live[1].provider_cost_usd == 0.5
    # The same answers, reported as replayed (never as spending with a live provider).
    assert replayed[0] == dataclasses.replace(live[0], provider="replay")
    assert replayed[1] == dataclasses.replace(live[1], provider="replay")
    assert isinstance(live[2], LLMError) and isinstance(replayed[2], LLMError)
    assert replayed[2].to_dict() == {**live[2].to_dict(), "provider": "replay"}


def test_concurrent_recorders_on_one_file_never_interleave_lines(tmp_path: Path) -> None:
    cassette = tmp_path / "concurrent.jsonl"
    big = "x" * 20_000  # far beyond one write() buffer: interleaving would corrupt lines
    threads, calls = 8, 4
    with WireServer() as wire:
        wire.script(
            ANTHROPIC_PATH, *[Reply(200, anthropic_message(big)) for _ in range(threads * calls)]
        )
        live = [AnthropicProvider(api_key="k", base_url=wire.url, max_retries=0) for _ in "ab"]
        recorders = [RecordingProvider(provider, cassette) for provider in live]

        def work(worker: int) -> None:
            for call in range(calls):
                recorders[worker % 2].complete(
                    make_request(phase_id=f"w{worker}", attempt=call, max_tokens=4096)
                )

        pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=60)
        for provider in live:
            provider.close()

    replay = ReplayProvider(cassette)  # parses every line: a torn line would fail here
    for worker in range(threads):
        for call in range(calls):
            assert (
                replay.complete(
                    make_request(phase_id=f"w{worker}", attempt=call, max_tokens=4096)
                ).text
                == big
            )


def test_a_recorded_broken_stream_replays_as_stream_interrupted(tmp_path: Path) -> None:
    """A live stream cut mid-answer is recorded with its partial text and usage; replay
    raises the same StreamInterrupted, so the executor continues it as it did live."""
    cassette = tmp_path / "broken.jsonl"
    with WireServer() as wire:
        wire.script(ANTHROPIC_PATH, Reply(200, anthropic_message("abcdefghijklmnop"), cut_after=8))
        live = AnthropicProvider(api_key="k", base_url=wire.url, max_retries=0)
        try:
            with pytest.raises(StreamInterrupted) as recorded:
                RecordingProvider(live, cassette).complete(make_request())
        finally:
            live.close()
    with pytest.raises(StreamInterrupted) as replayed:
        ReplayProvider(cassette).complete(make_request())
    assert replayed.value.partial == recorded.value.partial == "abcdefghijklmn"
    assert replayed.value.usage == recorded.value.usage == Usage(10, 1)
    assert replayed.value.provider == "replay"
