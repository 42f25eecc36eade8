"""Replay recorded model answers from a JSONL cassette, and record new cassettes.

One line per call::

    {"match": {"run_id": "R", "phase_id": "P", "attempt": 1, "role": "builder"},
     "provider": "anthropic", "model": "claude-sonnet-5-5", "latency_ms": 1234.0,
     "request_id": "req_...", "retries": 0,
     "response": {<the provider's own response JSON, usage included>}}

``request_id``, ``retries`` and ``ttft_ms`` (time to the first streamed text) are
optional. Instead of ``response`` a line may carry
``"error": {"status": 429, "error_class": "RateLimitError", "message": "...",
"request_id": null}`` to replay a failed call (raised as :class:`LLMError`; with
``"partial"`` text and ``"usage"``, a stream broken off mid-answer, raised as
:class:`~autopack.llm.base.StreamInterrupted` so it is continued as it was live). An optional
first line ``{"cassette": {"repeat_last": true}}`` says the last answer of a phase and
role may be given again once the recorded ones run out.

A call is matched by run, phase, role and its order among that phase's calls of that role
(the first builder call of phase P gets P's first builder line, and so on, in file
order), skipping lines recorded at an attempt earlier than the call's: several executors
each replay the cassette, and one whose first call of a phase is its attempt 2 gets what
attempt 2 was answered. ``attempt`` is never required to match: a phase retried more
often than when it was recorded, or a cassette that numbers every line 1, gets the next
recorded answer instead of failing on an attempt number. The ``response`` is parsed by the same
function the live provider uses on its response body (:mod:`autopack.llm.responses`), so
replay cannot drift from reality, and never imports a provider's SDK; every line is
parsed once at load time, so a broken cassette fails at start with its line number, not
halfway through a run. Answers come back as provider ``replay`` with the recorded model,
so nobody mistakes them for spending. A request with no line
left raises :class:`CassetteMiss` naming the call and what the cassette has for that
phase: replay never invents output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopack import redact
from autopack.errors import CassetteMiss, ConfigError, LLMError
from autopack.llm.base import (
    LLMProvider,
    LLMRequest,
    LLMResponse,
    StreamInterrupted,
    Usage,
    retryable_status,
    token_count,
)
from autopack.llm.responses import WIRE_FORMATS, normalise
from autopack.paths import not_a_file, read_text_file

Key = tuple[str, str | None, str]
"""(run_id, phase_id, role): the calls answered in file order."""
REPLAY = "replay"
"""The provider every replayed answer (and failure) reports."""


def request_key(request: LLMRequest) -> Key:
    return (request.run_id, request.phase_id, request.role)


@dataclass(frozen=True)
class CassetteEntry:
    """One recorded call: an answer (``response``) or a failure (``error``)."""

    key: Key
    attempt: int | None
    """The attempt the recording saw: earlier ones are skipped, never required to match."""
    provider: str
    """The wire format of ``response`` (whose parser reads it)."""
    model: str
    latency_ms: float
    request_id: str | None
    retries: int
    ttft_ms: float | None
    response: dict[str, Any] | None
    error: dict[str, Any] | None
    line: int

    def answer(self) -> LLMResponse:
        """The recorded response, parsed exactly as the live provider parses one."""
        if self.error is not None:
            status = self.error.get("status")
            status_code = status if isinstance(status, int) else None
            retryable = self.error.get("retryable")
            partial = self.error.get("partial")
            if isinstance(partial, str):  # a stream broken off mid-answer, with its text
                raise StreamInterrupted(
                    str(self.error.get("message") or "stream interrupted"),
                    partial=partial,
                    usage=_usage(self.error.get("usage")),
                    provider=REPLAY,
                    model=self.model,
                    request_id=self.error.get("request_id") or self.request_id,
                    latency_ms=self.latency_ms,
                )
            raise LLMError(
                str(self.error.get("message") or f"recorded {self.provider} failure"),
                provider=REPLAY,
                model=self.model,
                error_class=str(self.error.get("error_class") or "APIStatusError"),
                status_code=status_code,
                request_id=self.error.get("request_id") or self.request_id,
                latency_ms=self.latency_ms,
                retryable=(
                    retryable if isinstance(retryable, bool) else retryable_status(status_code)
                ),
            )
        assert self.response is not None
        parsed = normalise(
            self.provider,
            self.response,
            request_model=self.model,
            request_id=self.request_id,
            latency_ms=self.latency_ms,
            retries=self.retries,
        )
        return dataclasses.replace(parsed, provider=REPLAY, ttft_ms=self.ttft_ms)


USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def _usage(recorded: object) -> Usage | None:
    """The usage an interrupted stream's line recorded (what was known when it broke)."""
    if not isinstance(recorded, dict):
        return None
    try:
        return Usage(**{key: token_count(recorded.get(key)) for key in USAGE_KEYS})
    except ValueError:  # a count that is no count: nothing known, as for no usage at all
        return None


