"""Parse the Builder's answer into a typed change, or say precisely what is wrong with it.

The Builder answers one JSON object::

    {"files":  [{"path": "src/x/a.py", "content": "<whole file>"}],
     "edits":  [{"path": "src/x/b.py", "search": "<exact old text>", "replace": "<new>"}],
     "delete": ["src/x/old.py"],
     "summary": "what changed and why"}

Models often wrap JSON in a Markdown fence or add a sentence around it; both are tolerated,
and so is the reasoning a thinking model served locally puts first (``<think>...</think>``).
Anything else (no JSON object, wrong field types, nothing to change) raises
:class:`BuilderRejected` with a stop reason and feedback written *to the Builder*, so the
retry prompt can say exactly what to fix.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autopack.bounds import lone_surrogate, unreadable_value
from autopack.errors import BuilderOutputInvalid

_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)\n```", re.DOTALL)
_REASONING = re.compile(r"\A\s*<think>.*?(?:</think>|\Z)", re.DOTALL)


def without_reasoning(text: str) -> str:
    """``text`` without the reasoning a thinking model (DeepSeek-R1, Qwen3 through Ollama,
    llama.cpp or vLLM without a reasoning parser) sends before its answer, in the answer
    itself: its drafts (``{"files": []}``, a fenced sketch) were taken for the answer,
    and every attempt failed ``empty_files``. A block never closed is all reasoning."""
    return _REASONING.sub("", text, count=1)


class BuilderRejected(BuilderOutputInvalid):
    """The Builder's answer cannot be applied; ``feedback`` tells the Builder how to fix it."""

    def __init__(self, stop_reason: str, feedback: str) -> None:
        feedback = feedback.replace("\x00", "\\x00")  # it may quote the answer; stored as TEXT
        super().__init__(f"{stop_reason}: {feedback}", stop_reason=stop_reason)
        self.stop_reason = stop_reason
        self.feedback = feedback


class _File(BaseModel):
    model_config = ConfigDict(extra="ignore")
    path: str
    content: str


class _Edit(BaseModel):
    model_config = ConfigDict(extra="ignore")
    path: str
    search: str = Field(min_length=1)
    replace: str


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    files: list[_File] = []
    edits: list[_Edit] = []
    delete: list[str] = []
    summary: str = ""


@dataclass(frozen=True)
class FileWrite:
    path: str
    content: str


@dataclass(frozen=True)
class FileEdit:
    path: str
    search: str
    replace: str


@dataclass(frozen=True)
class BuilderOutput:
    files: tuple[FileWrite, ...] = ()
    edits: tuple[FileEdit, ...] = ()
    deletes: tuple[str, ...] = ()
    summary: str = ""

    @property
    def paths(self) -> list[str]:
        """Every path the answer writes, edits or deletes, in order, once each."""
        seen: dict[str, None] = {}
        for path in (
            [f.path for f in self.files] + [e.path for e in self.edits] + list(self.deletes)
        ):
            seen.setdefault(path, None)
        return list(seen)


def extract_json_object(text: str) -> object:
    """The first JSON object in ``text`` (inside a fence if there is one), after any
    leading reasoning (:func:`without_reasoning`)."""
    text = without_reasoning(text)
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    last_error: json.JSONDecodeError | None = None
    decoder = json.JSONDecoder()
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            try:
                value, _ = decoder.raw_decode(candidate, start)
                return value
            except json.JSONDecodeError as exc:
                last_error = exc
                start = candidate.find("{", start + 1)
            except ValueError as exc:  # not JSON's own error: an int() of 5000 digits
                raise BuilderRejected(
                    "malformed_output",
                    f"Your JSON cannot be read: {unreadable_value(exc)}. Answer with exactly "
                    'one JSON object: {"files": [{"path": ..., "content": ...}], "summary": ...}.',
                ) from exc
            except RecursionError as exc:  # thousands of nested brackets: not an answer
                raise BuilderRejected(
                    "malformed_output",
                    "Your JSON is nested too deeply. Answer with exactly one flat JSON object: "
                    '{"files": [{"path": ..., "content": ...}], "summary": ...}.',
                ) from exc
    where = ""
    if last_error is not None:
        where = f" ({last_error.msg} at line {last_error.lineno} column {last_error.colno})"
    raise BuilderRejected(
        "malformed_output",
        f"Your answer was not a JSON object{where}. Answer with exactly one JSON object: "
        '{"files": [{"path": ..., "content": ...}], "summary": ...} and nothing else. '
        "Escape newlines and quotes inside strings.",
    )


