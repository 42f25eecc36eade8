"""Every error Autopack raises on purpose, in one tree.

Each class knows the CLI exit code and the HTTP status it maps to, so the mapping is
written once (here) instead of at every ``except``. Foreign errors (SQLAlchemy, httpx,
the LLM SDKs) are translated into these at the boundary that caught them, keeping the
original as ``__cause__``.

    AutopackError              exit 1, HTTP 500
    ├── ConfigError            exit 2, HTTP 400  a setting or flag is unusable
    │   ├── IdentityMismatch   exit 2, HTTP 409  two parts use different databases
    │   ├── Unauthorized       exit 2, HTTP 401  no token, or not one this server knows
    │   ├── Forbidden          exit 2, HTTP 403  a valid token whose role may not do this
    │   └── DatabaseMissing    exit 2            no database file where a reader looked
    │       └── DatabaseEmpty                    a database with no tables, and a reader
    ├── SchemaOutOfDate        exit 3, HTTP 503  the database is not at the code's revision
    ├── DatabaseUnavailable    exit 2, HTTP 503  the server cannot reach its database now
    │   └── DatabaseFull       exit 2, HTTP 507  the database has no room left to write
    ├── InvalidInput           exit 2, HTTP 422  a run file or request body is wrong
    │   ├── BadRequest         exit 2, HTTP 400  the request is not even readable (body)
    │   └── RequestTooLarge    exit 2, HTTP 413  the body is larger than the server takes
    ├── NotFound               exit 1, HTTP 404  a run, phase or approval does not exist
    ├── Conflict               exit 1, HTTP 409  the request contradicts the current state
    │   ├── IllegalTransition                    a state machine edge that does not exist
    │   ├── LeaseLost                            the caller's lease token is no longer valid
    │   └── BranchMoved                          a result's commit is not on the branch head
    ├── ServerUnavailable      exit 2, HTTP 502  an API server did not answer in time
    ├── LLMError               exit 1, HTTP 502  an LLM call failed after the SDK's own retries
    │   └── CassetteMiss                         the replay cassette has no answer for a request
    ├── ProviderUnusable       exit 2            no LLM call can succeed now: stop the drain
    │   ├── ProviderUnreachable                  nothing answers at the provider's address
    │   ├── ProviderBusy                         rate limited or overloaded, for too long
    │   └── ProviderRefused                      the key, its permissions or the model refused
    ├── ResourceExhausted      exit 2            this machine ran out of disk space or open files
    └── BuilderOutputInvalid   exit 1            the LLM's answer cannot be applied
"""

from __future__ import annotations

from typing import Any, ClassVar


