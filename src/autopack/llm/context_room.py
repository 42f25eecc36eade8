"""How many output tokens a server says a request has room for, from its 400.

A local model's context is often smaller than the Builder's budget (vLLM started with
``--max-model-len 8192``, a llama.cpp slot of 4096): vLLM then refuses every call, "This
model's maximum context length is 8192 tokens. However, you requested 12000 tokens (1500
in the messages, 10500 in the completion)", and each phase failed on it, one after
another, though the same call with a smaller ``max_tokens`` would have been answered.
The server's numbers say what fits: the executor calls again within them
(:mod:`autopack.executor.metering`), or, when the prompt alone fills the context (llama.cpp's
``exceed_context_size_error``), stops the drain naming the setting to raise.
"""

from __future__ import annotations

import re

_N = r"(\d{1,9})"
"""A count of tokens: ASCII digits (re.ASCII), at most nine of them. A server's text is
not trusted to be sane: a number thousands of digits long raised ValueError from
``int()`` (Python's limit on converting long strings) inside the SDK error's handling, and
the phase failed ``executor_error`` on it; one that long is no limit any call meets."""
_FLAGS = re.IGNORECASE | re.ASCII
_CONTEXT = re.compile(rf"maximum context length is {_N} tokens", _FLAGS)
_PROMPT = (
    re.compile(rf"\({_N} in the messages", _FLAGS),  # vLLM, older OpenAI
    re.compile(rf"request has {_N} input tokens", _FLAGS),  # vLLM 0.10+
    re.compile(rf"messages resulted in {_N} tokens", _FLAGS),  # OpenAI
)
_OUTPUT_CAP = re.compile(rf"supports at most {_N} completion tokens", _FLAGS)
_LLAMA_CPP = re.compile(
    rf"request \({_N} tokens\) exceeds the available context size \({_N} tokens\)", _FLAGS
)
_FULL = "exceeds the available context size"
"""llama.cpp's words for a prompt that leaves no room (older versions give no numbers)."""


def output_room(status: int | None, message: str, body: object) -> int | None:
    """Output tokens the server would accept for this request (0 or less: none, the
    prompt alone fills the context), or None when the answer is no context limit."""
    if status != 400:
        return None
    if isinstance(body, dict):  # llama.cpp: {"type": "exceed_context_size_error", "n_ctx": ...}
        n_ctx, n_prompt = body.get("n_ctx"), body.get("n_prompt_tokens")
        if type(n_ctx) is int and type(n_prompt) is int:
            return n_ctx - n_prompt
    if found := _LLAMA_CPP.search(message):
        return int(found.group(2)) - int(found.group(1))
    if _FULL in message:
        return 0
    if found := _OUTPUT_CAP.search(message):
        return int(found.group(1))
    context = _CONTEXT.search(message)
    if context is None:
        return None
    for pattern in _PROMPT:
        if prompt := pattern.search(message):
            return int(context.group(1)) - int(prompt.group(1))
    return None
