"""Validation errors as people read them: ``field: message (got value)``.

One wording for every refusal of input, whichever entry point met it: a 422 from the API
(:mod:`autopack.api.errors`), a run file the CLI loads (:mod:`autopack.rundef`), a CLI
argument a request model refuses. Field paths name tiers and phases by their ids.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from difflib import get_close_matches
from typing import Any

from pydantic import BaseModel

from autopack.bounds import ID_PATTERN, printable


def _describe_loc(loc: Sequence[int | str], data: Any) -> str:
    """``("tiers", 0, "phases", 1, "scope")`` -> ``tiers[0](T1).phases[1](p2).scope``."""
    text = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
            if isinstance(node, dict):
                label = node.get("phase_id") or node.get("tier_id")
                if isinstance(label, str) and label:
                    text += f"({label})"
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return text or "(top level)"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, directly or in a list/optional (``list[TierDefinition]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_in, typing.get_args(annotation))), None)


def _meant(key: str, loc: Sequence[int | str], model: type[BaseModel]) -> str | None:
    """The field a refused key was most likely meant to be (``category``: ``task_category``):
    pydantic says only "Extra inputs are not permitted", and the user is left to guess."""
    node: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, str):
            field = node.model_fields.get(part) if node is not None else None
            node = _model_in(field.annotation) if field is not None else None
    if node is None:
        return None
    names = list(node.model_fields)
    close = get_close_matches(key, names, n=1, cutoff=0.6)
    return close[0] if close else next((n for n in names if key in n.split("_")), None)


_SCALARS = (str, bool, int, float)


def short_value(value: Any) -> Any:
    """A scalar offending value, JSON-safe and at most 200 characters."""
    if isinstance(value, str) and len(value) > 200:
        return printable(value[:200]) + "…"
    return printable(value) if isinstance(value, str) else value


_ENUM_REPR = re.compile(r"<\w+\.\w+: '([^']*)'>")
"""How pydantic names an enum member it expected (``<PhaseState.EXECUTING: 'EXECUTING'>``)."""


def describe_errors(
    errors: Sequence[Any],
    data: Any = None,
    *,
    drop_prefix: int = 0,
    model: type[BaseModel] | None = None,
) -> list[dict[str, Any]]:
    """pydantic error dicts -> ``[{field, message, value}]`` with readable field paths.
    ``model``: what ``data`` was validated as, to name the field a misspelt key meant."""
    described = []
    for error in errors:
        loc = list(error.get("loc", ()))[drop_prefix:]
        message = str(error.get("msg", "invalid"))
        for prefix in ("Value error, ", "Assertion failed, "):
            if message.startswith(prefix):
                message = message[len(prefix) :]
        message = _ENUM_REPR.sub(r"'\1'", message)  # a Literal of enum members
        if error.get("type") == "string_pattern_mismatch" and (
            (error.get("ctx") or {}).get("pattern") == ID_PATTERN
        ):
            message = (
                "ids use only letters, digits, '.', '_' and '-', and start with a letter or digit"
            )
        if error.get("type") == "extra_forbidden" and model is not None and loc:
            meant = _meant(str(loc[-1]), loc[:-1], model)
            message = f"no such field (did you mean {meant!r}?)" if meant else "no such field"
        field = printable(_describe_loc(loc, data))
        item: dict[str, Any] = {"field": field, "message": message}
        value = error.get("input")
        if error.get("type") != "missing" and (value is None or isinstance(value, _SCALARS)):
            item["value"] = short_value(value)
        described.append(item)
    return described


def summarize_errors(described: Sequence[dict[str, Any]], limit: int = 5) -> str:
    """One line per problem (at most ``limit``): ``field: message (got value)``."""
    lines = []
    for item in described[:limit]:
        line = f"{item['field']}: {item['message']}"
        if "value" in item:
            line += f" (got {item['value']!r})"
        lines.append(line)
    if len(described) > limit:
        lines.append(f"... and {len(described) - limit} more")
    return "; ".join(lines)
