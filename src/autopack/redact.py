"""Secrets out of every text that leaves the process: one redactor, used at every exit.

A provider or proxy that echoes the request in its error body puts ``x-api-key: sk-…``
into an exception message; from there it would reach telemetry rows, attempt errors,
cassettes, API answers and logs. Rather than trusting every writer, each exit passes its
text through :func:`text` (or :func:`data` for JSON-shaped values):

* the log formatters (:mod:`autopack.logs`), the CLI's error line and ``--json`` output;
* the API client, before a request body is sent (attempt errors, telemetry, approvals);
* the control plane, before attempt results and telemetry are stored, and the API's
  error answers;
* cassette recording (:class:`autopack.llm.replay.RecordingProvider`);
* configuration errors (a database URL with a password).

What is replaced, by ``[REDACTED]``:

* the values of configured secrets (LLM keys, API tokens, the database password) and of
  the credentials only the environment holds (:data:`ENVIRONMENT_SECRETS`) once
  :func:`remember` saw the settings; values shorter than :data:`MIN_SECRET_LENGTH` are
  ignored (redacting every ``a`` would destroy the text, not protect anything);
* credentials in header-like text: ``Authorization``, ``Proxy-Authorization``,
  ``x-api-key``, ``api-key``, ``Cookie`` (as ``name: value``, ``"name": "value"``,
  ``'name': 'value'`` or ``name=value``), and ``?api_key=``-style URL parameters;
* the password of a URL (``scheme://user:password@host``), and an HTTP(S) URL's user name
  as long as a token (``https://TOKEN@host``);
* key shapes that are secrets wherever they appear (``sk-ant-…``, ``sk-…``, GitHub's
  ``ghp_…``/``github_pat_…``, GitLab's ``glpat-…``).

Redaction is best effort by construction (a secret split across lines, or encoded, is not
recognised); storing and serving nothing but redacted text is the guarantee it gives for
the cases above, and ``SECURITY.md`` says what it does not cover.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

MARK = "[REDACTED]"
MIN_SECRET_LENGTH = 8
_PR_SET_DUMPABLE = 4

ENVIRONMENT_SECRETS = (
    "ANTHROPIC_AUTH_TOKEN",  # the Anthropic SDK sends it as a bearer token when set
    # what else the SDKs' clients read at their construction: headers a gateway's key
    # travels in ("Name: value" lines), OpenAI's admin key (used when no API key is set),
    # the keys webhooks are signed with
    "ANTHROPIC_CUSTOM_HEADERS",
    "OPENAI_CUSTOM_HEADERS",
    "OPENAI_ADMIN_KEY",
    "ANTHROPIC_WEBHOOK_SIGNING_KEY",
    "OPENAI_WEBHOOK_SECRET",
    "PGPASSWORD",  # libpq's password for a DATABASE_URL that names none
    # what the OpenTelemetry exporter sends to its endpoint (AUTOPACK_OTEL): an API key
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
)
"""Secrets no setting holds: the libraries Autopack drives read them from the environment
themselves. Remembered from there (:func:`remember`) like the settings' own."""

CREDENTIALS = (
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "DATABASE_URL",
    "AUTOPACK_API_TOKEN",
    "AUTOPACK_WORKER_TOKEN",
    *ENVIRONMENT_SECRETS,
)
"""Every variable that holds a credential: what neither git nor a check needs. Git runs
commands its configuration names (``core.fsmonitor``, filters) with its own environment:
given the executor's, a command a check had configured read the API keys the check itself
was run without."""

_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization|x-api-key|api-key|x-goog-api-key|cookie)"
    r"((?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?)"
    r"((?:bearer|basic|token)\s+)?"
    r"([^\s\"'\\,;}\]]+)"
)
_QUERY = re.compile(
    r"(?i)([?&](?:api[_-]?key|key|access[_-]?token|token|password|secret)=)([^&\s\"'\\#]+)"
)
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@\"'\\]*:)([^\s/\"'\\]+)(@)")
"""A URL's password: up to the authority's *last* ``@`` (a password may hold a raw ``@``:
``u:p@ss@host`` showed ``ss``)."""
_KEY_SHAPES = re.compile(
    r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}"
    r"|\b(?:gh[pousr]_|github_pat_|glpat-)[A-Za-z0-9_\-]{20,}"
)
"""Keys by their shape: the LLM providers' and the git hosts' (GitHub, GitLab), which a
``--repo`` URL carries as its user name (``https://ghp_…@github.com/o/r.git``)."""
_URL_USER_TOKEN = re.compile(r"(?i)\b(https?://)([A-Za-z0-9_\-]{32,})(@)")
"""An HTTP(S) URL's user name as long as a token (an Azure DevOps PAT, 52 characters):
a token given as ``https://TOKEN@host``, which git shows in its errors. A login is shorter
and stays (``https://ana@host``)."""


