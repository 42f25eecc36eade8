"""Bounds of everything that enters: the types request models, run files and telemetry
events are built from, each within what the column it ends up in can hold.

Without them plain bad input reached the database and came back as a 500: a NUL byte
(PostgreSQL text cannot hold one), an integer over 32 bits (PostgreSQL ``INTEGER``) or
64 bits (SQLite), a string longer than its ``VARCHAR``, ``Infinity`` in a JSON column, a
timeout of ``1e300`` minutes that overflows every later date computation. Here each such
value is refused when the request is validated, as a 422 naming the field (a run file: exit 2).

* :data:`Str`: text without NUL; give it ``Field(max_length=N)`` with the column's length
  (``TEXT`` columns: at most :data:`TEXT_MAX`).
* :data:`Int32` / :data:`Count`: integers a PostgreSQL ``INTEGER`` holds.
* :data:`Finite`: floats that are neither infinite nor NaN (give each a sane maximum too);
  :data:`CostUsd` one call's cost, the same bound on every route that takes one.
* :data:`UtcTime`: a date-time with its offset, from 2000 to 9998 in UTC (a naive one is
  ambiguous; see :data:`TIME_MAX` for the edges of the calendar).
* :data:`JsonObject`: a JSON column's dict, checked all the way down (non-finite numbers,
  nesting deeper than :data:`JSON_DEPTH_MAX`), iteratively; :class:`Storable`, the base
  of request models, checks a whole request: no NUL in a text field, JSON fields as
  :func:`json_safe`.

Importing this module loads pydantic only: the client and the executor use it.
"""

from __future__ import annotations

import math
import re
import sys
from datetime import UTC, datetime
from functools import cache
from types import UnionType
from typing import Annotated, Any, Self, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

INT32_MAX = 2**31 - 1
"""PostgreSQL ``INTEGER``; every integer column is one."""
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""Ids appear in URLs and file names: letters, digits, ``.``, ``_`` and ``-`` only."""
TEXT_MAX = 200_000
"""Characters of a ``TEXT`` column's value (an error, a feedback, a description)."""
MAX_PAGE = 1000
"""Items in one page of a list (runs, approvals): more is asked for by ``offset``."""
MAX_BODY_BYTES = 16 * 1024 * 1024
"""A request body the API reads (larger: 413 unread), and a run file the CLI reads."""
COST_MAX_USD = 100_000.0
"""One LLM call's cost: refused above this (a sum of a few 1e308 is infinite)."""
JSON_DEPTH_MAX = 32
JSON_ITEMS_MAX = 100_000
"""Strings, numbers and containers in one JSON value."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: str) -> bool:
    """Does ``value`` hold a lone surrogate (``"\\udc80"``)? Not Unicode: it cannot be
    encoded as UTF-8, so no file name, database row or JSON answer can hold it."""
    return _SURROGATE.search(value) is not None


def printable(value: str) -> str:
    """``value`` as text any output can encode: a lone surrogate shown as ``\\udc80``."""
    return value.encode("utf-8", "backslashreplace").decode() if lone_surrogate(value) else value


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored and served back as text, or None.

    A NUL byte: no PostgreSQL text column can store one. A lone surrogate (``"\\udc80"``, which
    JSON's ``\\u`` escapes can spell): it is not Unicode, so no answer holding it can be
    encoded; stored, it made every later read of its row a 500.
    """
    if "\x00" in value:
        return "contains a NUL byte (\\x00), which cannot be stored"
    if lone_surrogate(value):
        return "contains a lone surrogate (\\ud800-\\udfff), which is not Unicode text"
    return None


def storable_text(text: str) -> str:
    """``text`` as a text column can hold it: each NUL shown as ``\\x00``, each lone
    surrogate as its escape (:func:`printable`). A provider's error page or message (a
    404's HTML, an OpenAI-compatible server's ``message``) arrives with either, and the
    executor's own result quoting it was refused, its phase left held until its lease
    expired and the drain's reason replaced by the refusal's."""
    return printable(text.replace("\x00", "\\x00"))