def _entry(raw: object, where: str, line: int) -> CassetteEntry:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a cassette line must be a JSON object")
    match = raw.get("match")
    if not isinstance(match, dict) or not isinstance(match.get("run_id"), str):
        raise ConfigError(f"{where}: 'match' needs run_id, phase_id, attempt and role")
    role = match.get("role")
    if role not in ("builder", "auditor"):
        raise ConfigError(f"{where}: match.role must be 'builder' or 'auditor', not {role!r}")
    phase_id, attempt = match.get("phase_id"), match.get("attempt")
    if not (phase_id is None or isinstance(phase_id, str)) or not (
        attempt is None or (isinstance(attempt, int) and not isinstance(attempt, bool))
    ):
        raise ConfigError(f"{where}: match.phase_id must be text/null, attempt a number/null")
    provider = raw.get("provider")
    if provider not in WIRE_FORMATS:
        raise ConfigError(f"{where}: provider must be one of {sorted(WIRE_FORMATS)}")
    response, error = raw.get("response"), raw.get("error")
    if (response is None) == (error is None):
        raise ConfigError(f"{where}: a line needs exactly one of 'response' or 'error'")
    if not isinstance(response or error, dict):
        raise ConfigError(f"{where}: 'response'/'error' must be a JSON object")
    latency = raw.get("latency_ms", 0.0)
    if not isinstance(latency, int | float) or isinstance(latency, bool) or latency < 0:
        raise ConfigError(f"{where}: latency_ms must be a non-negative number")
    request_id = raw.get("request_id")
    retries = raw.get("retries", 0)
    ttft = raw.get("ttft_ms")
    if ttft is not None and (
        not isinstance(ttft, int | float) or isinstance(ttft, bool) or ttft < 0
    ):
        raise ConfigError(f"{where}: ttft_ms must be a non-negative number or absent")
    entry = CassetteEntry(
        key=(match["run_id"], phase_id, role),
        attempt=attempt,
        provider=str(provider),
        model=str(raw.get("model") or "unknown"),
        latency_ms=float(latency),
        request_id=request_id if isinstance(request_id, str) else None,
        retries=retries if isinstance(retries, int) else 0,
        ttft_ms=None if ttft is None else float(ttft),
        response=response,
        error=error,
        line=line,
    )
    if response is not None:
        try:
            entry.answer()  # fail at load time, with the line number, on a broken answer
        except LLMError as exc:
            raise ConfigError(f"{where}: {exc.message}") from exc
    return entry


@dataclass(frozen=True)
class Cassette:
    """A loaded cassette: its lines and whether answers may repeat once they run out."""

    path: Path
    entries: list[CassetteEntry]
    repeat_last: bool = False

    def runs(self) -> list[str]:
        """The runs the cassette has answers for, in first-seen order."""
        return list(dict.fromkeys(entry.key[0] for entry in self.entries))


def _options(raw: object, where: str) -> bool:
    """``repeat_last`` from a header line ``{"cassette": {"repeat_last": true}}``."""
    options = raw.get("cassette") if isinstance(raw, dict) else None
    if not isinstance(options, dict) or set(options) - {"repeat_last"}:
        raise ConfigError(f'{where}: a header line is {{"cassette": {{"repeat_last": true}}}}')
    repeat = options.get("repeat_last", False)
    if not isinstance(repeat, bool):
        raise ConfigError(f"{where}: cassette.repeat_last must be true or false")
    return repeat