def _misspelt_fields(raw: object) -> list[tuple[str, str]]:
    """Fields of the answer that are near misses of the known ones (``deletes``, ``edit``,
    ``file``), each with the one it resembles. Other fields are ignored, as models add
    their own (``explanation``); these were too: an answer listing files under
    ``"deletes"`` completed with none of them deleted, and nobody was told."""
    if not isinstance(raw, dict):
        return []
    known = ["files", "edits", "delete"]  # a misspelt summary loses nothing
    found = []
    for key in raw:
        if isinstance(key, str) and key not in _Answer.model_fields:
            close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.8)
            if close:
                found.append((key[:40], close[0]))
    return found


_TOOL_CALL_STOPS = frozenset({"tool_use", "tool_calls", "function_call"})


def _why_empty(stop_reason: str) -> str:
    """The feedback for an answer without text, by why the model stopped: a local model
    whose chat template made it call a tool (none is offered) was told its answer "was
    empty", which it had no way to understand; a refusal or content filter likewise."""
    if stop_reason in _TOOL_CALL_STOPS:
        return (
            "Your answer was a tool call, and no tools are offered here. Answer in plain "
            "text with the JSON object described."
        )
    if stop_reason in {"refusal", "content_filter"}:
        return (
            f"Your answer was stopped ({stop_reason}) before it held any text. Answer with "
            "the JSON object described: the files the task asks for."
        )
    return "Your answer was empty. Answer with the JSON object described."


def parse_builder_output(text: str, stop_reason: str = "") -> BuilderOutput:
    """Parse and type-check the Builder's answer; raise :class:`BuilderRejected` if unusable.
    ``stop_reason`` is why the model stopped, as its provider says it."""
    if not without_reasoning(text).strip():
        raise BuilderRejected("empty_output", _why_empty(stop_reason))
    raw = extract_json_object(text)
    try:
        answer = _Answer.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise BuilderRejected(
            "malformed_output", f"Your JSON does not match the required shape: {problems}."
        ) from exc
    if misspelt := _misspelt_fields(raw):
        raise BuilderRejected(
            "malformed_output",
            "Your JSON has "
            + ", ".join(f"{key!r} (did you mean {known!r}?)" for key, known in misspelt)
            + f"; the fields are {', '.join(repr(f) for f in _Answer.model_fields)}. What is "
            "under a field of another name is not applied.",
        )
    if not answer.files and not answer.edits and not answer.delete:
        raise BuilderRejected(
            "empty_files",
            'Your "files" array was empty. Return the COMPLETE content of every deliverable '
            'in "files" (one entry per file, with its full path); an empty array is never a '
            "valid answer.",
        )
    texts = [("the summary", answer.summary)]
    texts += [(f"the content of {f.path!r}", f.content) for f in answer.files]
    texts += [(f"an edit of {e.path!r}", e.search + e.replace) for e in answer.edits]
    for where, value in texts:
        if lone_surrogate(value):
            raise BuilderRejected(
                "malformed_output",
                f"{where} contains a lone surrogate (a \\ud800-\\udfff escape that is not "
                "part of a pair), which is not Unicode text and cannot be written to a file. "
                "Write the characters themselves.",
            )
    return BuilderOutput(
        files=tuple(FileWrite(f.path, f.content) for f in answer.files),
        edits=tuple(FileEdit(e.path, e.search, e.replace) for e in answer.edits),
        deletes=tuple(answer.delete),
        summary=answer.summary,
    )