class _Known:
    """The secret values seen so far, and one pattern matching any of them."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.values: frozenset[str] = frozenset()
        self.pattern: re.Pattern[str] | None = None


_known = _Known()


def add_secrets(values: Iterable[str | None]) -> None:
    """Remember secret values (tokens, keys, passwords): from now on they never leave."""
    fresh = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
    with _known.guard:
        if fresh <= _known.values:
            return
        if not _known.values:
            _undumpable()
        _known.values = _known.values | fresh
        ordered = sorted(_known.values, key=len, reverse=True)  # longest first: no partial hit
        _known.pattern = re.compile("|".join(re.escape(value) for value in ordered))


def _undumpable() -> None:
    """Keep this process's memory from the user's other processes (Linux).

    The checks an executor runs are the LLM's code, run as the executor's user, and such
    a process may read ``/proc/PID/environ`` (and ``mem``, ``fd/``) of every other process
    of that user: a check stripped of the keys read them from its executor's environment,
    and the tokens from the environment of the API server the drain started. Not dumpable,
    a process's ``/proc`` files open only to a process allowed to trace it (root's
    ``CAP_SYS_PTRACE``), as ssh-agent does; children are dumpable again once they exec,
    so a check's own processes stay readable to the executor that reaps them.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # no libc by that name: nothing to do
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def remember(settings: Any) -> None:
    """Remember every secret a :class:`~autopack.config.Settings` holds (duck-typed, so
    this module imports nothing of Autopack and anything may import it), and those only
    the environment holds (:data:`ENVIRONMENT_SECRETS`). A process holding only the
    latter (a drain on a server without tokens, given no key) stayed dumpable: a check
    read them from its ``/proc/PID/environ``."""
    values: list[str | None] = [os.environ.get(name) for name in ENVIRONMENT_SECRETS]
    for name in ("anthropic_api_key", "openai_api_key", "autopack_api_token"):
        values.append(_secret_value(getattr(settings, name, None)))
    values.append(_secret_value(getattr(settings, "autopack_worker_token", None)))
    url = getattr(settings, "database_url", None)
    if isinstance(url, str):
        with contextlib.suppress(ValueError):  # unparsable: no password to hide; config says why
            values.append(urlsplit(url).password)
    add_secrets(values)


def _secret_value(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if callable(getter) else value)


def text(value: str) -> str:
    """``value`` with every secret this module recognises replaced by ``[REDACTED]``."""
    if not value:
        return value
    pattern = _known.pattern
    if pattern is not None:
        value = pattern.sub(MARK, value)
    value = _HEADER.sub(_header_mark, value)
    value = _QUERY.sub(lambda m: m.group(1) + MARK, value)
    value = _URL_PASSWORD.sub(_password_mark, value)
    value = _URL_USER_TOKEN.sub(lambda m: m.group(1) + MARK + m.group(3), value)
    return _KEY_SHAPES.sub(MARK, value)


def _password_mark(match: re.Match[str]) -> str:
    user, password, at = match.groups()
    hidden = password if password in ("***", MARK) else MARK  # already hidden: keep it
    return f"{user}{hidden}{at}"


def _header_mark(match: re.Match[str]) -> str:
    name, separator, scheme, _value = match.groups()
    return f"{name}{separator}{scheme or ''}{MARK}"


def data(value: Any) -> Any:
    """A JSON-shaped value (dicts, lists, strings, numbers) with every string redacted.

    Iterative, so a deeply nested value cannot exhaust the stack. Dict keys are redacted
    too (a header dump may use the secret as a key). Returns new containers.
    """
    if isinstance(value, str):
        return text(value)
    if not isinstance(value, dict | list | tuple):
        return value
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        item, parent, key = stack.pop()
        if isinstance(item, dict):
            copy: dict[Any, Any] = {}
            parent[key] = copy
            for name, child in item.items():
                new_name = text(name) if isinstance(name, str) else name
                copy[new_name] = None
                stack.append((child, copy, new_name))
        elif isinstance(item, list | tuple):
            items: list[Any] = [None] * len(item)
            parent[key] = items
            stack.extend((child, items, index) for index, child in enumerate(item))
        elif isinstance(item, str):
            parent[key] = text(item)
        else:
            parent[key] = item
    return root[0]