def read_cassette(path: Path) -> Cassette:
    """Every line of ``path``, validated and parsed (blank lines are skipped)."""
    try:
        text = read_text_file(Path(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"replay cassette {path} cannot be read: {exc}") from exc
    entries: list[CassetteEntry] = []
    repeat_last = False
    # at "\n" only: the recorder's UTF-8 JSON holds U+2028, U+2029 and U+0085 as they are,
    # and str.splitlines cut a line at each (a recorded answer was "not JSON")
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"cassette {path}:{number}"
        try:
            raw = json.loads(line)
        except (ValueError, RecursionError) as exc:  # nested too deep for the parser
            raise ConfigError(f"{where}: not JSON ({exc})") from exc
        if isinstance(raw, dict) and "cassette" in raw:
            if entries:
                raise ConfigError(f"{where}: the cassette header must be the first line")
            repeat_last = _options(raw, where)
            continue
        entries.append(_entry(raw, where, number))
    return Cassette(Path(path), entries, repeat_last)


def _first_line(path: Path) -> None:
    """Is ``path`` a cassette, by its first line (the one no recorder can be appending to
    at the moment)? A ConfigError saying why not."""
    try:  # line by line: a log or database named by mistake may be gigabytes
        with open(Path(path), "rb") as opened:
            for number, line in enumerate(opened, start=1):
                if line.strip():
                    at, text = number, line.decode("utf-8")
                    break
            else:
                return
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cassette {path} cannot be read: {exc}") from exc
    where = f"cassette {path}:{at}"
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{where}: not JSON ({exc})") from exc
    if isinstance(raw, dict) and "cassette" in raw:
        _options(raw, where)
    else:
        _entry(raw, where, at)


def load_cassette(path: Path) -> list[CassetteEntry]:
    """Every answer line of ``path`` (see :func:`read_cassette`)."""
    return read_cassette(path).entries


class ReplayProvider:
    """Answers from a cassette, reproducing recorded latency scaled by ``speed``.

    ``speed`` 1 sleeps as long as the original call took, 0 answers at once; the
    response still reports the *recorded* latency, which is what telemetry should see.
    Thread-safe: a lock hands out each recorded answer once; sleeping happens outside it.
    """

    name = "replay"

    def __init__(
        self,
        path: Path,
        *,
        speed: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if speed < 0:
            raise ConfigError(f"replay speed must be >= 0, not {speed}")
        self.path = Path(path)
        self.speed = speed
        self._sleep = sleep
        self.cassette = read_cassette(self.path)
        self._entries: dict[Key, list[CassetteEntry]] = defaultdict(list)
        for entry in self.cassette.entries:
            self._entries[entry.key].append(entry)
        self._served: dict[Key, int] = defaultdict(int)
        self._lock = threading.Lock()

    def runs(self) -> list[str]:
        """The runs this cassette can answer for."""
        return self.cassette.runs()

    def complete(self, request: LLMRequest) -> LLMResponse:
        key = request_key(request)
        with self._lock:
            recorded = self._entries.get(key, [])
            index = _first_for(recorded, self._served[key], request.attempt)
            self._served[key] = index + 1
        if index < len(recorded):
            entry = recorded[index]
        elif recorded and self.cassette.repeat_last:
            entry = recorded[-1]
        else:
            raise self._miss(request, index)
        if self.speed > 0 and entry.latency_ms > 0:
            self._sleep(entry.latency_ms / 1000.0 * self.speed)
        return entry.answer()

    def _miss(self, request: LLMRequest, index: int) -> CassetteMiss:
        run_id, phase_id, role = request_key(request)
        call = (
            f"call #{index + 1} of role {role} for phase {phase_id!r} of run {run_id!r} "
            f"(attempt {request.attempt})"
        )
        same_phase = {
            k[2]: v for k, v in self._entries.items() if k[0] == run_id and k[1] == phase_id
        }
        if same_phase:
            have = ", ".join(
                f"{kind}: {len(lines)} answer(s) (recorded at attempt "
                f"{', '.join(str(e.attempt) for e in lines)})"
                for kind, lines in sorted(same_phase.items())
            )
            repeat = (
                ""
                if self.cassette.repeat_last
                else ' It does not repeat answers (a first line {"cassette": {"repeat_last": '
                "true}} lets it give the last one again)."
            )
            context = f"For that phase the cassette has {have}.{repeat}"
        else:
            phases = sorted({str(k[1]) for k in self._entries if k[0] == run_id})
            shown = ", ".join(phases[:20]) + (f" (+{len(phases) - 20} more)" * (len(phases) > 20))
            has = f"it has phases: {shown}." if phases else "it has no line for that run at all."
            context = f"The cassette has nothing for that phase; {has}"
        return CassetteMiss(
            f"replay cassette {self.path}: no recorded answer for {call}. {context} Replay "
            "never invents output: record the call with --record FILE against a real "
            "provider, or point AUTOPACK_REPLAY_CASSETTE at a cassette that has it.",
            provider=self.name,
            model=request.model,
            error_class="CassetteMiss",
            retryable=False,
        )


def _first_for(recorded: list[CassetteEntry], served: int, attempt: int | None) -> int:
    """The line a call of ``attempt`` gets: the first not served yet, past any recorded at
    an earlier attempt (another executor made those attempts; the answers they got failed
    on purpose, and giving them again spent this phase's tries). When every line ahead is
    from an earlier attempt (a cassette numbering every line 1, a phase retried more often
    than recorded), the next one in order."""
    if attempt is None:
        return served
    for index in range(served, len(recorded)):
        seen = recorded[index].attempt
        if seen is None or seen >= attempt:
            return index
    return served


def _interrupted(exc: LLMError) -> dict[str, Any]:
    """What an error line adds for a stream broken off mid-answer: its text and usage, so
    a replay continues it as the live run did."""
    if not isinstance(exc, StreamInterrupted):
        return {}
    usage = None if exc.usage is None else dataclasses.asdict(exc.usage)
    return {"partial": exc.partial, "usage": usage}


_FILE_LOCKS: dict[Path, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.Lock:
    """One lock per cassette file, shared by every recorder writing it (e.g. one per role),
    so a long line is never interleaved with another."""
    key = path.resolve()
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(key, threading.Lock())


class RecordingProvider:
    """Wraps a live provider and appends every call to a cassette in the replay format.

    Failed calls are recorded as ``error`` lines (then re-raised), so a replay of the
    cassette fails where the original failed. Every line is redacted before it is
    written (:mod:`autopack.redact`): a cassette never holds a key. Thread-safe: one lock
    per cassette file serialises the appends, and each line is flushed as it is written.
    """

    def __init__(self, inner: LLMProvider, path: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.path = Path(path)
        # Before any call: a path no line can be appended to failed the attempt after the
        # live call was paid for (executor_error), and a FIFO hung it.
        if problem := not_a_file(self.path):
            raise ConfigError(f"--record {self.path} {problem}: name a cassette file")
        # Lines are appended: to the run file (`--record` for `--cassette`) that made it
        # no YAML, to the database they were lost in when SQLite next wrote its pages.
        if self.path.is_file() and self.path.stat().st_size > 0:
            try:
                _first_line(self.path)
            except ConfigError as exc:
                raise ConfigError(
                    f"--record {self.path} holds something other than a cassette "
                    f"({exc.message}): name a new file, or a cassette to add to"
                ) from None
        self._lock = _file_lock(self.path)

    def complete(self, request: LLMRequest) -> LLMResponse:
        match = {
            "run_id": request.run_id,
            "phase_id": request.phase_id,
            "attempt": request.attempt,
            "role": request.role,
        }
        try:
            response = self.inner.complete(request)
        except LLMError as exc:
            self._append(
                {
                    "match": match,
                    "provider": exc.provider,
                    "model": exc.model,
                    "latency_ms": exc.latency_ms,
                    "request_id": exc.request_id,
                    "error": {
                        "status": exc.status_code,
                        "error_class": exc.error_class,
                        "message": exc.message,
                        "request_id": exc.request_id,
                        "retryable": exc.retryable,
                        **_interrupted(exc),
                    },
                }
            )
            raise
        if response.raw is None:
            raise ConfigError(
                f"provider {self.inner.name!r} returned no raw response JSON; it cannot be recorded"
            )
        self._append(
            {
                "match": match,
                "provider": response.provider,
                "model": response.model,
                "latency_ms": response.latency_ms,
                "request_id": response.request_id,
                "retries": response.retries,
                **({} if response.ttft_ms is None else {"ttft_ms": response.ttft_ms}),
                "response": response.raw,
            }
        )
        return response

    def _append(self, line: Mapping[str, Any]) -> None:
        # A provider's error may echo the request headers: no key is ever written to disk.
        text = json.dumps(redact.data(dict(line)), ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+b") as handle:  # writes go to the end, wherever it reads
                end = handle.seek(0, os.SEEK_END)
                if end:
                    # a last line without its newline (an editor's save, `echo -n` of a
                    # header): this one was glued onto it, both "not JSON", the answer lost
                    handle.seek(end - 1)
                    if handle.read(1) != b"\n":
                        text = "\n" + text
                handle.write(text.encode("utf-8"))
                handle.flush()
