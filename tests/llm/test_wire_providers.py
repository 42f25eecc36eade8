"""The live providers, with the REAL anthropic/openai SDK clients, against a loopback server
speaking their wire formats. Every test runs once per flavour (anthropic, openai)."""

from __future__ import annotations

import socket

import pytest

from autopack.errors import LLMError
from autopack.llm.base import Usage
from autopack.llm.openai_provider import OpenAIProvider, token_parameter_for
from tests.fakes.llm_wire import OPENAI_PATH, RETRY_NOW, Reply, WireServer, openai_completion
from tests.llm.support import Flavour, Live, make_request


def test_success_normalises_usage_and_keeps_the_raw_response(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    body = flavour.body("print('hi')", input_tokens=100, output_tokens=40, cache_read=30)
    if flavour.name == "anthropic":
        body["usage"]["cache_creation_input_tokens"] = 20
    wire.script(flavour.path, Reply(200, body, {flavour.request_id_header: "req_abc"}))

    response = live(2).complete(make_request(model=flavour.model, max_tokens=321))

    assert response.text == "print('hi')"
    assert response.stop_reason == ("end_turn" if flavour.name == "anthropic" else "stop")
    assert response.truncated is False
    if flavour.name == "anthropic":
        # Anthropic reports cache parts apart from input_tokens: 100 + 30 read + 20 written.
        assert response.usage == Usage(150, 40, cache_read_tokens=30, cache_write_tokens=20)
    else:
        # OpenAI's prompt_tokens already include the cached ones.
        assert response.usage == Usage(100, 40, cache_read_tokens=30, cache_write_tokens=0)
    assert response.provider == flavour.name
    assert response.model == flavour.model
    assert response.request_id == "req_abc"
    assert response.retries == 0
    assert response.latency_ms > 0
    # The body rebuilt from the stream: what the API sends without streaming (the SDK's
    # final message may add fields it knows, such as Anthropic's stop_details).
    assert response.raw is not None and {key: response.raw[key] for key in body} == body

    [seen] = wire.seen(flavour.path)
    sent = seen.body
    assert sent["model"] == flavour.model
    assert "temperature" not in sent  # never sent unless asked: current models reject it
    if flavour.name == "anthropic":
        assert sent["max_tokens"] == 321
        assert sent["system"] == "You write code."
        assert sent["messages"] == [{"role": "user", "content": "Write hello.py"}]
    else:
        assert sent["max_tokens"] == 321  # a compatible server gets the classic field name
        assert sent["messages"] == [
            {"role": "system", "content": "You write code."},
            {"role": "user", "content": "Write hello.py"},
        ]


def test_temperature_is_sent_when_the_request_sets_it(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    wire.script(flavour.path, Reply(200, flavour.body()))
    live(0).complete(make_request(model=flavour.model, temperature=0.25))
    assert wire.seen(flavour.path)[0].body["temperature"] == 0.25


def test_429_is_retried_by_the_sdk_then_succeeds(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    wire.script(
        flavour.path,
        Reply(429, flavour.error("rate_limit_error", "slow down"), RETRY_NOW),
        Reply(200, flavour.body("done")),
    )

    response = live(2).complete(make_request(model=flavour.model))

    assert response.text == "done"
    assert response.retries == 1
    assert len(wire.seen(flavour.path)) == 2


def test_500_is_retried_then_surfaces_as_a_retryable_llm_error(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    failure = Reply(
        500,
        flavour.error("api_error", "upstream broke"),
        {**RETRY_NOW, flavour.request_id_header: "req_500"},
    )
    wire.script(flavour.path, failure, failure, failure)

    with pytest.raises(LLMError) as caught:
        live(2).complete(make_request(model=flavour.model))

    error = caught.value
    assert len(wire.seen(flavour.path)) == 3  # one call + max_retries=2 SDK retries
    assert error.status_code == 500
    assert error.retryable is True
    assert error.error_class == "InternalServerError"
    assert error.provider == flavour.name
    assert error.model == flavour.model
    assert error.request_id == "req_500"
    assert error.latency_ms > 0
    assert "upstream broke" in error.message
    assert isinstance(error.__cause__, Exception)  # the SDK's exception is kept


def test_400_is_not_retried_and_not_retryable(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    wire.script(flavour.path, Reply(400, flavour.error("invalid_request_error", "bad model")))

    with pytest.raises(LLMError) as caught:
        live(2).complete(make_request(model=flavour.model))

    assert len(wire.seen(flavour.path)) == 1
    assert caught.value.status_code == 400
    assert caught.value.retryable is False
    assert caught.value.error_class == "BadRequestError"


def test_truncated_answer_is_flagged(live: Live, wire: WireServer, flavour: Flavour) -> None:
    wire.script(flavour.path, Reply(200, flavour.body('{"files": [{"pa', truncated=True)))

    response = live(0).complete(make_request(model=flavour.model))

    assert response.truncated is True
    assert response.stop_reason == flavour.truncated_stop
    assert response.text == '{"files": [{"pa'


def test_malformed_json_content_is_returned_as_is(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    # Judging the Builder's JSON is the Builder parser's job; the provider must not choke.
    text = '{"files": [ {"path": "a.py", "content": "x" ,, ] } trailing'
    wire.script(flavour.path, Reply(200, flavour.body(text)))

    response = live(0).complete(make_request(model=flavour.model))

    assert response.text == text
    assert response.truncated is False


def test_latency_covers_the_server_time(live: Live, wire: WireServer, flavour: Flavour) -> None:
    wire.script(flavour.path, Reply(200, flavour.body(), delay_s=0.05))
    response = live(0).complete(make_request(model=flavour.model))
    assert response.latency_ms >= 50  # a lower bound the call cannot beat


def test_response_without_usage_is_an_error_not_zero_tokens(
    live: Live, wire: WireServer, flavour: Flavour
) -> None:
    body = flavour.body()
    del body["usage"]
    wire.script(flavour.path, Reply(200, body, {flavour.request_id_header: "req_nousage"}))

    with pytest.raises(LLMError) as caught:
        live(0).complete(make_request(model=flavour.model))

    assert caught.value.error_class == "MalformedResponse"
    assert caught.value.request_id == "req_nousage"
    assert "usage" in caught.value.message


def test_non_json_body_is_an_llm_error(live: Live, wire: WireServer, flavour: Flavour) -> None:
    wire.script(flavour.path, Reply(200, "<html>proxy says hi</html>"))
    with pytest.raises(LLMError) as caught:
        live(0).complete(make_request(model=flavour.model))
    assert caught.value.error_class == "MalformedResponse"


def test_unreachable_server_is_a_retryable_connection_error(flavour: Flavour) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = flavour.make(f"http://127.0.0.1:{port}", 0)
    try:
        with pytest.raises(LLMError) as caught:
            provider.complete(make_request(model=flavour.model))
    finally:
        provider.close()
    assert caught.value.status_code is None
    assert caught.value.retryable is True
    assert caught.value.error_class == "APIConnectionError"


def test_provider_reported_cost_is_passed_through(wire: WireServer) -> None:
    wire.script(OPENAI_PATH, Reply(200, openai_completion(cost=0.00123)))
    provider = OpenAIProvider(api_key=None, base_url=wire.url + "/v1", max_retries=0)
    try:
        response = provider.complete(make_request(model="meta-llama/llama-4"))
    finally:
        provider.close()
    assert response.provider_cost_usd == pytest.approx(0.00123)
    # No key (Ollama, llama.cpp...): the SDK still needs one, a placeholder is sent.
    assert wire.seen(OPENAI_PATH)[0].headers["authorization"] == "Bearer not-needed"


def test_openai_cache_write_tokens_and_missing_content(wire: WireServer) -> None:
    body = openai_completion(None, prompt_tokens=500, cached_tokens=100, cache_write_tokens=50)
    wire.script(OPENAI_PATH, Reply(200, body))
    provider = OpenAIProvider(api_key="k", base_url=wire.url + "/v1", max_retries=0)
    try:
        response = provider.complete(make_request(model="gpt-6-luna"))
    finally:
        provider.close()
    assert response.text == ""  # content null (e.g. only reasoning): empty text, no crash
    assert response.usage == Usage(500, 20, cache_read_tokens=100, cache_write_tokens=50)


def test_openai_official_endpoint_gets_max_completion_tokens(wire: WireServer) -> None:
    assert token_parameter_for(None) == "max_completion_tokens"
    assert token_parameter_for("https://api.openai.com/v1") == "max_completion_tokens"
    assert token_parameter_for("http://localhost:11434/v1") == "max_tokens"
    wire.script(OPENAI_PATH, Reply(200, openai_completion()))
    provider = OpenAIProvider(
        api_key="k",
        base_url=wire.url + "/v1",
        max_retries=0,
        token_parameter="max_completion_tokens",
    )
    try:
        provider.complete(make_request(model="gpt-6-luna", max_tokens=77))
    finally:
        provider.close()
    sent = wire.seen(OPENAI_PATH)[0].body
    assert sent["max_completion_tokens"] == 77
    assert "max_tokens" not in sent


def test_llm_error_survives_the_api_json_round_trip() -> None:
    # client.py rebuilds errors as cls(detail, **rest): the executor may see one that way.
    error = LLMError(
        "boom",
        provider="openai",
        model="gpt-6-luna",
        error_class="RateLimitError",
        status_code=429,
        request_id="r1",
        latency_ms=12.5,
        retryable=True,
    )
    body = error.to_dict()
    assert body.pop("error") == "LLMError"
    rebuilt = LLMError(body.pop("detail"), **body)
    assert (rebuilt.provider, rebuilt.status_code, rebuilt.retryable) == ("openai", 429, True)
    assert rebuilt.to_dict() == error.to_dict()


def test_minimal_compatible_server_body_is_accepted(wire: WireServer) -> None:
    # Some local servers omit id/created/object/model; the SDK accepts that, so do we.
    body = {
        "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    wire.script(OPENAI_PATH, Reply(200, body))
    provider = OpenAIProvider(api_key=None, base_url=wire.url + "/v1", max_retries=0)
    try:
        response = provider.complete(make_request(model="llama3.2:3b"))
    finally:
        provider.close()
    assert (response.text, response.model, response.usage) == ("ok", "llama3.2:3b", Usage(3, 1))
