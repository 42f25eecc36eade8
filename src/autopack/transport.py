"""How the API client talks HTTP, knowing no endpoint: one request, retried for a bounded
time; an error answer raised as the Autopack error the server named; a body parsed by
the contract's model or refused as another program's answer.

:class:`~autopack.client.ApiClient` builds the API's calls on :class:`Transport`.
Importing this module loads httpx and pydantic, never SQLAlchemy.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from autopack import __version__, errors, redact
from autopack.contract import FINGERPRINT_HEADER, INSTANCE_HEADER
from autopack.errors import AutopackError, ConfigError, SchemaOutOfDate, ServerUnavailable
from autopack.identity import PublicIdentity
from autopack.logs import log_event

logger = logging.getLogger("autopack.client")

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
RETRY_SECONDS = 10.0
"""How long a worker's call is retried on a 5xx or a dropped connection before it fails."""
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 4.0
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
_ERROR_BY_STATUS: dict[int, type[AutopackError]] = {
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    422: errors.InvalidInput,
    503: errors.SchemaOutOfDate,
}


def _error_from(
    response: httpx.Response, where: str, proved: PublicIdentity | None = None
) -> AutopackError:
    """The error the server's answer names, ending with the request and who answered it
    (``where``: the in-process server's own address, ``http://autopack``, means nothing
    to a person). A server refusing the database this client ``proved`` (restarted on
    another one) knows it only by instance_id: where that database is comes from here, so
    the error names both databases, not only the server's."""
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:500]}
    if not isinstance(body, dict):
        body = {"detail": body}
    name = body.pop("error", None)
    detail = body.pop("detail", None)
    cls = getattr(errors, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, AutopackError)):
        cls = _ERROR_BY_STATUS.get(response.status_code, AutopackError)
    message = detail if isinstance(detail, str) else f"HTTP {response.status_code}: {detail}"
    if proved is not None and cls is errors.IdentityMismatch:
        message += f" This client's database: {proved.describe()}."
    request = response.request
    target = request.url.raw_path.decode(errors="replace")
    return cls(f"{message} [{request.method} {target}, {where}]", **body)