class AutopackError(Exception):
    """Root of every deliberate Autopack error; the docstring is the default message."""

    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.__class__.__name__).strip()
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The JSON body the API answers with and `--json` CLI output prints."""
        return {"error": self.__class__.__name__, "detail": self.message, **self.details}


class ConfigError(AutopackError):
    """A setting or flag has a value Autopack cannot use."""

    exit_code = 2
    http_status = 400


class IdentityMismatch(ConfigError):
    """Two parts of Autopack are pointed at different databases."""

    http_status = 409


class Unauthorized(ConfigError):
    """The request carries no token, or one this server does not know."""

    http_status = 401


class Forbidden(ConfigError):
    """The token is valid, but its role may not do this (e.g. a worker creating a run)."""

    http_status = 403


class DatabaseMissing(ConfigError):
    """There is no SQLite database file at the resolved path, and this command only reads.

    Raised instead of letting SQLite create an empty file: an empty database answers every
    question with "nothing here", which is how the legacy probe found nothing.
    ``path`` is the file that was looked for.
    """

    def __init__(self, message: str | None = None, *, path: str, **details: Any) -> None:
        super().__init__(message or f"no database file at {path}", path=path, **details)
        self.path = path


class DatabaseEmpty(DatabaseMissing):
    """The database exists but holds no tables at all (a new PostgreSQL database, an empty
    SQLite file), and this command does not set one up.

    Only the commands that write (``db init``, ``db upgrade``, ``run create``, ``serve``, an
    API server) initialise a database: a read such as ``run list`` on a mistyped database
    name set up Autopack's tables there and answered "0 runs". ``path`` is the SQLite file,
    or the PostgreSQL URL without its password.
    """


class SchemaOutOfDate(AutopackError):
    """The database schema is not at the revision this code needs."""

    exit_code = 3
    http_status = 503


class DatabaseUnavailable(AutopackError):
    """The API server cannot reach its database right now (retried first; try again later)."""

    exit_code = 2
    http_status = 503


class DatabaseFull(DatabaseUnavailable):
    """The database has no room left to write (its disk is full). 507, which clients do
    not retry: a 503 was retried for ten seconds by every write of a drain (the result,
    each usage and telemetry row, the hand-back), minutes of waiting a full disk never
    ended."""

    http_status = 507


class InvalidInput(AutopackError):
    """A run definition or request body does not validate."""

    exit_code = 2
    http_status = 422


class BadRequest(InvalidInput):
    """The request cannot be read at all (e.g. a body that is not what it claims to be)."""

    http_status = 400


class RequestTooLarge(InvalidInput):
    """The request body is larger than the server accepts."""

    http_status = 413


class NotFound(AutopackError):
    """The requested object does not exist in this database."""

    http_status = 404


class Conflict(AutopackError):
    """The request contradicts the current state of the object."""

    http_status = 409


class IllegalTransition(Conflict):
    """A state change that the state machine does not allow."""


class LeaseLost(Conflict):
    """The lease token is stale: the phase was reclaimed, requeued or cancelled."""


class BranchMoved(Conflict):
    """The run's branch moved since the attempt's commit was made: rebase it on the new head
    (``branch_head`` in the details) and post again. Nothing was applied."""


class ServerUnavailable(AutopackError):
    """An Autopack API server did not answer, or did not become healthy in time."""

    exit_code = 2
    http_status = 502


class LLMError(AutopackError):
    """A call to an LLM provider failed (after the SDK's own retries, if any).

    Carries everything a usage row for the failed call needs, because the executor records
    failed calls too: ``provider``, ``model``, ``error_class`` (the SDK exception's class
    name), ``status_code``, ``request_id``, ``latency_ms`` and ``retryable`` (whether a
    later attempt may succeed: rate limits, overload, 5xx, connection trouble).
    ``retry_after_s`` is a wait the server asked for that was too long to make within
    the call (a day's quota spent); it stays off the JSON body (it may be infinite).
    ``error_code`` is the body's own code where the SDK reads one (OpenAI's
    ``insufficient_quota``: a 429 that no wait ends). ``output_room`` is the output
    tokens a 400 says the model's context has room for (:mod:`autopack.llm.context_room`).
    """

    http_status = 502

    def __init__(
        self,
        message: str | None = None,
        *,
        provider: str = "unknown",
        model: str = "unknown",
        error_class: str = "LLMError",
        status_code: int | None = None,
        request_id: str | None = None,
        latency_ms: float = 0.0,
        retryable: bool = False,
        retry_after_s: float | None = None,
        error_code: str | None = None,
        output_room: int | None = None,
        **details: Any,
    ) -> None:
        super().__init__(
            message,
            provider=provider,
            model=model,
            error_class=error_class,
            status_code=status_code,
            request_id=request_id,
            latency_ms=latency_ms,
            retryable=retryable,
            **details,
        )
        self.provider = provider
        self.model = model
        self.error_class = error_class
        self.status_code = status_code
        self.request_id = request_id
        self.latency_ms = latency_ms
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.error_code = error_code
        self.output_room = output_room


class ProviderUnusable(AutopackError):
    """No call to the LLM provider can succeed now, for a reason that is not the phase's:
    each phase claimed meanwhile failed its tries ``llm_error`` and the run with them.
    The drain stops instead, handing its phase back (no retry spent)."""

    exit_code = 2
    http_status = 502


class ProviderUnreachable(ProviderUnusable):
    """Nothing answered at the LLM provider's address, after the SDK's retries and the
    drain's patience: the network or the server is down."""


class ProviderBusy(ProviderUnusable):
    """The LLM provider kept answering that it cannot take calls now (rate limited,
    overloaded: 429, 503, 529) after the SDK's retries and the drain's patience."""


class ProviderRefused(ProviderUnusable):
    """The provider refused a call for what every call sends: the key (401, revoked or
    out of credit mid-drain), its permissions (403) or the model's name (404)."""


class ResourceExhausted(AutopackError):
    """The executor's machine ran out of something no phase asked too much of: disk space
    (or quota) where attempts write, or open files. Each attempt meanwhile ended
    ``executor_error`` or ``git_error`` and spent a try, until the run's phases were
    FAILED or SKIPPED (or the drain died in a traceback, its phases handed back as
    "Ctrl-C or SIGTERM"). The drain stops instead, its phases handed back (no retry
    spent), naming what ran out and where (:mod:`autopack.executor.exhausted`)."""

    exit_code = 2


class CassetteMiss(LLMError):
    """The replay cassette holds no recorded answer for this request; nothing is invented."""


class BuilderOutputInvalid(AutopackError):
    """The Builder's answer cannot be applied (malformed, empty, unsafe or incomplete)."""
