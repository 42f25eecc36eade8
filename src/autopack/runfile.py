"""Reading a run file from disk: YAML or JSON, bounded, with no key given twice.

A run file is read whole but never more than the API takes in one request, parsed with
duplicate keys refused (both parsers would keep the last one silently), and counted so a
few YAML aliases cannot expand into billions of values. What it says is then validated by
:func:`autopack.rundef.parse_run_definition`, against the directory the file really is
in (a relative ``repository`` is relative to it).
"""

from __future__ import annotations

import json
import os
import stat
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from autopack.bounds import MAX_BODY_BYTES, DuplicateKey, unique_pairs, unreadable_value
from autopack.errors import InvalidInput
from autopack.rundef import RunDefinition, parse_run_definition


def load_run_file(path: str | Path) -> RunDefinition:
    """Read a ``.yaml``/``.yml``/``.json`` run file (other suffixes: JSON, then YAML)."""
    file = Path(path)
    _refuse_a_named_pipe(file)
    try:
        with file.open("rb") as stream:  # a pipe (`<(…)`) too, but never more than the API takes
            raw = stream.read(MAX_BODY_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read run file {file}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidInput(
            f"run file {file} is larger than {MAX_BODY_BYTES} bytes, more than the API "
            "accepts in one request"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"run file {file} is not UTF-8 text: {exc}") from exc
    suffix = file.suffix.lower()
    data: Any
    if suffix == ".json":
        data = _parse_json(text, file)
    elif suffix in {".yaml", ".yml"}:
        data = _parse_yaml(text, file)
    else:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = _parse_yaml(text, file)
        else:
            data = _parse_json(text, file)  # again: duplicate keys, size
    if data is None:  # YAML's reading of an empty file (or one of comments only)
        raise InvalidInput(f"run file {file} is empty: it needs run_id and tiers")
    # Relative to where the file really is: a symlink's target (its text was written
    # there), /dev/stdin's file; a pipe (/dev/fd/63) is nowhere, so nothing is relative.
    real = file.resolve()
    directory = real.parent if real.is_file() else None
    return parse_run_definition(data, source=str(file), directory=directory)


MAX_FILE_NODES = 2_000_000
"""Values in a parsed run file, aliases counted each time they are used (YAML anchors can
otherwise expand a small file into billions of values for the validator to walk)."""


def _refuse_a_named_pipe(file: Path) -> None:
    """Refuse a named pipe (``mkfifo run.yaml``): opening one waits until a program opens it
    for writing, so with none ``run create`` waited forever. A pipe a shell hands over
    (``<(…)``, ``/dev/stdin`` piped) has its writer already and resolves to no path
    (``/proc/…/fd/pipe:[…]``), so it is read as before."""
    try:
        found = Path(os.path.realpath(file)).stat()
    except OSError:
        return  # not there, or no name: opening it says why
    if stat.S_ISFIFO(found.st_mode):
        raise InvalidInput(
            f"run file {file} is a named pipe (FIFO), which waits for a writer: write the "
            "run to a file, or hand it over as <(command) or on stdin (/dev/stdin)"
        )


def _parse_json(text: str, file: Path) -> Any:
    try:
        return _sized(json.loads(text, object_pairs_hook=unique_pairs), file)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"run file {file} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except DuplicateKey as exc:
        raise InvalidInput(f"run file {file} is ambiguous: {exc}") from exc
    except ValueError as exc:  # after its subclasses above: an int() of too many digits
        raise InvalidInput(f"run file {file} is not valid JSON: {unreadable_value(exc)}") from exc
    except RecursionError as exc:
        raise InvalidInput(f"run file {file} is nested too deeply to be a run file") from exc


if TYPE_CHECKING:  # the stubs type only the pure-Python loader as a base class
    _SafeLoader = yaml.SafeLoader
else:  # libyaml's parser where PyYAML was built with it (its wheels are): the pure-Python
    # one took 30 s to read a 7 MB run file, about three times as long
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):
    """PyYAML's safe loader, except that a mapping key given twice is an error (PyYAML
    keeps the last value silently, so a typo'd duplicate would override the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: construct_mapping below says so with its mark
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A scalar its tag cannot hold (``2026-02-30``, ``!!int abc``, an integer of
        5000 digits) as a YAML error at its place in the file, not a ``ValueError``."""
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as exc:
            value = node.value if isinstance(node.value, str) and len(node.value) <= 80 else None
            what = "this value" if value is None else repr(value)
            problem = f"{what} cannot be read: {unreadable_value(exc)}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from exc


def _parse_yaml(text: str, file: Path) -> Any:
    try:
        return _sized(yaml.load(text, Loader=_UniqueKeyLoader), file)
    except yaml.reader.ReaderError as exc:  # a character YAML refuses (NUL, other controls)
        where = _line_column(text, exc.position)
        problem = f"character {chr(exc.character)!r} is not allowed ({exc.reason})"
        raise InvalidInput(f"run file {file} is not valid YAML {where}: {problem}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidInput(f"run file {file} is not valid YAML{where}: {problem}") from exc
    except RecursionError as exc:
        raise InvalidInput(f"run file {file} is nested too deeply to be a run file") from exc


def _line_column(text: str, position: int) -> str:
    """Where ``position`` is, as the other YAML errors say it (a reader error's own text
    was two lines ending ``in "<unicode string>", position 9``)."""
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f"at line {line} column {column}"


def _sized(data: Any, file: Path) -> Any:
    """Refuse a parsed file with more than MAX_FILE_NODES values (counted iteratively)."""
    stack = [data]
    count = 0
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_FILE_NODES:
            raise InvalidInput(
                f"run file {file} expands to more than {MAX_FILE_NODES} values "
                "(YAML anchors and aliases count each time they are used)"
            )
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return data


def bundled_run_file(name: str) -> Path:
    """A run definition shipped inside the package (``autopack/data/runs/NAME.yaml``): by
    name only (``../x`` read a file outside them)."""
    folder = Path(str(files("autopack").joinpath("data", "runs")))
    bundled = {path.stem: path for path in folder.glob("*.yaml")}
    if name not in bundled:
        raise InvalidInput(
            f"no bundled run definition named {name!r}; there are: {', '.join(sorted(bundled))} "
            "(`autopack run create FILE` creates a run from a file of your own)",
            field="name",
        )
    return bundled[name]
