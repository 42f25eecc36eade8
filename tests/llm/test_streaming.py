"""Streamed calls, continuations and prompt caching through the REAL SDKs against the wire
fakes. Every test runs once per flavour (anthropic, openai) unless it names one."""

from __future__ import annotations

import dataclasses

import pytest

from autopack.llm.base import CONTINUE_PROMPT, Message, StreamInterrupted, Usage
from tests.fakes.llm_wire import ANTHROPIC_PATH, Reply, WireServer
from tests.llm.support import Flavour, Live, make_request

ANSWER = '{"files": [{"path": "a.py", "content": "print(1)\\n"}], "summary": "a"}'


def test_a_streamed_answer_is_rebuilt_with_usage_and_time_to_first_text(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    wire.script(
        flavour.path,
        Reply(200, flavour.body(ANSWER, input_tokens=90, output_tokens=33, cache_read=60)),
    )
    seen: list[int] = []
    request = dataclasses.replace(make_request(model=flavour.model), on_text=seen.append)

    response = live(0).complete(request)

    [sent] = wire.seen(flavour.path)
    assert sent.body["stream"] is True
    if flavour.name == "openai":
        assert sent.body["stream_options"] == {"include_usage": True}
    assert response.text == ANSWER
    assert response.stop_reason == ("end_turn" if flavour.name == "anthropic" else "stop")
    expected_input = 150 if flavour.name == "anthropic" else 90  # Anthropic's excludes reads
    assert response.usage == Usage(expected_input, 33, cache_read_tokens=60)
    assert response.ttft_ms is not None and 0 < response.ttft_ms <= response.latency_ms
    # The display saw the answer arrive in pieces, ending with all of it.
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] == len(ANSWER)


def test_a_stream_cut_mid_answer_raises_stream_interrupted_with_the_partial_text(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    wire.script(flavour.path, Reply(200, flavour.body(ANSWER, input_tokens=70), cut_after=20))

    with pytest.raises(StreamInterrupted) as caught:
        live(0).complete(make_request(model=flavour.model))

    error = caught.value
    assert 20 <= len(error.partial) < len(ANSWER) and ANSWER.startswith(error.partial)
    assert error.retryable is True and error.error_class == "StreamInterrupted"
    assert error.provider == flavour.name
    if flavour.name == "anthropic":  # message_start reported the input already
        assert error.usage == Usage(70, 1)
    else:  # usage only comes in the last chunk
        assert error.usage is None


def test_a_stream_ending_without_a_stop_reason_is_interrupted_too(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    wire.script(flavour.path, Reply(200, flavour.body(ANSWER), end_early=True))
    with pytest.raises(StreamInterrupted) as caught:
        live(0).complete(make_request(model=flavour.model))
    assert caught.value.partial == ANSWER


def test_a_continuation_request_on_each_wire_format(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    """Anthropic: the partial answer is an assistant prefill; OpenAI has no prefill, so
    the partial answer is an assistant turn followed by the request to continue."""
    wire.script(flavour.path, Reply(200, flavour.body('"b.py"}]}')))
    request = dataclasses.replace(
        make_request(model=flavour.model),
        messages=(Message("user", "Write hello.py"), Message("assistant", '{"files": [{"path":')),
    )
    assert request.continues

    response = live(0).complete(request)

    assert response.text == '"b.py"}]}'
    sent = wire.seen(flavour.path)[0].body["messages"]
    turns = [
        {"role": "user", "content": "Write hello.py"},
        {"role": "assistant", "content": '{"files": [{"path":'},
    ]
    if flavour.name == "anthropic":
        assert sent == turns
    else:
        assert sent == [
            {"role": "system", "content": "You write code."},
            *turns,
            {"role": "user", "content": CONTINUE_PROMPT},
        ]


@pytest.mark.parametrize("cache", [True, False])
def test_anthropic_cache_control_marks_system_and_stable_prefix_only_when_on(
    live: Live, wire: WireServer, flavour: Flavour, cache: bool
) -> None:
    if flavour.name != "anthropic":
        pytest.skip("cache_control is Anthropic's; OpenAI caches prefixes by itself")
    wire.script(ANTHROPIC_PATH, Reply(200, flavour.body("ok")))
    request = dataclasses.replace(
        make_request(model=flavour.model),
        messages=(Message("user", "feedback", stable_prefix="CONTEXT\n"),),
        prompt_cache=cache,
    )

    live(0).complete(request)

    body = wire.seen(ANTHROPIC_PATH)[0].body
    marked = {"cache_control": {"type": "ephemeral"}} if cache else {}
    if cache:
        assert body["system"] == [{"type": "text", "text": "You write code.", **marked}]
    else:
        assert body["system"] == "You write code."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "CONTEXT\n", **marked},
                {"type": "text", "text": "feedback"},
            ],
        }
    ]


def test_openai_gets_the_stable_prefix_first_in_one_turn(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    """The same leading text on every call of a phase, so automatic prefix caching finds it."""
    if flavour.name != "openai":
        pytest.skip("the Anthropic form is above")
    wire.script(flavour.path, Reply(200, flavour.body("ok")))
    request = dataclasses.replace(
        make_request(model=flavour.model),
        messages=(Message("user", "feedback", stable_prefix="CONTEXT\n"),),
        prompt_cache=True,
    )
    live(0).complete(request)
    assert wire.seen(flavour.path)[0].body["messages"] == [
        {"role": "system", "content": "You write code."},
        {"role": "user", "content": "CONTEXT\nfeedback"},
    ]


def test_cache_writes_are_read_from_anthropic_usage(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    if flavour.name != "anthropic":
        pytest.skip("OpenAI reports cache writes only on some servers (covered elsewhere)")
    body = flavour.body("ok", input_tokens=5, output_tokens=2, cache_read=0)
    body["usage"]["cache_creation_input_tokens"] = 1200
    wire.script(ANTHROPIC_PATH, Reply(200, body))
    response = live(0).complete(make_request(model=flavour.model))
    assert response.usage == Usage(1205, 2, cache_read_tokens=0, cache_write_tokens=1200)