class Transport:
    """A connection to one API server. Use as a context manager or call :meth:`close`.

    ``transport``: how to reach it when not over TCP (the CLI's in-process server listens
    on a Unix socket); ``where`` names the server in messages; ``token`` is sent as
    ``Authorization: Bearer`` on every request (never logged, never in a message);
    ``retry_seconds`` bounds how long the worker's calls are retried; ``connect_retries``
    is how often a refused connection is tried again (httpcore: at once, then after 0.5 s),
    0 for a probe where nobody listening is the expected answer.

    ``proved``: the database the handshake proved, named on every request
    (:data:`~autopack.contract.FINGERPRINT_HEADER`): a server on another one refuses.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        where: str | None = None,
        token: str | None = None,
        retry_seconds: float = RETRY_SECONDS,
        connect_retries: int = 2,
        proved: PublicIdentity | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL as exc:  # --api-url / AUTOPACK_API_URL as typed
            raise ConfigError(
                f"API URL {base_url!r} is not a URL: {exc}", api_url=base_url
            ) from None
        if url.scheme not in ("http", "https") or not url.host:
            # 'localhost:8000' or ' http://…' was "no Autopack API answers (UnsupportedProtocol)"
            raise ConfigError(
                f"API URL {base_url!r} is not a URL of a server: it must be "
                "http://HOST:PORT or https://HOST[:PORT]",
                api_url=base_url,
            )
        if url.port is not None and not 1 <= url.port <= 65535:
            # httpx takes any number: a typo'd port was waited on, "no Autopack API answers"
            raise ConfigError(
                f"API URL {base_url!r} is not a URL of a server: port {url.port} is not "
                "between 1 and 65535",
                api_url=base_url,
            )
        self.where = where or f"API {self.base_url}"
        self.proved = proved
        self.retry_seconds = retry_seconds
        self.connect_retries = connect_retries
        self._http = httpx.Client(
            base_url=url,
            timeout=timeout,
            transport=transport
            or httpx.HTTPTransport(
                retries=connect_retries,
                # Plain http needs no certificates: loading them cost 43 ms a client.
                verify=url.scheme != "http",
            ),
            headers={
                **({"Authorization": f"Bearer {token}"} if token else {}),
                **(
                    {INSTANCE_HEADER: proved.instance_id, FINGERPRINT_HEADER: proved.fingerprint}
                    if proved
                    else {}
                ),
            },
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, retry_for: float = 0.0, **kwargs: Any
    ) -> httpx.Response:
        """Send a request; any non-2xx answer is raised as the matching Autopack error.

        ``retry_for``: seconds during which a 5xx or a dropped connection is retried.
        """
        started = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.InvalidURL as exc:  # an id or filter no URL can carry (too long)
                shown = path if len(path) <= 200 else path[:200] + "…"
                raise errors.InvalidInput(f"cannot ask {method} {shown}: {exc}") from None
            except httpx.TransportError as exc:
                problem = f"{exc.__class__.__name__}: {exc}"
                if self._again(started, retry_for, tries, method, path, problem):
                    continue
                raise ServerUnavailable(
                    f"no answer from Autopack {self.where} ({problem})"
                    + (f" after {tries} tries" if tries > 1 else ""),
                    api_url=self.base_url,
                ) from exc
            if not response.is_error:
                return response
            error = _error_from(response, self.where, self.proved)
            if response.status_code not in RETRYABLE_STATUSES or isinstance(error, SchemaOutOfDate):
                raise error
            problem = f"HTTP {response.status_code}: {error.message}"
            if self._again(started, retry_for, tries, method, path, problem):
                continue
            if tries == 1:
                raise error
            raise ServerUnavailable(
                f"Autopack {self.where} still failing after {tries} tries "
                f"({time.monotonic() - started:.0f}s): {problem}",
                api_url=self.base_url,
                status=response.status_code,
            ) from error

    def _again(
        self, started: float, budget: float, tries: int, method: str, path: str, problem: str
    ) -> bool:
        """Sleep before the next try (full jitter) and say True, or False when the time
        ``budget`` would be spent."""
        pause = random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**tries))
        if time.monotonic() + pause - started > budget:
            return False
        log_event(
            logger,
            "api_retry",
            logging.WARNING,
            call=f"{method} {path}",
            tries=tries,
            reason=problem,
            next_in_s=round(pause, 3),
        )
        time.sleep(pause)
        return True

    def _call(
        self, answer: type[M], method: str, path: str, *, retry_for: float = 0.0, **kwargs: Any
    ) -> M:
        response = self.request(method, path, retry_for=retry_for, **kwargs)
        return self._parsed(answer.model_validate_json, response)

    def _parsed(self, parse: Callable[[bytes], T], response: httpx.Response) -> T:
        """The answer as the contract says, else ServerUnavailable: a body that does not
        fit is another program's (or another version's) answer, not bad input of the
        command (which is how a pydantic error reads everywhere else)."""
        try:
            return parse(response.content)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the body"
            raise ServerUnavailable(
                f"{self.where} answered {response.request.method} {response.request.url.path} "
                f"with a body that is not an Autopack answer ({where}: {first['msg']}; "
                f"{exc.error_count()} problem(s)): is it an Autopack API server of this "
                f"version ({__version__})?",
                api_url=self.base_url,
            ) from exc

    def _get(self, answer: type[M], path: str, **kwargs: Any) -> M:
        """A read: safe to repeat, so retried like the worker's calls."""
        return self._call(answer, "GET", path, retry_for=self.retry_seconds, **kwargs)

    def _body(self, request: BaseModel, *, redacted: bool = False) -> dict[str, Any]:
        """The JSON body; ``redacted``: with every secret :mod:`autopack.redact` knows
        replaced (bodies carrying errors, output and telemetry, before they leave)."""
        if redacted:
            content = json.dumps(redact.data(request.model_dump(mode="json")))
        else:
            content = request.model_dump_json()
        return {"content": content, "headers": {"content-type": "application/json"}}
