"""Whether the server read the whole prompt, judged by the input tokens it reports.

Ollama runs a model with a context of 2048 or 4096 tokens unless told otherwise
(``OLLAMA_CONTEXT_LENGTH``, a Modelfile's ``num_ctx``; its OpenAI-compatible endpoint
cannot set it), and a longer prompt is not refused: the front is dropped (the system
prompt with the answer format, the deliverables) and the model answers the rest, 200
(ollama/ollama#3839, #17889; LM Studio's context overflow policies do the same). Such
an answer was taken as the model's best, and each phase in turn failed later on
malformed or empty files, for a reason that hid the cause. The usage alone tells: the
prompt tokens reported (Ollama's ``prompt_eval_count``) are the part it read, 2048 or
2050 for a prompt of 16k. :func:`unread_prompt` compares them with what the prompt's
length says it holds at the least.
"""

from __future__ import annotations

from autopack.errors import LLMError
from autopack.llm.base import CHARS_PER_TOKEN_MAX, LLMRequest, LLMResponse
from autopack.llm.replay import REPLAY
from autopack.llm.responses import LABELS

PROMPT_CHARS_PER_TOKEN_MAX = 10
"""Characters per token no real prompt averages more than, so its characters divided by
this are fewer tokens than it holds. Code and English average 3 to 4 characters per
token on the tokenizers local models use (Llama 3, Qwen, Mistral, Gemma), English prose
up to 5; identifiers, digits, base64 and non-Latin text take more tokens, not fewer. Only
long runs of one character (padding, rules of ``=``) pack more into a token, and a whole
prompt (the system prompt and the task in English, the context in code) averages far
below 10 even with some. A cut is still seen: a 16k-token prompt (about 56k characters)
counts at least 5.6k, more than a context of 4096 lets through."""
CUT_TOKENS_MIN = 1024
"""Fewer input tokens than this are no cut to a context: a cut leaves a context's worth
(Ollama keeps ``num_ctx``, or half of it and 2 since its new runner, ollama#17427; no
model runs Autopack's prompts in less than 2048). A smaller count is a server counting
only the part of the prompt it did not have cached (Ollama until mid-2024 left
``prompt_eval_count`` out then, so 0, ollama#2068; its llama-server runner of 0.30 counted
only the uncached tokens, ollama#16414), which a continuation's prompt almost all is."""
PROMPT_CUT = "prompt_cut"
"""The ``error_code`` of an answer to a prompt the server did not read in full."""


def prompt_tokens_min(request: LLMRequest) -> int:
    """Tokens the prompt holds at the least. An assistant turn (a continuation's answer
    so far) is the model's own text, held to :data:`CHARS_PER_TOKEN_MAX` as it streamed
    in: a long answer of padding is few tokens, and counting it like the prompt alone
    took the continuation of an honest server for a cut."""
    given = written = 0
    for message in request.messages:
        size = len(message.stable_prefix) + len(message.content)
        if message.role == "assistant":
            written += size
        else:
            given += size
    given += len(request.system)
    return given // PROMPT_CHARS_PER_TOKEN_MAX + written // CHARS_PER_TOKEN_MAX


def context_for(request: LLMRequest) -> int:
    """A context that holds the prompt and its answer: the prompt at 3 characters a
    token (code's densest average) and ``max_tokens``, rounded up to a power of two."""
    chars = len(request.system) + sum(
        len(m.stable_prefix) + len(m.content) for m in request.messages
    )
    return 1 << (chars // 3 + request.max_tokens - 1).bit_length()


def unread_prompt(request: LLMRequest, response: LLMResponse) -> LLMError | None:
    """The error of an answer whose server read less of the prompt than it holds, or None.
    A replayed answer is not judged: its usage is the recording's, for the prompt of its
    day (the demo's cassette records 896 input tokens for an Auditor prompt of 18k
    characters today)."""
    read, least = response.usage.input_tokens, prompt_tokens_min(request)
    if response.provider == REPLAY or read < CUT_TOKENS_MIN or read >= least:
        return None
    what = "prompt with the answer so far" if request.continues else "prompt"
    return LLMError(
        f"the {LABELS.get(response.provider, response.provider)} server answered 200 "
        f"reporting {read} input tokens for a {what} of at least {least}: it cut the prompt "
        "to its context, dropping its front (the system prompt with the answer format and "
        "the deliverables), so the answer is not to this prompt (a context of about "
        f"{context_for(request)} tokens holds it and its max_tokens {request.max_tokens})",
        provider=response.provider,
        model=response.model,
        error_class="PromptCut",
        status_code=200,
        request_id=response.request_id,
        latency_ms=response.latency_ms,
        retryable=False,
        error_code=PROMPT_CUT,
    )
