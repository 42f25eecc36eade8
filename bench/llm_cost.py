"""Input cost per phase of the bundled demo run with prompt caching on and off.

    .venv/bin/python -m bench.llm_cost [--json OUT]

``autopack demo`` runs for real through the providers (official SDKs, streaming) against
the loopback wire fake (``tests/fakes/llm_wire.py``): Anthropic with
``AUTOPACK_PROMPT_CACHE=1`` and ``0``, OpenAI once (its caching is automatic; "off" is the
same run priced without a cache). The fake answers each call with the bundled cassette's
answer for that phase and role (so the run takes the same course: the empty answer and
the failing test are retried, the truncated answer is continued) and reports the usage
the provider's prompt cache would: :class:`AnthropicCache` and :class:`OpenAIPrefixCache`
apply the documented rules to the exact request bodies Autopack sent. What is measured is
therefore Autopack's requests (what it marks, what stays stable across retries and
continuations); the token counts are an estimate (3.5 characters per token, as the
cassette builder uses) and the caches are models, not the services.

Input cost per phase is priced from the usage rows the runs recorded, with the bundled
price table. Output is the same in every run and left out. Results:
``docs/LLM_COST_BENCHMARK.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.fakes.llm_wire import OPENAI_PATH, Reply, Seen, WireServer, openai_completion
from tests.support import clean_env
from tools.demo_cassette.build import CASSETTE, CHARS_PER_TOKEN, MODEL

from autopack.builder.prompt import BUILDER_SYSTEM
from autopack.llm.base import Usage
from autopack.llm.pricing import load_price_table
from autopack.llm.replay import read_cassette

MIN_CACHEABLE_TOKENS = 1024
"""Neither provider caches a prefix shorter than this (Anthropic's Sonnet-class models)."""
OPENAI_MODEL = "gpt-6-luna"
PHASE = re.compile(r"# Phase (\S+):")


def tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def _blocks(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The request's text blocks in prompt order: (text, marked for caching)."""
    found: list[tuple[str, bool]] = []
    for part in [body.get("system") or "", *[m["content"] for m in body["messages"]]]:
        if isinstance(part, str):
            found.append((part, False))
        else:
            found += [(block["text"], "cache_control" in block) for block in part]
    return found


class AnthropicCache:
    """Anthropic's prompt cache, as documented: the prefix up to a ``cache_control``
    breakpoint is written (billed 1.25x input) unless an identical prefix is cached, then
    read by later requests (0.1x); prefixes below the model's minimum are not cached. The
    5-minute lifetime never runs out in a run this short."""

    def __init__(self) -> None:
        self._cached: set[str] = set()
        self._lock = threading.Lock()

    def usage(self, body: dict[str, Any], output_tokens: int) -> dict[str, int]:
        digest = hashlib.sha256()
        total = 0
        breakpoints: list[tuple[str, int]] = []
        for text, marked in _blocks(body):
            digest.update(text.encode() + b"\0")
            total += tokens(text)
            if marked and total >= MIN_CACHEABLE_TOKENS:
                breakpoints.append((digest.hexdigest(), total))
        with self._lock:
            read = max((n for key, n in breakpoints if key in self._cached), default=0)
            write = breakpoints[-1][1] - read if breakpoints else 0
            self._cached.update(key for key, _ in breakpoints)
        return {
            "input_tokens": total - read - write,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": write,
        }


class OpenAIPrefixCache:
    """OpenAI's automatic prompt caching, as documented: a prompt of 1,024 tokens or more
    reuses the longest prefix an earlier prompt shared with it, in steps of 128 tokens
    from 1,024; no request marks anything and writing costs nothing extra."""

    def __init__(self) -> None:
        self._seen: list[str] = []
        self._lock = threading.Lock()

    def usage(self, body: dict[str, Any], output_tokens: int) -> dict[str, Any]:
        prompt = "".join(f"<{m['role']}>{m['content']}" for m in body["messages"])
        with self._lock:
            shared = max((_common(prompt, earlier) for earlier in self._seen), default=0)
            self._seen.append(prompt)
        total = tokens(prompt)
        shared_tokens = math.floor(shared / CHARS_PER_TOKEN)
        cached = 0
        if total >= MIN_CACHEABLE_TOKENS and shared_tokens >= MIN_CACHEABLE_TOKENS:
            cached = MIN_CACHEABLE_TOKENS + (shared_tokens - MIN_CACHEABLE_TOKENS) // 128 * 128
        return {
            "prompt_tokens": total,
            "completion_tokens": output_tokens,
            "total_tokens": total + output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }


def _common(a: str, b: str) -> int:
    """Length of the common prefix of ``a`` and ``b``."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _text(content: str | list[dict[str, Any]]) -> str:
    return content if isinstance(content, str) else content[0]["text"]


class DemoAnswers:
    """The bundled cassette's answers, served per phase and role in recorded order, in the
    wire format asked (Anthropic or OpenAI) with the usage the provider's cache gives."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for entry in read_cassette(CASSETTE).entries:
            assert entry.response is not None and entry.key[1] is not None
            self._answers[(entry.key[1], entry.key[2])].append(entry.response)
        self._served: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()
        self.anthropic = AnthropicCache()
        self.openai = OpenAIPrefixCache()

    def __call__(self, seen: Seen) -> Reply:
        body = seen.body
        openai = seen.path == OPENAI_PATH
        turns = body["messages"][1:] if openai else body["messages"]
        system = body["messages"][0]["content"] if openai else body.get("system") or ""
        role = "builder" if _text(system) == BUILDER_SYSTEM else "auditor"
        match = PHASE.search(_text(turns[0]["content"]))
        assert match is not None, "every Autopack prompt names its phase"
        key = (match.group(1), role)
        with self._lock:
            answers = self._answers[key]
            index = min(self._served[key], len(answers) - 1)
            self._served[key] += 1
        answer = answers[index]
        output = answer["usage"]["output_tokens"]
        if not openai:
            return Reply(200, {**answer, "usage": self.anthropic.usage(body, output)})
        completion = openai_completion(
            answer["content"][0]["text"],
            model=OPENAI_MODEL,
            finish_reason="length" if answer["stop_reason"] == "max_tokens" else "stop",
        )
        return Reply(200, {**completion, "usage": self.openai.usage(body, output)})


def run_demo(provider: str, cache: bool, directory: Path) -> list[dict[str, Any]]:
    """``autopack demo`` through ``provider`` against the fake; its usage rows."""
    with WireServer() as wire:
        wire.respond = DemoAnswers()
        if provider == "anthropic":
            where = {"ANTHROPIC_API_KEY": "bench-not-a-key", "ANTHROPIC_BASE_URL": wire.url}
            model = MODEL
        else:
            where = {"OPENAI_API_KEY": "bench-not-a-key", "OPENAI_BASE_URL": wire.url + "/v1"}
            model = OPENAI_MODEL
        env = clean_env(
            **where,
            AUTOPACK_BUILDER_MODEL=model,
            AUTOPACK_AUDITOR_MODEL=model,
            AUTOPACK_PROMPT_CACHE="1" if cache else "0",
        )
        done = subprocess.run(
            [sys.executable, "-m", "autopack", "demo", "--dir", str(directory)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"autopack demo failed:\n{done.stderr[-3000:]}")
    with sqlite3.connect(directory / "autopack.db") as db:
        db.row_factory = sqlite3.Row
        return [
            dict(row)
            for row in db.execute(
                "SELECT phase_id, role, model, input_tokens, cache_read_tokens, "
                "cache_write_tokens FROM llm_usage_events ORDER BY id"
            )
        ]


def uncached(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same calls as if the server had no cache: every input token at the input rate."""
    return [{**row, "cache_read_tokens": 0, "cache_write_tokens": 0} for row in rows]


def per_phase(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Calls, input tokens (cache parts included), cache reads/writes and input cost."""
    prices = load_price_table()
    phases: dict[str, dict[str, float]] = {}
    for row in rows:
        usage = Usage(
            row["input_tokens"], 0, row["cache_read_tokens"] or 0, row["cache_write_tokens"] or 0
        )
        cost, _ = prices.cost_of(row["model"], usage)
        phase = phases.setdefault(
            row["phase_id"], {"calls": 0, "input": 0, "read": 0, "write": 0, "usd": 0.0}
        )
        phase["calls"] += 1
        phase["input"] += usage.input_tokens
        phase["read"] += usage.cache_read_tokens
        phase["write"] += usage.cache_write_tokens
        phase["usd"] += cost or 0.0
    return phases


def table(off: dict[str, dict[str, float]], on: dict[str, dict[str, float]]) -> str:
    lines = [
        "| phase | calls | input tokens | cache read | cache write | input $ off | input $ on "
        "| change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in [*sorted(off), "total"]:
        if phase == "total":
            a = {k: sum(p[k] for p in off.values()) for k in ("calls", "input", "usd")}
            b = {k: sum(p[k] for p in on.values()) for k in ("read", "write", "usd")}
        else:
            a, b = off[phase], on[phase]
        change = (b["usd"] - a["usd"]) / a["usd"] * 100 if a["usd"] else 0.0
        lines.append(
            f"| {phase} | {a['calls']:.0f} | {a['input']:,.0f} | {b['read']:,.0f} "
            f"| {b['write']:,.0f} | {a['usd']:.5f} | {b['usd']:.5f} | {change:+.0f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the per-phase figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        off = per_phase(run_demo("anthropic", False, Path(scratch) / "off"))
        on = per_phase(run_demo("anthropic", True, Path(scratch) / "on"))
        openai_rows = run_demo("openai", True, Path(scratch) / "openai")
    openai_off, openai_on = per_phase(uncached(openai_rows)), per_phase(openai_rows)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{stamp} · {platform.node()} · Python {platform.python_version()}")
    print(f"\nAnthropic ({MODEL}), AUTOPACK_PROMPT_CACHE off vs on:\n")
    print(table(off, on))
    print(f"\nOpenAI ({OPENAI_MODEL}), no server cache vs automatic prefix caching:\n")
    print(table(openai_off, openai_on))
    if args.json:
        figures = {
            "at": stamp,
            "anthropic": {"off": off, "on": on},
            "openai": {"off": openai_off, "on": openai_on},
        }
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
