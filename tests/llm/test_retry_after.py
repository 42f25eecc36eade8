"""A server asking to be retried after a day (or never) cannot hold a call that long.

Anthropic's SDK honours ``retry-after`` up to 49 days: a 429 saying ``retry-after: 86400``
put the drain to sleep for a day inside one call. Each test drains through the real CLI
against a server sending such answers; before the fix the Anthropic case slept until the
test's subprocess timeout.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx2
import pytest

from autopack.errors import LLMError
from autopack.llm.retry_after import RETRY_AFTER_MAX_S, requested_wait, too_long
from tests.executor_support import attempts, rows
from tests.fakes.llm_wire import RETRY_NOW, Reply, WireServer
from tests.fakes.raw_sse import Raw
from tests.llm.support import Flavour, Live, Records, make_request
from tests.llm.test_hostile_streams import drain_against

RATE_LIMITED = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'

LONG_WAITS = {
    "a day in seconds": ({"retry-after": "86400"}, "86400 s"),
    "infinite milliseconds": ({"retry-after-ms": "1e400"}, "inf s"),
    "a far-future date": ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, "the server asked"),
}


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize("name", sorted(LONG_WAITS))
def test_a_long_retry_after_stops_the_drain_at_once_and_hands_the_phase_back(
    tmp_path: Path, provider: str, name: str
) -> None:
    """Nor does the drain try again within its patience for a busy provider: the server
    asked for longer. The phase goes back unspent (a day's quota is not its doing)."""
    headers, said = LONG_WAITS[name]
    limited = Raw([RATE_LIMITED], 429, "application/json", headers=headers)
    url, seen = drain_against(tmp_path, provider, limited, limited, limited)
    assert len(seen) == 1, "the call was tried again"
    ((stop, state),) = [(a["stop_reason"], a["outcome"]) for a in attempts(url, "p1")]
    assert (stop, state) == ("interrupted", "FAILED")
    (row,) = rows(url, "SELECT success, error_class, error_message FROM llm_usage_events")
    assert (row["success"], row["error_class"]) == (0, "RateLimitError")
    assert "429" in row["error_message"] and said in row["error_message"], row
    assert rows(url, "SELECT state FROM phases") == [{"state": "QUEUED"}]


@pytest.mark.parametrize(
    ("headers", "wait", "long"),
    [
        ({"retry-after": "2"}, 2.0, False),
        ({"retry-after-ms": "1500", "retry-after": "999"}, 1.5, False),
        ({"retry-after-ms": "soon", "retry-after": "61"}, 61.0, True),
        ({"retry-after": "nan"}, "nan", False),
        ({"retry-after": "whenever"}, None, False),
        ({}, None, False),
    ],
)
def test_the_wait_is_read_as_the_sdks_read_it(
    headers: dict[str, str], wait: float | str | None, long: bool
) -> None:
    """NaN is what the SDKs read too: no wait, their own short backoff."""
    found = requested_wait(httpx2.Headers(headers))
    assert ("nan" if found is not None and math.isnan(found) else found) == wait
    assert too_long(found) is long
    assert RETRY_AFTER_MAX_S == 60.0


def test_each_retryable_answer_the_sdk_waits_on_is_said(
    live: Live, wire: WireServer, flavour: Flavour, log_records: Records
) -> None:
    """The SDKs wait silently (up to a minute a retry here): a drain meeting 429s and 529s
    showed nothing for minutes. Each retryable answer is now a warning naming its status,
    address and the wait asked; one marked not to be retried is not."""
    wire.script(
        flavour.path,
        Reply(429, flavour.error("rate_limit_error", "slow down"), RETRY_NOW),
        Reply(529, flavour.error("overloaded_error", "busy"), {"retry-after-ms": "2"}),
        Reply(500, flavour.error("api_error", "down"), {"x-should-retry": "false"}),
    )
    with pytest.raises(LLMError):
        live(2).complete(make_request(model=flavour.model))
    said = [Records.fields(r) for r in log_records.events("llm_retry_wait")]
    assert [(f["status"], f["wait_seconds"]) for f in said] == [(429, 0.001), (529, 0.002)]
    assert said[0]["url"] == f"{wire.url}{flavour.path}"
    assert all(r.levelname == "WARNING" for r in log_records.events("llm_retry_wait"))
