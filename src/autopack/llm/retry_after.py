"""How long a provider may make a call wait between the SDK's own retries.

Both SDKs retry 408/409/429/5xx themselves, waiting what ``retry-after-ms`` /
``retry-after`` asks. OpenAI's caps that at two minutes; Anthropic's honours up to
4,294,967 s (49 days): a 429 saying ``retry-after: 86400`` (or a far-future date) put the
drain to sleep for a day inside one call, holding the phase. A response asking for more
than :data:`RETRY_AFTER_MAX_S` is therefore marked ``x-should-retry: false`` (which both
SDKs obey) before the SDK sees it: the call fails at once as the retryable status it is,
its message says how long the server asked for, and the drain decides what happens next
(it stops, handing the phase back, when the wait is longer than it waits for a busy
provider: :mod:`autopack.executor.metering`).
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import time
from typing import TypeVar, cast

import httpx2

from autopack.logs import log_event

logger = logging.getLogger(__name__)

RETRY_AFTER_MAX_S = 60.0
"""The longest wait a server may ask for within one call."""

ClientT = TypeVar("ClientT", bound=httpx2.Client)


def requested_wait(headers: httpx2.Headers) -> float | None:
    """Seconds the response asks the client to wait, read as the SDKs read it
    (``retry-after-ms``, then ``retry-after`` as seconds or an HTTP date), or None."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / scale
        except ValueError:
            pass
    date = email.utils.parsedate_tz(headers.get("retry-after") or "")
    return None if date is None else float(email.utils.mktime_tz(date) - time.time())


def too_long(wait: float | None) -> bool:
    """Whether a requested wait is beyond what a call waits (NaN is no request at all:
    the SDKs fall back to their own short backoff)."""
    return wait is not None and wait > RETRY_AFTER_MAX_S


def _refuse_long_waits(response: httpx2.Response) -> None:
    """Mark a response asking for too long a wait not to be retried; say each retryable
    one the SDK may wait on. Its waits are silent (up to a minute each, twice by default:
    a drain showed nothing for minutes of 429s), so the log line is the progress shown."""
    wait = requested_wait(response.headers)
    if too_long(wait):
        response.headers["x-should-retry"] = "false"
        return
    status = response.status_code
    if (status in (408, 409, 429) or status >= 500) and response.headers.get(
        "x-should-retry"
    ) != "false":
        log_event(
            logger,
            "llm_retry_wait",
            logging.WARNING,
            status=status,
            url=str(response.request.url),
            wait_seconds="the SDK's backoff" if wait is None or not wait > 0 else round(wait, 3),
            effect="retried after the wait while the call has retries left",
        )


def _close_quietly(client: httpx2.Client) -> None:
    if not client.is_closed:
        with contextlib.suppress(Exception):
            client.close()


_CLOSING: dict[type[httpx2.Client], type[httpx2.Client]] = {}


def _closing(factory: type[ClientT]) -> type[ClientT]:
    """``factory`` closing its connections when collected, as the client the SDK makes
    for itself does (a provider dropped without ``close()`` left its sockets open)."""
    made = _CLOSING.get(factory)
    if made is None:
        made = type(f"Closing{factory.__name__}", (factory,), {"__del__": _close_quietly})
        _CLOSING[factory] = made
    return cast("type[ClientT]", made)


def http_client(factory: type[ClientT]) -> ClientT:
    """The SDK's own default HTTP client (``anthropic.DefaultHttpxClient`` /
    ``openai.DefaultHttpxClient``: its timeouts, limits, keep-alive) with the hook that
    stops the SDK from waiting longer than :data:`RETRY_AFTER_MAX_S`."""
    return _closing(factory)(event_hooks={"response": [_refuse_long_waits]})


def refused_wait(exc: Exception) -> float | None:
    """The wait an SDK error's response asked for that the call did not make, because it
    was too long (None otherwise): the caller decides whether to wait that long."""
    response = getattr(exc, "response", None)
    if not isinstance(response, httpx2.Response):
        return None
    wait = requested_wait(response.headers)
    return wait if too_long(wait) else None