def clipped(text: str | None, limit: int = TEXT_MAX) -> str | None:
    """``text`` within ``limit`` characters, for a field bounded by it: its head and its
    tail (where an error or a check's output says most), the cut marked; storable
    (:func:`storable_text`)."""
    if text is None:
        return text
    text = storable_text(text)
    if len(text) <= limit:
        return text

    def mark(cut: int) -> str:
        return f"\n[... {cut} characters cut ...]\n"

    keep = limit - len(mark(len(text)))  # the mark of what is cut is no longer than this
    head = keep // 2
    return text[:head] + mark(len(text) - keep) + text[len(text) - (keep - head) :]


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""C0 controls but tab and newline, DEL, and the C1 controls (``\\x9b`` is a CSI too)."""


def spelled_controls(text: str) -> str:
    """``text`` with each control character but tab and newline spelled ``\\x1b``, and
    carriage returns dropped: text from outside (a Builder's summary, a check's output)
    shown on a terminal, by Autopack or by ``git log``, is then never obeyed by it
    (``ESC ] 0 ;`` retitles it, ``ESC [ 2 J`` erases it, ``ESC ] 52 ;`` writes the
    clipboard in many terminals)."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text.replace("\r", ""))


def is_utf8(text: str) -> bool:
    """Whether ``text`` came from valid UTF-8 (Python keeps undecodable bytes of argv and
    the environment as lone surrogates, which no file, URL or database can hold)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unreadable_value(exc: ValueError) -> str:
    """What a parser's ``ValueError`` says about the text it read, for whoever wrote it.

    Python refuses to convert an integer of more than ``sys.get_int_max_str_digits()``
    digits (4300: quadratic time otherwise), and its message tells the reader to raise
    that limit in their own program; YAML's dates and typed scalars (``2026-02-30``,
    ``!!int abc``) fail the same way. None of them is a ``JSONDecodeError`` or a
    ``YAMLError``, so they escaped the parsers' error handling as a traceback (the CLI)
    or a bare "ValueError" (the API)."""
    if "integer string conversion" in str(exc):
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return str(exc)


class DuplicateKey(ValueError):
    """A JSON object that gives one key twice."""


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` refusing a key given twice: JSON keeps the
    last value silently, so a second ``checks`` or ``run_id`` overrode the one a reader
    saw first. Run files and request bodies are read with it."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(f"key {key!r} appears twice in one object")
        found[key] = value
    return found


def no_nul(value: str) -> str:
    """Refuse text that cannot be stored and served back (:func:`text_problem`)."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def json_safe(value: Any, name: str = "") -> Any:
    """Refuse what a JSON column cannot store or a reader cannot load back: an infinite or
    NaN number, a lone surrogate in a string or key, nesting deeper than JSON_DEPTH_MAX,
    more than JSON_ITEMS_MAX values.
    Walks dicts, lists and pydantic models (extra fields included) without recursion; the
    error names the path (``details.log[3]``; ``name`` is the field's). Returns ``value``.

    NUL is allowed inside JSON (PostgreSQL's ``json`` stores ``\\u0000``): a file the
    Builder wrote, held in an approval's context, must come back byte for byte.
    """
    stack: list[tuple[Any, str, int]] = [(value, name, 0)]
    seen = 0
    while stack:
        item, where, depth = stack.pop()
        seen += 1
        if seen > JSON_ITEMS_MAX:
            raise ValueError(f"has more than {JSON_ITEMS_MAX} values")
        if depth > JSON_DEPTH_MAX:
            raise ValueError(f"{where or 'value'} is nested deeper than {JSON_DEPTH_MAX} levels")
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{where or 'value'} is not a finite number ({item})")
        elif isinstance(item, str):
            if lone_surrogate(item):
                raise ValueError(f"{where or 'value'} contains a lone surrogate (not Unicode)")
        elif isinstance(item, BaseModel):
            fields = {**item.__dict__, **(item.__pydantic_extra__ or {})}
            prefix = f"{where}." if where else ""
            stack.extend((child, prefix + name, depth + 1) for name, child in fields.items())
        elif isinstance(item, dict):
            prefix = f"{where}." if where else ""
            if any(isinstance(key, str) and lone_surrogate(key) for key in item):
                raise ValueError(f"{where or 'value'} has a key with a lone surrogate")
            stack.extend((child, prefix + str(key), depth + 1) for key, child in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
    return value


class FieldProblem(ValueError):
    """A value :func:`storable` refuses, with the field it is in: :class:`Storable` makes
    it an error *at* that field (it was at the whole body: ``"field": "body"`` in a 422)."""

    def __init__(self, field: str, problem: str, value: Any) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem, self.value = field, problem, value


def storable(model: BaseModel) -> BaseModel:
    """A request model as the database will hold it: its text fields (TEXT and VARCHAR
    columns) without NUL, its JSON fields :func:`json_safe`. Returns ``model``."""
    for name, value in {**model.__dict__, **(model.__pydantic_extra__ or {})}.items():
        if isinstance(value, str):
            if (problem := text_problem(value)) is not None:
                raise FieldProblem(name, problem, value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise FieldProblem(name, f"is not a finite number ({value})", value)
        elif isinstance(value, dict | list | tuple | BaseModel):
            try:
                json_safe(value, name)
            except ValueError as exc:
                raise FieldProblem(name, str(exc), value) from None
    return model


_NUL_FREE = "^[^\\u0000]*$"
"""What the JSON Schema says of a text field (no NUL); the validator says it in words."""


_KINDS: dict[Any, str] = {bool: "boolean", int: "number", float: "number", datetime: "date-time"}


@cache
def _json_kinds(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the JSON type its raw value must have, for the fields whose
    pydantic type would otherwise coerce (``"5"`` to 5, ``true`` to 1, ``1`` to True)."""
    kinds = {}
    for name, field in model.model_fields.items():
        annotation: Any = field.annotation
        members = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) in (Union, UnionType) and len(members) == 1:
            annotation = members[0]
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        kind = _KINDS.get(annotation)
        if kind is not None:
            kinds[name] = kind
    return kinds


def _json_type_problem(kind: str, value: Any) -> str | None:
    if value is None:
        return None
    if kind == "boolean":
        return None if isinstance(value, bool) else "a boolean (true or false)"
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "a number"
    return None if isinstance(value, str | datetime) else "an ISO 8601 date-time string"


class JsonTyped(BaseModel):
    """A model whose numbers, booleans and times must arrive as what the JSON Schema says:
    pydantic's lax mode would take ``"5"`` or ``true`` for a number and ``1`` for a
    boolean, so the document would not be the contract (a schema-violating request
    accepted). Each field is checked before it is validated, so the error names it."""

    @field_validator("*", mode="before")
    @classmethod
    def _json_type(cls, value: Any, info: ValidationInfo) -> Any:
        kind = _json_kinds(cls).get(info.field_name or "")
        if kind is not None and (want := _json_type_problem(kind, value)) is not None:
            raise ValueError(f"must be {want}")
        return value


def _text_fields_nul_free(schema: dict[str, Any]) -> None:
    """JSON Schema of a :class:`Storable`: its text fields say they hold no NUL."""
    for prop in schema.get("properties", {}).values():
        for choice in prop.get("anyOf", [prop]):
            if choice.get("type") == "string" and "pattern" not in choice:
                choice["pattern"] = _NUL_FREE


class Storable(JsonTyped):
    """Base of the models requests are validated with: the whole value is :func:`storable`
    (checked after the fields, so a field's own bound speaks first), raw types as the
    JSON Schema says (:class:`JsonTyped`), and the schema says text holds no NUL."""

    model_config = ConfigDict(json_schema_extra=_text_fields_nul_free)

    @model_validator(mode="after")
    def _storable(self) -> Self:
        try:
            storable(self)
        except FieldProblem as exc:
            kind = PydanticCustomError("storable", "{problem}", {"problem": exc.problem})
            detail = InitErrorDetails(type=kind, loc=(exc.field,), input=exc.value)
            raise ValidationError.from_exception_data(type(self).__name__, [detail]) from None
        return self


Str = Annotated[str, AfterValidator(no_nul), Field(json_schema_extra={"pattern": _NUL_FREE})]
Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX)]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
CostUsd = Annotated[float, Field(ge=0, le=COST_MAX_USD, allow_inf_nan=False)]
JsonObject = Annotated[dict[str, Any], AfterValidator(json_safe)]


TIME_MIN = datetime(2000, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9999, 1, 1, tzinfo=UTC)
"""A stored instant stays a day away from either end of the calendar: PostgreSQL hands a
``timestamptz`` back in the session's time zone, and year 1 or 9999 UTC is year 0 or
10000 there for psycopg, which then cannot read any row of that table."""


def in_utc(value: datetime) -> datetime:
    """The same instant in UTC, within TIME_MIN..TIME_MAX."""
    problem = f"must be from {TIME_MIN:%Y-%m-%d} to before {TIME_MAX:%Y-%m-%d} UTC"
    try:
        instant = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(problem) from None
    if not TIME_MIN <= instant < TIME_MAX:
        raise ValueError(problem)
    return instant


UtcTime = Annotated[AwareDatetime, AfterValidator(in_utc)]
