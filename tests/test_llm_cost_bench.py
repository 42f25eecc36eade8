"""The cache model behind ``bench.llm_cost``: Anthropic's documented rules, so its figures
mean what docs/LLM_COST_BENCHMARK.md says they mean."""

from __future__ import annotations

from bench.llm_cost import AnthropicCache, OpenAIPrefixCache

LONG = "x" * 3_600  # 1,029 tokens at 3.5 characters per token


def _body(prefix: str, marked: bool, tail: str = "task") -> dict[str, object]:
    block: dict[str, object] = {"type": "text", "text": prefix}
    if marked:
        block["cache_control"] = {"type": "ephemeral"}
    content = [block, {"type": "text", "text": tail}]
    return {"system": "sys", "messages": [{"role": "user", "content": content}]}


def test_a_marked_prefix_is_written_once_then_read() -> None:
    cache = AnthropicCache()
    first = cache.usage(_body(LONG, marked=True), 5)
    again = cache.usage(_body(LONG, marked=True, tail="other feedback"), 5)
    assert (first["cache_creation_input_tokens"], first["cache_read_input_tokens"]) == (1030, 0)
    assert (again["cache_creation_input_tokens"], again["cache_read_input_tokens"]) == (0, 1030)
    assert again["input_tokens"] == 4  # only the part after the breakpoint


def test_unmarked_or_short_prefixes_are_not_cached() -> None:
    cache = AnthropicCache()
    for body in (_body(LONG, marked=False), _body("short", marked=True)):
        for _ in range(2):
            usage = cache.usage(body, 5)
            assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0


def test_openai_reads_the_shared_prefix_in_128_token_steps() -> None:
    cache = OpenAIPrefixCache()

    def body(tail: str) -> dict[str, object]:
        return {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": LONG * 2 + tail},
            ]
        }

    assert cache.usage(body("first"), 1)["prompt_tokens_details"]["cached_tokens"] == 0
    again = cache.usage(body("second"), 1)
    # 7,215 shared characters = 2,061 tokens -> 1,024 + 8 x 128 = 2,048 cached.
    assert again["prompt_tokens_details"]["cached_tokens"] == 2048
    short = {"messages": [{"role": "user", "content": "short"}]}
    for _ in range(2):
        assert cache.usage(short, 1)["prompt_tokens_details"]["cached_tokens"] == 0
