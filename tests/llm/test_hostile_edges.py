"""What a hostile or misconfigured far end sends, through the real SDKs: each is a clear
LLMError naming the address and the cause, never a raw exception or a bare "Connection
error."."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.errors import LLMError
from autopack.llm.anthropic_provider import AnthropicProvider
from autopack.llm.openai_provider import OpenAIProvider
from tests.executor_support import attempts, create_run, env_for, phase, rows, run_file
from tests.fakes.raw_sse import Raw, RawServer, a_block_start, a_start, o_stream
from tests.llm.support import make_request
from tests.llm.test_hostile_streams import complete, drain_against
from tests.support import cli

DEEP = "[" * 100_000 + "]" * 100_000
"""JSON nested deeper than Python's parser recurses: it raises RecursionError."""
DEEP_STREAMS = {
    "anthropic": [a_start(), a_block_start(), f"event: content_block_delta\ndata: {DEEP}\n\n"],
    "openai": [f"data: {DEEP}\n\n", *o_stream()],
}


@pytest.mark.parametrize("provider", sorted(DEEP_STREAMS))
def test_an_event_nested_too_deep_to_parse_is_a_malformed_answer(provider: str) -> None:
    """The SDKs' SSE parsers let Python's RecursionError through: it escaped the provider
    as a raw exception (the attempt ended executor_error, the call unrecorded)."""
    with pytest.raises(LLMError) as caught:
        complete(provider, Raw(DEEP_STREAMS[provider]))
    assert caught.value.error_class == "MalformedResponse"
    assert "RecursionError" in caught.value.message and not caught.value.retryable


def test_a_drain_records_an_event_nested_too_deep_as_an_llm_error(tmp_path: Path) -> None:
    url, _ = drain_against(tmp_path, "anthropic", Raw(DEEP_STREAMS["anthropic"]))
    assert [a["stop_reason"] for a in attempts(url, "p1")] == ["llm_error"]
    (row,) = rows(url, "SELECT error_class, success FROM llm_usage_events")
    assert (row["error_class"], row["success"]) == ("MalformedResponse", False)


def test_a_cassette_line_nested_too_deep_is_named_not_a_traceback(tmp_path: Path) -> None:
    cassette = tmp_path / "deep.jsonl"
    cassette.write_text(DEEP + "\n")
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    drain = ("drain", "run", "--run-id", "exec-run", "--workspace", str(tmp_path / "ws"))
    result = cli(*drain, "--cassette", str(cassette), env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"cassette {cassette}:1: not JSON" in " ".join(result.stderr.split())


def _provider(provider: str, url: str) -> AnthropicProvider | OpenAIProvider:
    if provider == "anthropic":
        return AnthropicProvider(api_key="k", base_url=url, max_retries=0, timeout=5)
    return OpenAIProvider(api_key="k", base_url=url + "/v1", max_retries=0, timeout=5)


PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}


def _refused(provider: str, replies: list[Raw]) -> tuple[LLMError, str]:
    """The LLMError one call gets from a server answering ``replies``, and the URL it
    called (the server's address and the provider's path)."""
    with RawServer() as server:
        server.replies.extend(replies)
        live = _provider(provider, server.url)
        try:
            with pytest.raises(LLMError) as caught:
                live.complete(make_request())
        finally:
            live.close()
    return caught.value, f"{server.url}{PATHS[provider]}"


@pytest.mark.parametrize("provider", sorted(PATHS))
def test_a_redirect_loop_is_named_as_one(provider: str) -> None:
    """A base URL redirecting to itself (a proxy misconfigured) failed as "unreachable at
    URL: Connection error.", though the server answered every request: the SDK hides
    the cause (httpx's TooManyRedirects, an SSL error, a hang-up); the message says it."""
    loop = Raw([], 307, "text/plain", headers={"location": PATHS[provider]})
    error, url = _refused(provider, [loop] * 30)
    said = error.message
    assert f"unreachable at {url}: " in said, said
    assert "(TooManyRedirects: Exceeded maximum allowed redirects.)" in said, said


@pytest.mark.parametrize("provider", sorted(PATHS))
@pytest.mark.parametrize(
    "raw",
    [Raw(["<html><body>Sign in</body></html>"], content_type="text/html"), Raw([])],
    ids=["html", "empty"],
)
def test_a_200_without_one_event_of_the_api_names_the_address(provider: str, raw: Raw) -> None:
    """OPENAI_BASE_URL at a web page (or a server answering an empty 200) was told as "the
    stream carried no usage chunk (... upgrade the server)", naming neither the address
    nor what came back; Anthropic's message named no address either."""
    error, url = _refused(provider, [raw])
    said = error.message
    assert error.error_class == "MalformedResponse"
    assert f"{url} answered 200, {raw.content_type}, with none" in said
    assert "usage chunk" not in said, said


@pytest.mark.parametrize("provider", sorted(PATHS))
@pytest.mark.parametrize("status", [405, 502])
def test_an_error_page_instead_of_the_api_is_named_by_address_and_shown(
    provider: str, status: int
) -> None:
    """A base URL at a web server or a proxy answers an HTML error page: OpenAI's SDK said
    "openai-compatible 405: Error code: 405", leaving the page out, and neither provider
    named the address (only a 404 did)."""
    page = f"<html>\n  <h1>{status} Not Allowed</h1>\n</html>"
    reply = Raw([page], status, "text/html", headers={"x-should-retry": "false"})
    error, url = _refused(provider, [reply])
    said = error.message
    assert f" {status} at {url}: " in said, said
    assert said.count(f"<h1>{status} Not Allowed</h1>") == 1, said
